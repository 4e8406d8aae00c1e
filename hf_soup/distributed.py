"""One merge across processes, GPUs and nodes (``torchrun`` / ``accelerate launch``).

    torchrun --nproc_per_node 4 -m hf_soup merge recipe.yaml --max-shard-size 1GB
    accelerate launch --num_processes 4 -m hf_soup merge recipe.yaml

The output shards are fixed by ``max_shard_size`` alone, so the files are the same
whatever the number of processes. Each process takes a share of the shards balanced
by bytes (:func:`assign_shards`), reads only the tensors of its shards and writes them
into one staging directory that process 0 created; process 0 then writes the index,
report and card and publishes the directory. The bytes equal a single-process run.

Every step that can fail ends with an exchange of status (:meth:`Dist.stage`): when one
process fails, every process raises (the failed one its own error, the others a
:class:`~hf_soup.errors.RankFailedError` naming it), the staging directory is removed
and nothing appears at the destination. No process waits forever on a failed one.

A single process gets the plain :class:`Dist`, which imports neither torch nor
accelerate; :class:`ProcessGroupDist` is created only when the launcher says there are
several processes (``WORLD_SIZE`` > 1) or ``HF_SOUP_DISTRIBUTED=1`` asks for it.

>>> dist = get_dist("cpu")          # a plain run: one process
>>> dist.rank, dist.world_size, dist.is_main
(0, 1, True)
>>> assign_shards([50, 40, 30, 20], 2)
[[0, 3], [1, 2]]
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from .errors import DistributedError, RankFailedError

logger = logging.getLogger("hf_soup")
T = TypeVar("T")

WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
TIMEOUT_VARIABLE = "HF_SOUP_DIST_TIMEOUT"
_FAILED_MARKER = ".hf-soup-failed-rank"


def launched_world_size() -> int:
    """The number of processes the launcher started (1 when not launched by one)."""
    for name in WORLD_SIZE_VARIABLES:
        value = os.environ.get(name)
        if value and value.strip().isdigit():
            return int(value)
    return 1


def assign_shards(sizes: Sequence[int], world_size: int) -> list[list[int]]:
    """Give each process a share of the shards, balanced by bytes, the same on every process.

    Largest shard first, each to the least loaded process (the lowest rank on ties);
    each share is returned in shard order.
    """
    loads = [0] * world_size
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        shares[rank].append(index)
        loads[rank] += sizes[index]
    return [sorted(share) for share in shares]


class Dist:
    """The processes of one run; this base class is the single-process case (no-ops).

    ``device`` is where this process does its math (``cpu``, ``cuda`` or ``cuda:<i>``).
    """

    rank = 0
    world_size = 1
    local_rank = 0

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.shards_written: list[str] = []
        self.logit_owners: dict[int, int] = {}
        self.merge_seconds = 0.0
        self._all_merge_seconds: list[float] = []

    @property
    def is_main(self) -> bool:
        """Whether this is process 0, the one that writes the index, report and card."""
        return self.rank == 0

    # -- communication (no-ops for one process) ---------------------------------------
    def barrier(self) -> None:
        """Wait until every process gets here."""

    def broadcast(self, obj: T, src: int = 0) -> T:
        """Process ``src``'s ``obj`` on every process (small picklable objects)."""
        return obj

    def all_gather(self, obj: T) -> list[T]:
        """Every process's ``obj``, in rank order."""
        return [obj]

    def broadcast_tensor(self, tensor: Any, src: int = 0) -> Any:
        """Process ``src``'s CPU ``tensor`` (same shape and dtype everywhere) on every process, on the CPU."""
        return tensor

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Run a step that may fail; with several processes, all stop if any fails."""
        yield

    def settle(self, name: str, error: BaseException | None = None) -> None:
        """End step ``name`` begun outside a ``with`` block (see :meth:`stage`): raise if any process failed.

        ``error`` is this process's failure, ``None`` when its part succeeded.
        """
        if error is not None:
            raise error

    def local_main_first(self, fn: Callable[[], T], what: str = "resolving the ingredients") -> T:
        """Run ``fn`` on each node's main process first (downloads), then on the others."""
        return fn()

    def preload(self, *modules: str) -> None:
        """Import ``modules`` now, on every process at once (before a main-first section).

        A main-first section runs the main process's part before the others start, so slow
        imports done inside it would be paid twice in a row; one process has nothing to gain.
        """
        if self.world_size > 1:
            import importlib

            with self.stage("importing " + ", ".join(modules)):
                for module in modules:
                    importlib.import_module(module)

    def check_same(self, value: Any, what: str, fix: str) -> None:
        """Raise on every process unless ``value`` is equal on all of them."""
        values = self.all_gather(value)
        differing = [rank for rank, v in enumerate(values) if v != values[0]]
        if differing:
            raise DistributedError(
                f"{what} differ between processes (process 0: {values[0]!r}, process {differing[0]}: "
                f"{values[differing[0]]!r}); {fix}"
            )

    def agree_on_revisions(self, ingredients: Sequence[Any]) -> None:
        """Every process (every node) must have resolved the same ingredient commits."""
        if self.world_size == 1:
            return
        self.check_same([i.sha for i in ingredients], "the resolved ingredient revisions",
                        "pin every Hub ingredient to a commit (org/name@sha) so all nodes read the same weights")

    def agree_on_plan(self, plan: Any) -> None:
        """Every process must have planned the same merge (data-driven methods evaluate on each)."""
        if self.world_size == 1:
            return
        summary = json.dumps([plan.method.name, plan.ingredients, plan.method.report()], default=str, sort_keys=True)
        self.check_same(summary, "the merge plans",
                        "make the evaluation deterministic (same data, seed and order on every process)")

    # -- the merge --------------------------------------------------------------------
    def my_shards(self, shards: Sequence[Any]) -> list[Any]:
        """This process's share of ``shards`` (all of them for one process)."""
        return list(shards)

    @contextmanager
    def staged_directory(self, destination: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
        """A staging directory shared by every process, published when all succeeded."""
        from .io.staging import staged_directory

        with staged_directory(destination, overwrite) as staging:
            yield staging

    def write_shards(self, directory: Path, shards: Sequence[Any], *args: Any, **kwargs: Any) -> None:
        """Merge and write this process's share of ``shards`` (see :func:`hf_soup.output.files.write_shards`)."""
        from .output.files import write_shards

        start = time.perf_counter()
        with self.stage("merging its shards"):
            try:
                for shard in self.my_shards(shards):
                    self._check_peers(directory)
                    write_shards(directory, [shard], *args, **kwargs)
                    self.shards_written.append(shard.filename)
            except BaseException as error:
                if not isinstance(error, RankFailedError):
                    self._mark_failed(directory)
                raise
        self.merge_seconds = time.perf_counter() - start
        self._all_merge_seconds = self.all_gather(self.merge_seconds)

    def _check_peers(self, directory: Path) -> None:
        """Stop early when another process has already failed."""

    def _mark_failed(self, directory: Path) -> None:
        """Tell the other processes (through the shared staging directory) to stop early."""

    def report(self) -> dict[str, Any] | None:
        """What the soup report records about the processes (``None`` for one process)."""
        return None


class ProcessGroupDist(Dist):
    """Several processes, over a ``torch.distributed`` group set up by ``accelerate.PartialState``.

    On CPU the state is ``PartialState(cpu=True)`` (gloo); a plain ``PartialState()``
    on a CPU machine would report a single process and every process would do all the
    work. With GPUs each process uses ``cuda:<local rank>``. Small objects (statuses,
    paths, the report) travel over a gloo group, whatever the main backend.
    ``HF_SOUP_DIST_TIMEOUT`` (seconds) bounds every collective.
    """

    def __init__(self, device: str = "auto"):
        from datetime import timedelta

        import torch.distributed as td
        from accelerate import PartialState

        from .engine.device import resolve_device

        resolved = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
        timeout = _timeout_seconds()
        kwargs = {"timeout": timedelta(seconds=timeout)} if timeout else {}
        self.state = PartialState(cpu=resolved == "cpu", **kwargs)
        if not td.is_available() or not td.is_initialized():
            raise DistributedError(
                f"launched as {launched_world_size()} processes but no process group could be set up "
                f"({self.state.distributed_type}); launch with torchrun or accelerate launch, "
                "or unset WORLD_SIZE for a single process"
            )
        super().__init__("cpu" if resolved == "cpu" else str(self.state.device))
        self._td = td
        self._warned = False
        self.rank = self.state.process_index
        self.world_size = self.state.num_processes
        self.local_rank = self.state.local_process_index
        self._group = None if td.get_backend() == "gloo" else td.new_group(backend="gloo", **kwargs)
        self._shares: list[list[str]] = []
        atexit.register(self._close)

    def _close(self) -> None:
        """Tear the process group down before the interpreter exits (else gloo aborts)."""
        try:
            if self._td.is_initialized():
                self._td.destroy_process_group()
        except Exception:  # exiting anyway
            logger.debug("destroy_process_group failed", exc_info=True)

    # -- communication ----------------------------------------------------------------
    def barrier(self) -> None:
        self._collective("barrier", lambda: self._td.barrier(group=self._group))

    def broadcast(self, obj: T, src: int = 0) -> T:
        box = [obj]
        self._collective("broadcast", lambda: self._td.broadcast_object_list(box, src=src, group=self._group))
        return box[0]

    def all_gather(self, obj: T) -> list[T]:
        out: list[Any] = [None] * self.world_size
        self._collective("status exchange", lambda: self._td.all_gather_object(out, obj, group=self._group))
        return out

    def broadcast_tensor(self, tensor: Any, src: int = 0) -> Any:
        # over the main backend (NCCL moves it through the device), not the small-object gloo group
        moved = tensor if self.device == "cpu" else tensor.to(self.device)
        self._collective("tensor broadcast", lambda: self._td.broadcast(moved, src=src))
        return moved.cpu()

    def _collective(self, what: str, operation: Callable[[], Any]) -> None:
        """Run a collective; a peer that died or stalled becomes a :class:`DistributedError`."""
        try:
            operation()
        except RuntimeError as error:  # gloo / NCCL: connection closed by peer, timed out
            timeout = os.environ.get(TIMEOUT_VARIABLE)
            detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            raise DistributedError(
                f"process {self.rank}: the {what} with the other processes failed ({detail}); another process "
                f"stopped (see its log: a crash, out of memory, a lost node) or took longer than the timeout "
                f"({TIMEOUT_VARIABLE}: {timeout + ' seconds' if timeout else 'unset, so 30 minutes'}; raise it for slow steps)"
            ) from None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        except BaseException as error:
            self._settle(name, error)
            raise
        done = time.perf_counter()
        self.settle(name)
        logger.debug("process %d: %s took %.2fs, then %.2fs waiting for the others", self.rank, name,
                     done - start, time.perf_counter() - done)

    def settle(self, name: str, error: BaseException | None = None) -> None:
        self._settle(name, error)
        if error is not None:
            raise error

    def _settle(self, stage: str, error: BaseException | None) -> None:
        """Exchange statuses; raise on every process if any failed.

        One small all-reduce says whether any process failed (the common case ends there);
        only then are the failures' descriptions gathered.
        """
        status = None if error is None else _describe(error, self.rank, stage)
        try:
            if not self._any_failed(status is not None):
                return
            statuses = self.all_gather(status)
        except DistributedError:
            if error is not None:  # this process's own failure says more than the lost exchange
                raise error from None
            raise
        failures = [s for s in statuses if s is not None]
        if not failures:
            return
        if error is not None and not isinstance(error, RankFailedError):
            raise error
        first = next((f for f in failures if not f["forwarded"]), failures[0])
        raise RankFailedError(
            f"process {first['rank']} of {self.world_size} failed ({first['stage']}): "
            f"{first['type']}: {first['message']}",
            rank=first["rank"],
            error_type=first["type"],
        ) from (error if isinstance(error, RankFailedError) else None)

    def _any_failed(self, failed: bool) -> bool:
        import torch

        flag = torch.tensor([int(failed)], dtype=torch.int64)
        self._collective("status exchange",
                         lambda: self._td.all_reduce(flag, op=self._td.ReduceOp.MAX, group=self._group))
        return bool(flag.item())

    def local_main_first(self, fn: Callable[[], T], what: str = "resolving the ingredients") -> T:
        first = self.local_rank == 0
        result: Any = None
        with self.stage(f"{what}, main process of each node first"):
            if first:
                result = fn()
        with self.stage(what):
            if not first:
                result = fn()
        return result

    # -- the merge --------------------------------------------------------------------
    def my_shards(self, shards: Sequence[Any]) -> list[Any]:
        shares = assign_shards([shard.nbytes for shard in shards], self.world_size)
        self._shares = [[shards[i].filename for i in share] for share in shares]
        if self.is_main and len(shards) < self.world_size and not self._warned:
            self._warned = True
            logger.warning(
                "only %d output shard(s) for %d processes: %d process(es) have nothing to write; "
                "lower max_shard_size (--max-shard-size) to spread the work",
                len(shards), self.world_size, self.world_size - len(shards),
            )
        return [shards[i] for i in shares[self.rank]]

    @contextmanager
    def staged_directory(self, destination: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
        try:
            with self._staged_directory(destination, overwrite) as staging:
                yield staging
        finally:
            self.logit_owners = {}  # reported with this soup; a later soup of the same launch starts afresh

    @contextmanager
    def _staged_directory(self, destination: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
        from .io.staging import check_destination, discard, make_staging_dir, publish

        created = None
        try:
            with self.stage("creating the staging directory"):
                path = check_destination(destination, overwrite)
                if self.is_main:
                    created = str(make_staging_dir(path))  # creates the parent folders too
        except BaseException:  # another process refused the destination: remove what process 0 created
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise
        staging = Path(self.broadcast(created))
        try:
            with self.stage("finding the staging directory"):
                if not staging.is_dir():
                    raise DistributedError(
                        f"{staging}: created by process 0 but not visible on this node; the output "
                        "directory must be on a filesystem every node shares (see docs/distributed.md)"
                    )
            error: BaseException | None = None
            try:
                yield staging
            except BaseException as raised:  # every process must reach the exchange below
                error = raised
                self._mark_failed(staging)
            self._settle("writing the soup", error)
            with self.stage("publishing the soup"):
                if self.is_main:
                    publish(staging, path, overwrite)
        except BaseException:
            if self.is_main:
                discard(staging)
            self._quiet_barrier()  # nobody exits before the staging directory is gone
            raise

    def _quiet_barrier(self) -> None:
        try:
            self.barrier()
        except Exception:  # a peer died: torchrun stops the rest; nothing more to wait for
            logger.debug("barrier after a failure did not complete", exc_info=True)

    def _check_peers(self, directory: Path) -> None:
        failed = sorted(directory.glob(_FAILED_MARKER + "*"))
        if failed:
            rank = failed[0].name[len(_FAILED_MARKER):]
            raise RankFailedError(f"process {rank} failed; stopping", rank=int(rank) if rank.isdigit() else -1)

    def _mark_failed(self, directory: Path) -> None:
        try:
            (directory / f"{_FAILED_MARKER}{self.rank}").touch()
        except OSError:
            pass

    def report(self) -> dict[str, Any] | None:
        out = {
            "num_processes": self.world_size,
            "device": self.device,
            "shards_per_process": self._shares,
            "merge_seconds": [round(s, 4) for s in self._all_merge_seconds],
        }
        if self.logit_owners:  # RADIN / ensembles: which process ran each ingredient's logit pass
            out["logit_passes_per_process"] = [sorted(i for i, r in self.logit_owners.items() if r == rank)
                                               for rank in range(self.world_size)]
        return out


def _timeout_seconds() -> float | None:
    """``HF_SOUP_DIST_TIMEOUT`` as a positive number of seconds (``None`` when unset)."""
    value = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise DistributedError(f"{TIMEOUT_VARIABLE}={value!r}: expected a positive number of seconds, e.g. "
                               f"{TIMEOUT_VARIABLE}=1800; fix or unset it")
    return seconds


def _describe(error: BaseException, rank: int, stage: str) -> dict[str, Any]:
    if isinstance(error, RankFailedError):
        return {"rank": error.rank, "type": error.error_type or type(error).__name__, "message": str(error),
                "stage": stage, "forwarded": True}
    message = str(error) or repr(error)
    try:  # the stage where the error first surfaced, not the outer ones it passes through
        stage = error._hf_soup_stage  # type: ignore[attr-defined]
    except AttributeError:
        try:
            error._hf_soup_stage = stage  # type: ignore[attr-defined]
        except AttributeError:
            pass
        logger.debug("process %d failed:\n%s", rank, "".join(traceback.format_exception(error)))
    return {"rank": rank, "type": type(error).__name__, "message": message, "stage": stage, "forwarded": False}


_CURRENT: Dist | None = None
_SINGLE_PROCESS = 0


@contextmanager
def single_process() -> Iterator[None]:
    """Soups made inside run in this process alone, even under ``torchrun`` / ``accelerate launch``.

    For code that soups on one process of a multi-process job (e.g. process 0 at the end of
    a distributed training run) while the others do something else::

        if trainer.is_world_process_zero():
            with single_process():
                hf_soup.soup(checkpoints, output_dir="soup")

    ``HF_SOUP_DISTRIBUTED=0`` does the same for a whole process.
    """
    global _SINGLE_PROCESS
    _SINGLE_PROCESS += 1
    try:
        yield
    finally:
        _SINGLE_PROCESS -= 1


def get_dist(device: str = "auto", force: bool | None = None) -> Dist:
    """The :class:`Dist` of this process, created on first use.

    Several processes (``WORLD_SIZE`` > 1, or ``force`` / ``HF_SOUP_DISTRIBUTED=1``) give
    a :class:`ProcessGroupDist`; otherwise (or inside :func:`single_process`, or with
    ``HF_SOUP_DISTRIBUTED=0``) a plain :class:`Dist` on ``device`` (``auto`` means a CUDA
    GPU when one is visible), with no torch or accelerate import on a CPU.
    """
    global _CURRENT
    from .engine.device import resolve_device

    setting = os.environ.get("HF_SOUP_DISTRIBUTED", "").strip().lower()
    if _SINGLE_PROCESS or setting in ("0", "false", "no"):
        local_rank = os.environ.get("LOCAL_RANK", "")
        return Dist(resolve_device(device, int(local_rank) if local_rank.isdigit() else None))
    if force is None:
        force = setting in ("1", "true", "yes")
    if force or launched_world_size() > 1:
        if _CURRENT is None or type(_CURRENT) is Dist:
            _CURRENT = ProcessGroupDist(device)
        elif (_CURRENT.device == "cpu") != (resolve_device(device, _CURRENT.local_rank) == "cpu"):
            raise DistributedError(
                f"device: this process group already runs on {_CURRENT.device}; a second soup in the same "
                f"launch cannot switch to {device!r}; use the same device for every soup"
            )
        return _CURRENT
    return Dist(resolve_device(device))


__all__ = ["Dist", "ProcessGroupDist", "assign_shards", "get_dist", "launched_world_size", "single_process"]
