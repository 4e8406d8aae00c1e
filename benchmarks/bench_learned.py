"""Learned soups on K = 12 small classifiers: all-models Learned-Soup+ vs MEHL-Soup+ (b = 3).

    python benchmarks/bench_learned.py [--hidden 256] [--inner-epochs 3]

Twelve tiny ViT digit classifiers (scikit-learn ``load_digits``), fine-tuned from one
base, each on two classes with its own learning rate (built once, cached). The mixing
coefficients are trained on a validation split and scored on a held-out test split.

Contenders, all in this run, on the same data, loss, optimizer and schedule:

* uniform soup and greedy soup (Recipe 1) — the references;
* Learned-Soup+ (all models in the graph, softmax weights) and HL-Soup+ (all models,
  hyperplane weights), E passes over the validation split;
* MEHL-Soup+ with b = 3 (and MEHL-Soup, one coefficient per model): E passes per model
  batch, i.e. 4E in all — as the paper gives MEHL-Soup 4x the epochs of Learned-Soup
  when b = K/4 (Table 1, note c).

Peak memory is the growth of this process's resident set during coefficient learning
(``hf_soup.testing.memory.PeakMemory``: sampled RSS after ``malloc_trim``); the
block-coordinate runs go first (after an unmeasured warm-up), so memory freed by them can
only hide part of the all-models runs' growth (a conservative ratio). Wall time is the
learning time. The fixed part (mean, soup, its gradient, activations, one ingredient
being loaded) is the same for every contender; what differs is the b or K ingredient
copies (differences, or the stacked models of the all-models graph).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("HF_SOUP_BENCH_CACHE", Path.home() / ".cache" / "hf_soup_bench"))
K, VALIDATION, TEST = 12, 300, 300
LRS = [1e-3, 2e-3, 3e-3, 5e-4, 1.5e-3, 2.5e-3]


def _image(pixels: np.ndarray):
    from PIL import Image

    gray = (pixels * 15).clip(0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([gray] * 3, axis=-1), mode="RGB")


def _config(hidden: int):
    from transformers import ViTConfig

    return ViTConfig(image_size=8, patch_size=2, num_channels=3, hidden_size=hidden, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=2 * hidden, num_labels=10)


def _processor():
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": 8, "width": 8}, do_resize=False, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def ingredients(hidden: int) -> tuple[list[Path], object]:
    """The K fine-tuned folders (cached) and the validation/test ``DatasetDict``."""
    import datasets
    import torch
    from sklearn.datasets import load_digits
    from transformers import ViTForImageClassification

    from hf_soup.testing.train import train_steps

    digits = load_digits()
    images, labels = digits.images, digits.target.astype(np.int64)
    train = slice(0, len(labels) - VALIDATION - TEST)
    root = CACHE / f"learned-vit{hidden}"
    dirs = [root / f"ingredient-{k}" for k in range(K)]
    if not all((d / "model.safetensors").exists() for d in dirs):
        processor = _processor()
        pixels = processor(images=[_image(i) for i in images[train]], return_tensors="pt")["pixel_values"]
        targets = torch.as_tensor(labels[train])
        torch.manual_seed(0)
        base = ViTForImageClassification(_config(hidden))
        train_steps(base, {"pixel_values": pixels}, targets, steps=60, lr=1e-3, seed=0)
        for k, directory in enumerate(dirs):
            model = ViTForImageClassification(_config(hidden))
            model.load_state_dict(base.state_dict())
            rows = torch.as_tensor(np.where(np.isin(labels[train], [k % 10, (k + 1) % 10]))[0])
            train_steps(model, {"pixel_values": pixels[rows]}, targets[rows], steps=30, lr=LRS[k % len(LRS)],
                        seed=k + 1)
            model.save_pretrained(directory)
            processor.save_pretrained(directory)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})

    def part(rows: slice):
        return datasets.Dataset.from_dict({"image": [_image(i) for i in images[rows]], "label": labels[rows].tolist()},
                                          features=features)

    return dirs, datasets.DatasetDict({"validation": part(slice(-VALIDATION - TEST, -TEST)),
                                       "test": part(slice(-TEST, None))})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256, help="ViT width (256: about 1.6M parameters per model)")
    parser.add_argument("--inner-epochs", type=float, default=3.0, help="E: passes over the validation split")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=16, help="validation rows per step")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from hf_soup.align import align
    from hf_soup.evaluation import EvaluationSpec, Evaluator
    from hf_soup.ingredients import resolve_ingredients
    from hf_soup.methods.learned.bcd import LearnConfig, learn_block_coordinate
    from hf_soup.testing.learned_reference import learn_full_graph
    from hf_soup.testing.memory import PeakMemory
    from hf_soup.methods.learned.schedule import data_stream
    from hf_soup.methods.learned.task import LearnedTask
    from hf_soup.methods.base import MergeContext
    from hf_soup.methods.greedy import GreedySoup
    from hf_soup.methods.learned.method import LearnedSoup

    dirs, dataset = ingredients(args.hidden)
    with ExitStack() as stack:
        ings = resolve_ingredients([str(d) for d in dirs])
        sources = {i: stack.enter_context(ing.open()) for i, ing in enumerate(ings)}
        alignment = align(list(sources.values()), [i.name for i in ings], [i.config for i in ings])
        spec = dict(dataset=dataset, batch_size=32)
        val = Evaluator.for_ingredients(EvaluationSpec(**spec, split="validation"), ings).bind(alignment.tensors, sources)
        test = Evaluator.for_ingredients(EvaluationSpec(**spec, split="test"), ings, accelerator=val.accelerator)
        model_mib = 4 * sum(p.numel() for p in val.model.parameters()) / 2**20
        builder = val.builder

        def scores(method, indices) -> tuple[float, float]:
            state_dict = builder.merge(method, indices)
            return val.evaluate_state_dict(state_dict), test.evaluate_state_dict(state_dict)

        rows = []
        started = time.perf_counter()
        uniform = val.evaluate_soup(list(range(K)))
        uniform_test = test.evaluate_state_dict(builder.state_dict(list(range(K))))
        rows.append(("uniform soup", uniform, uniform_test, None, time.perf_counter() - started, None))
        started = time.perf_counter()
        greedy = GreedySoup(GreedySoup.Params()).plan(MergeContext(K, [i.name for i in ings], evaluator=val), ings)
        seconds = time.perf_counter() - started
        rows.append((f"greedy soup ({len(greedy.ingredients)} kept)", *scores(greedy.method, greedy.ingredients),
                     None, seconds, None))
        best = max(val.ingredient_scores())

        task = LearnedTask(val, split=None, batch_size=args.batch_size, seed=0)
        steps = max(1, int(np.ceil(args.inner_epochs * task.batches_per_epoch)))
        warm_up = LearnedSoup(LearnedSoup.Params(layerwise=True, model_batch=3)).layout(task)[0]
        learn_block_coordinate(warm_up, task.load, data_stream(task.batches), task.loss,  # first-call allocations
                               LearnConfig(model_batch=3, inner_steps=1), num_models=K)  # are no contender's
        contenders = [
            ("MEHL-Soup+ (b=3)", learn_block_coordinate, True, True, 3),
            ("MEHL-Soup (b=3)", learn_block_coordinate, False, True, 3),
            ("Learned-Soup+ (all models)", learn_full_graph, True, False, K),
            ("HL-Soup+ (all models)", learn_full_graph, True, True, K),
        ]
        for name, learn, layerwise, hyperplane, batch in contenders:
            method = LearnedSoup(LearnedSoup.Params(layerwise=layerwise, hyperplane=hyperplane, model_batch=batch))
            layout, key_block = method.layout(task)
            config = LearnConfig(model_batch=batch, inner_steps=steps, lr=args.lr, hyperplane=hyperplane, seed=0)
            started = time.perf_counter()
            with PeakMemory() as peak:
                result = learn(layout, task.load, data_stream(task.batches), task.loss, config, num_models=K)
            seconds = time.perf_counter() - started
            weighted = method.weighted_method(result.weights, layout, key_block, alignment.tensors)
            rows.append((name, *scores(weighted, list(range(K))), peak.peak_bytes / 2**20, seconds, result.steps))
            print(f"  {name}: {result.steps} steps, weights in [{result.weights.min():.3f}, {result.weights.max():.3f}]",
                  file=sys.stderr)

    print(f"K = {K} ViT digit classifiers, {model_mib:.1f} MiB each (float32); coefficients trained on "
          f"{VALIDATION} validation rows, scored on {TEST} held-out test rows; best single ingredient "
          f"(validation) {best:.3f}; {args.batch_size} rows per step; torch threads {args.threads}")
    print(f"{'contender':32s} {'val acc':>8s} {'test acc':>9s} {'peak MiB':>9s} {'models':>7s} {'seconds':>8s} {'steps':>6s}")
    for name, v, t, peak, seconds, steps in rows:
        mem = f"{peak:9.1f} {peak / model_mib:7.1f}" if peak is not None else f"{'-':>9s} {'-':>7s}"
        print(f"{name:32s} {v:8.3f} {t:9.3f} {mem} {seconds:8.1f} {steps if steps else '-':>6}")
    by_name = {r[0]: r for r in rows}
    mehl, full = by_name["MEHL-Soup+ (b=3)"], by_name["Learned-Soup+ (all models)"]
    print(f"peak memory Learned-Soup+ / MEHL-Soup+ (b=3): {full[3] / mehl[3]:.2f}x "
          f"(paper: 13x at K=72, b=18); wall time MEHL-Soup+ / Learned-Soup+: {mehl[4] / full[4]:.2f}x "
          f"for {mehl[5] / full[5]:.0f}x the steps")


if __name__ == "__main__":
    main()
