"""The dependency versions hf_soup supports, checked against what is installed.

The ranges match ``pyproject.toml``; ``.ci/run`` tests the newest versions and the lowest
ones (``ci/constraints-min.txt``). :func:`check_installed` reads installed versions from
package metadata (nothing is imported, so a data-free merge still never imports torch)
and raises :class:`~hf_soup.errors.DependencyVersionError` with one line naming the
package, its version and the range — never an ``ImportError`` from inside another library.

>>> version_problem("transformers", "4.57.6")
"hf_soup needs transformers>=5.17,<6, but transformers 4.57.6 is installed; run: pip install 'transformers>=5.17,<6'"
>>> version_problem("torch", "2.11.0+cu130") is None
True
"""

from __future__ import annotations

import re
from functools import lru_cache

from ..errors import DependencyVersionError

#: Package -> (lowest supported version, first unsupported version or None). Keep in sync with pyproject.toml.
SUPPORTED: dict[str, tuple[str, str | None]] = {
    "torch": ("2.11", "3"),
    "transformers": ("5.17", "6"),
    "huggingface_hub": ("1.33", "3"),
    "accelerate": ("1.15", "2"),
    "datasets": ("5.0.1", "6"),
    "safetensors": ("0.8", "1"),
    "numpy": ("2.0", "3"),
    "pydantic": ("2.13", "3"),
}


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: ``"2.11.0+cu130"`` -> ``(2, 11, 0)``, ``"5.0.0rc1"`` -> ``(5, 0, 0)``."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    if not match:
        return ()
    parts = [int(p) for p in match.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _is_prerelease(version: str) -> bool:
    return re.search(r"\d(a|b|rc)\d*|dev", version.split("+")[0]) is not None


def supported_range(package: str) -> str:
    """The range of ``package`` as a pip specifier, e.g. ``">=5.17,<6"``."""
    low, high = SUPPORTED[package]
    return f">={low}" + (f",<{high}" if high else "")


def version_problem(package: str, installed: str) -> str | None:
    """A one-line message if ``installed`` is outside the supported range of ``package``, else ``None``."""
    low, high = SUPPORTED[package]
    release = _release(installed)
    too_low = release < _release(low) or (release == _release(low) and _is_prerelease(installed))
    too_high = high is not None and release >= _release(high)
    if not release or too_low or too_high:
        spec = f"{package}{supported_range(package)}"
        return f"hf_soup needs {spec}, but {package} {installed} is installed; run: pip install '{spec}'"
    return None


def installed_version(package: str) -> str | None:
    """The installed version of ``package`` from its metadata, or ``None`` if it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=None)
def check_installed(*packages: str) -> None:
    """Raise :class:`DependencyVersionError` for the first installed package (default: all) out of range.

    Packages that are not installed are left to fail at their own import, with their own message.
    """
    for package in packages or tuple(SUPPORTED):
        version = installed_version(package)
        problem = version_problem(package, version) if version is not None else None
        if problem:
            raise DependencyVersionError(problem)
