"""Soup of 4 LoRA adapters (r=16, every linear layer) of a ~230 MB Llama-style base.

    python benchmarks/bench_peft.py [--runs 3]

Contenders, each a whole process on the same warm inputs in the same run:

* hf_soup, full model: ``hf-soup merge -m lora0 ... -m lora3 -o out`` (base + mean ΔW, streamed);
* PEFT, full model: load the base and the 4 adapters, ``add_weighted_adapter(..., "cat")``
  (the exact combination), ``merge_and_unload()``, ``save_pretrained``;
* hf_soup and PEFT writing the soup as one adapter (``--format adapter`` / ``cat`` adapter saved).

Prints wall time, peak RSS and the ratios hf_soup / PEFT, and checks both full soups agree.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import CACHE, hf_soup_command, llama_ingredients, median_of, warm_cache

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

_MAKE_ADAPTERS = f"""
import sys, torch
from transformers import LlamaForCausalLM
from peft import LoraConfig, get_peft_model
base = sys.argv[1]
for path in sys.argv[2:]:
    torch.manual_seed(int(path.rsplit('-', 1)[1]))
    model = get_peft_model(LlamaForCausalLM.from_pretrained(base),
                           LoraConfig(r=16, lora_alpha=32, target_modules={TARGETS!r}, init_lora_weights=False))
    model.save_pretrained(path)
"""

_PEFT_SOUP = """
import sys
from transformers import LlamaForCausalLM
from peft import PeftModel
base, out, mode, *adapters = sys.argv[1:]
model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), adapters[0], adapter_name="a0")
for n, path in enumerate(adapters[1:], 1):
    model.load_adapter(path, adapter_name=f"a{n}")
names = [f"a{n}" for n in range(len(adapters))]
model.add_weighted_adapter(names, [1 / len(names)] * len(names), "soup", combination_type="cat")
model.set_adapter("soup")
if mode == "model":
    model.merge_and_unload().save_pretrained(out)
else:
    for name in names:
        model.delete_adapter(name)
    model.save_pretrained(out, selected_adapters=["soup"])
"""


def adapters(base: Path, count: int) -> list[Path]:
    paths = [CACHE / f"llama-60m-lora16-{seed}" for seed in range(count)]
    missing = [p for p in paths if not (p / "adapter_model.safetensors").exists()]
    if missing:
        subprocess.run([sys.executable, "-c", _MAKE_ADAPTERS, str(base), *map(str, missing)], check=True)
    return paths


def _max_difference(a: Path, b: Path) -> float:
    from safetensors.numpy import load_file

    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max(float(abs(left[k] - right[k]).max()) for k in left)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    base = llama_ingredients(1)[0]
    loras = adapters(base, 4)
    work = Path(tempfile.mkdtemp(prefix="hf-soup-bench-peft-"))
    refs = sum((["-m", str(p)] for p in loras), [])
    warm = lambda: warm_cache([base, *loras])  # noqa: E731
    try:
        rows = {
            "hf_soup, full model": median_of(args.runs, hf_soup_command(
                "merge", *refs, "-o", str(work / "ours"), "--overwrite", "--quiet"), before=warm),
            "PEFT cat + merge_and_unload": median_of(args.runs, [
                sys.executable, "-c", _PEFT_SOUP, str(base), str(work / "peft"), "model", *map(str, loras)],
                before=lambda: (warm(), shutil.rmtree(work / "peft", ignore_errors=True))),
            "hf_soup, adapter (concat)": median_of(args.runs, hf_soup_command(
                "merge", *refs, "-o", str(work / "ours-adapter"), "--format", "adapter", "--overwrite", "--quiet"),
                before=warm),
            "PEFT cat adapter saved": median_of(args.runs, [
                sys.executable, "-c", _PEFT_SOUP, str(base), str(work / "peft-adapter"), "adapter", *map(str, loras)],
                before=lambda: (warm(), shutil.rmtree(work / "peft-adapter", ignore_errors=True))),
        }
        print(f"{'contender (4 adapters, r=16, 60M base)':<40} {'wall s':>8} {'peak RSS MB':>12}")
        for name, (wall, peak) in rows.items():
            print(f"{name:<40} {wall:>8.2f} {peak:>12.0f}")
        for ours, theirs in (("hf_soup, full model", "PEFT cat + merge_and_unload"),
                             ("hf_soup, adapter (concat)", "PEFT cat adapter saved")):
            (w1, p1), (w2, p2) = rows[ours], rows[theirs]
            print(f"ratio {ours} / {theirs}: wall {w1 / w2:.3f}, peak RSS {p1 / p2:.3f}")
        print(f"max |hf_soup - PEFT| over the full soup's weights: {_max_difference(work / 'ours', work / 'peft'):.2e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
