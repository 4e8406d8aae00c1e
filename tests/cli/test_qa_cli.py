"""What a user trips over on the command line: every failure is one clean ``hf-soup: error:`` line,
interrupted runs leave nothing behind, and what a soup says about itself (summary line, report,
card, the card's recipe) is true and usable."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hf_soup.cli import main

REPO = Path(__file__).resolve().parents[2]


def _flags(paths) -> list[str]:
    return sum((["-m", str(p)] for p in paths), [])


def test_output_directory_gets_the_permissions_mkdir_would_give(make_ingredients, tmp_path):
    paths = make_ingredients("bert", 2)
    old = os.umask(0o022)
    try:
        assert main(["merge", *_flags(paths), "-o", str(tmp_path / "soup")]) == 0
    finally:
        os.umask(old)
    # tempfile.mkdtemp makes 0700: nobody else (other nodes, a web server, colleagues) could read the soup
    assert stat.S_IMODE((tmp_path / "soup").stat().st_mode) == 0o755


def test_ame_rows_claim_no_weights_they_do_not_have(make_ingredients, tmp_path, capsys):
    paths = make_ingredients("bert", 3)
    assert main(["merge", *_flags(paths), "--method", "ame", "-p", "optimizer=adam", "-o", str(tmp_path / "ame")]) == 0
    report = json.loads((tmp_path / "ame" / "soup_report.json").read_text())
    # Adam over pseudogradients is no fixed average: a weight of 1/3 per ingredient would be made up
    assert [row["weight"] for row in report["ingredients"]] == [None, None, None]
    card = (tmp_path / "ame" / "README.md").read_text()
    assert "| yes |" in card and "| — | yes |" in card
    assert main(["merge", *_flags(paths), "-o", str(tmp_path / "uniform")]) == 0
    uniform = json.loads((tmp_path / "uniform" / "soup_report.json").read_text())
    assert [row["weight"] for row in uniform["ingredients"]] == pytest.approx([1 / 3] * 3)


def test_broken_card_template_fails_before_any_work_and_card_command_is_clean(make_ingredients, tmp_path, capsys):
    paths = make_ingredients("bert", 2)
    broken = tmp_path / "broken.md"
    broken.write_text("# {{ model_name }\n")
    assert main(["merge", *_flags(paths), "--card-template", str(broken), "-o", str(tmp_path / "soup")]) == 2
    err = capsys.readouterr().err
    assert "hf-soup: error: card template" in err and "line 1" in err and "Traceback" not in err
    assert not (tmp_path / "soup").exists() and not list(tmp_path.glob(".soup.hf-soup-*"))

    assert main(["merge", *_flags(paths), "-o", str(tmp_path / "soup")]) == 0
    assert main(["card", str(tmp_path / "soup"), "--template", str(broken)]) == 2
    assert "card template" in capsys.readouterr().err
    undefined = tmp_path / "undefined.md"
    undefined.write_text("{{ no_such_variable.attribute }}\n")
    assert main(["card", str(tmp_path / "soup"), "--template", str(undefined)]) == 2
    assert "'no_such_variable' is undefined" in capsys.readouterr().err
    (tmp_path / "soup" / "soup_report.json").write_text('{"method": ')
    assert main(["card", str(tmp_path / "soup")]) == 1
    assert "soup_report.json is not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    ("text,label\n", "holds no rows"),
    ("", "cannot read"),
    ('text,label\n"unterminated,1\n', "cannot read"),
])
def test_unreadable_evaluation_csv_is_an_evaluation_error(content, message, tmp_path):
    from hf_soup.errors import EvaluationError
    from hf_soup.evaluation.data import load_split
    from hf_soup.evaluation.spec import EvaluationSpec

    path = tmp_path / "val.csv"
    path.write_text(content)
    with pytest.raises(EvaluationError, match=message):
        load_split(EvaluationSpec(dataset=str(path)))


def test_inspect_json_prints_json_for_an_ingredient_error(make_ingredients, tmp_path, capsys):
    paths = make_ingredients("bert", 1)
    tokenizer_only = tmp_path / "tokenizer"
    tokenizer_only.mkdir()
    (tokenizer_only / "tokenizer_config.json").write_text("{}")
    assert main(["inspect", str(paths[0]), str(tokenizer_only), "--json"]) == 1
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["ok"] is False and summary["error_type"] == "NoWeightsError" and "no weights" in summary["error"]
    assert "hf-soup: error:" in err


def test_mistyped_local_path_that_looks_like_a_repo_id_gets_a_path_hint(make_ingredients, tmp_path, monkeypatch, capsys):
    paths = make_ingredients("bert", 1)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "run-a").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: no network needed
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert main(["merge", "-m", str(paths[0]), "-m", "runs/run-b", "-o", "soup"]) == 1
    err = capsys.readouterr().err
    assert "If you meant a local folder: runs/run-b does not exist (runs/ holds run-a)" in err
    assert not (tmp_path / "soup").exists()


def test_same_checkpoint_twice_is_warned_about(make_ingredients, tmp_path, caplog):
    paths = make_ingredients("bert", 2)
    with caplog.at_level("WARNING", logger="hf_soup"):
        assert main(["merge", "-m", str(paths[0]), "-m", str(paths[1]), "-m", f"{paths[0]}/",
                     "-o", str(tmp_path / "soup")]) == 0
    assert "ingredients[2]" in caplog.text and "same checkpoint as ingredients[0]" in caplog.text
    assert "counts 2 times in the soup" in caplog.text


def test_a_third_copy_is_counted_as_such(make_ingredients, tmp_path, caplog):
    paths = make_ingredients("bert", 2)
    with caplog.at_level("WARNING", logger="hf_soup"):
        assert main(["merge", "-m", str(paths[0]), "-m", str(paths[1]), "-m", f"{paths[0]}/", "-m", str(paths[0]),
                     "-o", str(tmp_path / "soup")]) == 0
    assert "ingredients[2], ingredients[3]" in caplog.text and "are the same checkpoint as ingredients[0]" in caplog.text
    assert "it is 3 of the 4 ingredients, so it counts 3 times in the soup" in caplog.text
    assert caplog.text.count("same checkpoint") == 1


_BLOCKING_CHILD = """
import sys, time
from pathlib import Path
import hf_soup.output.files as output
real = output.write_index
def blocked(*args, **kwargs):  # the shards are written into the staging folder; wait for Ctrl-C here
    Path(sys.argv[1]).write_text("ready")
    time.sleep(60)
