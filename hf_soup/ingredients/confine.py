"""Keep every file an ingredient reads inside that ingredient's own folder.

A checkpoint is untrusted input: its weight index may name ``../../elsewhere.safetensors``
or ``/home/me/secret.safetensors``, and a sidecar (``tokenizer.json``, ``vocab.txt``) may be a
symbolic link to ``/etc/passwd``. Either would be read into the soup (and could be pushed).
Only plain names inside the folder are accepted, and a link must stay inside the folder, or,
for a Hub cache snapshot (``models--org--name/snapshots/<sha>``), inside that repo's own
``blobs`` store, where huggingface_hub keeps the files its snapshot links point to.

>>> safe_member_name("model-00001-of-00002.safetensors", "index.json")
'model-00001-of-00002.safetensors'
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import UnsafePathError


def safe_member_name(name: object, origin: str) -> str:
    """Return ``name`` when it is a relative path without ``..``; raise :class:`UnsafePathError` otherwise."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UnsafePathError(f"{origin}: names the file {name!r}, which is not a file name; re-save the checkpoint")
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or name.startswith(("/", "\\")):
        raise UnsafePathError(f"{origin}: names the absolute path {name!r}; an ingredient may only read files inside "
                              "its own folder, so this checkpoint is refused (re-save it, or fix the file)")
    if ".." in posix.parts or ".." in windows.parts:
        raise UnsafePathError(f"{origin}: names {name!r}, which leaves the checkpoint folder ('..'); an ingredient "
                              "may only read files inside its own folder, so this checkpoint is refused")
    return name


def allowed_roots(directory: Path) -> list[Path]:
    """Where files of ``directory`` may really live: the folder itself, and a Hub snapshot's blob store."""
    roots = [directory.resolve()]
    if directory.parent.name == "snapshots" and directory.parent.parent.name.startswith(("models--", "datasets--")):
        roots.append((directory.parent.parent / "blobs").resolve())
    return roots


def check_inside(path: Path, directory: Path, roots: list[Path] | None = None) -> Path:
    """Return ``path`` when it (following every link) resolves inside ``directory``; raise otherwise."""
    roots = roots if roots is not None else allowed_roots(directory)
    target = path.resolve()
    if not any(target == root or target.is_relative_to(root) for root in roots):
        raise UnsafePathError(
            f"{path}: resolves to {target}, outside the ingredient folder {directory} (a symbolic link "
            "that leaves it); an ingredient may only read its own files — copy the file into the folder "
            "instead of linking to it"
        )
    return path


def check_files_inside(directory: Path, files: Iterable[Path]) -> None:
    """Check every one of ``files`` with :func:`check_inside` against ``directory``."""
    roots = allowed_roots(directory)
    for path in files:
        check_inside(path, directory, roots)
