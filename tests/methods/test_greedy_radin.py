"""Greedy soup, RADIN and the comparison report, end to end on tiny fine-tuned classifiers."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import pytest

import hf_soup
from fixtures_classifiers import bound_evaluator, digit_bert, digit_vit  # noqa: F401
from hf_soup.errors import MethodParameterError
from hf_soup.methods.radin import sample_subsets

pytest.importorskip("torch")


def _rescore(digits, directory: Path, **spec) -> float:
    """Score the soup as written on disk, loaded by from_pretrained."""
    from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForSequenceClassification

    from hf_soup.evaluation import EvaluationSpec, Evaluator

    config = AutoConfig.from_pretrained(directory)
    auto = AutoModelForImageClassification if "Image" in config.architectures[0] else AutoModelForSequenceClassification
    evaluator = Evaluator(EvaluationSpec(dataset=digits.validation, **digits.columns, **spec), config=directory,
                          device="cpu")
    return evaluator.evaluate_model(auto.from_pretrained(directory))


def test_radin_offers_the_single_ingredients_and_warns_when_a_soup_is_below_the_best(digit_bert, tmp_path):
    """Budget 1 + a strong prior evaluates only the uniform soup; a better single ingredient is free to return."""
    refs = [str(d) for d in digit_bert.dirs]
    evaluation = {"dataset": digit_bert.validation, "metric": "loss"}
    exact = hf_soup.soup(refs, method="radin", budget=1, prior=10.0, include_singles=False,
                         output_dir=tmp_path / "exact", evaluation=evaluation).report
    scores, score = exact["details"]["scores"], exact["score"]
    best = min(range(4), key=lambda i: scores[i])
    assert exact["details"]["kept"] == [0, 1, 2, 3] and score > scores[best]  # the fixture: uniform soup is worse
    warnings = exact["summary"]["warnings"]
    assert len(warnings) == 1 and f"below its best ingredient {best}" in warnings[0]
    assert "include_singles: true" in warnings[0]
    assert f"> **Warning:** {warnings[0]}" in (tmp_path / "exact" / "README.md").read_text()
    free = hf_soup.soup(refs, method="radin", budget=1, prior=10.0, output_dir=tmp_path / "free",
                        evaluation=evaluation).report
    assert free["details"]["kept"] == [best] and free["score"] == scores[best]
    assert free["details"]["chosen"] == "single ingredient" and free["summary"]["warnings"] == []
    assert free["num_full_evaluations"] == 4 + 1  # the singles' scores came with the logit passes


@pytest.mark.parametrize("kind", ["vit", "bert"])
def test_greedy_never_below_the_best_ingredient_and_scores_what_it_writes(kind, digit_vit, digit_bert, tmp_path):
    digits = digit_vit if kind == "vit" else digit_bert
    result = hf_soup.soup([str(d) for d in digits.dirs], method="greedy", output_dir=tmp_path / "soup",
                          evaluation={"dataset": digits.validation, **digits.columns})
    report = result.report
    scores = report["details"]["scores"]
    assert len(scores) == 4 and [row["score"] for row in report["ingredients"]] == scores
    assert report["score"] >= max(scores)
    assert report["num_full_evaluations"] == 2 * 4 - 1
    assert report["details"]["order"] == sorted(range(4), key=lambda i: (-scores[i], i))
    kept = [row["kept"] for row in report["ingredients"]]
    assert kept[report["details"]["order"][0]] and sum(kept) == len(report["details"]["kept"])
    # the written soup (greedy order, same float32 sums) is exactly the one that was scored
    assert _rescore(digits, tmp_path / "soup") == report["score"]
    saved = json.loads((tmp_path / "soup" / "soup_report.json").read_text())
    assert saved["score"] == report["score"] and saved["evaluation"]["num_full_evaluations"] == 7


def test_greedy_keeps_ties_unless_strict(digit_vit, tmp_path):
    with bound_evaluator(digit_vit) as evaluator:
        best = max(range(4), key=lambda i: (evaluator.evaluate_ingredient(i), -i))
    # a copy of the best ingredient soups to the very same weights: a tie
    refs = [str(digit_vit.dirs[best])] * 2 + [str(d) for i, d in enumerate(digit_vit.dirs) if i != best]
    loose = hf_soup.soup(refs, method="greedy", output_dir=tmp_path / "a",
                         evaluation={"dataset": digit_vit.validation}).report["details"]
    strict = hf_soup.soup(refs, method="greedy", strict=True, output_dir=tmp_path / "b",
                          evaluation={"dataset": digit_vit.validation}).report["details"]
    assert loose["order"][:2] == [0, 1] and strict["order"][:2] == [0, 1]
    assert loose["steps"][1]["soup_score"] == loose["steps"][0]["soup_score"]
    assert loose["steps"][1]["kept"] is True and strict["steps"][1]["kept"] is False


def _official_greedy(evaluator, n):
    """The official model-soups selection, re-stated: stable ascending sort reversed, running mean, strict ``>``."""
    scores = {i: evaluator.evaluate_ingredient(i) for i in range(n)}
    ranked = sorted(scores.items(), key=lambda item: item[1])
    ranked.reverse()  # equal scores: the later ingredient first
    kept, best = [ranked[0][0]], ranked[0][1]
    soup = evaluator.builder.ingredient(ranked[0][0])
    for index, _ in ranked[1:]:
        new, count = evaluator.builder.ingredient(index), len(kept)
        candidate = {k: v * (count / (count + 1.0)) + new[k] * (1.0 / (count + 1)) for k, v in soup.items()}
        score = evaluator.evaluate_state_dict(candidate, "official greedy")
        if score > best:
            kept, best, soup = kept + [index], score, candidate
    return kept, best


def test_greedy_official_rule_reproduces_the_official_selection_on_ties(digit_vit, tmp_path):
    """A copy of the best ingredient ties it: the official code visits the later copy first and drops the other."""
    with bound_evaluator(digit_vit) as evaluator:
        best = max(range(4), key=lambda i: (evaluator.evaluate_ingredient(i), -i))
    refs = [str(digit_vit.dirs[best])] + [str(d) for i, d in enumerate(digit_vit.dirs) if i != best]
    refs.append(refs[0])  # ingredients 0 and 4: the same checkpoint, equal scores
    with bound_evaluator(digit_vit, dirs=[Path(r) for r in refs]) as evaluator:
        expected_kept, expected_score = _official_greedy(evaluator, len(refs))
    evaluation = {"dataset": digit_vit.validation, "batch_size": 64}
    official = hf_soup.soup(refs, method="greedy", rule="official", output_dir=tmp_path / "official",
                            evaluation=evaluation).report["details"]
    recipe1 = hf_soup.soup(refs, method="greedy", output_dir=tmp_path / "recipe1",
                           evaluation=evaluation).report["details"]
    assert official["order"][:2] == [4, 0] and recipe1["order"][:2] == [0, 4]
    assert official["kept"] == expected_kept and official["kept"][0] == 4 and 0 not in official["kept"]
    assert official["score"] == pytest.approx(expected_score, abs=1e-9)
    assert recipe1["kept"][:2] == [0, 4]  # ">=" keeps the tying copy
    assert official["rule"] == {"name": "official", "order": "descending", "ties": "later", "strict": True}
    assert recipe1["rule"] == {"name": "recipe1", "order": "descending", "ties": "earlier", "strict": False}


def test_greedy_rule_keys_can_be_overridden():
    from hf_soup.methods.greedy import GreedyParams

    assert GreedyParams(rule="official", strict=False).resolved() == ("descending", "later", False)
    assert GreedyParams(ties="later").resolved() == ("descending", "later", False)
    with pytest.raises(ValueError, match="rule"):
        GreedyParams(rule="wortsman")


def test_greedy_ascending_starts_from_the_worst(digit_bert, tmp_path):
    details = hf_soup.soup([str(d) for d in digit_bert.dirs], method="greedy", order="ascending",
                           output_dir=tmp_path / "s", evaluation={"dataset": digit_bert.validation, "metric": "loss"}
                           ).report["details"]
    scores = details["scores"]
    assert not details["higher_is_better"]
    assert details["order"][0] == max(range(4), key=lambda i: scores[i])  # highest loss first
    assert details["steps"][0]["kept"] and details["score"] <= scores[details["order"][0]]


def test_radin_with_budget_equal_to_candidates_returns_the_best_candidate(digit_vit, tmp_path):
    report = hf_soup.soup([str(d) for d in digit_vit.dirs], method="radin", budget=50, output_dir=tmp_path / "s",
                          evaluation={"dataset": digit_vit.validation}).report
    details = report["details"]
    evaluated = details["evaluated_candidates"]
    # N = 4: every subset of size 2..3 (10) plus the uniform soup; all fully evaluated
    expected = {tuple(c) for k in (2, 3) for c in combinations(range(4), k)} | {(0, 1, 2, 3)}
    assert {tuple(c["ingredients"]) for c in evaluated} == expected and details["budget"] == 11
    assert report["score"] == max(c["score"] for c in evaluated)
    best = next(c for c in evaluated if c["score"] == report["score"])
    assert sorted(details["kept"]) == best["ingredients"]
    assert report["num_full_evaluations"] == 4 + 11 and details["num_logit_passes"] == 4
    assert [c["rank"] for c in evaluated] == list(range(11))
    approx = [c["ranking_score"] for c in evaluated]
    assert approx == sorted(approx, reverse=True)  # ranked by the averaged-logit accuracy
    assert -1.0 <= details["spearman"] <= 1.0
    assert _rescore(digit_vit, tmp_path / "s") == report["score"]


def test_radin_prior_favours_larger_soups_and_is_reproducible(digit_bert, tmp_path):
    refs = [str(d) for d in digit_bert.dirs]
    evaluation = {"dataset": digit_bert.validation, "metric": "loss"}
    # a strong prior ranks the largest soup (the uniform one) first; budget 1 evaluates only it
    top = hf_soup.soup(refs, method="radin", budget=1, prior=10.0, include_singles=False, output_dir=tmp_path / "a",
                       evaluation=evaluation).report
    assert top["details"]["kept"] == [0, 1, 2, 3] and top["num_full_evaluations"] == 4 + 1
    without = hf_soup.soup(refs, method="radin", budget=3, candidates=5, include_uniform=False, seed=7,
                           output_dir=tmp_path / "b", evaluation=evaluation).report["details"]
    again = hf_soup.soup(refs, method="radin", budget=3, candidates=5, include_uniform=False, seed=7,
                         output_dir=tmp_path / "c", evaluation=evaluation).report["details"]
    assert without["evaluated_candidates"] == again["evaluated_candidates"]
    assert all(2 <= c["size"] <= 3 for c in without["evaluated_candidates"]) and without["num_candidates"] == 5
    losses = [c["ranking_score"] for c in without["evaluated_candidates"]]
    assert losses == sorted(losses)  # lower loss ranks first


def test_sample_subsets_are_distinct_seeded_and_size_uniform():
    subsets = sample_subsets(12, 400, 2, 11, seed=3)
    assert len(set(subsets)) == 400 and all(2 <= len(s) <= 11 and list(s) == sorted(s) for s in subsets)
    assert subsets == sample_subsets(12, 400, 2, 11, seed=3) and subsets != sample_subsets(12, 400, 2, 11, seed=4)
    counts = [sum(1 for s in subsets if len(s) == k) for k in range(2, 11)]
    assert min(counts) > 20  # sizes drawn uniformly (~40 each), not in proportion to the subset counts
    assert sum(1 for s in subsets if len(s) == 11) <= 12  # only 12 subsets of size 11 exist
    assert sorted(sample_subsets(4, 100, 2, 3, seed=0)) == sorted(c for k in (2, 3) for c in combinations(range(4), k))
    small = sample_subsets(5, 14, 2, 4, seed=1)  # size 4 has only 5 subsets: exhausted sizes are skipped
    assert len(set(small)) == 14


def test_radin_parameter_errors(digit_vit, tmp_path):
    refs = [str(d) for d in digit_vit.dirs[:2]]
    with pytest.raises(MethodParameterError, match="empty for N = 2"):
        hf_soup.soup(refs, method="radin", include_uniform=False, output_dir=tmp_path / "a",
                     evaluation={"dataset": digit_vit.validation})
    with pytest.raises(MethodParameterError, match="method.budgt: unknown key"):
        hf_soup.soup(refs, method="radin", budgt=3, output_dir=tmp_path / "a", evaluation={"dataset": digit_vit.validation})
    with pytest.raises(MethodParameterError, match="method.budget"):
        hf_soup.soup(refs, method="radin", budget=0, output_dir=tmp_path / "a", evaluation={"dataset": digit_vit.validation})
    # explicit subset sizes that cannot be drawn are refused, not silently reduced to the uniform soup
    with pytest.raises(MethodParameterError, match="method.max_size: 3 is more than the 2 ingredients"):
        hf_soup.soup(refs, method="radin", max_size=3, output_dir=tmp_path / "a",
                     evaluation={"dataset": digit_vit.validation})
    with pytest.raises(MethodParameterError, match="method.min_size: 3 is larger than max_size 2"):
        hf_soup.soup(refs, method="radin", min_size=3, max_size=2, output_dir=tmp_path / "a",
                     evaluation={"dataset": digit_vit.validation})
    assert not (tmp_path / "a").exists()


def test_compare_report_table_and_plot(digit_vit, tmp_path):
    result = hf_soup.soup([str(d) for d in digit_vit.dirs], method="radin", budget=2, compare=True,
                          output_dir=tmp_path / "s", evaluation={"dataset": digit_vit.validation})
    report = json.loads((tmp_path / "s" / "soup_report.json").read_text())
    comparison = report["comparison"]
    rows = {row["name"]: row for row in comparison["rows"]}
    assert list(rows) == ["best ingredient", "mean of ingredients", "uniform soup", "greedy soup", "logit ensemble",
                          "greedy logit ensemble", "radin soup (chosen)"]
    scores = comparison["ingredient_scores"]
    assert rows["best ingredient"]["score"] == max(scores) and rows["greedy soup"]["score"] >= max(scores)
    assert rows["radin soup (chosen)"]["score"] == report["score"] == result.report["score"]
    assert rows["greedy logit ensemble"]["score"] >= max(scores)
    gap = comparison["ensemble_gap"]  # accuracy: the ensemble's lead is ensemble - soup
    assert gap["uniform soup"] == rows["logit ensemble"]["score"] - rows["uniform soup"]["score"]
    assert gap["chosen"] == rows["logit ensemble"]["score"] - rows["radin soup (chosen)"]["score"]
    assert comparison["plot"] == "soup_comparison.png"
    assert (tmp_path / "s" / "soup_comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # RADIN's N logit passes also give the ingredient scores: greedy adds its N - 1 candidates, uniform 1
    assert comparison["num_full_evaluations"] == 3 + 1 and report["evaluation"]["num_full_evaluations"] == 6 + 4
    assert report["recipe"]["compare"] is True
    assert report["evaluation"]["source"] == "in-memory Dataset" and "dataset" not in report["evaluation"]
    assert report["evaluation"]["task"] == "image-classification"
    card = (tmp_path / "s" / "README.md").read_text()
    assert "in-memory" not in card.split("---")[1]  # no bogus dataset in the Hub metadata
    assert "| greedy logit ensemble |" in card and "](soup_comparison.png)" in card
    assert "Every row is scored on the evaluation data (accuracy, higher is better)." in card


def test_compare_with_a_data_free_method_scores_the_written_soup(digit_bert, tmp_path):
    result = hf_soup.soup([str(d) for d in digit_bert.dirs], method="weighted", weights=[3, 1, 1, 1], compare=True,
                          output_dir=tmp_path / "s", evaluation={"dataset": digit_bert.validation})
    rows = {row["name"]: row for row in result.report["comparison"]["rows"]}
    assert result.report["score"] == rows["weighted soup (chosen)"]["score"] == _rescore(digit_bert, tmp_path / "s")
    counts = result.report["summary"]["num_full_evaluations"]
    spent = result.report["comparison"]["num_full_evaluations"]
    assert counts == {"method": 0, "comparison": spent, "total": spent}  # the method itself needed none
    assert result.report["num_full_evaluations"] == result.report["evaluation"]["num_full_evaluations"] == spent
    assert [s["role"] for s in result.report["summary"]["scores"]] == ["scored on"]
    assert [row["score"] for row in result.report["ingredients"]] == result.report["comparison"]["ingredient_scores"]


def test_cli_greedy_with_csv_evaluation_and_compare(digit_bert, tmp_path, capsys):
    from hf_soup.cli import main

    digit_bert.validation.to_csv(str(tmp_path / "val.csv"))
    argv = ["merge", *[x for d in digit_bert.dirs for x in ("-m", str(d))], "--method", "greedy", "-p", "strict=true",
            "--eval-dataset", str(tmp_path / "val.csv"), "-e", "text_column=text", "-e", "batch_size=16",
            "--compare", "-o", str(tmp_path / "soup")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Validation accuracy:" in out and "| greedy soup (chosen) |" in out
    assert "Logit ensemble ahead of the uniform soup by" in out
    report = json.loads((tmp_path / "soup" / "soup_report.json").read_text())
    assert report["parameters"] == {"rule": "recipe1", "order": "descending", "ties": "earlier", "strict": True}
    assert report["evaluation"]["batch_size"] == 16 and report["recipe"]["evaluation"]["dataset"].endswith("val.csv")
    assert main([*argv[:-2], "-e", "text_column=nope", "-o", str(tmp_path / "other")]) == 1
    assert "evaluation.text_column" in capsys.readouterr().err and not (tmp_path / "other").exists()


def test_state_dict_ingredients_take_config_and_tokenizer_from_processor_from(digit_bert, tmp_path):
    from safetensors.torch import load_file

    from hf_soup.errors import EvaluationError

    state_dicts = [load_file(str(d / "model.safetensors")) for d in digit_bert.dirs]
    evaluation = {"dataset": digit_bert.validation}
    with pytest.raises(EvaluationError, match="set evaluation.processor_from"):
        hf_soup.soup(state_dicts, method="greedy", output_dir=tmp_path / "a", evaluation=evaluation)
    from_dicts = hf_soup.soup(state_dicts, method="greedy", output_dir=tmp_path / "b",
                              evaluation={**evaluation, "processor_from": str(digit_bert.dirs[0])}).report
    from_dirs = hf_soup.soup([str(d) for d in digit_bert.dirs], method="greedy", output_dir=tmp_path / "c",
                             evaluation=evaluation).report
    assert from_dicts["details"]["scores"] == from_dirs["details"]["scores"]
    assert from_dicts["score"] == from_dirs["score"] and from_dicts["details"]["kept"] == from_dirs["details"]["kept"]


class _FakeCache:
    """Averaged-logit scores given by a formula (RADIN's eq. 3 stand-in)."""

    def __init__(self, n, approx):
        self.scores = {i: approx((i,)) for i in range(n)}
        self.approx = approx

    def score(self, subset):
        return self.approx(tuple(subset))


class _FakeEvaluator:
    """Just enough of ``Evaluator`` for ``RadinSoup.plan``: a logit cache and counted full evaluations."""

    def __init__(self, n, approx, real, metric="accuracy"):
        from hf_soup.evaluation.metrics import Metric

        self.metric = Metric.from_spec(metric)
        self.higher_is_better = self.metric.higher_is_better
        self.builder = object()
        self.cache = _FakeCache(n, approx)
        self.real = real
        self.num_full_evaluations = n  # the N logit passes
        self.num_logit_passes = n
        self.evaluated = []

    def logit_cache(self):
        return self.cache

    def evaluate_soup(self, indices, description=None):
        self.num_full_evaluations += 1
        self.evaluated.append(tuple(indices))
        return self.real(tuple(indices))


def _radin_plan(evaluator, n, **params):
    from hf_soup.methods.base import MergeContext
    from hf_soup.methods.registry import build_method

    method = build_method("radin", params)
    context = MergeContext(n, [f"m{i}" for i in range(n)], evaluator=evaluator, seed=0)
    method.setup(context)
    return method.plan(context, [])


def test_radin_evaluates_the_top_budget_by_approximation_and_returns_the_best_real_score():
    """Recipe 2: top-B by eq. 3-4, then the best by the *real* score, not the best approximation."""
    n = 6
    approx = lambda s: 0.5 + 0.01 * sum(s) / len(s)  # noqa: E731  (prefers high indices)
    ranked = sorted(sample_subsets(n, 20, 2, n - 1, seed=0), key=lambda s: (-approx(s)))
    third = ranked[2]
    real = lambda s: 0.9 if s == third else 0.6 - 0.001 * ranked.index(s)  # noqa: E731
    evaluator = _FakeEvaluator(n, approx, real)
    plan = _radin_plan(evaluator, n, candidates=20, budget=3, include_uniform=False)
    assert evaluator.evaluated == ranked[:3]  # exactly the top B, in ranking order
    assert tuple(plan.ingredients) == third and plan.details["score"] == 0.9
    assert plan.details["approx_score"] == approx(third) and plan.details["num_full_evaluations"] == 3
    # with B = 2 the real best is never evaluated: the best of the two evaluated wins (not the real optimum)
    evaluator = _FakeEvaluator(n, approx, real)
    plan = _radin_plan(evaluator, n, candidates=20, budget=2, include_uniform=False)
    assert tuple(plan.ingredients) == ranked[0] and evaluator.evaluated == ranked[:2]


@pytest.mark.parametrize("metric", ["accuracy", "loss"])
def test_radin_prior_adds_lambda_times_size_in_the_favourable_direction(metric):
    """Eq. 4: ranking = approx ± λ·|S|, the sign making larger soups rank higher for either direction."""
    n = 5
    flat = 0.3
    evaluator = _FakeEvaluator(n, lambda s: flat, lambda s: flat, metric=metric)
    plan = _radin_plan(evaluator, n, candidates=1000, budget=1, prior=0.01, include_uniform=True)
    assert plan.ingredients == [0, 1, 2, 3, 4]  # equal approximations: the prior alone decides
    uniform = next(c for c in plan.details["evaluated_candidates"] if c["size"] == n)
    sign = 1 if metric == "accuracy" else -1
    assert uniform["ranking_score"] == pytest.approx(flat + sign * 0.01 * n)
    assert uniform["approx_score"] == flat


@pytest.mark.parametrize("method, params", [("ties", {"density": 0.5}), ("model_stock", {})])
def test_compare_with_a_base_relative_method_scores_the_written_soup(method, params, digit_bert, tmp_path):
    """The references are soups of the fine-tunes; the chosen row is the base-relative soup as written."""
    result = hf_soup.soup([str(d) for d in digit_bert.dirs], method=method, base_model=str(digit_bert.base_dir),
                          compare=True, output_dir=tmp_path / "s", evaluation={"dataset": digit_bert.validation},
                          **params)
    comparison = result.report["comparison"]
    rows = {row["name"]: row for row in comparison["rows"]}
    assert result.report["score"] == rows[f"{method} soup (chosen)"]["score"] == _rescore(digit_bert, tmp_path / "s")
    assert len(comparison["ingredient_scores"]) == len(digit_bert.dirs)  # the base is not an ingredient
    assert rows["uniform soup"]["num_models"] == rows["logit ensemble"]["num_models"] == len(digit_bert.dirs)
    assert rows[f"{method} soup (chosen)"]["ingredients"] == list(range(len(digit_bert.dirs)))