output.write_index = blocked
from hf_soup.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_ctrl_c_mid_merge_exits_130_and_leaves_nothing(make_ingredients, tmp_path):
    paths = make_ingredients("bert", 2)
    ready = tmp_path / "ready"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, "-c", _BLOCKING_CHILD, str(ready), "merge", *_flags(paths),
                              "-o", str(tmp_path / "out" / "soup")], env=env, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if ready.exists() or child.poll() is not None:
                break
            time.sleep(0.1)
        assert ready.exists(), "the merge never reached the shard index"
        assert list((tmp_path / "out").glob(".soup.hf-soup-*")), "expected a staging folder mid-merge"
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130
    assert "hf-soup: interrupted" in err and "Traceback" not in err
    assert list((tmp_path / "out").iterdir()) == []


from fixtures_classifiers import digit_bert  # noqa: E402,F401  (session fixture, trained once)


def test_the_cards_recipe_reproduces_an_evaluated_soup(digit_bert, tmp_path, capsys):
    csv = tmp_path / "val.csv"
    digit_bert.validation.select(range(48)).to_csv(str(csv), index=False)
    first = tmp_path / "greedy"
    argv = ["merge", *_flags(digit_bert.dirs[:3]), "--method", "greedy", "--eval-dataset", str(csv),
            "-e", "batch_size=16", "-o", str(first)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    report = json.loads((first / "soup_report.json").read_text())
    kept = sum(row["kept"] for row in report["ingredients"])
    assert (f"{kept} of 3 ingredients kept" if kept < 3 else "3 ingredients,") in out
    assert f"Full evaluations: {report['num_full_evaluations']} (" in out
    assert f"Validation accuracy: {report['score']:.4f} on" in out and "(chosen on this split: in-sample)" in out

    # the "Reproduce this soup" recipe of the card must run as written and give the same soup
    card = (first / "README.md").read_text()
    recipe_yaml = card.split("## Reproduce this soup")[1].split("```yaml\n")[1].split("```")[0]
    from hf_soup.output.reproduce import card_recipe

    assert yaml.safe_load(recipe_yaml) == card_recipe(report)  # the report's, less where it was written
    assert "output" not in yaml.safe_load(recipe_yaml) and report["recipe"]["output"]["dir"] == str(first)
    assert report["recipe"]["evaluation"] == {"dataset": str(csv), "batch_size": 16}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_yaml)
    assert main(["merge", str(recipe), "-o", str(tmp_path / "again")]) == 0, capsys.readouterr().err
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (first / "model.safetensors").read_bytes()


