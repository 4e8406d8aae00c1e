"""Learned training within ``evaluation.device_memory`` (CPU, tiny ViT digit classifiers).

All differences resident, or part of them streamed (formed again from the ingredients at
each use): the same coefficients, losses and bytes; a budget too small for what cannot be
streamed is refused before any ingredient is read.
"""

from __future__ import annotations

import json
from contextlib import ExitStack

import pytest

torch = pytest.importorskip("torch")

from hf_soup.errors import EvaluationError  # noqa: E402
from hf_soup.methods.learned.residency import plan_residency  # noqa: E402
from test_learned import Bound, _wide_ingredients, sharded_digits  # noqa: E402, F401  (pytest fixture)

PARAMS = {"layerwise": True, "model_batch": 2, "inner_steps": 3, "seed": 1}


def _sizes(dirs, dataset) -> dict[str, int]:
    with ExitStack() as stack:
        model = Bound(dirs, dataset, stack).evaluator.model
        return {name: p.numel() for name, p in model.named_parameters()}


def _partial_budget(sizes: dict[str, int], model_batch: int, simplex: bool) -> int:
    """Room for the evaluation's largest tensor, the fixed part, forming the largest stack, and half of the
    stacks that this room leaves out of an all-resident run."""
    evaluation = 24 * max(sizes.values())  # raw float32 input, float32, float64 result and scratch
    fixed = 4 * sum(sizes.values()) * (4 if simplex else 3)
    room = 4 * (model_batch + 3) * max(sizes.values())  # a stack, the tensor read, rounded, its difference
    stacks = 4 * model_batch * sum(sizes.values())
    assert room < stacks
    return evaluation + fixed + room + (stacks - room) // 2


@pytest.mark.parametrize("hyperplane", [True, False])
def test_streamed_differences_learn_the_same_bits_as_resident_ones(sharded_digits, tmp_path, hyperplane):
    import hf_soup

    dirs, dataset = sharded_digits
    budget = _partial_budget(_sizes(dirs, dataset), PARAMS["model_batch"], simplex=not hyperplane)
    reports, weights = {}, {}
    for name, memory in (("resident", None), ("streamed", budget)):
        evaluation = {"dataset": dataset, "split": "validation", "batch_size": 32, "device_memory": memory}
        hf_soup.soup([str(d) for d in dirs], method="learned", output_dir=tmp_path / name, evaluation=evaluation,
                     hyperplane=hyperplane, device="cpu", **PARAMS)
        reports[name] = json.loads((tmp_path / name / "soup_report.json").read_text())["details"]
        weights[name] = (tmp_path / name / "model.safetensors").read_bytes()
    resident, streamed = reports["resident"]["training_memory"], reports["streamed"]["training_memory"]
    assert resident["streamed_parameters"] == 0
    assert streamed["streamed_parameters"] > 0 and streamed["resident_parameters"] > 0
    assert streamed["bytes"] <= streamed["budget"] < streamed["all_resident_bytes"] == resident["all_resident_bytes"]
    assert streamed["budget"] == budget - 24 * max(_sizes(dirs, dataset).values())  # the rest: the evaluation's
    for key in ("coefficients", "loss_curve", "train_loss_uniform", "train_loss_learned", "score"):
        assert reports["streamed"][key] == reports["resident"][key], key
    assert weights["streamed"] == weights["resident"]


