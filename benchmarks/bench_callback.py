"""SoupCallback in a real Trainer run: its cost in wall time and disk, hard links vs copies.

    python benchmarks/bench_callback.py [--steps 40] [--save-steps 4]

Trains a ~40 MB BERT-style classifier (float32, CPU) with ``save_total_limit=2`` three ways
in the same run, and prints wall time and peak disk use of the output folder (bytes of
distinct inodes, sampled after every save and at the end):

* ``baseline``  — plain Trainer, no soup;
* ``keep_all``  — plain Trainer with ``save_total_limit=None``: how one keeps every
  checkpoint for a soup without the callback (optimizer states included);
* ``link``      — SoupCallback, checkpoints harvested with hard links (the default);
* ``copy``      — SoupCallback with hard links disabled: the weights are copied
  (what happens across file systems, and what a naive "copy each checkpoint" does);
* ``link_k3``   — SoupCallback(last_k=3): older harvests are dropped while training.

Wall time is the best of ``--repeats`` runs; ratios are against the baseline. The soup
of the SoupCallback runs is written inside the timed run (its size is shown).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from hf_soup import SoupCallback
from hf_soup.training import harvest


def disk_bytes(root: Path) -> int:
    """Bytes of distinct files under ``root`` (hard links counted once)."""
    seen, total = set(), 0
    for directory, _, files in os.walk(root):
        for name in files:
            stat = os.stat(os.path.join(directory, name))
            if stat.st_ino not in seen:
                seen.add(stat.st_ino)
                total += stat.st_size
    return total


class DiskProbe(TrainerCallback):
    def __init__(self, root: Path):
        self.root, self.peak = root, 0

    def sample(self) -> None:
        self.peak = max(self.peak, disk_bytes(self.root))

    def on_save(self, args, state, control, **kwargs):
        self.sample()


def run(kind: str, steps: int, save_steps: int, root: Path) -> tuple[float, int, int]:
    shutil.rmtree(root / kind, ignore_errors=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=8000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=1024, max_position_embeddings=64, num_labels=4)
    model = BertForSequenceClassification(config)
    rng = np.random.default_rng(0)
    data = Dataset.from_dict({"input_ids": rng.integers(0, 8000, (256, 32)).tolist(),
                              "labels": rng.integers(0, 4, 256).tolist()})
    output = root / kind
    args = TrainingArguments(str(output), max_steps=steps, save_steps=save_steps,
                             save_total_limit=None if kind == "keep_all" else 2,
                             per_device_train_batch_size=8, use_cpu=True, report_to=[], disable_tqdm=True,
                             logging_strategy="no")
    probe = DiskProbe(output)
    plain = kind in ("baseline", "keep_all")
    callbacks = [probe] if plain else [SoupCallback(last_k=3 if kind == "link_k3" else None), probe]
    trainer = Trainer(model, args, train_dataset=data, callbacks=callbacks)
    start = time.perf_counter()
    if kind == "copy":
        with mock.patch.object(harvest.os, "link", side_effect=OSError(18, "cross-device link")):
            trainer.train()
    else:
        trainer.train()
    wall = time.perf_counter() - start
    probe.sample()
    soup = disk_bytes(output / "soup") if (output / "soup").exists() else 0
    if not plain:
        assert callbacks[0].error is None, callbacks[0].error
    return wall, probe.peak, soup


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--save-steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    options = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    root = Path(tempfile.mkdtemp(prefix="bench-callback-"))
    try:
        results = {}
        for _ in range(options.repeats):
            for kind in ("baseline", "keep_all", "link", "copy", "link_k3"):
                wall, peak, soup = run(kind, options.steps, options.save_steps, root)
                best = results.get(kind, (float("inf"), 0, 0))[0]
                results[kind] = (min(wall, best), peak, soup)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    checkpoints = options.steps // options.save_steps
    base_wall, base_peak, _ = results["baseline"]
    print(f"{checkpoints} checkpoints, save_total_limit=2, {options.steps} steps")
    print(f"{'run':<9}{'wall s':>9}{'x base':>8}{'peak disk MB':>14}{'x base':>8}{'soup MB':>9}")
    for kind, (wall, peak, soup) in results.items():
        print(f"{kind:<9}{wall:>9.2f}{wall / base_wall:>8.2f}{peak / 1e6:>14.1f}{peak / base_peak:>8.2f}{soup / 1e6:>9.1f}")


if __name__ == "__main__":
    main()