def test_overwrite_never_deletes_the_ingredients_or_the_data(make_ingredients, tmp_path, capsys):
    from conftest import tree_digest

    paths = make_ingredients("bert", 2)  # tmp_path/run-bert-0, tmp_path/run-bert-1
    for output in (paths[1], tmp_path):  # an ingredient itself, and the folder that holds both
        assert main(["merge", *_flags(paths), "-o", str(output), "--overwrite"]) == 1
        err = capsys.readouterr().err
        assert "hf-soup: error: output directory" in err and "holds no soup" in err
    data = tmp_path / "data"
    data.mkdir()
    (data / "val.csv").write_text("text,label\np1 p2,0\n")
    (data / "soup_report.json").write_text("{}")  # even a folder that looks like a soup is kept when it holds the data
    before = tree_digest(tmp_path)
    assert main(["merge", *_flags(paths), "--method", "greedy", "--eval-dataset", str(data / "val.csv"),
                 "-o", str(data), "--overwrite"]) == 2
    assert "val.csv, which this soup reads" in capsys.readouterr().err
    assert tree_digest(tmp_path) == before


def test_bad_push_repo_id_fails_before_the_merge(make_ingredients, tmp_path, capsys):
    paths = make_ingredients("bert", 2)
    assert main(["merge", *_flags(paths), "-o", str(tmp_path / "soup"), "--push-to-hub", "my soup"]) == 2
    err = capsys.readouterr().err
    assert "push_to_hub.repo_id: 'my soup' is not a Hub repo ID" in err
    assert not (tmp_path / "soup").exists()  # not merged first and then refused by the Hub


@pytest.mark.parametrize("flags, message", [
    (["--config-from", "5"], "hf-soup: error: command line: output.config_from: 5 is not an ingredient index"),
    (["--rank", "16"], "hf-soup: error: command line: output.rank applies to output.format: adapter only"),
])
def test_recipe_level_errors_name_the_field_once(flags, message, make_ingredients, tmp_path, capsys):
    paths = make_ingredients("bert", 2)
    assert main(["merge", *_flags(paths), *flags, "-o", str(tmp_path / "soup")]) == 2
    assert message in capsys.readouterr().err


def test_card_heading_grammar_and_paper_links_read_right(make_ingredients, tmp_path):
    from hf_soup.output.card import template_context

    paths = make_ingredients("bert", 1)
    assert main(["merge", "-m", str(paths[0]), "-o", str(tmp_path / "my-bert-soup")]) == 0
    card = (tmp_path / "my-bert-soup" / "README.md").read_text()
    assert "\n# my-bert-soup\n" in card  # not "# soup" for every local soup
    assert "the weights of 1 fine-tuned checkpoint (" in card
    learned = template_context({"method": "learned"}, "./soup")
    assert learned["paper_title"].startswith("Scalable Learned Model Soup on a Single GPU")
    assert template_context({"method": "radin"}, "me/soup")["model_name"] == "soup"


