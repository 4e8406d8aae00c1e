"""``hf_soup.evaluate`` / ``hf-soup evaluate``: ingredient, logit-ensemble and soup scores without a soup."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hf_soup
from fixtures_classifiers import NUM_VALIDATION, _digits, _pixel_values, digit_vit  # noqa: F401
from hf_soup.cli import main
from hf_soup.errors import EvaluationError, RecipeError, UnknownMethodError

pytest.importorskip("torch")


def _hand_logits(dirs) -> tuple[list[np.ndarray], np.ndarray]:
    """Each ingredient's validation logits from its own from_pretrained model (a real forward pass)."""
    import torch
    from transformers import ViTForImageClassification

    images, targets = _digits()
    pixels = _pixel_values(images[-NUM_VALIDATION:])
    logits = []
    for directory in dirs:
        model = ViTForImageClassification.from_pretrained(directory).eval()
        with torch.no_grad():
            logits.append(model(pixel_values=pixels).logits.double().numpy())
    return logits, targets[-NUM_VALIDATION:]


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean())


def _loss(logits: np.ndarray, labels: np.ndarray) -> float:
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def test_ensemble_is_the_metric_of_the_mean_logits(digit_vit):
    dirs = [str(d) for d in digit_vit.dirs]
    result = hf_soup.evaluate(dirs, evaluation={"dataset": digit_vit.validation, **digit_vit.columns}, device="cpu")
    logits, labels = _hand_logits(digit_vit.dirs)
    assert result["metric"] == "accuracy" and result["higher_is_better"] and result["num_examples"] == NUM_VALIDATION
    assert result["ingredient_scores"] == pytest.approx([_accuracy(logit, labels) for logit in logits], abs=1e-9)
    assert result["ensemble_score"] == pytest.approx(_accuracy(np.mean(logits, axis=0), labels), abs=1e-9)
    members = result["greedy_ensemble_ingredients"]
    assert members[0] == max(range(4), key=lambda i: (result["ingredient_scores"][i], -i))  # best first
    assert result["greedy_ensemble_score"] == pytest.approx(
        _accuracy(np.mean([logits[i] for i in members], axis=0), labels), abs=1e-9)
    assert result["greedy_ensemble_score"] >= max(result["ingredient_scores"])
    # N logit passes (the ingredient scores come with them) + the uniform soup
    assert result["num_full_evaluations"] == 4 + 1
    assert set(result["soup_scores"]) == {"uniform"}
    assert [row["name"] for row in result["rows"]] == [
        "ingredient 0", "ingredient 1", "ingredient 2", "ingredient 3", "uniform soup", "logit ensemble",
        "greedy logit ensemble"]


def test_ensemble_loss_and_uniform_soup_by_hand(digit_vit):
    import torch
    from transformers import ViTForImageClassification

    dirs = [str(d) for d in digit_vit.dirs[:3]]
    result = hf_soup.evaluate(dirs, evaluation={"dataset": digit_vit.validation, "metric": "loss"}, device="cpu",
                              soups=["uniform", "greedy"])
    logits, labels = _hand_logits(digit_vit.dirs[:3])
    assert not result["higher_is_better"]
    # loss of the averaged logits, not the mean of the losses (nor of the probabilities)
    assert result["ensemble_score"] == pytest.approx(_loss(np.mean(logits, axis=0), labels), rel=1e-5)
    assert result["ensemble_score"] != pytest.approx(np.mean([_loss(logit, labels) for logit in logits]), rel=1e-3)
    models = [ViTForImageClassification.from_pretrained(d) for d in dirs]
    soup = models[0]
    soup.load_state_dict({k: sum(m.state_dict()[k] for m in models) / 3 for k in soup.state_dict()})
    with torch.no_grad():
        soup_logits = soup.eval()(pixel_values=_pixel_values(_digits()[0][-NUM_VALIDATION:])).logits.double().numpy()
    assert result["soup_scores"]["uniform"] == pytest.approx(_loss(soup_logits, labels), rel=1e-4)
    greedy = next(row for row in result["rows"] if row["name"] == "greedy soup")
    assert greedy["score"] == result["soup_scores"]["greedy"] <= min(result["ingredient_scores"])
    assert greedy["num_full_evaluations"] == 3 - 1  # the ingredient scores were already known


