"""The generated model card: metadata the Hub reads, and a body that says how the soup was made."""

from __future__ import annotations

import argparse
import json

import pytest
from huggingface_hub import ModelCard

import hf_soup
from hf_soup.output.card import render_card, write_card
from hf_soup.errors import HfSoupError, HubError, RecipeError
from hf_soup.cli.hub import add_card_parser, add_push_parser

SHA_A, SHA_B = "a" * 40, "b" * 40


def _report(**changes) -> dict:
    report = {
        "hf_soup_version": "0.1.0", "method": "weighted", "parameters": {"weights": [0.25, 0.75], "normalize": True},
        "details": {}, "num_full_evaluations": 0, "score": None, "evaluation": None,
        "ingredients": [
            {"ref": "org/a", "repo_id": "org/a", "sha": SHA_A, "kept": True, "weight": 0.25, "license": "mit",
             "pipeline_tag": "image-classification"},
            {"ref": "org/b@v1", "repo_id": "org/b", "sha": SHA_B, "kept": True, "weight": 0.75, "license": "mit",
             "pipeline_tag": "image-classification"},
        ],
        "model": {"model_type": "vit", "architectures": ["ViTForImageClassification"]},
        "recipe": {"ingredients": [{"model": "org/a", "revision": SHA_A}, {"model": "org/b", "revision": SHA_B}],
                   "method": {"name": "weighted", "params": {"weights": [0.25, 0.75]}}},
    }
    report.update(changes)
    return report


def test_metadata_round_trips_through_model_card_load(tmp_path):
    report = _report(score=0.875, num_full_evaluations=4,
                     evaluation={"dataset": "org/digits", "split": "test", "metric": "accuracy"})
    path = tmp_path / "README.md"
    path.write_text(str(render_card(report, repo_id="me/soup")))

    card = ModelCard.load(path)

    assert card.data.base_model == ["org/a", "org/b"]
    assert card.data.base_model_relation == "merge"
    assert card.data.license == "mit"
    assert card.data.pipeline_tag == "image-classification"
    assert card.data.library_name == "transformers"
    assert card.data.tags == ["hf-soup", "model-soup", "merge", "weighted"]
    assert card.data.datasets == ["org/digits"]
    (result,) = card.data.eval_results
    assert (result.dataset_type, result.dataset_split, result.metric_type, result.metric_value) == (
        "org/digits", "test", "accuracy", 0.875)
    assert card.data.model_name == "me/soup"
    for needle in ("| 0.25 |", "| 0.75 |", f"/org/b/tree/{SHA_B}", "weights:\n- 0.25\n- 0.75",
                   f"revision: {SHA_B}", 'ViTForImageClassification.from_pretrained("me/soup")', "**0.8750** accuracy"):
        assert needle in card.text


def test_no_evaluation_means_no_model_index_and_local_ingredients_are_not_base_models():
    report = _report()
    report["ingredients"][1] = {"ref": "/data/run-2", "repo_id": None, "sha": None, "kept": True, "weight": 0.75}
    card = render_card(report)
    assert card.data.eval_results is None and card.data.datasets is None
    assert card.data.base_model == ["org/a"]
    assert card.data.license is None  # the local ingredient states none: no agreement
    assert "`/data/run-2` | local |" in card.text


def test_dropped_ingredients_are_listed_but_not_base_models():
    report = _report(method="greedy")
    report["ingredients"][1].update(kept=False, weight=0.0, score=0.5)
    report["ingredients"][0]["score"] = 0.9
    card = render_card(report)
    assert card.data.base_model == ["org/a"]
    assert "| 0.5000 | 0 | no |" in card.text and "chosen from 2" in card.text


def test_state_dict_soup_has_no_library_and_a_safetensors_loading_example():
    card = render_card(_report(model={"model_type": None, "architectures": None}, ingredients=[
        {"ref": "a.safetensors", "repo_id": None, "sha": None, "kept": True, "weight": 1.0}]))
    assert card.data.library_name is None and card.data.base_model is None
    assert "base_model_relation" not in card.data.to_dict()
    assert "load_file" in card.text


def test_card_command_regenerates_readme_from_the_report_with_a_custom_template(make_ingredients, tmp_path, capsys):
    soup = hf_soup.soup(make_ingredients("bert", 2), output_dir=tmp_path / "soup").output_dir
    default = (soup / "README.md").read_text()
    assert "model-soup" in default and "uniform" in default
    template = tmp_path / "mine.md"
    template.write_text("---\n{{ card_data }}\n---\n\nSoup by {{ method }} of {{ ingredients | length }} models.\n")

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_card_parser(sub)
    add_push_parser(sub)
    args = parser.parse_args(["card", str(soup), "--template", str(template)])
    assert args.handler(args) == 0

    card = ModelCard.load(soup / "README.md")
    assert card.text.strip() == "Soup by uniform of 2 models."
    assert card.data.tags == ["hf-soup", "model-soup", "merge", "uniform"]
    assert "Model card written to" in capsys.readouterr().out


def test_card_errors_name_what_is_missing(tmp_path):
    with pytest.raises(HfSoupError, match="no soup_report.json"):
        write_card(tmp_path)
    with pytest.raises(RecipeError, match="does not exist"):
        render_card(_report(), template_path=tmp_path / "missing.md")


def test_regenerating_a_card_with_an_undecodable_name_keeps_a_readable_readme(make_ingredients, tmp_path):
    import json

    soup = hf_soup.soup(make_ingredients("bert", 2), output_dir=tmp_path / "soup").output_dir
    report = json.loads((soup / "soup_report.json").read_text())
    report["ingredients"][0]["name"] = report["ingredients"][0]["ref"] = "run-\udcff"  # a non-UTF-8 path byte
    (soup / "soup_report.json").write_text(json.dumps(report))  # json escapes the lone surrogate

    write_card(soup)

    text = (soup / "README.md").read_text(encoding="utf-8")
    assert "run-?" in text and "model-soup" in text
    assert sorted(p.name for p in soup.iterdir() if p.name.startswith(".")) == []


def test_card_tags_name_the_chosen_method_only_and_skip_empty_parameters(make_ingredients, tmp_path):
    from huggingface_hub import ModelCard

    soup = hf_soup.soup(make_ingredients("bert", 2), output_dir=tmp_path / "soup").output_dir
    card = ModelCard.load(soup / "README.md")
    assert card.data.tags == ["hf-soup", "model-soup", "merge", "uniform"]
    assert "## Parameters" not in card.text and "\n\n\n\n" not in card.text
    report = json.loads((soup / "soup_report.json").read_text())
    report["method"], report["details"]["plan_method"] = "greedy", "uniform"
    assert render_card(report).data.tags == ["hf-soup", "model-soup", "merge", "greedy"]
    weighted = hf_soup.soup(make_ingredients("bert", 2, prefix="w"), method="weighted", weights=[1, 3],
                            output_dir=tmp_path / "weighted").output_dir
    assert "## Parameters" in (weighted / "README.md").read_text()


def test_push_refuses_a_folder_that_is_not_a_soup_and_a_bad_repo_id_before_any_network(make_ingredients, tmp_path):
    from hf_soup.output.push import push_soup

    (plain,) = make_ingredients("bert", 1)
    with pytest.raises(HubError, match="no soup_report.json"):
        push_soup(plain, "me/not-a-soup")
    soup = hf_soup.soup(make_ingredients("bert", 2, prefix="s"), output_dir=tmp_path / "soup").output_dir
    with pytest.raises(HubError, match="not a valid Hub repo ID"):
        push_soup(soup, "me/bad name with spaces")
