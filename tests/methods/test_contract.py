"""Every registered method honours the same contract: merge, report, card (and, data-free, distributed bytes).

The methods come from the registry, so a new method is tested here as soon as it is
registered. A method whose parameters have required fields needs an entry in
``EXAMPLE_PARAMS``; a data-driven one gets a tiny evaluation set built below (untrained
tiny BERT classifiers: the scores mean nothing, the contract is about what gets written).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

import hf_soup
from hf_soup.cli import main
from hf_soup.methods.base import PlanningMethod, TensorMethod
from hf_soup.methods.registry import available_methods, get_method_class

from fixtures_classifiers import VOCAB, make_tokenizer

ROOT = Path(__file__).resolve().parents[2]
NUM_INGREDIENTS = 3
# Parameters for methods that cannot run on their defaults (a required field).
EXAMPLE_PARAMS = {"weighted": {"weights": [1.0, 2.0, 3.0]}, "slerp": {"t": 0.3}}
# Kept small so that every data-driven method runs in seconds on two busy CPU cores.
FAST_PARAMS = {"learned": {"inner_steps": 2}}


def _ingredients(name: str, paths: list[str]) -> list[str]:
    """The ingredients a method can take: SLERP and NuSLERP merge exactly two."""
    return paths[:2] if name in ("slerp", "nuslerp") else paths


def _base(name: str, kitchen) -> dict:
    """``base_model`` for base-relative methods (the pre-trained model the ingredients come from)."""
    return {"base_model": kitchen[2]} if getattr(get_method_class(name), "uses_base", "never") != "never" else {}


def _params(name: str) -> dict:
    cls = get_method_class(name)
    params = dict(EXAMPLE_PARAMS.get(name, {}))
    try:
        cls.Params.model_validate(params)
    except ValidationError as error:
        pytest.fail(f"method {name!r} needs parameters: add an entry to EXAMPLE_PARAMS in {__file__} ({error})")
    return {**params, **FAST_PARAMS.get(name, {})}


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    """Three tiny BERT classifiers fine-tuned-like (one base + noise), a tokenizer each, and a CSV split."""
    from transformers import BertConfig, BertForSequenceClassification

    root = tmp_path_factory.mktemp("contract")
    tokenizer = make_tokenizer(root / "tokenizer")
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=3)
    torch.manual_seed(0)
    base = BertForSequenceClassification(config)
    paths = []
    for index in range(NUM_INGREDIENTS):
        model = BertForSequenceClassification(config)
        model.load_state_dict(base.state_dict())
        generator = torch.Generator().manual_seed(index + 1)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
        path = root / f"run-{index}"
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(str(path))
    base.save_pretrained(root / "base")
    rows = ["text,label"] + [f"p{i % 17} p{(3 * i) % 17} p{(5 * i) % 17},{i % 3}" for i in range(24)]
    (root / "val.csv").write_text("\n".join(rows) + "\n")
    evaluation = {"dataset": str(root / "val.csv"), "text_column": "text", "label_column": "label", "batch_size": 8}
    return paths, evaluation, str(root / "base")


@pytest.mark.parametrize("name", available_methods())
def test_method_merges_reports_and_cards(name, kitchen, tmp_path):
    paths, evaluation = _ingredients(name, kitchen[0]), kitchen[1]
    cls = get_method_class(name)
    assert issubclass(cls, (TensorMethod, PlanningMethod)) and cls.name == name
    result = hf_soup.soup(paths, method=name, output_dir=tmp_path / "soup", seed=0, device="cpu",
                          evaluation=evaluation if cls.needs_evaluation else None, **_base(name, kitchen),
                          **_params(name))

    # merge: one model's keys, shapes and dtypes, finite values
    merged = load_file(tmp_path / "soup" / "model.safetensors")
    first = load_file(Path(paths[0]) / "model.safetensors")
    assert {k: (v.shape, v.dtype) for k, v in merged.items()} == {k: (v.shape, v.dtype) for k, v in first.items()}
    assert all(torch.isfinite(v).all() for v in merged.values() if v.is_floating_point())

    # report: what was merged, how, with which result
    report = json.loads((tmp_path / "soup" / "soup_report.json").read_text())
    assert report == result.report
    assert report["method"] == name and isinstance(report["parameters"], dict)
    assert [row["ref"] for row in report["ingredients"]] == paths
    kept = [row for row in report["ingredients"] if row["kept"]]
    assert kept, "a soup keeps at least one ingredient"
    assert all(row["weight"] is None or isinstance(row["weight"], float) for row in kept)
    assert isinstance(report["num_full_evaluations"], int)
    if not cls.needs_evaluation:
        assert report["num_full_evaluations"] == 0

    # card: the method, its paper, its own section; metadata the Hub reads
    card = (tmp_path / "soup" / "README.md").read_text()
    assert card.startswith("---\n") and f"**{name}**" in card
    if cls.paper:
        assert cls.paper in card and (cls.paper_title or cls.paper) in card
    assert "{{" not in card and "{%" not in card


@pytest.mark.parametrize("name", [n for n in available_methods() if not get_method_class(n).needs_evaluation])
def test_data_free_method_writes_the_same_bytes_with_two_processes(name, kitchen, tmp_path):
    paths = _ingredients(name, kitchen[0])
    params = _params(name)
    flags = [a for path in paths for a in ("-m", path)] + ["--max-shard-size", "4KB", "--device", "cpu", "--quiet"]
    flags += [a for key, value in _base(name, kitchen).items() for a in ("--base-model", value)]
    flags += ["--method", name] + [a for key, value in params.items() for a in ("-p", f"{key}={json.dumps(value)}")]
    assert main(["merge", *flags, "-o", str(tmp_path / "one")]) == 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", HF_SOUP_DIST_TIMEOUT="120")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "hf_soup", "merge", *flags, "-o", str(tmp_path / "two")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = tmp_path / "one", tmp_path / "two"
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir()) and sum(n.endswith(".safetensors") for n in names) > 1
    for file in names:
        if file not in ("soup_report.json", "README.md"):  # the report holds timings and the process count
            assert (one / file).read_bytes() == (two / file).read_bytes(), file
