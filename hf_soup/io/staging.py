"""Write an output directory atomically: build it aside, move it into place when complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import OutputExistsError


def check_destination(destination: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing non-empty destination unless ``overwrite``; return it resolved."""
    path = Path(destination).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output {path} exists and is a file; choose a directory path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"output directory {path} already exists and is not empty; "
            "pass --overwrite (overwrite=True) to replace it, or choose another directory"
        )
    return path


@contextmanager
def staged_directory(destination: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``destination``; on success swap it into place.

    On any exception the temporary directory is removed and ``destination`` is left
    exactly as it was.
    """
    path = check_destination(destination, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.hf-soup-", dir=path.parent))
    try:
        yield staging
        publish(staging, path, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish(staging: Path, path: Path, overwrite: bool) -> None:
    """Move a complete ``staging`` directory to ``path`` (replacing it if ``overwrite``)."""
    check_destination(path, overwrite)
    if path.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.hf-soup-old-", dir=path.parent))
        os.replace(path, trash / "old")
        try:
            os.replace(staging, path)
        except BaseException as error:
            try:
                os.replace(trash / "old", path)
            except OSError:  # never delete the only copy of the old output
                raise OutputExistsError(
                    f"could not move the new soup to {path} ({error}) nor the previous one back; the previous "
                    f"output is kept in {trash / 'old'}: move it back by hand"
                ) from error
            shutil.rmtree(trash, ignore_errors=True)
            raise
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, path)
