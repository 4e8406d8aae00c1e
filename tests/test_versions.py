"""Supported dependency versions: declared ranges, the one-line refusal, and transformers' conversion API."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hf_soup.compat.versions import SUPPORTED, supported_range, version_problem

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[<>=!~\[ ]", d, maxsplit=1)[0]: d for d in deps}


def test_pyproject_declares_the_ranges_hf_soup_checks():
    declared = _declared()
    for package in SUPPORTED:
        assert declared[package] == package + supported_range(package)


def test_min_constraints_pin_the_lowest_declared_versions():
    pins = dict(line.split("==") for line in (ROOT / "ci" / "constraints-min.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    for package, (low, _) in SUPPORTED.items():
        if package == "torch":  # CI has only the 2.13 CPU wheel; torch 2.11 is tested on the GPU machine
            assert pins[package] == "2.13.0"
            continue
        assert pins[package].startswith(low) and version_problem(package, pins[package]) is None


@pytest.mark.parametrize(("package", "version", "ok"), [
    ("transformers", "5.17.0", True), ("transformers", "5.25.0", True), ("transformers", "4.57.6", False),
    ("transformers", "6.0.0", False), ("transformers", "5.17.0rc1", False), ("transformers", "5.17.0.dev0", False),
    ("torch", "2.11.0+cu130", True), ("torch", "2.10.1", False), ("torch", "2.13.0+cpu", True),
    ("huggingface_hub", "1.33.0", True), ("huggingface_hub", "0.36.0", False), ("huggingface_hub", "2.4.0", True),
    ("datasets", "5.0.0", False), ("datasets", "5.0.1", True), ("numpy", "2.5.0", True), ("numpy", "1.26.4", False), ("numpy", "2.0.2", True),
])
def test_version_problem(package, version, ok):
    problem = version_problem(package, version)
    assert (problem is None) == ok
    if not ok:
        assert "\n" not in problem and package in problem and version in problem and supported_range(package) in problem


def _fake_install(tmp_path: Path, package: str, version: str) -> dict[str, str]:
    """An environment where ``package`` reports ``version`` (a dist-info ahead of site-packages)."""
    info = tmp_path / f"{package}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}


def test_transformers_4_is_refused_in_one_line_before_importing_it(tmp_path):
    env = _fake_install(tmp_path, "transformers", "4.57.6")
    code = "import sys, hf_soup.callbacks; sys.exit(0)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last == ("hf_soup.errors.DependencyVersionError: hf_soup needs transformers>=5.17,<6, but transformers "
                    "4.57.6 is installed; run: pip install 'transformers>=5.17,<6'")
    assert "transformers/" not in done.stderr  # refused before any frame inside transformers


def test_cli_merge_refuses_an_unsupported_dependency_with_one_line(tmp_path, make_ingredients):
    a, b = make_ingredients("llama", 2)
    env = _fake_install(tmp_path, "huggingface_hub", "0.36.0")
    done = subprocess.run([sys.executable, "-m", "hf_soup", "merge", "-m", str(a), "-m", str(b), "-o", str(tmp_path / "soup")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and not (tmp_path / "soup").exists()
    assert "huggingface_hub>=1.33,<3, but huggingface_hub 0.36.0 is installed" in done.stderr
    assert "Traceback" not in done.stderr


def test_conversion_api_maps_vit_names_to_checkpoint_keys():
    """The in-memory -> checkpoint renaming transformers uses on save, through the compat module."""
    from conftest import build_model

    from hf_soup.compat.transformers_keys import reverse_rename, reverse_rules, to_checkpoint_keys

    model = build_model("vit", 0)
    renamings, converters = reverse_rules(model)
    on_disk = set(to_checkpoint_keys(model, dict(model.state_dict())))
    for name in model.state_dict():
        renamed, converted = reverse_rename(name, renamings, converters)
        assert converted is None
        assert renamed in on_disk or renamed.split(".", 1)[1] in on_disk
