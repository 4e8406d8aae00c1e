"""What the evaluator needs of ``accelerate.Accelerator``, for one process on any one device.

accelerate keeps one process-wide ``AcceleratorState``: once a run has set it (a Trainer,
an ``Accelerator()`` in a notebook, an evaluation on the GPU), an ``Accelerator`` asking
for another device raises ("cannot be changed") or silently keeps the first device. A
single-process evaluation needs none of that state — no process group, no gathering — so
it uses :class:`LocalAccelerator`, which touches no global state: any sequence of
``soup()`` / ``evaluate()`` calls with different devices works in one process. Several
processes (``torchrun``, ``accelerate launch``) share accelerate's state, the one a
Trainer made included.

>>> LocalAccelerator().gather_for_metrics(3)
3
"""

from __future__ import annotations

import os
from typing import Any, Iterator


def single_process() -> bool:
    """Whether this process evaluates alone: not launched as one of several, or told to by hf_soup.

    ``hf_soup.distributed.single_process()`` (e.g. process 0 souping at the end of a
    distributed training run) and ``HF_SOUP_DISTRIBUTED=0`` count as alone.
    """
    from .. import distributed

    if distributed._SINGLE_PROCESS or os.environ.get("HF_SOUP_DISTRIBUTED", "").strip().lower() in ("0", "false", "no"):
        return True
    return distributed.launched_world_size() <= 1


class NoCollectives:
    """An accelerator's collective operations for a process that evaluates alone: each the identity."""

    num_processes = 1

    def gather_for_metrics(self, value: Any) -> Any:
        return value

    def pad_across_processes(self, tensor: Any, **_: Any) -> Any:
        return tensor

    def reduce(self, tensor: Any, reduction: str = "sum") -> Any:
        return tensor


class LocalAccelerator(NoCollectives):
    """One process on ``device``: batches moved to it, gathers and reductions as the identity."""

    process_index = 0
    local_process_index = 0
    is_main_process = True
    is_local_main_process = True

    def __init__(self, device: Any = "cpu") -> None:
        import torch

        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())

    def prepare_data_loader(self, dataloader: Any) -> Any:
        return dataloader if self.device.type == "cpu" else OnDevice(dataloader, self.device)


class OnDevice:
    """A data loader whose batches (mappings of tensors) arrive on ``device``."""

    def __init__(self, dataloader: Any, device: Any):
        self.dataloader, self.device = dataloader, device

    def __len__(self) -> int:
        return len(self.dataloader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.dataloader:
            yield {k: v.to(self.device, non_blocking=True) if hasattr(v, "to") else v for k, v in batch.items()}
