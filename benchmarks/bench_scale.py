"""Engine at real scale: 1.1 B-parameter Llama-shaped bfloat16 checkpoints, against the disk floor and MergeKit.

    python benchmarks/bench_scale.py                         # 4 ingredients, 22 layers (TinyLlama shape)
    python benchmarks/bench_scale.py --layers 4 --runs 3     # 0.31 B parameters, on a small machine
    python benchmarks/bench_scale.py --device cuda --json results.json

Ingredients (hidden 2048, intermediate 5632, 32 heads, 4 KV heads, vocab 32000) are random
bfloat16 tensors written straight to two safetensors shards + index each, built once and
cached (``HF_SOUP_BENCH_CACHE``). Every contender is a whole process on a warm page cache,
run in interleaved rounds; the script prints median wall, CPU seconds, peak RSS and ratios:
against the floor (one process reading every input byte and writing the output's bytes,
sequentially) and against MergeKit ``linear`` when ``mergekit-yaml`` is found. It also
checks that outputs are byte-identical across thread counts and devices.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from common import measure

DOUBLED = "hf-soup 2N-ingredient uniform cpu"
CACHE = Path(os.environ.get("HF_SOUP_BENCH_CACHE", Path.home() / ".cache" / "hf_soup_bench"))
SHAPE = dict(hidden=2048, intermediate=5632, heads=32, kv_heads=4, vocab=32000)

BUILD = r'''
import json, sys, torch
from pathlib import Path
from safetensors.torch import save_file
hidden, inter, heads, kv, vocab, layers, seed = (int(a) for a in sys.argv[1:8])
folder = Path(sys.argv[8])
head_dim = hidden // heads
def shapes():
    yield "model.embed_tokens.weight", (vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (hidden,)
        yield p + "self_attn.q_proj.weight", (hidden, hidden)
        yield p + "self_attn.k_proj.weight", (kv * head_dim, hidden)
        yield p + "self_attn.v_proj.weight", (kv * head_dim, hidden)
        yield p + "self_attn.o_proj.weight", (hidden, hidden)
        yield p + "post_attention_layernorm.weight", (hidden,)
        yield p + "mlp.gate_proj.weight", (inter, hidden)
        yield p + "mlp.up_proj.weight", (inter, hidden)
        yield p + "mlp.down_proj.weight", (hidden, inter)
    yield "model.norm.weight", (hidden,)
    yield "lm_head.weight", (vocab, hidden)
gen = torch.Generator().manual_seed(seed)
entries = list(shapes())
half = len(entries) // 2
folder.mkdir(parents=True, exist_ok=True)
weight_map, total = {}, 0
for n, part in enumerate((entries[:half], entries[half:]), 1):
    name = f"model-{n:05d}-of-00002.safetensors"
    tensors = {k: (torch.randn(s, generator=gen) * 0.02).to(torch.bfloat16) for k, s in part}
    save_file(tensors, str(folder / name), metadata={"format": "pt"})
    total += sum(t.numel() * 2 for t in tensors.values())
    weight_map.update({k: name for k in tensors})
    del tensors
(folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))
config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
          "intermediate_size": inter, "num_attention_heads": heads, "num_key_value_heads": kv,
          "num_hidden_layers": layers, "vocab_size": vocab, "max_position_embeddings": 2048,
          "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "dtype": "bfloat16"}
(folder / "config.json").write_text(json.dumps(config))
'''

FLOOR = r'''
import os, sys
inputs, output, out_bytes = sys.argv[1:-2], sys.argv[-2], int(sys.argv[-1])
buffer = bytearray(1 << 24)
view = memoryview(buffer)
for path in inputs:
    fd = os.open(path, os.O_RDONLY)
    while os.readv(fd, [view]):
        pass
    os.close(fd)
fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
left = out_bytes
while left:
    left -= os.write(fd, view[: min(left, len(view))])
os.close(fd)
'''


def ingredients(count: int, layers: int) -> list[Path]:
    """``count`` cached checkpoints of the 1.1 B shape with ``layers`` layers (built in child processes)."""
    paths = [CACHE / f"llama-scale-{layers}l-{seed}" for seed in range(count)]
    for seed, path in enumerate(paths):
        if not (path / "model.safetensors.index.json").exists():
            args = [str(SHAPE[k]) for k in ("hidden", "intermediate", "heads", "kv_heads", "vocab")]
            subprocess.run([sys.executable, "-c", BUILD, *args, str(layers), str(seed), str(path)], check=True)
    return paths


def weight_files(paths: list[Path]) -> list[Path]:
    return [f for p in paths for f in sorted(p.glob("*.safetensors"))]


def warm(paths: list[Path]) -> None:
    for file in weight_files(paths):
        with open(file, "rb") as handle:
            while handle.read(1 << 24):
                pass


def digest(folder: Path) -> str:
    sha = hashlib.sha256()
    for file in sorted(folder.glob("*.safetensors")):
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 24):
                sha.update(chunk)
    return sha.hexdigest()


def contenders(args, paths: list[Path], work: Path) -> dict[str, tuple[list[str], Path | None]]:
    """name -> (command, output folder or None)."""
    refs = sum((["-m", str(p)] for p in paths), [])
    out_bytes = sum(f.stat().st_size for f in weight_files(paths[:1]))
    soup = [sys.executable, "-m", "hf_soup", "merge", *refs, "--overwrite", "--quiet", "--max-shard-size", "5GB"]
    rows: dict[str, tuple[list[str], Path | None]] = {
        "floor: read inputs + write output": (
            [sys.executable, "-c", FLOOR, *map(str, weight_files(paths)), str(work / "floor.bin"), str(out_bytes)],
            None),
    }
    devices = ["cpu"] + (["cuda"] if args.device == "cuda" else [])
    weights = ",".join(str(i + 1) for i in range(len(paths)))
    for device in devices:
        rows[f"hf-soup uniform {device}"] = (soup + ["-o", str(work / f"u-{device}"), "--device", device],
                                             work / f"u-{device}")
        rows[f"hf-soup weighted {device}"] = (soup + ["-o", str(work / f"w-{device}"), "--device", device,
                                                      "--method", "weighted", "--param", f"weights=[{weights}]"],
                                              work / f"w-{device}")
        if not args.skip_ame:
            rows[f"hf-soup ame {device}"] = (soup + ["-o", str(work / f"a-{device}"), "--device", device,
                                                     "--method", "ame", "--param", "optimizer=adam",
                                                     "--param", "lr=0.001"], work / f"a-{device}")
    rows["hf-soup uniform cpu, 1 thread"] = (soup + ["-o", str(work / "u-1t"), "--device", "cpu", "--threads", "1"],
                                             work / "u-1t")
    doubled = sum((["-m", str(p)] for p in paths + paths), [])  # each ingredient twice: 2N inputs, same files
    rows[DOUBLED] = ([*soup[:4], *doubled, *soup[4 + len(refs):], "-o", str(work / "u-2n"), "--device", "cpu"],
                     work / "u-2n")
    if args.mergekit:
        config = work / "mergekit.yml"
        config.write_text(yaml.safe_dump({"merge_method": "linear", "dtype": "bfloat16", "models": [
            {"model": str(p), "parameters": {"weight": 1.0}} for p in paths]}))
        for device in devices:
            flags = ["--cuda"] if device == "cuda" else []
            rows[f"mergekit linear {device}"] = ([args.mergekit, str(config), str(work / f"mk-{device}"), *flags],
                                                 work / f"mk-{device}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingredients", type=int, default=4)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--mergekit", default=shutil.which("mergekit-yaml"), help="path to mergekit-yaml")
    parser.add_argument("--skip-ame", action="store_true")
    parser.add_argument("--skip", action="append", default=[], metavar="NAME",
                        help="leave out the contenders whose name starts with NAME (repeatable)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--work", help="scratch folder for outputs (default: a temporary folder)")
    args = parser.parse_args()
    paths = ingredients(args.ingredients, args.layers)
    work = Path(args.work or tempfile.mkdtemp(prefix="hf-soup-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"ingredients": len(paths), "layers": args.layers, "cores": len(os.sched_getaffinity(0)),
                     "input_gb": sum(f.stat().st_size for f in weight_files(paths)) / 1e9, "rows": {}}
    try:
        rows = {name: row for name, row in contenders(args, paths, work).items()
                if not any(name.startswith(prefix) for prefix in args.skip)}
        samples: dict[str, list[dict]] = {name: [] for name in rows}
        warm(paths)
        for _ in range(args.runs):  # interleaved rounds
            for name, (command, _out) in rows.items():
                samples[name].append(measure(command))
                print(f"  {name}: {samples[name][-1]['wall']:.2f} s", file=sys.stderr, flush=True)
        for name, values in samples.items():
            results["rows"][name] = {k: statistics.median(v[k] for v in values) for k in ("wall", "cpu", "rss")}
        results["digests"] = {name: digest(out) for name, (_c, out) in rows.items()
                              if out is not None and not name.startswith("mergekit")}
        report(results)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def report(results: dict) -> None:
    rows = results["rows"]
    floor = rows["floor: read inputs + write output"]["wall"]
    print(f"{results['ingredients']} ingredients x {results['layers']} layers, {results['input_gb']:.2f} GB read, "
          f"{results['cores']} cores")
    print(f"{'contender':<36} {'wall s':>8} {'cpu s':>8} {'peak RSS MB':>12} {'x floor':>8}")
    for name, row in rows.items():
        print(f"{name:<36} {row['wall']:>8.2f} {row['cpu']:>8.2f} {row['rss']:>12.0f} {row['wall'] / floor:>8.2f}")
    for device in ("cpu", "cuda"):
        ours, theirs = rows.get(f"hf-soup uniform {device}"), rows.get(f"mergekit linear {device}")
        if ours and theirs:
            print(f"uniform {device} / MergeKit: wall {ours['wall'] / theirs['wall']:.3f} (target <= 0.2), "
                  f"peak RSS {ours['rss'] / theirs['rss']:.3f} (target <= 0.1)")
    if DOUBLED in rows and "hf-soup uniform cpu" in rows:
        print(f"peak RSS with 2N / N ingredients: {rows[DOUBLED]['rss'] / rows['hf-soup uniform cpu']['rss']:.3f} "
              "(target <= 1.1)")
    if "hf-soup ame cpu" in rows and "hf-soup uniform cpu" in rows:
        print(f"ame / uniform on cpu: wall {rows['hf-soup ame cpu']['wall'] / rows['hf-soup uniform cpu']['wall']:.2f}, "
              f"CPU s {rows['hf-soup ame cpu']['cpu'] / rows['hf-soup uniform cpu']['cpu']:.2f}")
    if "hf-soup uniform cuda" in rows:
        cpu, cuda = rows["hf-soup uniform cpu"]["wall"], rows["hf-soup uniform cuda"]["wall"]
        print(f"uniform cuda / cpu: {cuda / cpu:.2f} (target <= 1)")
        if "hf-soup ame cuda" in rows:
            print(f"ame / uniform on cuda: {rows['hf-soup ame cuda']['wall'] / cuda:.2f} (target <= 1.5)")
    digests = results.get("digests", {})
    for method in ("uniform", "weighted", "ame"):
        same = {d for n, d in digests.items() if n.startswith(f"hf-soup {method} ")}
        if same:
            print(f"{method}: {'identical bytes' if len(same) == 1 else 'BYTES DIFFER'} across "
                  f"{[n for n in digests if n.startswith(f'hf-soup {method} ')]}")


if __name__ == "__main__":
    main()
