"""Keep the weights of a training checkpoint after the Trainer rotates it away.

``save_total_limit`` deletes old ``checkpoint-N`` folders while training goes on. A
*harvest* keeps what a soup needs from each one — the weight files and the small
config / tokenizer files, nothing of the optimizer state — in a folder of its own:

* weight files are **hard-linked**: no byte is copied, and the data lives on until both
  the checkpoint and the harvest are deleted (so disk use only grows by the checkpoints
  rotation would have deleted). Across filesystems, or where links are not allowed,
  they are copied instead;
* config / tokenizer / processor files are copied (they are small, and a copy cannot
  change when the Trainer rewrites a file in place).

Each harvested folder holds a ``soup_ingredient.json`` record (step, epoch, metrics, or a
sweep trial's hyperparameters and score) that the soup's report and card are built from.

>>> harvest_checkpoint(Path("out/checkpoint-40"), Path("out/soup-ingredients/checkpoint-40"),
...                    {"label": "checkpoint-40", "step": 40})  # doctest: +SKIP
'link'
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import NoWeightsError
from ..ingredients.files import ADAPTER_PATTERNS, LEGACY_WEIGHT_PATTERNS, WEIGHT_PATTERNS, is_sidecar

RECORD_FILE = "soup_ingredient.json"
_WEIGHTS = [*WEIGHT_PATTERNS, *LEGACY_WEIGHT_PATTERNS, *ADAPTER_PATTERNS]


def _is_weight_file(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in _WEIGHTS)


def link_or_copy(source: Path, target: Path) -> str:
    """Hard-link ``source`` to ``target``; copy it where a link is impossible. Return ``"link"`` or ``"copy"``."""
    try:
        os.link(source, target)
        return "link"
    except OSError:  # another filesystem (EXDEV), links not supported or not permitted
        shutil.copyfile(source, target)
        return "copy"


def partial_path(target: Path) -> Path:
    """The staging folder next to ``target`` where it is built before :func:`commit`."""
    target = Path(target)
    return target.parent / f".{target.name}.partial"


def harvest_checkpoint(checkpoint: Path, target: Path, record: dict[str, Any]) -> str:
    """Keep ``checkpoint``'s weights and config files in ``target``, with ``record``.

    ``target`` is built aside and moved into place when complete, replacing an older
    harvest of the same name. Returns how the weights were kept: ``"link"``, ``"copy"``
    (or ``"link+copy"`` when both happened). Raises :class:`NoWeightsError` when the
    checkpoint holds no weight file.
    """
    checkpoint, target = Path(checkpoint), Path(target)
    files = sorted(p for p in checkpoint.iterdir() if p.is_file())
    weights = [p for p in files if _is_weight_file(p.name)]
    if not weights:
        raise NoWeightsError(
            f"{checkpoint}: no weight file to harvest (looked for {', '.join(_WEIGHTS)}); "
            "check that the Trainer saves the model in its checkpoints"
        )
    partial = partial_path(target)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        modes = {link_or_copy(p, partial / p.name) for p in weights}
        for path in files:
            if path not in weights and is_sidecar(path.name):
                shutil.copyfile(path, partial / path.name)
        write_record(partial, {**record, "source": str(checkpoint)})
        commit(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return "+".join(sorted(modes))


def commit(partial: Path, target: Path) -> None:
    """Move a complete ``partial`` folder to ``target``, replacing what was there."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(partial, target)


def write_record(directory: Path, record: dict[str, Any]) -> None:
    """Write (or replace) the ``soup_ingredient.json`` record of a harvested folder."""
    path = Path(directory) / RECORD_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_records(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(folder, record)`` for every complete harvest under ``root`` (none when ``root`` is missing)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.iterdir()):
        path = folder / RECORD_FILE
        if folder.name.startswith(".") or not path.is_file():
            continue
        try:
            found.append((folder, json.loads(path.read_text())))
        except ValueError:
            continue  # a record being replaced, or damaged: not an ingredient
    return found


def prepare_target(target: Path) -> Path:
    """A clean staging folder for ``target`` (for a model saved directly, e.g. by ``Trainer.save_model``)."""
    partial = partial_path(Path(target))
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    return partial