def test_a_budget_below_what_training_must_hold_is_refused_before_any_read(sharded_digits, tmp_path):
    import hf_soup

    dirs, dataset = sharded_digits
    sizes = _sizes(dirs, dataset)
    fixed = 12 * sum(sizes.values())  # float32 mean, soup and gradient: never streamed
    with ExitStack() as stack:
        bound = Bound(dirs, dataset, stack, device_memory=fixed)
        with pytest.raises(EvaluationError) as caught:
            bound.plan(**PARAMS)
        # no ingredient tensor was read: the staging buffers are allocated by the first read
        assert bound.evaluator.candidates._staging.buffers == [None, None]
        assert bound.evaluator.num_full_evaluations == 0
    message = str(caught.value)
    need = plan_residency(sizes, model_batch=2, budget=10**12, device="cpu")
    assert message.startswith("evaluation.device_memory: training the learned soup's coefficients on cpu needs at least")
    assert f"the model's {sum(sizes.values()):,} parameters" in message and "raise evaluation.device_memory" in message
    assert f"the memory budget of {fixed / 1024:.1f} KiB leaves it" in message
    assert need.all_resident_bytes > fixed
    evaluation = {"dataset": dataset, "split": "validation", "batch_size": 32, "device_memory": fixed}
    with pytest.raises(EvaluationError, match="evaluation.device_memory: training the learned soup"):
        hf_soup.soup([str(d) for d in dirs], method="learned", output_dir=tmp_path / "soup", evaluation=evaluation,
                     device="cpu", **PARAMS)
    assert not (tmp_path / "soup").exists()


def test_peak_memory_of_the_training_follows_the_budget(tmp_path, sharded_digits):
    """8 ViTs of 1.07M parameters, all 8 in one model batch: with everything resident the training holds 8
    differences (and the evaluation 8 ingredients); a 30 MB budget keeps the process's growth near it."""
    from hf_soup.testing.memory import PeakMemory

    dirs = _wide_ingredients(tmp_path, 8)
    budget = 30_000_000
    peaks, memory = {}, {}
    for name, device_memory in (("resident", None), ("budget", budget)):
        with ExitStack() as stack:  # warm-up: lazy imports and allocator pools are not the method's
            Bound(dirs, sharded_digits[1], stack, max_samples=16, batch_size=16).plan(
                layerwise=True, model_batch=8, inner_steps=1)
        with ExitStack() as stack:
            bound = Bound(dirs, sharded_digits[1], stack, max_samples=16, batch_size=16, device_memory=device_memory)
            with PeakMemory() as peak:
                plan = bound.plan(layerwise=True, model_batch=8, inner_steps=2)
            peaks[name], memory[name] = peak.peak_bytes, plan.details["training_memory"]
            model_bytes = 4 * sum(p.numel() for p in bound.evaluator.model.parameters())
    print(f"\npeak memory growth: all resident {peaks['resident'] / 2**20:.1f} MiB, budget of {budget / 2**20:.1f} MiB "
          f"{peaks['budget'] / 2**20:.1f} MiB (one model = {model_bytes / 2**20:.1f} MiB); {memory['budget']}")
    assert memory["resident"]["streamed_parameters"] == 0 and memory["budget"]["streamed_parameters"] > 0
    assert memory["budget"]["all_resident_bytes"] == 11 * model_bytes > budget  # 3 fixed copies + 8 differences
    assert peaks["budget"] < budget + 2 * model_bytes  # the rest: a batch's activations, the data
    assert peaks["budget"] < 0.5 * peaks["resident"]


def test_plan_keeps_stacks_in_model_order_while_they_fit():
    sizes = {"a": 100, "b": 1000, "c": 1000, "d": 1000, "e": 1000}
    # model_batch 2: 8 bytes per element and stack; room to form the largest stack: (2 + 3) x 4 bytes x 1000
    fixed, room, stacks = 12 * 4100, 4 * 5 * 1000, 8 * 4100
    plan = plan_residency(sizes, model_batch=2, budget=fixed + room + 8 * 1100, device="cpu")
    assert plan.resident == {"a", "b"} and plan.streamed == ["c", "d", "e"]
    assert plan.training_bytes == fixed + room + 8 * 1100 and plan.all_resident_bytes == fixed + stacks
    everything = plan_residency(sizes, model_batch=2, budget=fixed + stacks, device="cpu")
    assert everything.streamed == [] and everything.training_bytes == fixed + stacks
    with pytest.raises(EvaluationError, match="needs at least"):
        plan_residency(sizes, model_batch=2, budget=fixed + room - 1, device="cpu")
    with pytest.raises(EvaluationError, match="cannot be streamed"):  # only "a" could be formed again
        plan_residency(sizes, model_batch=2, budget=fixed + room, device="cpu", streamable={"a"})
