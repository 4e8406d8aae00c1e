"""Base-relative soups (TIES, DARE-TIES, Model Stock, task arithmetic) vs the uniform soup and MergeKit.

    python benchmarks/bench_taskvec.py [--mergekit /path/to/mergekit-yaml] [--runs 3] [--layers N]

Without ``--layers``: a base and 3 "fine-tunes" of the Llama-style shape of ``common.LLAMA``
(60M parameters, ~230 MB each in float32; its 32000 x 512 embedding is the largest tensor).
With ``--layers N``: 4 checkpoints of ``bench_scale``'s 1.1B shape cut to N layers (bfloat16,
two shards each; the 32000 x 2048 embedding is the largest tensor), the first as the base.
Whole processes on warm inputs, median of ``--runs``; wall, CPU seconds and peak RSS.
Targets (issue 18): peak RSS and wall of TIES / DARE / Model Stock <= 2x the uniform soup's. Also printed:
the floor (one process reading the base and every input once and writing the output's bytes) and
each method against MergeKit's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
import tempfile
from pathlib import Path

import yaml

from common import hf_soup_command, llama_ingredients, warm_cache

METHODS = {
    "task_arithmetic": {},
    "ties": {"density": 0.5},
    "dare_ties": {"density": 0.5},
    "model_stock": {},
}


def mergekit_config(method: str, base: Path, models: list[Path], directory: Path, dtype: str) -> Path:
    """MergeKit's recipe for ``method``; ``dtype``: the inputs' (MergeKit computes and writes in it)."""
    per_model = {"weight": 1.0, **METHODS[method]} if method != "model_stock" else None
    config = {"merge_method": method, "base_model": str(base), "dtype": dtype,
              "models": [{"model": str(p), **({"parameters": per_model} if per_model else {})} for p in models]}
    path = directory / f"mergekit-{method}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def measure(command: list[str], runs: int, before=None) -> tuple[float, float, float]:
    """Median wall s, CPU s (user + system) and peak RSS MB of ``command`` over ``runs`` whole-process runs."""
    samples = []
    for _ in range(runs):
        if before:
            before()
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{process.stderr.read().decode()[-3000:]}")
        samples.append((wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024))
    return tuple(statistics.median(column) for column in zip(*samples))  # type: ignore[return-value]


def print_rows(rows: dict[str, tuple[float, float, float]]) -> None:
    """Each row with its ratios to the uniform soup, to the floor and (hf-soup rows) to MergeKit's same method."""
    uniform, floor = rows["hf_soup uniform"], rows["floor: read base + inputs, write"]
    print(f"{'contender':<34} {'wall s':>8} {'CPU s':>8} {'peak RSS MB':>12} {'wall/unif':>10} "
          f"{'CPU/unif':>9} {'RSS/unif':>9} {'x floor':>8} {'wall/MK':>8} {'RSS/MK':>7}")
    for name, (wall, cpu, peak) in rows.items():
        peer = rows.get(name.replace("hf_soup ", "mergekit ")) if name.startswith("hf_soup ") else None
        versus = f"{wall / peer[0]:>8.3f} {peak / peer[2]:>7.3f}" if peer else f"{'':>8} {'':>7}"
        print(f"{name:<34} {wall:>8.2f} {cpu:>8.2f} {peak:>12.0f} {wall / uniform[0]:>10.2f} "
              f"{cpu / uniform[1]:>9.2f} {peak / uniform[2]:>9.2f} {wall / floor[0]:>8.2f} {versus}")


def ingredient_paths(layers: int | None) -> list[Path]:
    """The base followed by 3 fine-tunes: the 60M float32 set, or bench_scale's shape cut to ``layers``."""
    if layers is None:
        return llama_ingredients(4)
    from bench_scale import ingredients

    return ingredients(4, layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mergekit", default=shutil.which("mergekit-yaml"), help="path to mergekit-yaml")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--layers", type=int, default=None, help="bench_scale's 1.1B shape cut to N layers")
    parser.add_argument("--threads", type=int, default=None, help="hf-soup --threads (default: all cores)")
    args = parser.parse_args()
    paths = ingredient_paths(args.layers)
    base, models = paths[0], paths[1:]
    warm_cache(paths)
    threads = ["--threads", str(args.threads)] if args.threads else []
    work = Path(tempfile.mkdtemp(prefix="hf-soup-bench-"))
    rows: dict[str, tuple[float, float, float]] = {}
    try:
        from bench_scale import FLOOR, weight_files

        model_args = sum((["-m", str(p)] for p in models), [])
        out = work / "soup"
        out_bytes = sum(f.stat().st_size for f in weight_files([base]))
        rows["floor: read base + inputs, write"] = measure(
            [sys.executable, "-c", FLOOR, *map(str, weight_files(paths)), str(work / "floor.bin"), str(out_bytes)],
            args.runs)
        rows["hf_soup uniform"] = measure(hf_soup_command(
            "merge", *model_args, "-o", str(out), "--overwrite", "--quiet", "--device", "cpu", *threads), args.runs)
        for method in args.methods:
            params = sum((["-p", f"{k}={v}"] for k, v in METHODS[method].items()), [])
            rows[f"hf_soup {method}"] = measure(hf_soup_command(
                "merge", *model_args, "--method", method, *params, "--base-model", str(base), "-o", str(out),
                "--overwrite", "--quiet", "--device", "cpu", *threads), args.runs)
            if args.mergekit:
                config = mergekit_config(method, base, models, work, "float32" if args.layers is None else "bfloat16")
                rows[f"mergekit {method}"] = measure(
                    [args.mergekit, str(config), str(work / "mergekit-out")], args.runs,
                    before=lambda: shutil.rmtree(work / "mergekit-out", ignore_errors=True))
        print_rows(rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
