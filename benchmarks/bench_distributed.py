"""One uniform soup of 4 ~230 MB Llama-style checkpoints: 1 process vs ``torchrun`` with 2 processes.

    python benchmarks/bench_distributed.py [--nproc 2] [--max-shard-size 30MB] [--runs 3]

Both runs use the same warm inputs, the same ``--max-shard-size`` (so the same output
shards) and ``--device cpu``. The script prints the whole-process wall time (the
distributed run pays for importing torch and accelerate and for setting up the gloo
group in each process), the merge phase alone (from ``soup_report.json``), the speedups
1 process / P processes, and checks that both outputs have the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from common import hf_soup_command, llama_ingredients, measure, warm_cache


def torchrun_command(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "hf_soup", *args]


def run(command: list[str], out: Path, runs: int, env: dict | None = None) -> dict[str, float]:
    """Median wall time, peak RSS and merge-phase seconds over ``runs`` runs of ``command``."""
    walls, peaks, merges = [], [], []
    for _ in range(runs):
        result = measure(command, env)
        report = json.loads((out / "soup_report.json").read_text())
        walls.append(result["wall"])
        peaks.append(result["rss"])
        merges.append(report["timings"]["merge"])
    return {"wall": statistics.median(walls), "peak": statistics.median(peaks), "merge": statistics.median(merges),
            "per_process": report.get("distributed", {}).get("merge_seconds")}


def same_bytes(one: Path, two: Path) -> bool:
    names = sorted(p.name for p in one.iterdir() if p.name not in ("soup_report.json", "README.md"))
    return names == sorted(p.name for p in two.iterdir() if p.name not in ("soup_report.json", "README.md")) and all(
        (one / n).read_bytes() == (two / n).read_bytes() for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--max-shard-size", default="30MB",
                        help="output shard size; 30MB gives 2 x 65 MB embedding shards and 4 x 27 MB layer shards")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--method", default="uniform", help="soup method, e.g. uniform or ame")
    parser.add_argument("-p", "--param", action="append", default=[], help="method parameter KEY=VALUE")
    args = parser.parse_args()
    paths = llama_ingredients(4)
    warm_cache(paths)
    work = Path(tempfile.mkdtemp(prefix="hf-soup-bench-dist-"))
    try:
        merge = ["merge", *sum((["-m", str(p)] for p in paths), []), "--max-shard-size", args.max_shard_size,
                 "--device", "cpu", "--overwrite", "--quiet", "--method", args.method,
                 *sum((["-p", p] for p in args.param), [])]
        one = run(hf_soup_command(*merge, "-o", str(work / "one")), work / "one", args.runs)
        # the launcher's own cost: torchrun with one process (HF_SOUP_DISTRIBUTED=1 forces the process group)
        alone = run(torchrun_command(1, *merge, "-o", str(work / "alone")), work / "alone", args.runs,
                    env=dict(os.environ, HF_SOUP_DISTRIBUTED="1"))
        many = run(torchrun_command(args.nproc, *merge, "-o", str(work / "many")), work / "many", args.runs)
        shards = len(list((work / "one").glob("*.safetensors")))
        print(f"{args.method} soup, 4 ingredients x ~230 MB, {shards} output shards of <= {args.max_shard_size}, "
              f"median of {args.runs}")
        print(f"{'contender':<28} {'wall s':>8} {'merge s':>8} {'peak RSS MB':>12}")
        for name, row in (("1 process", one), ("torchrun, 1 process", alone), (f"torchrun, {args.nproc} processes", many)):
            print(f"{name:<28} {row['wall']:>8.2f} {row['merge']:>8.2f} {row['peak']:>12.0f}")
        print(f"merge seconds per process ({args.nproc} processes): {many['per_process']}")
        print(f"speedup 1 -> {args.nproc} processes: whole process {one['wall'] / many['wall']:.2f}x, "
              f"merge phase {one['merge'] / many['merge']:.2f}x; "
              f"torchrun 1 -> {args.nproc} processes: whole process {alone['wall'] / many['wall']:.2f}x, "
              f"merge phase {alone['merge'] / many['merge']:.2f}x")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
              "(other work on the machine slows the multi-process runs most)")
        print(f"identical bytes: {same_bytes(work / 'one', work / 'many') and same_bytes(work / 'one', work / 'alone')}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
