"""What the evaluator needs of ``accelerate.Accelerator``, for one process on the CPU.

accelerate keeps one process-wide ``AcceleratorState``: once a CUDA run (a Trainer, an
evaluation on the GPU) has set it, ``Accelerator(cpu=True)`` raises in that process. A
single-process CPU evaluation needs none of it — no process group, no gathering — so it
uses :class:`LocalAccelerator`, which touches no global state.

>>> LocalAccelerator().gather_for_metrics(3)
3
"""

from __future__ import annotations

import os
from typing import Any


def single_process() -> bool:
    """Whether this process was not launched as one of several (``WORLD_SIZE`` unset or 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) <= 1
    except ValueError:
        return True


class LocalAccelerator:
    """One process on the CPU: data loaders as they are, gathers and reductions as the identity."""

    num_processes = 1
    process_index = 0
    local_process_index = 0
    is_main_process = True
    is_local_main_process = True

    def __init__(self) -> None:
        import torch

        self.device = torch.device("cpu")

    def prepare_data_loader(self, dataloader: Any) -> Any:
        return dataloader

    def gather_for_metrics(self, value: Any) -> Any:
        return value

    def pad_across_processes(self, tensor: Any, **_: Any) -> Any:
        return tensor

    def reduce(self, tensor: Any, reduction: str = "sum") -> Any:
        return tensor
