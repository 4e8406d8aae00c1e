"""Write an output directory atomically: build it aside, move it into place when complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import OutputExistsError, OutputNotWritableError, RecipeError


def check_destination(destination: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing non-empty destination unless ``overwrite``; return it resolved."""
    path = Path(destination).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output {path} exists and is a file; choose a directory path")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputNotWritableError(f"output {path}: {blocker} is a file, not a folder; choose another output path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"output directory {path} already exists and is not empty; "
            "pass --overwrite (overwrite=True) to replace it, or choose another directory"
        )
    return path


def check_not_an_input(destination: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse a destination that is, or holds, a file or folder the run reads.

    With ``overwrite`` the old destination is deleted once the soup is complete, so
    ``-o ./runs --overwrite`` with ingredients under ``./runs`` would delete them.

    >>> check_not_an_input("/data/soup", ["/data/run-1/model.safetensors"])  # fine
    """
    target = Path(destination).expanduser().resolve()
    for item in inputs:
        path = Path(item).expanduser().resolve()
        if path == target or target in path.parents:
            raise RecipeError(
                f"output.dir: {target} is or holds {path}, which this soup reads; writing the soup there "
                "would replace it. Choose an output directory outside the ingredients and data"
            )


def make_staging_dir(path: Path) -> Path:
    """A new empty sibling of ``path`` to build the output in, with the permissions ``mkdir`` would give.

    ``tempfile.mkdtemp`` creates mode 0700; the published soup must be readable like any
    folder the user makes (others on a shared filesystem, a web server, other nodes).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.hf-soup-", dir=path.parent))
    except OSError as error:
        raise OutputNotWritableError(
            f"cannot create the output directory {path} ({error.strerror or error}); choose a folder you can write to"
        ) from None
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    return staging


@contextmanager
def staged_directory(destination: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``destination``; on success swap it into place.

    On any exception the temporary directory is removed and ``destination`` is left
    exactly as it was.
    """
    path = check_destination(destination, overwrite)
    staging = make_staging_dir(path)
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
