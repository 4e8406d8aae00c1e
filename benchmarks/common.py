"""Shared helpers for the benchmarks: cached Llama-style ingredients and whole-process measurement."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path(os.environ.get("HF_SOUP_BENCH_CACHE", Path.home() / ".cache" / "hf_soup_bench"))
LLAMA = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
             num_key_value_heads=8, vocab_size=32000, max_position_embeddings=512)


def llama_ingredients(count: int) -> list[Path]:
    """``count`` random Llama-style float32 checkpoints (~230 MB each), built once and cached."""
    paths = [CACHE / f"llama-60m-{seed}" for seed in range(count)]
    missing = [p for p in paths if not (p / "model.safetensors").exists()]
    if missing:  # built in a child process, so this process stays small: a child forked
        # from a large parent would report the parent's pages in its own peak RSS
        code = (
            "import sys, torch\nfrom transformers import LlamaConfig, LlamaForCausalLM\n"
            f"config = LlamaConfig(**{LLAMA!r})\n"
            "for path in sys.argv[1:]:\n"
            "    torch.manual_seed(int(path.rsplit('-', 1)[1]))\n"
            "    LlamaForCausalLM(config).save_pretrained(path)\n"
        )
        subprocess.run([sys.executable, "-c", code, *map(str, missing)], check=True)
    return paths


def warm_cache(paths: list[Path]) -> None:
    """Read every file once so all contenders start from a warm page cache."""
    for path in paths:
        for file in sorted(Path(path).glob("*")):
            with open(file, "rb") as handle:
                while handle.read(1 << 24):
                    pass


def measure(command: list[str], env: dict | None = None) -> dict[str, float]:
    """Run ``command``; ``wall`` and ``cpu`` seconds and peak ``rss`` (MB) of the process tree it waits for."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{process.stderr.read().decode()[-3000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss / 1024}


def median_of(runs: int, command: list[str], before=None, env=None) -> tuple[float, float]:
    """Median wall time and peak RSS over ``runs`` runs (``before()`` is called ahead of each)."""
    walls, peaks = [], []
    for _ in range(runs):
        if before:
            before()
        result = measure(command, env)
        walls.append(result["wall"])
        peaks.append(result["rss"])
    return statistics.median(walls), statistics.median(peaks)


def hf_soup_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "hf_soup", *args]
