"""Causal LMs at scale: candidates streamed under ``evaluation.device_memory`` equal the resident ones,
loss / perplexity are token-weighted means over the split, and a bfloat16 evaluation works end to end."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path

import pytest

import hf_soup
from fixtures_causal import llama_lms  # noqa: F401  (session fixture)
from fixtures_classifiers import bound_evaluator
from hf_soup.errors import EvaluationError
from fixtures_evaluation import scored  # noqa: F401

torch = pytest.importorskip("torch")

METHODS = {
    "greedy": {},
    "radin": {"budget": 3, "candidates": 6, "include_singles": False},
    "learned": {"model_batch": 2, "inner_steps": 2, "layerwise": True, "lr": 0.05},
}


def _sizes(lms) -> tuple[int, int]:
    """(elements of the largest merged tensor, elements of one ingredient) of ``lms``."""
    from safetensors import safe_open

    with safe_open(lms.dirs[0] / "model.safetensors", "pt") as file:
        numels = [math.prod(file.get_slice(key).get_shape()) for key in file.keys()]
    return max(numels), sum(numels)


def _budgets(lms) -> dict[str, int | None]:
    """Device memory budgets: all resident; everything streamed; half a running sum; a sum + 1.5 ingredients."""
    largest, total = _sizes(lms)
    need = largest * (4 + 4 + 8 + 8)  # float32 inputs: raw, widened, float64 result and scratch
    return {"resident": None, "streamed": need, "half-sum": need + 4 * total, "partial": need + 8 * total + 6 * total}


def test_the_budgets_put_the_candidates_where_the_test_says(llama_lms):
    from hf_soup.evaluation.device_candidates import DeviceCandidates

    _, total = _sizes(llama_lms)
    expected = {"resident": (8 * total, True), "streamed": (0, False), "half-sum": (None, False),
                "partial": (8 * total, None)}
    for name, budget in _budgets(llama_lms).items():
        with bound_evaluator(llama_lms, metric="loss", batch_size=8, device_memory=budget) as evaluator:
            candidates = evaluator.candidates
            assert isinstance(candidates, DeviceCandidates)
            sums, all_resident = expected[name]
            if sums is not None:
                assert candidates.sum_bytes == sums, name
            running = evaluator.running_sum()
            kept = sum(8 * t.meta.numel for t in candidates.merged if t.key in running.kept)
            assert kept <= candidates.sum_bytes
            if name == "half-sum":
                assert 0 < len(running.kept) < len(candidates.merged)
            for index in range(4):
                evaluator.load_ingredient(index)
            resident = [sum(v.nbytes for (i, _), v in candidates._resident.items() if i == index) for index in range(4)]
            if all_resident is True:
                assert resident == [4 * total] * 4
            elif all_resident is False:
                assert resident == [0] * 4
            else:  # fewer than N ingredients fit: 1.5 of them (the first, in the order used, whole)
                assert resident[0] == 4 * total and resident[3] < 4 * total
                assert sum(resident) == candidates._resident_used <= candidates.resident_bytes == 6 * total


def _training_bytes(lms, method: str) -> int:
    """What a learned soup's training must hold beside the evaluation (float32 mean, soup, gradient; room to
    form ``model_batch`` differences of the largest tensor), so that each budget leaves the evaluation the same."""
    if method != "learned":
        return 0
    largest, total = _sizes(lms)
    return 12 * total + 4 * (METHODS["learned"]["model_batch"] + 3) * largest


def _run(lms, method: str, metric: str, budget, out: Path, **evaluation) -> tuple[dict, str]:
    result = hf_soup.soup([str(d) for d in lms.dirs], method=method, output_dir=out, device="cpu", seed=1,
                          evaluation={"dataset": lms.validation, **lms.columns, "metric": metric, "batch_size": 8,
                                      "device_memory": budget, **evaluation}, **METHODS[method])
    # the learned training's memory is where the budgets differ on purpose
    details = {k: v for k, v in result.report["details"].items() if k not in ("learning_seconds", "training_memory")}
    return details, hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize("metric", ["loss", "perplexity"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_streamed_candidates_give_the_resident_scores_plan_and_bytes(method, metric, llama_lms, tmp_path):
    extra = _training_bytes(llama_lms, method)
    runs = {name: _run(llama_lms, method, metric, None if budget is None else budget + extra, tmp_path / name)
            for name, budget in _budgets(llama_lms).items()}
    details, digest = runs["resident"]
    for name, (other, other_digest) in runs.items():
        assert json.dumps(other, sort_keys=True) == json.dumps(details, sort_keys=True), name
        assert other_digest == digest, name
    if method == "greedy":
        assert len(details["kept"]) >= 2  # a sum was formed, not only one ingredient
    lower_is_better = metric in ("loss", "perplexity")
    assert details["higher_is_better"] is not lower_is_better


def _unpadded_nll_float64(model, tokenizer, texts) -> tuple[float, int]:
    """Sum of token NLLs and scored tokens, each row alone (no padding) through a float64 copy of ``model``."""
    reference = copy.deepcopy(model).to(torch.float64).eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            logits = reference(input_ids=ids).logits[0, :-1].to(torch.float64)
            targets = ids[0, 1:]
            nll -= torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).sum().item()
            count += len(targets)
    return nll, count


@pytest.mark.parametrize("batch_size", [1, 7])
def test_loss_and_perplexity_are_token_weighted_means_over_the_split(batch_size, llama_lms):
    """Padding (the tokenizer pads on the left; the evaluation on the right) changes nothing: each token counts once."""
    from transformers import AutoTokenizer

    from hf_soup.methods.uniform import UniformSoup

    tokenizer = AutoTokenizer.from_pretrained(llama_lms.dirs[0])
    assert tokenizer.padding_side == "left"
    texts = llama_lms.validation["text"]
    assert len({len(t.split()) for t in texts}) > 5
    for metric in ("loss", "perplexity"):
        with bound_evaluator(llama_lms, metric=metric, batch_size=batch_size) as evaluator:
            score = evaluator.evaluate_plan(UniformSoup(UniformSoup.Params()), [3, 1])
            nll, count = _unpadded_nll_float64(evaluator.model, tokenizer, texts)
            mean = nll / count
            assert score == pytest.approx(mean if metric == "loss" else math.exp(mean), rel=2e-6)
            assert count == sum(len(tokenizer(t)["input_ids"]) - 1 for t in texts)


@pytest.mark.parametrize("method", ["greedy", "radin"])
def test_bfloat16_evaluation_end_to_end(method, llama_lms, scored, tmp_path):
    """The model runs in bfloat16; candidates are float64 sums rounded once to the soup's dtype (bfloat16 here),
    so the scored model holds the written soup's bytes, and streaming changes nothing."""
    from safetensors.torch import load_file

    budgets = _budgets(llama_lms)
    results = {}
    for name in ("resident", "streamed"):
        result = hf_soup.soup([str(d) for d in llama_lms.dirs], method=method, output_dir=tmp_path / name,
                              device="cpu", dtype="bfloat16", seed=1,
                              evaluation={"dataset": llama_lms.validation, **llama_lms.columns, "metric": "loss",
                                          "batch_size": 8, "dtype": "bfloat16", "device_memory": budgets[name]},
                              **METHODS[method])
        results[name] = result.report["details"]
        assert (tmp_path / name / "model.safetensors").read_bytes() == (
            tmp_path / "resident" / "model.safetensors").read_bytes()
    assert results["streamed"] == results["resident"]
    details = results["resident"]
    if method == "greedy":
        last = [step for step in details["steps"] if step["kept"]][-1]
        description = "ingredient {}" if last is details["steps"][0] else "greedy: + ingredient {}"
        description = description.format(last["ingredient"])
    else:
        chosen = next(c for c in details["evaluated_candidates"] if c["ingredients"] == details["kept"])
        description = f"radin: candidate {chosen['rank'] + 1}/{details['budget']}"
    written = load_file(tmp_path / "resident" / "model.safetensors")
    model = scored[description]
    # one rounding from float64: the float64 mean of the ingredients, cast once, is what was scored and written
    ingredients = [load_file(d / "model.safetensors") for d in llama_lms.dirs]
    for key, value in written.items():
        assert value.dtype == torch.bfloat16
        mean = sum(ingredients[i][key].to(torch.float64) for i in details["kept"]) / len(details["kept"])
        assert torch.equal(mean.to(torch.bfloat16).view(torch.int16), value.view(torch.int16)), key
        assert torch.equal(model[key].view(torch.int16), value.view(torch.int16)), key
    assert math.isfinite(details["score"])


