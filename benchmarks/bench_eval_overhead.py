"""What a greedy candidate costs beyond its forward passes: the host path vs candidates formed on the device.

Eight BERT-style sequence classifiers (one random base + small noise each, built from a
config; about 11 M parameters with the default sizes) and a validation split of short
texts. Printed per path (``old``: the engine builds each candidate on the host into a
state dict, loaded through transformers' key conversion; ``new``: sums and means formed
on the evaluation device and copied into the model in place):

* forward: one pass over the split with the weights already loaded (median of ``--repeats``);
* greedy: the whole greedy plan (2N - 1 full evaluations), seconds per evaluation;
* load: forming and loading one candidate alone (greedy's running-sum candidate, and a
  subset mean of 4 as RADIN / ``--compare`` score), median;
* overhead: (per-candidate time - forward) / forward — target <= 25 %.

    PYTHONPATH=. python benchmarks/bench_eval_overhead.py [--rows 512] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _ingredients(root: Path, count: int, args: argparse.Namespace) -> list[Path]:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from fixtures_classifiers import make_tokenizer

    config = BertConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=args.hidden // 64, intermediate_size=4 * args.hidden,
                        max_position_embeddings=128, num_labels=4)
    torch.manual_seed(0)
    base = BertForSequenceClassification(config)
    dirs = []
    for index in range(count):
        model = BertForSequenceClassification(config)
        with torch.no_grad():
            for mine, theirs in zip(model.parameters(), base.parameters()):
                mine.copy_(theirs + 0.01 * torch.randn_like(theirs))
        directory = root / f"ingredient-{index}"
        model.save_pretrained(directory)
        make_tokenizer(directory)
        dirs.append(directory)
    return dirs


def _median(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _measure(path: str, dirs: list[Path], evaluation: dict, args: argparse.Namespace) -> dict:
    from hf_soup.align import align
    from hf_soup.evaluation import EvaluationSpec, Evaluator
    from hf_soup.evaluation.device_candidates import HostCandidates
    from hf_soup.ingredients import resolve_ingredients
    from hf_soup.methods.base import MergeContext
    from hf_soup.methods.greedy import GreedySoup
    from hf_soup.methods.uniform import UniformSoup

    ingredients = resolve_ingredients([str(d) for d in dirs])
    with ExitStack() as stack:
        sources = {i: stack.enter_context(ing.open()) for i, ing in enumerate(ingredients)}
        alignment = align(list(sources.values()), [i.name for i in ingredients], [i.config for i in ingredients])
        evaluator = Evaluator.for_ingredients(EvaluationSpec(**evaluation), ingredients, device=args.device)
        evaluator.bind(alignment.tensors, sources)
        if path == "old":
            evaluator._candidates = HostCandidates(evaluator.model, evaluator.builder)
        evaluator.load_ingredient(0)
        evaluator.evaluate_model(evaluator.model)  # warm-up
        forward = _median(lambda: evaluator.evaluate_model(evaluator.model), args.repeats)
        running = evaluator.running_sum()
        running.add(0)
        running.add(1)
        load_sum = _median(lambda: running.load_candidate(2), args.repeats)
        uniform = UniformSoup(UniformSoup.Params())
        load_mean = _median(lambda: evaluator.load_plan(uniform, list(range(len(dirs)))[-4:]), args.repeats)
        start_passes = evaluator.num_full_evaluations
        start = time.perf_counter()
        refs = [str(d) for d in dirs]
        plan = GreedySoup(GreedySoup.Params()).plan(MergeContext(len(dirs), refs, evaluator=evaluator), [])
        greedy = time.perf_counter() - start
        passes = evaluator.num_full_evaluations - start_passes
    return {"forward": forward, "load_sum": load_sum, "load_mean": load_mean, "greedy": greedy, "passes": passes,
            "kept": list(plan.ingredients)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingredients", type=int, default=8)
    parser.add_argument("--rows", type=int, default=512, help="validation rows (8 to 16 tokens each)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CPUs are shared: 1 is steadier)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import random

    import datasets
    import torch

    from fixtures_classifiers import VOCAB

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="bench-eval-overhead-"))
    dirs = _ingredients(root, args.ingredients, args)
    rng = random.Random(0)
    words = VOCAB[5:]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 16))) for _ in range(args.rows)]
    validation = datasets.Dataset.from_dict({"text": texts, "label": [rng.randrange(4) for _ in texts]})
    evaluation = {"dataset": validation, "text_column": "text", "label_column": "label", "batch_size": args.batch_size}
    from transformers import AutoConfig, BertForSequenceClassification

    size = sum(p.numel() for p in BertForSequenceClassification(AutoConfig.from_pretrained(dirs[0])).parameters())
    print(f"{args.ingredients} BERT classifiers of {size / 1e6:.1f} M parameters, {args.rows} validation rows, "
          f"batch {args.batch_size}, device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"{'path':<5} {'forward s':>10} {'greedy s':>9} {'passes':>6} {'s/candidate':>11} {'overhead':>9} "
          f"{'load sum s':>10} {'load mean4 s':>12} {'load/forward':>12}")
    results = {}
    for path in ("old", "new"):
        r = results[path] = _measure(path, dirs, evaluation, args)
        per = r["greedy"] / r["passes"]
        print(f"{path:<5} {r['forward']:>10.3f} {r['greedy']:>9.2f} {r['passes']:>6} {per:>11.3f} "
              f"{(per - r['forward']) / r['forward']:>8.1%} {r['load_sum']:>10.3f} {r['load_mean']:>12.3f} "
              f"{max(r['load_sum'], r['load_mean']) / r['forward']:>11.1%}")
    assert results["old"]["kept"] == results["new"]["kept"], "both paths score the same bytes, so they choose alike"
    print(f"greedy kept {results['new']['kept']} on both paths; "
          f"speed-up of the greedy soup: {results['old']['greedy'] / results['new']['greedy']:.2f}x")


if __name__ == "__main__":
    main()
