"""Data-driven SoupCallbacks inside real 2-process training (torchrun, CPU, gloo).

Every process evaluates, the main process writes; the soup has the bytes of a
single-process soup of the same checkpoints, and a process that fails stops them all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from sklearn.datasets import load_digits  # noqa: E402
from transformers import Trainer  # noqa: E402

import hf_soup  # noqa: E402
from hf_soup.output.report import read_report  # noqa: E402
from hf_soup.training.trainer_evaluator import trainer_evaluation_spec  # noqa: E402
from test_callback import tiny_vit, training_args  # noqa: E402

SCRIPT = Path(__file__).with_name("callback_ddp_soup_script.py")


def _launch(output: Path, mode: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", HF_SOUP_DIST_TIMEOUT="120")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(SCRIPT), str(output), mode], capture_output=True, text=True, env=env, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = sorted((json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"rank"')),
                   key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    return ranks


def _validation():
    images, labels = load_digits(return_X_y=True)
    pixels = (images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return datasets.Dataset.from_dict({"pixel_values": pixels[1400:1528].tolist(), "labels": labels[1400:1528].tolist()})


def test_greedy_and_radin_callbacks_under_ddp_equal_a_single_process_soup(tmp_path):
    run = tmp_path / "run"
    ranks = _launch(run, "ok")
    assert all(r["errors"] == [[], []] for r in ranks)
    assert [r["has_result"] for r in ranks] == [[True, True], [False, False]]  # the main process wrote
    torch.set_num_threads(1)
    # the same checkpoints souped by one process, scored through a one-process Trainer's evaluation loop
    trainer = Trainer(tiny_vit(), training_args(tmp_path / "one-process", eval_strategy="no"), eval_dataset=_validation())
    for method, params in (("greedy", {}), ("radin", {"budget": 2})):
        ddp = run / f"soup-{method}"
        report = read_report(ddp)
        assert report["distributed"]["num_processes"] == 2
        harvested = sorted((run / f"h-{method}" / "soup-ingredients").iterdir(), key=lambda p: int(p.name.split("-")[1]))
        assert [p.name for p in harvested] == ["checkpoint-5", "checkpoint-10", "checkpoint-15"]
        single = hf_soup.soup([str(p) for p in harvested], method, tmp_path / f"single-{method}",
                              evaluation=trainer_evaluation_spec(trainer), device="cpu", **params)
        assert report["details"]["scores"] == single.report["details"]["scores"]
        assert report["details"]["kept"] == single.report["details"]["kept"]
        assert report["num_full_evaluations"] == single.report["num_full_evaluations"]
        assert (ddp / "model.safetensors").read_bytes() == (single.output_dir / "model.safetensors").read_bytes()


def test_a_process_that_fails_its_evaluation_stops_both_and_nothing_is_written(tmp_path):
    run = tmp_path / "run"
    ranks = _launch(run, "fail")  # training itself finishes on both processes
    assert ranks[1]["errors"] == [["EvaluationError: no memory left for the evaluation model on this process"]]
    (error,) = ranks[0]["errors"][0]
    assert error.startswith("RankFailedError: process 1 of 2 failed (preparing the evaluation): EvaluationError")
    assert [r["has_result"] for r in ranks] == [[False], [False]]
    assert not (run / "soup-greedy").exists()
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no staging directory left
