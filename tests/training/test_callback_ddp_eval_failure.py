"""A process that fails in the middle of the Trainer's evaluation loop stops every process (torchrun, CPU, gloo).

Three greedy SoupCallbacks score through the Trainer's own loop after a real 2-process
training; process 1 fails in each one's first pass: in the model's forward pass, in the data
collator, in ``compute_metrics`` (see callback_ddp_eval_failure_script.py). Without the status
exchanges the other process would wait in the loop's gather for the process group's timeout
(30 minutes); the subprocess timeout below only guards against that hang.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("datasets")

SCRIPT = Path(__file__).with_name("callback_ddp_eval_failure_script.py")


def test_a_process_failing_inside_the_trainer_loop_stops_both_and_nothing_is_written(tmp_path):
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(SCRIPT), str(run)], capture_output=True, text=True, env=env, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]  # training finishes; the callbacks keep their errors
    ranks = sorted((json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"rank"')),
                   key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1]
    own = {
        "forward": "ValueError: Make sure that the channel dimension of the pixel values match",
        "collate": "RuntimeError: collator: this process's evaluation batch is broken",
        "metrics": "RuntimeError: compute_metrics: this process cannot score",
    }
    stage = {"forward": "evaluating its batch", "collate": "loading its evaluation batch",
             "metrics": "computing the metrics"}
    for mode, message in own.items():
        (failed,) = ranks[1]["errors"][mode]
        assert failed.startswith(message)
        (other,) = ranks[0]["errors"][mode]
        assert other.startswith(f"RankFailedError: process 1 of 2 failed ({stage[mode]}): {message}")
        assert not (run / f"soup-{mode}").exists()
    assert [r["has_result"] for r in ranks] == [[False] * 3, [False] * 3]
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no staging directory left
