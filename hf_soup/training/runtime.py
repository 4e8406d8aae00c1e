"""Where a callback runs: the Trainer that holds it, its process, and the hyperparameter search."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any


def in_sweep(state: Any) -> bool:
    """Whether the Trainer is running a hyperparameter-search trial (``state.trial_params`` is set)."""
    return getattr(state, "trial_params", None) is not None


def is_main(args: Any) -> bool:
    """Whether this is the main process (``args.process_index == 0``)."""
    return getattr(args, "process_index", 0) == 0


def wait_for_everyone(args: Any) -> None:
    """A barrier across the training processes (nothing to wait for in a single process)."""
    if getattr(args, "world_size", 1) > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def checkpoint_dir(run_dir: Path, step: int) -> Path | None:
    """``run_dir/checkpoint-<step>`` when it exists."""
    path = Path(run_dir) / f"checkpoint-{step}"
    return path if path.is_dir() else None


def find_trainer(callback: Any) -> Any:
    """The Trainer whose callback handler holds ``callback``, found on the call stack of an event."""
    frame = inspect.currentframe()
    try:
        for _ in range(16):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return None
            candidate = frame.f_locals.get("self")
            handler = getattr(candidate, "callback_handler", None)
            if handler is not None and any(cb is callback for cb in getattr(handler, "callbacks", [])):
                return candidate
        return None
    finally:
        del frame


def called_from(function_name: str) -> bool:
    """Whether ``function_name`` is on the call stack (how a pruned trial's ``on_train_end`` is told apart)."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            if frame.f_code.co_name == function_name:
                return True
            frame = frame.f_back
        return False
    finally:
        del frame
