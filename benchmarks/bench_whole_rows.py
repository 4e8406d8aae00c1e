"""SLERP, NuSLERP, DELLA and DELLA-linear against the uniform soup: peak RSS and CPU of whole processes.

    python benchmarks/bench_whole_rows.py [--runs 1] [--layers N] [--threads T]

Without ``--layers``: the Llama-style 60M float32 set of ``common.LLAMA`` (its 32000 x 512
embedding, 16.4M elements, is the largest tensor); with ``--layers N``: ``bench_scale``'s
1.1B shape cut to N layers (bfloat16; 32000 x 2048 embedding). SLERP and NuSLERP merge the
2nd and 3rd checkpoints; DELLA and the uniform soup the last 3, relative to the first.
These methods once held whole tensors (float64 working arrays) per work item; this shows
what streaming them costs and saves.
"""

from __future__ import annotations

import argparse
import tempfile
import shutil
from pathlib import Path

from bench_taskvec import ingredient_paths, measure
from common import hf_soup_command, warm_cache

METHODS = {
    "slerp": ["-p", "t=0.3"],
    "nuslerp": ["-p", "weights=[0.3, 0.9]"],
    "nuslerp rows": ["-p", "weights=[0.3, 0.9]", "-p", "flatten=false"],
    "della": ["-p", "density=0.5", "-p", "epsilon=0.1"],
    "della_linear": ["-p", "density=0.5", "-p", "epsilon=0.1"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    args = parser.parse_args()
    paths = ingredient_paths(args.layers)
    warm_cache(paths)
    base, models = paths[0], paths[1:]
    threads = ["--threads", str(args.threads)] if args.threads else []
    work = Path(tempfile.mkdtemp(prefix="hf-soup-bench-"))
    common = ["-o", str(work / "soup"), "--overwrite", "--quiet", "--device", "cpu", *threads]
    try:
        rows = {"uniform (3)": measure(hf_soup_command("merge", *sum((["-m", str(p)] for p in models), []), *common),
                                       args.runs)}
        for name in args.methods:
            method = name.split()[0]
            if method.startswith("della"):
                inputs = sum((["-m", str(p)] for p in models), []) + ["--base-model", str(base)]
            else:
                inputs = ["-m", str(models[0]), "-m", str(models[1])]
            rows[name] = measure(hf_soup_command("merge", *inputs, "--method", method, *METHODS[name], *common),
                                 args.runs)
        print(f"{'contender':<16} {'wall s':>8} {'CPU s':>8} {'peak RSS MB':>12}")
        for name, (wall, cpu, peak) in rows.items():
            print(f"{name:<16} {wall:>8.2f} {cpu:>8.2f} {peak:>12.0f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
