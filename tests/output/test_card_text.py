"""The default card is rendered without huggingface_hub, and its text is the one ModelCard.from_template gives."""

from __future__ import annotations

import subprocess
import sys

import pytest
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hf_soup.output.card import DEFAULT_MARKER, _tidy, default_template, render_card, render_card_text, template_context
from hf_soup.output.card_metadata import card_fields

SHA_A = "a" * 40


def _report(**changes) -> dict:
    report = {
        "hf_soup_version": "0.1.0", "method": "weighted", "parameters": {"weights": [0.25, 0.75]}, "details": {},
        "num_full_evaluations": 0, "score": None, "evaluation": None,
        "ingredients": [
            {"ref": "org/a", "repo_id": "org/a", "sha": SHA_A, "kept": True, "weight": 0.25, "license": "mit",
             "pipeline_tag": "image-classification"},
            {"ref": "org/b@v1", "repo_id": "org/b", "sha": SHA_A, "kept": True, "weight": 0.75, "license": "mit"},
        ],
        "model": {"model_type": "vit", "architectures": ["ViTForImageClassification"]},
        "recipe": {"ingredients": [{"model": "org/a", "revision": SHA_A}], "method": {"name": "weighted"}},
    }
    report.update(changes)
    return report


def _through_huggingface_hub(report: dict, repo_id: str | None) -> str:
    """The default card as huggingface_hub's ModelCard renders it (the way hf-soup rendered it before)."""
    model_id = repo_id or "./soup"
    from hf_soup.output.card import _title

    fields = card_fields(report, model_id if repo_id else _title(report, model_id))
    results = fields.pop("eval_results")
    data = ModelCardData(eval_results=[EvalResult(**r) for r in results] if results else None, **fields)
    card = ModelCard.from_template(data, template_path=str(default_template()), **template_context(report, model_id))
    card.text = _tidy(card.text).rstrip() + "\n\n" + DEFAULT_MARKER + "\n"
    return str(card)


REPORTS = {
    "plain": _report(),
    "scored": _report(score=0.875, num_full_evaluations=4,
                      evaluation={"dataset": "org/digits", "split": "test", "metric": "accuracy"}),
    "dataset dict": _report(score=0.5, evaluation={"dataset": {"path": "glue", "name": "sst2", "split": "validation"},
                                                   "metric": "f1", "task": "text-classification"}),
    "custom data": _report(score=1.0e-7, evaluation={"dataset": None, "metric": "loss"}),
    "local only": _report(ingredients=[{"ref": "./run-1", "kept": True}, {"ref": "./run-2", "kept": False}],
                          model={"model_type": None, "architectures": None}),
    "disagreeing licenses": _report(ingredients=[
        {"ref": "org/a", "repo_id": "org/a", "sha": SHA_A, "license": "mit", "pipeline_tag": "fill-mask"},
        {"ref": "org/c", "repo_id": "org/c", "sha": SHA_A, "license": "apache-2.0"}]),
    "unicode and markup": _report(method="greedy", ingredients=[
        {"ref": "org/été|`<b>\n", "repo_id": "org/ete", "sha": SHA_A, "license": "other: «x»", "kept": True},
        {"ref": "org/日本: - [x]", "repo_id": "org/nihon", "sha": SHA_A, "kept": True}],
        score=0.25, evaluation={"dataset": "org/d: #1", "split": "a: b", "metric": "accuracy"}),
}


@pytest.mark.parametrize("repo_id", [None, "me/soup"])
@pytest.mark.parametrize("name", sorted(REPORTS))
def test_default_card_text_equals_huggingface_hubs_rendering(name, repo_id):
    expected = _through_huggingface_hub(REPORTS[name], repo_id)

    assert render_card_text(REPORTS[name], repo_id=repo_id) == expected
    assert str(render_card(REPORTS[name], repo_id=repo_id)) == expected


def test_a_local_merge_does_not_import_huggingface_hub(make_ingredients, tmp_path):
    folders = make_ingredients("bert", 2)
    script = ("import sys, hf_soup\n"
              f"hf_soup.soup({[str(f) for f in folders]!r}, output_dir={str(tmp_path / 'soup')!r})\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'huggingface_hub'))\n")

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)

    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "soup" / "README.md").read_text().endswith(DEFAULT_MARKER + "\n")
