"""One process, many calls: ``soup()`` / ``evaluate()`` with different devices and settings, after accelerate's
process-wide state was set (an ``Accelerator``, a Trainer), give what each call gives in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_causal import llama_lms  # noqa: F401  (session fixture)

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]

# Each call: (kind, device, settings). Run in one process in this order, or each in a fresh one.
CALLS = [
    ("soup", "cpu", {"method": "greedy", "metric": "loss"}),
    ("soup", "auto", {"method": "greedy", "metric": "perplexity", "order": "ascending", "batch_size": 3}),
    ("evaluate", None, {"metric": "perplexity", "soups": ["uniform"]}),
    ("soup", "cpu", {"method": "radin", "metric": "loss", "budget": 2, "candidates": 5}),
]

_SCRIPT = r"""
import hashlib, json, sys
from pathlib import Path

import datasets
import hf_soup

first, calls, out = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
dirs, data = json.loads(sys.argv[4]), datasets.load_from_disk(sys.argv[5])
state_before = None
if first == "trainer":
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(dirs[0]),
                      args=TrainingArguments(output_dir=str(out / "trainer"), use_cpu=True, report_to=[]))
if first != "fresh":
    from accelerate.state import AcceleratorState

    state_before = (str(AcceleratorState().device), AcceleratorState().num_processes)
results = []
for position, (kind, device, settings) in calls:
    settings = dict(settings)
    evaluation = {"dataset": data, "text_column": "text", "metric": settings.pop("metric"),
                  "batch_size": settings.pop("batch_size", 8)}
    if kind == "soup":
        target = out / f"soup-{position}"
        result = hf_soup.soup(dirs, method=settings.pop("method"), output_dir=target, evaluation=evaluation,
                              device=device, seed=1, **settings)
        details = {k: v for k, v in result.report["details"].items() if k != "learning_seconds"}
        results.append({"details": details, "sha": hashlib.sha256((target / "model.safetensors").read_bytes()).hexdigest()})
    else:
        scores = hf_soup.evaluate(dirs, evaluation, device=device, soups=settings["soups"], seed=1)
        results.append({k: scores[k] for k in ("ingredient_scores", "soup_scores", "ensemble_score", "rows")})
if state_before is not None:
    assert (str(AcceleratorState().device), AcceleratorState().num_processes) == state_before, "state changed"
print(json.dumps(results, sort_keys=True))
"""


def _run(first: str, calls, out: Path, lms, data: Path) -> list:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", _SCRIPT, first, json.dumps(calls), str(out),
                           json.dumps([str(d) for d in lms.dirs]), str(data)],
                          env=env, capture_output=True, text=True, timeout=900, cwd=out)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fresh(llama_lms, tmp_path_factory):  # noqa: F811
    """Each call's result in a process of its own, and the split saved for the subprocesses."""
    root = tmp_path_factory.mktemp("fresh")
    llama_lms.validation.save_to_disk(str(root / "data"))
    results = [_run("fresh", [[i, call]], root, llama_lms, root / "data")[0] for i, call in enumerate(CALLS)]
    return root / "data", results


def test_many_calls_in_one_process_give_the_fresh_process_results(fresh, llama_lms, tmp_path):  # noqa: F811
    """After a Trainer (its ``Accelerator`` fixes accelerate's process-wide state), every call works, gives the
    fresh-process result and leaves that state as the Trainer made it (checked in the script)."""
    data, expected = fresh
    results = _run("trainer", list(enumerate(CALLS)), tmp_path, llama_lms, data)
    assert len(results) == len(CALLS)
    for call, got, want in zip(CALLS, results, expected):
        assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True), call


def test_one_process_evaluates_without_accelerate_state_on_the_device_asked(monkeypatch):
    from accelerate.state import PartialState

    from hf_soup.distributed import single_process
    from hf_soup.evaluation.evaluator import Evaluator
    from hf_soup.evaluation.local_accelerator import LocalAccelerator

    before = dict(PartialState._shared_state)
    for device in ("cpu", "auto", None):
        accelerator = Evaluator._make_accelerator(device)
        assert isinstance(accelerator, LocalAccelerator)
        assert accelerator.device == torch.device("cuda" if torch.cuda.is_available() and device != "cpu" else "cpu",
                                                  0 if torch.cuda.is_available() and device != "cpu" else None)
    monkeypatch.setenv("WORLD_SIZE", "2")  # one process of a launch, souping alone (e.g. rank 0 after training)
    with single_process():
        assert isinstance(Evaluator._make_accelerator("cpu"), LocalAccelerator)
    monkeypatch.setenv("HF_SOUP_DISTRIBUTED", "0")
    assert isinstance(Evaluator._make_accelerator("cpu"), LocalAccelerator)
    assert PartialState._shared_state == before
    # batches reach the device asked for ("meta" stands for a GPU here)
    loader = LocalAccelerator("meta").prepare_data_loader([{"input_ids": torch.ones(2, 3), "note": "x"}])
    (batch,) = list(loader)
    assert batch["input_ids"].device.type == "meta" and batch["note"] == "x" and len(loader) == 1
