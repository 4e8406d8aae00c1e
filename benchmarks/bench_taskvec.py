"""Base-relative soups (TIES, DARE-TIES, Model Stock, task arithmetic) vs the uniform soup and MergeKit.

    python benchmarks/bench_taskvec.py [--mergekit /path/to/mergekit-yaml] [--runs 3]

A base and 3 "fine-tunes" of the Llama-style shape of ``common.LLAMA`` (60M parameters,
~230 MB each in float32; its 32000 x 512 embedding is the largest tensor, as TinyLlama's
32000 x 2048 is at the 1.1B shape). Whole processes on warm inputs, median of ``--runs``.
Targets (issue 18): peak RSS and wall of TIES / DARE / Model Stock <= 2x the uniform soup's.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import yaml

from common import hf_soup_command, llama_ingredients, median_of, warm_cache

METHODS = {
    "task_arithmetic": {},
    "ties": {"density": 0.5},
    "dare_ties": {"density": 0.5},
    "model_stock": {},
}


def mergekit_config(method: str, base: Path, models: list[Path], directory: Path) -> Path:
    per_model = {"weight": 1.0, **METHODS[method]} if method != "model_stock" else None
    config = {"merge_method": method, "base_model": str(base), "dtype": "float32",
              "models": [{"model": str(p), **({"parameters": per_model} if per_model else {})} for p in models]}
    path = directory / f"mergekit-{method}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mergekit", default=shutil.which("mergekit-yaml"), help="path to mergekit-yaml")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    args = parser.parse_args()
    paths = llama_ingredients(4)
    base, models = paths[0], paths[1:]
    warm_cache(paths)
    work = Path(tempfile.mkdtemp(prefix="hf-soup-bench-"))
    rows: dict[str, tuple[float, float]] = {}
    try:
        model_args = sum((["-m", str(p)] for p in models), [])
        out = work / "soup"
        rows["hf_soup uniform"] = median_of(args.runs, hf_soup_command(
            "merge", *model_args, "-o", str(out), "--overwrite", "--quiet", "--device", "cpu"))
        for method in args.methods:
            params = sum((["-p", f"{k}={v}"] for k, v in METHODS[method].items()), [])
            rows[f"hf_soup {method}"] = median_of(args.runs, hf_soup_command(
                "merge", *model_args, "--method", method, *params, "--base-model", str(base), "-o", str(out),
                "--overwrite", "--quiet", "--device", "cpu"))
            if args.mergekit:
                config = mergekit_config(method, base, models, work)
                rows[f"mergekit {method}"] = median_of(
                    args.runs, [args.mergekit, str(config), str(work / "mergekit-out")],
                    before=lambda: shutil.rmtree(work / "mergekit-out", ignore_errors=True))
        uniform = rows["hf_soup uniform"]
        print(f"{'contender':<28} {'wall s':>8} {'peak RSS MB':>12} {'wall/unif':>10} {'RSS/unif':>9}")
        for name, (wall, peak) in rows.items():
            print(f"{name:<28} {wall:>8.2f} {peak:>12.0f} {wall / uniform[0]:>10.2f} {peak / uniform[1]:>9.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
