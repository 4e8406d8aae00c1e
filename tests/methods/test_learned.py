"""Learned soups (MEHL-Soup / MEHL-Soup+): exactness against the full-graph reference,
the uniform start, a real improvement on class-sharded digit classifiers, bounded
memory, and early errors."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures_classifiers import digit_bert  # noqa: F401  (pytest fixture)
from hf_soup.errors import EvaluationError, MethodParameterError
from hf_soup.methods.base import MergeContext
from hf_soup.methods.registry import build_method
from hf_soup.testing.train import train_steps

VALIDATION, TEST = 200, 200


def _digit_image(pixels: np.ndarray):
    from PIL import Image

    gray = (pixels * 15).clip(0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([gray] * 3, axis=-1), mode="RGB")


def _vit_config(hidden: int = 32, layers: int = 1):
    from transformers import ViTConfig

    return ViTConfig(image_size=8, patch_size=2, num_channels=3, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=2, intermediate_size=2 * hidden, num_labels=10)


def _processor():
    from conftest import vit_processor_class

    return vit_processor_class()(size={"height": 8, "width": 8}, do_resize=False, image_mean=[0.5] * 3,
                             image_std=[0.5] * 3)


def _splits(images: np.ndarray, labels: np.ndarray):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})

    def part(rows: slice):
        return datasets.Dataset.from_dict(
            {"image": [_digit_image(i) for i in images[rows]], "label": labels[rows].tolist()}, features=features)

    return datasets.DatasetDict({"validation": part(slice(-VALIDATION - TEST, -TEST)), "test": part(slice(-TEST, None))})


@pytest.fixture(scope="module")
def sharded_digits(tmp_path_factory):
    """Four tiny ViT digit classifiers fine-tuned from one base, each on a different group of classes."""
    from sklearn.datasets import load_digits
    from transformers import ViTForImageClassification

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("learned-digits")
    digits = load_digits()
    images, labels = digits.images, digits.target.astype(np.int64)
    processor = _processor()
    train = slice(0, len(labels) - VALIDATION - TEST)
    pixels = processor(images=[_digit_image(i) for i in images[train]], return_tensors="pt")["pixel_values"]
    targets = torch.as_tensor(labels[train])
    torch.manual_seed(0)
    base = ViTForImageClassification(_vit_config())
    train_steps(base, {"pixel_values": pixels}, targets, steps=30, lr=3e-3, seed=0)
    dirs = []
    for k, classes in enumerate([(0, 1, 2), (3, 4, 5), (6, 7), (8, 9)]):
        model = ViTForImageClassification(_vit_config())
        model.load_state_dict(base.state_dict())
        rows = torch.as_tensor(np.where(np.isin(labels[train], classes))[0])
        train_steps(model, {"pixel_values": pixels[rows]}, targets[rows], steps=25, lr=3e-3, seed=k + 1)
        model.save_pretrained(root / f"shard-{k}")
        processor.save_pretrained(root / f"shard-{k}")
        dirs.append(root / f"shard-{k}")
    return dirs, _splits(images, labels)


class Bound:
    """Resolved ingredients, open sources, alignment and a bound evaluator (what the pipeline builds)."""

    def __init__(self, dirs: list[Path], dataset, stack: ExitStack, **spec):
        from hf_soup.align import align
        from hf_soup.evaluation import EvaluationSpec, Evaluator
        from hf_soup.ingredients import resolve_ingredients

        self.ingredients = resolve_ingredients([str(d) for d in dirs])
        self.sources = {i: stack.enter_context(ing.open()) for i, ing in enumerate(self.ingredients)}
        self.alignment = align(list(self.sources.values()), [i.name for i in self.ingredients],
                               [i.config for i in self.ingredients])
        spec = {"dataset": dataset, "split": "validation", "batch_size": 32, **spec}
        # on the CPU even where a GPU is visible: the memory figures below are the process's
        self.evaluator = Evaluator.for_ingredients(EvaluationSpec(**spec), self.ingredients, device="cpu")
        self.evaluator.bind(self.alignment.tensors, self.sources)

    def context(self, seed: int = 0) -> MergeContext:
        return MergeContext(len(self.ingredients), [i.name for i in self.ingredients], evaluator=self.evaluator,
                            seed=seed)

    def plan(self, **params):
        method = build_method("learned", params)
        context = self.context()
        method.setup(context)
        return method.plan(context, self.ingredients)

    def task(self, batch_size: int = 32, seed: int = 0):
        from hf_soup.methods.learned.task import LearnedTask

        return LearnedTask(self.evaluator, split=None, batch_size=batch_size, seed=seed)


@pytest.fixture
def bound(sharded_digits):
    dirs, dataset = sharded_digits
    with ExitStack() as stack:
        yield Bound(dirs, dataset, stack)


# Layer-wise with SGD: some blocks have a zero true gradient (a key bias under softmax), and
# Adam would blow their float noise up to full-size steps in both implementations alike.
@pytest.mark.parametrize("layerwise, hyperplane, optimizer, lr",
                         [(False, True, "adamw", 0.1), (True, True, "sgd", 1.0), (False, False, "adamw", 0.1)])
def test_model_batch_of_all_equals_full_graph_learned_soup(bound, layerwise, hyperplane, optimizer, lr):
    """b = K: block-coordinate MEHL-Soup takes exactly the steps of the all-models graph."""
    from hf_soup.methods.learned.bcd import LearnConfig, learn_block_coordinate
    from hf_soup.methods.learned.blocks import BlockLayout
    from hf_soup.testing.learned_reference import learn_full_graph
    from hf_soup.methods.learned.schedule import data_stream

    task = bound.task(batch_size=40)
    layout = BlockLayout.build(task.names, layerwise=layerwise)
    config = LearnConfig(model_batch=4, outer_epochs=2, inner_steps=4, lr=lr, optimizer=optimizer, hyperplane=hyperplane)
    ours = learn_block_coordinate(layout, task.load, data_stream(task.batches), task.loss, config, num_models=4)
    reference = learn_full_graph(layout, task.load, data_stream(task.batches), task.loss, config, num_models=4)
    assert ours.steps == reference.steps == 8
    np.testing.assert_allclose(ours.losses, reference.losses, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.weights, reference.weights, rtol=1e-4, atol=1e-6)
    assert np.abs(ours.weights - 0.25).max() > 1e-3  # the coefficients did move
    np.testing.assert_allclose(ours.weights.sum(axis=0), 1.0, atol=1e-9)


def test_before_any_step_the_soup_is_the_uniform_soup(bound):
    from hf_soup.evaluation import load_checkpoint_weights
    from hf_soup.methods.learned.bcd import LearnConfig, learn_block_coordinate
    from hf_soup.methods.learned.blocks import BlockLayout
    from hf_soup.methods.learned.schedule import data_stream

    task = bound.task()
    started = {}
    layout = BlockLayout.build(task.names, layerwise=True)
    result = learn_block_coordinate(layout, task.load, data_stream(task.batches), task.loss,
                                    LearnConfig(model_batch=2, inner_steps=1), num_models=4,
                                    on_start=lambda soup: started.update({k: v.clone() for k, v in soup.items()}))
    load_checkpoint_weights(task.model, bound.evaluator.builder.state_dict([0, 1, 2, 3]))  # the engine's uniform soup
    for name, param in task.model.named_parameters():
        torch.testing.assert_close(started[name], param.detach(), rtol=1e-6, atol=1e-6)
    assert result.raw.shape == (4, layout.num_blocks)


def test_learned_soup_beats_uniform_on_class_sharded_digits(bound):
    uniform_score = bound.evaluator.evaluate_soup([0, 1, 2, 3])
    plan = bound.plan(layerwise=True, model_batch=2, outer_epochs=2, inner_epochs=2, lr=0.05, test_split="test")
    details = plan.details
    assert details["train_loss_learned"] < details["train_loss_uniform"] - 0.05
    assert details["train_split"] == "validation" and details["score_split"] == "validation"
    assert details["test_split"] == "test" and 0.0 <= details["test_score"] <= 1.0
    assert details["score"] > uniform_score
    weights = np.asarray(details["coefficients"]["weights"])  # [block][ingredient]
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-9)
    assert plan.files["learned_coefficients.png"][:8] == b"\x89PNG\r\n\x1a\n"
    # The plan, written per checkpoint key (ViT keys differ from the in-memory names), is the learned soup.
    from hf_soup.evaluation import load_checkpoint_weights

    task = bound.task()
    load_checkpoint_weights(task.model, bound.evaluator.builder.merge(plan.method, plan.ingredients))
    written = task.full_loss({n: p.detach() for n, p in task.model.named_parameters()})
    assert written == pytest.approx(details["train_loss_learned"], rel=1e-4)
    print(f"\nclass-sharded digits: uniform {uniform_score:.3f} -> learned {details['score']:.3f} "
          f"(validation), test {details['test_score']:.3f}; train loss "
          f"{details['train_loss_uniform']:.3f} -> {details['train_loss_learned']:.3f}")


def test_simplex_variant_keeps_weights_in_the_simplex(bound):
    plan = bound.plan(layerwise=True, hyperplane=False, model_batch=3, inner_steps=6, lr=0.5)
    weights = np.asarray(plan.details["coefficients"]["weights"])
    assert (weights >= 0).all() and (weights <= 1).all()
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-9)
    assert plan.details["train_loss_learned"] < plan.details["train_loss_uniform"]


def _wide_ingredients(root: Path, count: int) -> list[Path]:
    """``count`` perturbed copies of a wider ViT (about 1.6M parameters each)."""
    from transformers import ViTForImageClassification

    torch.manual_seed(0)
    base = ViTForImageClassification(_vit_config(hidden=256, layers=2))
    dirs = []
    for k in range(count):
        model = ViTForImageClassification(_vit_config(hidden=256, layers=2))
        generator = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for (name, p), q in zip(model.named_parameters(), base.parameters()):
                p.copy_(q + 0.01 * torch.randn(q.shape, generator=generator))
        model.save_pretrained(root / f"wide-{k}")
        _processor().save_pretrained(root / f"wide-{k}")
        dirs.append(root / f"wide-{k}")
    return dirs


def test_peak_memory_with_model_batch_3_is_well_below_model_batch_12(tmp_path, sharded_digits):
    from hf_soup.testing.memory import PeakMemory

    dirs = _wide_ingredients(tmp_path, 12)
    peaks = {}
    with ExitStack() as stack:
        bound = Bound(dirs, sharded_digits[1], stack, max_samples=16, batch_size=16)
        bound.plan(layerwise=True, model_batch=3, inner_steps=1)  # warm-up: lazy imports (plotting) are not the method's
        for batch in (3, 12):
            with PeakMemory() as peak:
                bound.plan(layerwise=True, model_batch=batch, inner_steps=1)
            peaks[batch] = peak.peak_bytes
    model_bytes = 4 * sum(p.numel() for p in bound.evaluator.model.parameters())
    print(f"\npeak memory growth: b=3 {peaks[3] / 2**20:.1f} MiB, b=12 {peaks[12] / 2**20:.1f} MiB "
          f"(one model = {model_bytes / 2**20:.1f} MiB)")
    # b = 12 holds nine more ingredient differences than b = 3; the rest (mean, soup, its
    # gradient, one ingredient being loaded, autograd's buffers) is the same in both.
    assert peaks[12] - peaks[3] > 7 * model_bytes
    assert peaks[3] < 0.7 * peaks[12]


def test_bad_parameters_fail_before_any_work(bound):
    for params, field in [({"model_batch": 0}, "model_batch"), ({"lr": 0}, "lr"), ({"optimizer": "adam"}, "optimizer"),
                          ({"inner_steps": 2, "inner_epochs": 1}, "inner_steps"), ({"blocks": ["x"]}, "blocks"),
                          ({"layerwise": True, "blocks": ["("]}, "blocks"), ({"momentum": 0.9}, "momentum"),
                          ({"outer_epochs": 0}, "outer_epochs"), ({"warmup_ratio": 1.0}, "warmup_ratio")]:
        with pytest.raises(MethodParameterError, match=field):
            build_method("learned", params)
    method = build_method("learned", {"model_batch": 5})
    with pytest.raises(MethodParameterError, match="model_batch: 5 is more than the 4 ingredients"):
        method.setup(bound.context())
    with pytest.raises(MethodParameterError, match="needs evaluation data"):
        build_method("learned", {}).setup(MergeContext(4, ["a", "b", "c", "d"]))
    with pytest.raises(MethodParameterError, match="at least 2 ingredients"):
        build_method("learned", {}).setup(MergeContext(1, ["a"], evaluator=bound.evaluator))


def test_unsupported_evaluation_model_fails_before_learning(sharded_digits):
    dirs, dataset = sharded_digits
    with ExitStack() as stack:
        bound = Bound(dirs, dataset, stack, dtype="bfloat16")
        loads = []
        bound.evaluator.builder.ingredient = lambda i: loads.append(i)  # any load would be recorded
        with pytest.raises(EvaluationError, match="evaluation.dtype: float32"):
            bound.plan()
        assert loads == []


def test_soup_api_writes_the_learned_soup_with_coefficients_and_plot(sharded_digits, tmp_path):
    import json

    from transformers import ViTForImageClassification

    import hf_soup
    from hf_soup.evaluation import EvaluationSpec, Evaluator

    dirs, dataset = sharded_digits
    evaluation = {"dataset": dataset, "split": "validation", "batch_size": 32}
    result = hf_soup.soup([str(d) for d in dirs], method="learned", output_dir=tmp_path / "soup", evaluation=evaluation,
                          layerwise=True, model_batch=2, inner_steps=5, test_split="test", seed=3)
    report = json.loads((tmp_path / "soup" / "soup_report.json").read_text())
    details = report["details"]
    assert report["method"] == "learned" and details["variant"] == "MEHL-Soup+"
    assert details["train_split"] == "validation" and details["test_split"] == "test"
    assert details["steps"] == 2 * 5 and details["model_batches"] and details["seed"] == 3
    assert len(details["coefficients"]["weights"]) == len(details["coefficients"]["blocks"])
    assert (tmp_path / "soup" / details["coefficients_plot"]).read_bytes()[:4] == b"\x89PNG"
    assert result.report["score"] == details["score"]
    card = (tmp_path / "soup" / "README.md").read_text()
    assert "## Learned coefficients" in card and "![Distribution of the learned mixing weights](learned_coefficients.png)" in card
    assert "trained on the **validation** split" in card and "held-out **test** split" in card
    # one source for scores and counts: the report's summary, the card and the CLI lines agree
    from hf_soup.summary import score_lines

    summary = report["summary"]
    assert summary["scores"] == [{"split": "validation", "score": details["score"], "role": "chosen on"},
                                 {"split": "test", "score": details["test_score"], "role": "held out"}]
    assert report["num_full_evaluations"] == report["evaluation"]["num_full_evaluations"] == 2
    assert summary["num_full_evaluations"] == {"method": 2, "comparison": 0, "total": 2}
    assert all(f"- {line}" in card for line in score_lines(summary)) and "Held-out accuracy" in card
    # The written soup, loaded the ordinary way, scores what the method reported.
    model = ViTForImageClassification.from_pretrained(tmp_path / "soup")
    evaluator = Evaluator(EvaluationSpec(**evaluation), config=dirs[0], processor_dir=dirs[0])
    assert evaluator.evaluate_model(model) == pytest.approx(details["score"], abs=1e-9)


def test_compare_with_a_test_split_scores_the_table_on_the_held_out_split(sharded_digits, tmp_path):
    """The coefficients are fitted on the validation split: ``compare`` then uses ``test_split``."""
    from transformers import ViTForImageClassification

    import hf_soup
    from hf_soup.evaluation import EvaluationSpec, Evaluator

    dirs, dataset = sharded_digits
    evaluation = {"dataset": dataset, "split": "validation", "batch_size": 64}
    report = hf_soup.soup([str(d) for d in dirs], method="learned", output_dir=tmp_path / "soup", compare=True,
                          evaluation=evaluation, model_batch=2, inner_steps=2, test_split="test").report
    comparison, details = report["comparison"], report["details"]
    rows = {row["name"]: row for row in comparison["rows"]}
    assert comparison["split"] == "test" and comparison["selection_split"] == "validation"
    test = Evaluator(EvaluationSpec(**{**evaluation, "split": "test"}), config=dirs[0], processor_dir=dirs[0])
    test_scores = [test.evaluate_model(ViTForImageClassification.from_pretrained(d)) for d in dirs]
    assert comparison["ingredient_scores"] == test_scores
    # the references are *chosen* on the validation split (as the learned soup was), scored on the test split
    val = Evaluator(EvaluationSpec(**evaluation), config=dirs[0], processor_dir=dirs[0])
    validation = [val.evaluate_model(ViTForImageClassification.from_pretrained(d)) for d in dirs]
    assert max(range(len(dirs)), key=lambda i: (validation[i], -i)) != max(  # the fixture tells the two apart
        range(len(dirs)), key=lambda i: (test_scores[i], -i))
    chosen_best = max(range(len(dirs)), key=lambda i: (validation[i], -i))
    assert rows["best ingredient"]["ingredients"] == [chosen_best]
    assert rows["best ingredient"]["score"] == test_scores[chosen_best]
    chosen = rows["learned soup (chosen)"]["score"]
    assert chosen == test.evaluate_model(ViTForImageClassification.from_pretrained(tmp_path / "soup"))
    assert chosen == pytest.approx(details["test_score"], abs=1e-9)
    assert report["score"] == details["score"]  # the validation score stays the method's own
    card = (tmp_path / "soup" / "README.md").read_text()
    assert "scored on the **test** split" in card and "were made on the **validation** split" in card


def test_soup_api_rejects_bad_learned_parameters_before_any_output(sharded_digits, tmp_path):
    import hf_soup
    from hf_soup.errors import RecipeError

    dirs, dataset = sharded_digits
    refs = [str(d) for d in dirs]
    with pytest.raises(RecipeError, match="needs an evaluation dataset"):
        hf_soup.soup(refs, method="learned", output_dir=tmp_path / "a")
    with pytest.raises(MethodParameterError, match="model_batch: 9 is more than the 4 ingredients"):
        hf_soup.soup(refs, method="learned", output_dir=tmp_path / "b", model_batch=9,
                     evaluation={"dataset": dataset, "split": "validation"})
    with pytest.raises(EvaluationError, match="split"):
        hf_soup.soup(refs, method="learned", output_dir=tmp_path / "c", test_split="nope",
                     evaluation={"dataset": dataset, "split": "validation"})
    assert not any(tmp_path.iterdir())


_WORKER = r'''
import json, sys
from contextlib import ExitStack
import datasets, torch
torch.set_num_threads(1)
from hf_soup.align import align
from hf_soup.evaluation import EvaluationSpec, Evaluator
from hf_soup.ingredients import resolve_ingredients
from hf_soup.methods.base import MergeContext
from hf_soup.methods.registry import build_method

data, out, params, *dirs = sys.argv[1:]
with ExitStack() as stack:
    ingredients = resolve_ingredients(dirs)
    sources = {i: stack.enter_context(ing.open()) for i, ing in enumerate(ingredients)}
    alignment = align(list(sources.values()), [i.name for i in ingredients], [i.config for i in ingredients])
    spec = EvaluationSpec(dataset=data, split="validation", batch_size=32)
    evaluator = Evaluator.for_ingredients(spec, ingredients, device="cpu").bind(alignment.tensors, sources)
    method = build_method("learned", json.loads(params))
    context = MergeContext(len(ingredients), [i.name for i in ingredients], evaluator=evaluator, seed=0)
    method.setup(context)
    details = method.plan(context, ingredients).details
    if evaluator.accelerator.process_index == 0:
        json.dump({"processes": evaluator.accelerator.num_processes, "weights": details["coefficients"]["weights"],
                   "raw": details["coefficients"]["raw"], "loss": details["train_loss_learned"],
                   "uniform_loss": details["train_loss_uniform"], "losses": details["loss_curve"]["values"],
                   "score": details["score"]}, open(out, "w"))
'''


def _one_and_two_processes(sharded_digits, tmp_path, params: dict) -> dict:
    """Run the learned soup of ``params`` under torchrun with 1 and with 2 processes (gloo, one thread each)."""
    import json
    import os
    import subprocess
    import sys

    dirs, dataset = sharded_digits
    dataset.save_to_disk(tmp_path / "data")
    (tmp_path / "worker.py").write_text(_WORKER)
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    runs = {}
    for processes in (1, 2):
        out = tmp_path / f"out-{processes}.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   str(tmp_path / "worker.py"), str(tmp_path / "data"), str(out), json.dumps(params), *map(str, dirs)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=root)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[processes] = json.loads(out.read_text())
    assert runs[1]["processes"] == 1 and runs[2]["processes"] == 2
    return runs


def test_two_processes_learn_the_same_coefficients_as_one(sharded_digits, tmp_path):
    """Each global batch is split across 2 gloo processes and the coefficient gradients are summed.

    SGD, because Adam turns the float noise of a zero-gradient block (a key bias) into full steps.
    """
    runs = _one_and_two_processes(sharded_digits, tmp_path, dict(layerwise=True, model_batch=2, inner_steps=4,
                                                                  data_batch_size=25, optimizer="sgd", lr=1.0))
    np.testing.assert_allclose(runs[2]["weights"], runs[1]["weights"], rtol=1e-4, atol=1e-5)
    assert runs[2]["loss"] == pytest.approx(runs[1]["loss"], rel=1e-5)
    assert runs[2]["score"] == pytest.approx(runs[1]["score"], abs=1e-9)


def test_micro_batches_learn_the_same_bits_with_one_and_two_processes(sharded_digits, tmp_path):
    """With micro_batch_size, each step's 25 rows are 5 fixed micro-batches (3 on process 0, 2 on process 1),
    summed in a fixed order in float64: AdamW's coefficients, losses and score are the same bits."""
    runs = _one_and_two_processes(sharded_digits, tmp_path, dict(layerwise=True, model_batch=2, inner_steps=4,
                                                                  data_batch_size=25, micro_batch_size=5))
    for key in ("raw", "weights", "losses", "loss", "uniform_loss", "score"):
        assert runs[2][key] == runs[1][key], key


