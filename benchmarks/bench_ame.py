"""AME (Adam, 5 epochs, batch 2) next to the uniform soup, over 4 and 8 Llama-style checkpoints.

    python benchmarks/bench_ame.py [--runs 3] [--epochs 5] [--batch-size 2]

Every merge runs as a whole ``python -m hf_soup merge`` process on the same warm inputs
(the core benchmark's ~230 MB float32 checkpoints, built once by ``common.llama_ingredients``
and cached in ``$HF_SOUP_BENCH_CACHE`` or ``~/.cache/hf_soup_bench``). AME and uniform runs alternate so both see the same machine
load. Printed: median wall time, merge time (``soup_report.json`` timings) and peak RSS
(``os.wait4``), and the ratios against the targets:

* peak RSS of AME <= 1.5 x the uniform soup's;
* AME merge time <= 1.5 x epochs x the uniform soup's merge time.

Floors, measured first: a Python process that imports torch; one that also runs one step of
AME's portable optimizer (what AME runs by default); and, for
comparison, one that builds and steps a ``torch.optim`` optimizer object, which imports
``torch._dynamo`` (AME does not).
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

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def merge_command(inputs: list[Path], out: Path, method_args: list[str]) -> list[str]:
    refs = [arg for path in inputs for arg in ("-m", str(path))]
    return hf_soup_command("merge", *refs, *method_args, "-o", str(out), "--overwrite", "--quiet")


def run(command: list[str], out: Path) -> tuple[float, float, float]:
    """(wall s, peak RSS MB, merge s from the soup report) of one merge."""
    result = measure(command, ENV)
    merge = json.loads((out / "soup_report.json").read_text())["timings"]["merge"]
    return result["wall"], result["rss"], merge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--counts", default="4,8", help="ingredient counts, comma-separated")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    paths = llama_ingredients(max(counts))
    ame_args = ["--method", "ame", "-p", f"optimizer={args.optimizer}", "-p", f"lr={args.lr}",
                "-p", f"epochs={args.epochs}", "-p", f"batch_size={args.batch_size}"]
    optimizer_step = ("import numpy; from hf_soup.methods.ame.portable import PortableOptimizer; "
                      "from hf_soup.methods.ame.elementary import NumpyOps; "
                      "from hf_soup.methods.ame.optim import optimizer_group; "
                      f"PortableOptimizer({args.optimizer!r}, optimizer_group({args.optimizer!r}, 0.1, {{}}), "
                      "NumpyOps(), 2).step(numpy.zeros(2), numpy.ones(2), 0.1)")
    class_step = ("from hf_soup.methods.ame.optim import resolve_optimizer; p = torch.nn.Parameter(torch.zeros(2)); "
                  f"p.grad = torch.ones(2); resolve_optimizer({args.optimizer!r})([p], lr=0.1).step()")
    floors = {"python + torch": "import torch",
              "+ portable step (AME)": f"import torch; {optimizer_step}",
              "+ Optimizer object step": f"import torch; {class_step}"}
    floor_rss = {label: statistics.median(measure([sys.executable, "-c", code], ENV)["rss"] for _ in range(args.runs))
                 for label, code in floors.items()}
    floor = floor_rss["+ portable step (AME)"]
    work = Path(tempfile.mkdtemp(prefix="hf-soup-bench-ame-"))
    try:
        print(f"AME: {args.optimizer}, lr {args.lr}, {args.epochs} epochs, batch {args.batch_size}; "
              f"median of {args.runs} runs; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        print(f"{'contender':<26} {'wall s':>8} {'merge s':>8} {'peak RSS MB':>12}")
        for label, rss in floor_rss.items():
            print(f"{label:<26} {'':>8} {'':>8} {rss:>12.0f}")
        for count in counts:
            inputs = paths[:count]
            warm_cache(inputs)
            rows: dict[str, list[tuple[float, float, float]]] = {"uniform": [], "ame": []}
            for _ in range(args.runs):
                for name, method_args in (("uniform", ["--method", "uniform"]), ("ame", ame_args)):
                    out = work / f"{name}-{count}"
                    rows[name].append(run(merge_command(inputs, out, method_args), out))
            medians = {name: [statistics.median(r[i] for r in runs) for i in range(3)] for name, runs in rows.items()}
            for name, (wall, peak, merge) in medians.items():
                print(f"{name + f', {count} ingredients':<26} {wall:>8.2f} {merge:>8.2f} {peak:>12.0f}")
            (u_wall, u_peak, u_merge), (a_wall, a_peak, a_merge) = medians["uniform"], medians["ame"]
            print(f"  {count} ingredients: peak RSS AME / uniform = {a_peak / u_peak:.2f} (target <= 1.5); "
                  f"AME merge / ({args.epochs} x uniform merge) = {a_merge / (args.epochs * u_merge):.2f} "
                  f"(target <= 1.5); whole process AME / uniform = {a_wall / u_wall:.2f}; "
                  f"AME peak above the torch floor: {a_peak - floor:.0f} MB (uniform: {u_peak:.0f} MB in all)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
