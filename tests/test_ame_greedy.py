"""Greedy AME (App. A.4) and score-ordered AME, end to end on tiny fine-tuned digit classifiers.

These tests need the evaluation package and its digit fixtures; they are skipped without them.
"""

from __future__ import annotations

import json
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