def test_cli_json_matches_python_and_prints_a_table(digit_vit, tmp_path, capsys):
    folder = tmp_path / "val"
    digit_vit.validation.save_to_disk(folder)
    dirs = [str(d) for d in digit_vit.dirs[:2]]
    expected = hf_soup.evaluate(dirs, evaluation={"dataset": str(folder), "image_column": "image"})
    assert main(["evaluate", *dirs, "--eval-dataset", str(folder), "-e", "image_column=image", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(expected))
    assert main(["evaluate", *dirs, "--eval-dataset", str(folder), "-e", "image_column=image"]) == 0
    table = capsys.readouterr().out
    assert f"| logit ensemble | {expected['ensemble_score']:.4f} | 2 | 2 |" in table
    assert f"| uniform soup | {expected['soup_scores']['uniform']:.4f} | 2 | 1 |" in table


def test_method_ensemble_is_refused_as_not_a_soup(digit_vit, tmp_path, capsys):
    dirs = [str(d) for d in digit_vit.dirs[:2]]
    with pytest.raises(UnknownMethodError, match="reference score, not a soup.*hf-soup evaluate.*--compare"):
        hf_soup.soup(dirs, method="ensemble", output_dir=tmp_path / "soup",
                     evaluation={"dataset": digit_vit.validation})
    assert not (tmp_path / "soup").exists()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"ingredients: {json.dumps(dirs)}\nmethod: ensemble\noutput: {{dir: {tmp_path / 'out'}}}\n")
    with pytest.raises(RecipeError, match="not a soup"):
        hf_soup.load_recipe(recipe)
    assert main(["merge", "-m", dirs[0], "-m", dirs[1], "--method", "ensemble", "-o", str(tmp_path / "o")]) == 2
    assert "hf-soup evaluate" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert "ensemble" not in hf_soup.available_methods()


def test_bad_evaluation_input_fails_clearly(digit_vit):
    dirs = [str(d) for d in digit_vit.dirs[:2]]
    with pytest.raises(RecipeError, match="evaluation: required"):
        hf_soup.evaluate(dirs, evaluation=None)
    with pytest.raises(RecipeError, match="evaluation.bogus: unknown key"):
        hf_soup.evaluate(dirs, evaluation={"dataset": digit_vit.validation, "bogus": 1})
    with pytest.raises(RecipeError, match="ingredients: give a list"):
        hf_soup.evaluate([], evaluation={"dataset": digit_vit.validation})
    with pytest.raises(UnknownMethodError, match="not a soup"):
        hf_soup.evaluate(dirs, evaluation={"dataset": digit_vit.validation}, soups=["ensemble"])
    with pytest.raises(EvaluationError, match="nope"):
        hf_soup.evaluate(dirs, evaluation={"dataset": digit_vit.validation, "image_column": "nope"})


def test_cli_bad_evaluation_key_exits_2_before_any_work(digit_vit, capsys):
    assert main(["evaluate", str(digit_vit.dirs[0]), "--eval-dataset", "./val.csv", "-e", "bogus=1"]) == 2
    assert "evaluation.bogus: unknown key" in capsys.readouterr().err


def test_without_the_ensemble_no_logit_passes(digit_vit):
    dirs = [str(d) for d in digit_vit.dirs[:2]]
    result = hf_soup.evaluate(dirs, evaluation={"dataset": digit_vit.validation}, ensemble=False, device="cpu")
    logits, labels = _hand_logits(digit_vit.dirs[:2])
    assert result["ensemble_score"] is None and result["greedy_ensemble_score"] is None
    assert result["ingredient_scores"] == pytest.approx([_accuracy(logit, labels) for logit in logits], abs=1e-9)
    assert result["num_full_evaluations"] == 2 + 1  # one pass per ingredient + the uniform soup
    assert [row["kind"] for row in result["rows"]] == ["ingredient", "ingredient", "soup"]
