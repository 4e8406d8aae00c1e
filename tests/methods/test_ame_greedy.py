"""Greedy AME (App. A.4) and score-ordered AME, end to end on tiny fine-tuned digit classifiers.

These tests need the evaluation package and its digit fixtures; they are skipped without them.
"""

from __future__ import annotations

import json

import numpy as np
from pathlib import Path

import pytest

import hf_soup
from hf_soup.errors import RecipeError

pytest.importorskip("hf_soup.evaluation.evaluator")
fixtures = pytest.importorskip("fixtures_classifiers")
digit_vit = fixtures.digit_vit


def _rescore(digits, directory: Path) -> float:
    """Score the soup as written on disk, loaded by from_pretrained."""
    from transformers import AutoModelForImageClassification

    from hf_soup.evaluation import EvaluationSpec, Evaluator

    evaluator = Evaluator(EvaluationSpec(dataset=digits.validation, **digits.columns), config=directory, device="cpu")
    return evaluator.evaluate_model(AutoModelForImageClassification.from_pretrained(directory))


@pytest.mark.parametrize("order", ["descending", "ascending"])
def test_greedy_ame_keeps_only_improving_steps_and_writes_what_it_scored(digit_vit, tmp_path, order):
    result = hf_soup.soup([str(d) for d in digit_vit.dirs], method="ame_greedy", optimizer="adam", lr=0.01,
                          epochs=2, batch_size=2, order=order, output_dir=tmp_path / "soup",
                          evaluation={"dataset": digit_vit.validation, **digit_vit.columns})
    details = result.report["details"]
    scores, steps = details["scores"], details["steps"]
    n = len(scores)
    visit = sorted(range(n), key=lambda i: (-scores[i], i))
    assert details["ingredient_order"] == (visit if order == "descending" else visit[::-1])
    assert details["pivot_ingredient"] == details["ingredient_order"][0]
    assert len(steps) == 2 * n // 2 and result.report["num_full_evaluations"] == n + len(steps)
    # a step is kept exactly when it beats the best score so far; the final score is the last kept one
    best = scores[details["pivot_ingredient"]]
    for step in steps:
        assert step["kept"] == (step["score"] > best)
        best = step["score"] if step["kept"] else best
    assert result.report["score"] == best >= scores[details["pivot_ingredient"]]
    assert details["accepted_steps"] == [s["step"] for s in steps if s["kept"]]
    # the written soup is the model that was scored last
    assert _rescore(digit_vit, tmp_path / "soup") == best
    saved = json.loads((tmp_path / "soup" / "soup_report.json").read_text())
    assert saved["details"]["optimizer"] == "Adam" and saved["score"] == best


def test_ame_ordered_by_validation_score(digit_vit, tmp_path):
    result = hf_soup.soup([str(d) for d in digit_vit.dirs], method="ame", optimizer="adam", lr=0.01,
                          order="ascending", pivot="best", output_dir=tmp_path / "soup",
                          evaluation={"dataset": digit_vit.validation, **digit_vit.columns})
    details = result.report["details"]
    scores = details["scores"]
    assert [row["score"] for row in result.report["ingredients"]] == scores
    assert details["ingredient_order"] == sorted(range(len(scores)), key=lambda i: (scores[i], i))
    assert details["pivot_ingredient"] == details["ingredient_order"][-1]


def test_greedy_ame_without_evaluation_is_a_clear_error(digit_vit, tmp_path):
    with pytest.raises(RecipeError, match="needs an evaluation"):
        hf_soup.soup([str(d) for d in digit_vit.dirs], method="ame_greedy", output_dir=tmp_path / "soup")
    assert not (tmp_path / "soup").exists()


class _VectorBuilder:
    """A ``SoupBuilder`` stand-in over one float32 vector per ingredient (AME runs for real on it)."""

    def __init__(self, xs):
        self.xs = xs

    def merge(self, method, indices):
        from hf_soup.methods.base import ChunkInfo

        size = self.xs[0].size
        return {"w": method.merge(ChunkInfo("w", (size,), 0, size), [self.xs[i] for i in indices])}


class _DistanceEvaluator:
    """Scores a model by minus its distance to ``target`` (higher is better)."""

    higher_is_better = True

    def __init__(self, xs, target):
        self.builder = _VectorBuilder(xs)
        self.target = target
        self.num_full_evaluations = 0

    def evaluate_state_dict(self, state_dict, description=""):
        self.num_full_evaluations += 1
        return -float(np.abs(state_dict["w"].astype(np.float64) - self.target).sum())


def test_greedy_ame_rejected_steps_leave_no_trace_in_the_optimizer_state():
    """App. A.4: a rejected step reverts the model *and* the optimizer state (Adam's moments and step count)."""
    import torch

    from hf_soup.methods.base import MergeContext
    from hf_soup.methods.registry import build_method

    rng = np.random.default_rng(0)
    n = 4
    xs = [rng.normal(size=64).astype(np.float32) for _ in range(n)]
    # pull towards ingredients 0 and 2 only: steps on 1 and 3 tend to be rejected
    evaluator = _DistanceEvaluator(xs, target=(xs[0].astype(np.float64) + 2 * xs[2]) / 3)
    scores = [evaluator.evaluate_state_dict({"w": x}) for x in xs]  # the ingredients' own scores (the order)
    method = build_method("ame_greedy", dict(optimizer="adam", lr=0.05, betas=[0.8, 0.99], epochs=3,
                                             lr_schedule="constant", adaptive_pivot=True))
    context = MergeContext(n, list("abcd"), scores=scores, higher_is_better=True, evaluator=evaluator)
    method.setup(context)
    plan = method.plan(context, [])
    kept = [s for s in plan.details["steps"] if s["kept"]]
    assert 0 < len(kept) < len(plan.details["steps"])  # some steps rejected, some kept
    # the same run by hand: torch.optim.Adam sees only the accepted steps, each with its own rate
    w = torch.tensor(xs[plan.details["pivot_ingredient"]], dtype=torch.float32, requires_grad=True)
    adam = torch.optim.Adam([w], lr=0.05, betas=(0.8, 0.99))
    for step in kept:
        w.grad = sum(w.detach() - torch.from_numpy(xs[j]) for j in step["batch"]) / (n * len(step["batch"]))
        adam.param_groups[0]["lr"] = step["lr"]
        adam.step()
    written = _VectorBuilder(xs).merge(plan.method, plan.ingredients)["w"]
    np.testing.assert_allclose(written, w.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert evaluator.evaluate_state_dict({"w": written}) == plan.details["score"]
