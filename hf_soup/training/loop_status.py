"""A ``transformers.Trainer`` evaluation loop where one process's failure stops every process.

Under DDP each process of ``trainer.evaluation_loop`` computes its batch, then all pad
and gather it. A process whose batch fails (out of memory in the forward pass, a collator
or dataset error) would leave the others waiting in that gather until the process group's
timeout. Inside :func:`checked_loop`, each batch's loading (dataset and collator) ends with
a status exchange (:meth:`hf_soup.distributed.Dist.settle`), and so do its
``prediction_step`` (the forward pass; it begins with a collective of its own, the count of
the batch's labels, so the loading needs its own exchange), ``preprocess_logits_for_metrics``
and ``compute_metrics`` when the Trainer has them: the
failed process raises its own error and the others a :class:`~hf_soup.errors.RankFailedError`
naming it, before any gather. The values computed are untouched; one process exchanges nothing.

>>> with checked_loop(trainer, trainer.get_eval_dataloader()) as dataloader:  # doctest: +SKIP
...     output = trainer.evaluation_loop(dataloader, description="soup")
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from ..evaluation.rank_status import BATCH_STAGE, status_dist


LOAD_STAGE = "loading its evaluation batch"


class _CheckedBatches:
    """``dataloader`` for ``evaluation_loop``: each batch's loading (and the end of the data) ends with an exchange."""

    def __init__(self, dataloader: Any, dist: Any):
        self.dataloader = dataloader
        self.dist = dist

    def __getattr__(self, name: str) -> Any:  # dataset, batch_size...: what the loop reads of its dataloader
        if name == "dataloader":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.dataloader, name)

    def __len__(self) -> int:
        return len(self.dataloader)

    def __iter__(self) -> Iterator[Any]:
        batches = None
        while True:
            try:
                if batches is None:
                    batches = iter(self.dataloader)
                batch = next(batches)
            except StopIteration:
                self.dist.settle(LOAD_STAGE)
                return
            except BaseException as error:
                self.dist.settle(LOAD_STAGE, error)
            self.dist.settle(LOAD_STAGE)
            yield batch


def _settled(dist: Any, stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` ending with the status exchange of ``stage``."""

    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            result = function(*args, **kwargs)
        except BaseException as error:
            dist.settle(stage, error)
            raise
        dist.settle(stage)
        return result

    return checked


@contextmanager
def checked_loop(trainer: Any, dataloader: Any) -> Iterator[Any]:
    """The ``dataloader`` to give ``trainer.evaluation_loop``; inside, the Trainer's steps exchange statuses."""
    dist = status_dist(trainer.accelerator)
    if dist is None:
        yield dataloader
        return
    batches = _CheckedBatches(dataloader, dist)
    patched = {"prediction_step": _settled(dist, BATCH_STAGE, trainer.prediction_step)}
    if getattr(trainer, "preprocess_logits_for_metrics", None) is not None:
        patched["preprocess_logits_for_metrics"] = _settled(dist, "preparing its logits for the metrics",
                                                            trainer.preprocess_logits_for_metrics)
    if getattr(trainer, "compute_metrics", None) is not None:
        patched["compute_metrics"] = _settled(dist, "computing the metrics", trainer.compute_metrics)
    own = {name: vars(trainer)[name] for name in patched if name in vars(trainer)}
    vars(trainer).update(patched)
    try:
        yield batches
    finally:
        for name in patched:
            if name in own:
                vars(trainer)[name] = own[name]
            else:
                del vars(trainer)[name]