def test_gpt2_lm_head_model_is_a_causal_lm_for_evaluation_and_the_card(make_ingredients, tmp_path):
    from transformers import GPT2Config

    from hf_soup.output.card_metadata import pipeline_from_architectures
    from hf_soup.evaluation.task_model import architecture_of, task_of

    # GPT2LMHeadModel is what GPT-2 fine-tunes are saved as; it is no *ForCausalLM by name
    config = GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, architectures=["GPT2LMHeadModel"])
    assert architecture_of(config) == ("GPT2LMHeadModel", "causal-lm")
    assert task_of("LlamaForCausalLM") == "causal-lm" and task_of("T5WithLMHeadModel") is None
    assert pipeline_from_architectures(["GPT2LMHeadModel"]) == "text-generation"


@pytest.mark.parametrize("pivot", ["first", "soup"])
def test_greedy_ame_report_keeps_only_the_ingredients_its_result_depends_on(pivot, digit_bert, tmp_path):
    import hf_soup

    result = hf_soup.soup([str(d) for d in digit_bert.dirs[:3]], method="ame_greedy", pivot=pivot, order="descending",
                          output_dir=tmp_path / "soup",
                          evaluation={"dataset": digit_bert.validation.select(range(48)), **digit_bert.columns})
    details = result.report["details"]
    accepted = {s["step"] for s in details["steps"] if s["kept"]}
    used = {i for s in details["steps"] if s["step"] in accepted for i in s["batch"]}
    expected = used | ({details["pivot_ingredient"]} if pivot == "first" else {0, 1, 2})
    rows = result.report["ingredients"]
    assert {i for i, row in enumerate(rows) if row["kept"]} == expected
    assert all(row["weight"] == 0.0 for row in rows if not row["kept"])


@pytest.mark.parametrize("flags, message", [
    (["--method", "weigthed"], "unknown soup method 'weigthed' (did you mean 'weighted'?)"),
    (["--method", "weighted", "-p", "weight=[1,2]"], "method.weight: unknown key (did you mean 'weights'?)"),
])
def test_typos_get_a_suggestion(flags, message, make_ingredients, tmp_path, capsys):
    paths = make_ingredients("bert", 2)
    assert main(["merge", *_flags(paths), *flags, "-o", str(tmp_path / "soup")]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--ingredients", "10"], "--ingredients: 10 is out of range; give a number between 2 and"),
    (["--workdir", "FILE"], "is a file; give a folder"),
])
def test_demo_bad_options_are_clean_errors(flags, message, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["demo", *[str(afile) if f == "FILE" else f for f in flags]]) == 2
    assert message in capsys.readouterr().err


def test_an_evaluation_a_data_free_soup_ignores_is_warned_about(make_ingredients, tmp_path, caplog):
    paths = make_ingredients("bert", 2)
    (tmp_path / "val.csv").write_text("text,label\nhello,0\n")
    with caplog.at_level("WARNING", logger="hf_soup"):
        assert main(["merge", *_flags(paths), "--eval-dataset", str(tmp_path / "val.csv"), "-o", str(tmp_path / "s")]) == 0
    assert "the evaluation is not used: method 'uniform' is data-free" in caplog.text


def test_output_may_be_written_as_a_bare_folder_in_a_recipe(make_ingredients, tmp_path):
    paths = make_ingredients("bert", 2)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"ingredients": [str(p) for p in paths], "output": str(tmp_path / "soup")}))
    assert main(["merge", str(recipe), "--dtype", "bfloat16"]) == 0  # with a flag that edits output
    assert (tmp_path / "soup" / "model.safetensors").is_file()


