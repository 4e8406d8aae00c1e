"""Custom-code checkpoints: the ``.py`` files an ``auto_map`` entry points to.

``config.json`` (or ``tokenizer_config.json``) of a model with its own code maps auto classes
to ``module.Class``; ``from_pretrained(..., trust_remote_code=True)`` then imports
``module.py`` from the model's folder. A soup that keeps ``auto_map`` must carry those files,
or it cannot be loaded. ``org/repo--module.Class`` points at another repo and needs no file.
The files are copied, never imported or run.

>>> code_files({"auto_map": {"AutoConfig": "configuration_x.XConfig", "AutoModel": "org/r--modeling_x.X"}})
['configuration_x.py']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CODE_CONFIGS = ("config.json", "tokenizer_config.json")


def _references(auto_map: Any) -> list[str]:
    if not isinstance(auto_map, dict):
        return []
    refs = []
    for value in auto_map.values():
        refs += [item for item in (value if isinstance(value, list) else [value]) if isinstance(item, str)]
    return refs


def code_files(config: dict[str, Any] | None) -> list[str]:
    """The local module files (``module.py``) that ``config["auto_map"]`` refers to, sorted."""
    modules = set()
    for ref in _references((config or {}).get("auto_map")):
        module = ref.rsplit(".", 1)[0] if "." in ref else ""
        if module and "--" not in module:
            modules.add(module.replace(".", "/") + ".py")
    return sorted(modules)


def folder_code_files(directory: Path) -> dict[str, list[str]]:
    """For each of :data:`CODE_CONFIGS` in ``directory`` with an ``auto_map``, the module files it names."""
    found = {}
    for name in CODE_CONFIGS:
        path = directory / name
        if path.is_file():
            try:
                files = code_files(json.loads(path.read_text(encoding="utf-8")))
            except (ValueError, UnicodeDecodeError, RecursionError, AttributeError):
                continue
            if files:
                found[name] = files
    return found
