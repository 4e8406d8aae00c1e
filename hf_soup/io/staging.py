"""Write an output directory atomically: build it aside, move it into place when complete.

The folder is built in a hidden sibling ``.NAME.hf-soup-HOST-PID-XXXXXXXX`` that names the
process owning it, so a run that was killed (SIGKILL, out of memory, a lost node) leaves a
folder the next run on that host recognises as stale and removes (see :func:`sweep_stale`).
``overwrite`` only ever replaces an empty folder or a previous soup (``soup_report.json``).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import OutputExistsError, OutputNotWritableError, OutputRefusedError, RecipeError

logger = logging.getLogger("hf_soup")
REPORT_FILE = "soup_report.json"  # what marks a folder as a soup hf-soup wrote (hf_soup.report.REPORT_FILE)
_OWNER = re.compile(r"hf-soup-(?P<old>old-)?(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]{8}")


def check_destination(destination: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing non-empty destination unless ``overwrite``; return it resolved.

    Even with ``overwrite``, only an empty folder or a previous soup is replaced, and never
    the current directory or a folder that holds it.
    """
    path = Path(destination).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output {path} exists and is a file; choose a directory path")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputNotWritableError(f"output {path}: {blocker} is a file, not a folder; choose another output path")
    cwd = Path.cwd().resolve()
    if path.is_dir() and (path == cwd or path in cwd.parents):
        raise OutputRefusedError(
            f"output directory {path} is the current directory{'' if path == cwd else ' or holds it'}; "
            "the soup replaces its output folder as a whole, so write it to a new sub-folder (e.g. -o ./soup)"
        )
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"output directory {path} already exists and is not empty; "
                "pass --overwrite (overwrite=True) to replace it, or choose another directory"
            )
        if not (path / REPORT_FILE).is_file():
            raise OutputRefusedError(
                f"output directory {path} is not empty and holds no soup ({REPORT_FILE} is missing), so --overwrite "
                "will not delete it: overwrite replaces only an empty folder or a soup hf-soup wrote. Choose "
                "another output directory, or empty this one yourself"
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
        sweep_stale(path)
        staging = Path(tempfile.mkdtemp(prefix=owned_prefix(path), dir=path.parent))
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
        discard(staging)
        raise


def publish(staging: Path, path: Path, overwrite: bool) -> None:
    """Move a complete ``staging`` directory to ``path`` (replacing it if ``overwrite``)."""
    check_destination(path, overwrite)
    if path.exists():
        trash = Path(tempfile.mkdtemp(prefix=owned_prefix(path, "old-"), dir=path.parent))
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


_leftovers: set[Path] = set()


def discard(path: Path) -> None:
    """Remove a staging folder; when that fails (e.g. no file descriptor left), retry later and at exit."""
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        if not _leftovers:
            atexit.register(retry_discards)
        _leftovers.add(path)


def retry_discards() -> None:
    """Remove the staging folders an earlier :func:`discard` could not (their files are closed by now)."""
    for path in sorted(_leftovers):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            _leftovers.discard(path)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname() or "localhost")


def owned_prefix(path: Path, kind: str = "") -> str:
    """The name prefix of a hidden sibling of ``path`` owned by this process (``kind``: ``""`` or ``"old-"``)."""
    return f".{path.name}.hf-soup-{kind}{_host()}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def stale_folders(path: Path) -> list[Path]:
    """Hidden siblings of ``path`` made by an hf-soup process of this host that is gone."""
    prefix = f".{path.name}."
    stale = []
    try:
        entries = list(path.parent.iterdir()) if path.parent.is_dir() else []
    except OSError:
        return []
    for entry in entries:
        match = _OWNER.fullmatch(entry.name[len(prefix):]) if entry.name.startswith(prefix) else None
        if match and match["host"] == _host() and not _alive(int(match["pid"])) and entry.is_dir():
            stale.append(entry)
    return sorted(stale)


def sweep_stale(path: Path) -> list[Path]:
    """Remove the staging folders of ``path`` left by killed runs on this host; say so; return them.

    A folder holding a previous output that a killed run had moved aside (``hf-soup-old-``)
    is kept when ``path`` itself is missing: it is then the only copy.
    """
    removed = []
    for entry in stale_folders(path):
        if _OWNER.fullmatch(entry.name[len(path.name) + 2:])["old"] and not path.exists():
            logger.warning("%s holds the previous %s, moved aside by a run that was killed; move %s back by hand",
                           entry, path.name, entry / "old")
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
            logger.warning("removed %s, an unfinished soup left by a process that was killed", entry)
    return removed