def test_push_to_hub_may_be_a_bare_repo_id_in_a_recipe():
    from hf_soup.recipe import parse_recipe

    assert parse_recipe({"ingredients": ["./a"], "push_to_hub": "me/my-soup"}).push_to_hub.repo_id == "me/my-soup"


def test_output_that_cannot_be_created_is_a_clean_error(make_ingredients, tmp_path, capsys):
    paths = make_ingredients("bert", 2)
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["merge", *_flags(paths), "-o", str(afile / "soup")]) == 1
    assert f"{afile} is a file, not a folder" in capsys.readouterr().err
    if Path("/proc/self").is_dir():  # Linux: nothing can be created in /proc, not even by root
        assert main(["merge", *_flags(paths), "-o", "/proc/hf-soup-test"]) == 1
        err = capsys.readouterr().err
        assert "hf-soup: error: cannot create the output directory /proc/hf-soup-test" in err and "Traceback" not in err


def test_a_split_a_single_split_source_cannot_have_is_warned_about(tmp_path, caplog):
    from hf_soup.evaluation.data import load_split
    from hf_soup.evaluation.spec import EvaluationSpec

    (tmp_path / "val.csv").write_text("text,label\nhello,0\n")
    with caplog.at_level("WARNING", logger="hf_soup"):
        assert len(load_split(EvaluationSpec(dataset=str(tmp_path / "val.csv"), split="test"))) == 1
    assert "evaluation.split: 'test' is ignored" in caplog.text


def test_learned_test_split_of_a_single_split_dataset_is_refused(digit_bert, tmp_path, capsys):
    folder = tmp_path / "val"
    digit_bert.validation.select(range(32)).save_to_disk(str(folder))  # a Dataset: one split only
    argv = ["merge", *_flags(digit_bert.dirs[:2]), "--method", "learned", "-p", "test_split=test",
            "--eval-dataset", str(folder), "-o", str(tmp_path / "soup")]
    assert main(argv) == 1
    # before: the "held-out test" score was computed on the very rows the coefficients were trained on
    assert "split 'test' cannot be taken from the evaluation dataset: it has a single split" in capsys.readouterr().err
    assert not (tmp_path / "soup").exists()


def test_evaluate_header_has_no_none_split(digit_bert, tmp_path, capsys):
    csv = tmp_path / "val.csv"
    digit_bert.validation.select(range(24)).to_csv(str(csv), index=False)
    assert main(["evaluate", *map(str, digit_bert.dirs[:2]), "--eval-dataset", str(csv)]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("accuracy on 24 examples, ") and "None" not in header


def test_quiet_merge_prints_no_datasets_progress_bars(digit_bert, tmp_path, capfd):
    csv = tmp_path / "fresh.csv"  # a file datasets has not cached yet: it would draw "Generating train split"
    digit_bert.validation.select(range(24)).to_csv(str(csv), index=False)
    capfd.readouterr()
    argv = ["merge", *_flags(digit_bert.dirs[:2]), "--method", "greedy", "--eval-dataset", str(csv), "--quiet",
            "-o", str(tmp_path / "soup")]
    assert main(argv) == 0
    err = capfd.readouterr().err
    assert "Generating" not in err and "examples/s" not in err
    import datasets

    assert datasets.is_progress_bar_enabled()  # restored for the caller


def test_a_lone_ingredient_is_warned_about(make_ingredients, tmp_path, caplog):
    (path,) = make_ingredients("bert", 1)
    with caplog.at_level("WARNING", logger="hf_soup"):
        assert main(["inspect", str(path)]) == 0
    assert "only one ingredient" in caplog.text and "at least two" in caplog.text
    caplog.clear()
    paths = make_ingredients("bert", 2, prefix="pair")
    with caplog.at_level("WARNING", logger="hf_soup"):
        assert main(["inspect", *map(str, paths)]) == 0
    assert "only one ingredient" not in caplog.text
