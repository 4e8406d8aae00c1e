"""Uniform soup of 4 (and 8) ~230 MB Llama-style checkpoints: hf_soup vs MergeKit's ``linear``.

    python benchmarks/bench_uniform.py --mergekit /path/to/venv/bin/mergekit-yaml

Both contenders run as whole processes on the same warm inputs in the same run; the
script prints wall time, peak RSS and the ratios hf_soup / MergeKit (targets: <= 0.33).
MergeKit is not a dependency: install it in a separate environment
(``python -m venv mk && mk/bin/pip install torch==2.13.0 mergekit==0.1.5``).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import yaml

from common import hf_soup_command, llama_ingredients, median_of, warm_cache


def mergekit_config(paths: list[Path], directory: Path) -> Path:
    config = {"merge_method": "linear", "dtype": "float32",
              "models": [{"model": str(p), "parameters": {"weight": 1.0}} for p in paths]}
    path = directory / "mergekit.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mergekit", default=shutil.which("mergekit-yaml"), help="path to mergekit-yaml")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    paths = llama_ingredients(8)
    work = Path(tempfile.mkdtemp(prefix="hf-soup-bench-"))
    try:
        rows = {}
        for count in (4, 8):
            inputs = paths[:count]
            warm_cache(inputs)
            out = work / f"soup-{count}"
            rows[f"hf_soup uniform, {count} ingredients"] = median_of(
                args.runs, hf_soup_command("merge", *sum((["-m", str(p)] for p in inputs), []), "-o", str(out),
                                           "--overwrite", "--quiet"))
        if args.mergekit:
            config = mergekit_config(paths[:4], work)
            rows["mergekit linear, 4 ingredients"] = median_of(
                args.runs, [args.mergekit, str(config), str(work / "mergekit-out")],
                before=lambda: shutil.rmtree(work / "mergekit-out", ignore_errors=True))
        print(f"{'contender':<36} {'wall s':>8} {'peak RSS MB':>12}")
        for name, (wall, peak) in rows.items():
            print(f"{name:<36} {wall:>8.2f} {peak:>12.0f}")
        ours4, ours8 = rows["hf_soup uniform, 4 ingredients"], rows["hf_soup uniform, 8 ingredients"]
        print(f"peak RSS 8 vs 4 ingredients (hf_soup): {ours8[1] / ours4[1]:.2f}x "
              f"(+{ours8[1] - ours4[1]:.0f} MB for 4 more ~230 MB models)")
        if "mergekit linear, 4 ingredients" in rows:
            theirs = rows["mergekit linear, 4 ingredients"]
            print(f"ratio hf_soup / MergeKit: wall {ours4[0] / theirs[0]:.3f} (target <= 0.33), "
                  f"peak RSS {ours4[1] / theirs[1]:.3f} (target <= 0.33)")
        else:
            print("MergeKit not found: pass --mergekit PATH to compare")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