def test_learned_refuses_a_bfloat16_evaluation_with_the_fix(llama_lms, tmp_path):
    with pytest.raises(EvaluationError, match="set evaluation.dtype: float32"):
        _run(llama_lms, "learned", "loss", None, tmp_path / "soup", dtype="bfloat16")
    assert not (tmp_path / "soup").exists()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_no_room_for_one_tensor_is_refused_before_any_forward_pass(method, llama_lms, tmp_path):
    from hf_soup.methods.registry import build_method
    from hf_soup.methods.base import MergeContext

    largest, _ = _sizes(llama_lms)
    budget = largest * 24 - 1
    with bound_evaluator(llama_lms, metric="loss", batch_size=8, device_memory=budget) as evaluator:
        forwards = []
        evaluator.model.register_forward_pre_hook(lambda *_: forwards.append(1))
        plan = build_method(method, METHODS[method])
        context = MergeContext(4, [str(d) for d in llama_lms.dirs], evaluator=evaluator)
        plan.setup(context)
        with pytest.raises(EvaluationError) as caught:
            plan.plan(context, [])
        assert forwards == [] and evaluator.num_full_evaluations == 0
    message = str(caught.value)
    assert message.startswith("evaluation.device_memory: forming tensor 'model.layers.")
    assert f"({largest:,} elements)" in message and "raise evaluation.device_memory" in message
    with pytest.raises(EvaluationError, match=r"more than the memory budget of 48\.0 KiB"):
        _run(llama_lms, method, "loss", budget, tmp_path / "soup")
    assert not (tmp_path / "soup").exists()