@pytest.fixture(scope="module")
def tiny_llamas(tmp_path_factory):
    """Three tiny Llama causal LMs with tied embeddings (random: the soup has something to learn)."""
    from fixtures_classifiers import save_tiny_llamas

    return save_tiny_llamas(tmp_path_factory.mktemp("learned-llama"), range(3), max_position_embeddings=80)


@pytest.mark.parametrize("task", ["causal-lm", "sequence-classification"])
def test_learned_soup_trains_causal_lms_and_text_classifiers(task, tiny_llamas, digit_bert):
    import datasets

    from fixtures_classifiers import DigitIngredients, bound_evaluator
    from hf_soup.evaluation import load_checkpoint_weights

    if task == "causal-lm":
        texts = [" ".join(t.split()[: 4 + i % 12]) for i, t in enumerate(digit_bert.validation["text"][:48])]
        digits = DigitIngredients(tiny_llamas, datasets.Dataset.from_dict({"text": texts}), {"text_column": "text"},
                                  tiny_llamas[0])
        spec = {"metric": "perplexity", "batch_size": 16}
    else:
        digits, spec = digit_bert, {"batch_size": 40, "max_samples": 120}
    with bound_evaluator(digits, **spec) as evaluator:
        assert evaluator.task == task
        method = build_method("learned", {"layerwise": True, "model_batch": 2, "inner_steps": 6, "lr": 0.1})
        context = MergeContext(len(digits.dirs), [str(d) for d in digits.dirs], evaluator=evaluator)
        method.setup(context)
        plan = method.plan(context, [])
        details = plan.details
        assert details["train_loss_learned"] < details["train_loss_uniform"]
        # Written per checkpoint key (tied embeddings included), the plan is the soup that was trained.
        from hf_soup.methods.learned.task import LearnedTask

        learned = LearnedTask(evaluator, split=None, batch_size=spec["batch_size"], seed=0)
        load_checkpoint_weights(evaluator.model, evaluator.builder.merge(plan.method, plan.ingredients))
        written = learned.full_loss({n: p.detach() for n, p in evaluator.model.named_parameters()})
        assert written == pytest.approx(details["train_loss_learned"], rel=1e-4)
