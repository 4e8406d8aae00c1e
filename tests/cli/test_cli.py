"""The ``hf-soup`` command: merge (flags and recipes), inspect, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hf_soup.cli import main


def test_merge_with_flags(make_ingredients, tmp_path, capsys):
    paths = make_ingredients("llama", 3)
    argv = ["merge", *sum((["-m", str(p)] for p in paths), []), "--method", "weighted",
            "--param", "weights=[1, 1, 2]", "-o", str(tmp_path / "soup"), "--max-shard-size", "30KB"]
    assert main(argv) == 0
    assert "Soup written to" in capsys.readouterr().out
    report = json.loads((tmp_path / "soup" / "soup_report.json").read_text())
    assert report["method"] == "weighted" and report["parameters"]["weights"] == [1, 1, 2]
    assert [row["weight"] for row in report["ingredients"]] == [0.25, 0.25, 0.5]
    assert (tmp_path / "soup" / "model.safetensors.index.json").exists()


def test_merge_recipe_with_overrides(make_ingredients, tmp_path, capsys):
    paths = make_ingredients("bert", 2)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "ingredients": [str(p) for p in paths],
        "method": {"name": "weighted", "weights": [1, 0]},
        "output": {"dir": str(tmp_path / "from-recipe"), "dtype": "float32"},
    }))
    assert main(["merge", str(recipe), "--dtype", "bfloat16", "-o", str(tmp_path / "override")]) == 0
    merged = load_file(tmp_path / "override" / "model.safetensors")
    original = load_file(paths[0] / "model.safetensors")
    assert all(merged[k].dtype == torch.bfloat16 for k in merged if original[k].dtype.is_floating_point)
    assert torch.equal(merged["classifier.weight"], original["classifier.weight"].to(torch.bfloat16))
    assert not (tmp_path / "from-recipe").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ({"ingredients": ["a"], "methd": "uniform"}, "methd: unknown key"),
        ({"ingredients": ["./x"], "method": {"name": "weighted", "weights": "heavy"}}, "method.weights"),
        ({"method": "uniform"}, "ingredients"),
        ("- just\n- a list", "expected a mapping"),
    ],
)
def test_bad_recipes_exit_2_with_the_field_named(content, message, tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    assert main(["merge", str(recipe), "-o", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_inspect_json_and_exit_codes(make_ingredients, tmp_path, capsys):
    good = make_ingredients("gpt2", 2)
    assert main(["inspect", *map(str, good), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] and summary["model_types"] == ["gpt2", "gpt2"]
    assert summary["num_parameters"] == sum(v.numel() for v in load_file(good[0] / "model.safetensors").values())
    assert summary["shared_keys"] == summary["num_tensors"]
    (other,) = make_ingredients("gpt2", 1, prefix="wide", n_embd=64)
    assert main(["inspect", str(good[0]), str(other)]) == 1
    text = capsys.readouterr().out
    assert "cannot be souped" in text and "transformer.h.0.attn.c_attn.weight" in text and "[64, 192]" in text


def test_python_dash_m_is_the_same_command(make_ingredients, tmp_path):
    paths = make_ingredients("llama", 2)
    done = subprocess.run([sys.executable, "-m", "hf_soup", "merge", "-m", str(paths[0]), "-m", str(paths[1]),
                           "-o", str(tmp_path / "soup")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "soup" / "model.safetensors").exists()
    again = subprocess.run([sys.executable, "-m", "hf_soup", "merge", "-m", str(paths[0]), "-m", str(paths[1]),
                            "-o", str(tmp_path / "soup")], capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "--overwrite" in again.stderr


def test_data_free_merge_does_not_import_torch(make_ingredients, tmp_path):
    paths = make_ingredients("llama", 2)
    code = ("import sys; from hf_soup.cli import main; "
            f"rc = main(['merge', '-m', {str(paths[0])!r}, '-m', {str(paths[1])!r}, '-o', {str(tmp_path / 'soup')!r}]); "
            "print(sorted(m for m in ('torch', 'transformers', 'accelerate', 'datasets') if m in sys.modules)); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_methods_lists_every_method_with_its_summary(capsys):
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert names == sorted(["uniform", "weighted", "ame", "ame_greedy", "greedy", "radin", "learned",
                            "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties",
                            "della", "della_linear", "model_stock", "slerp", "nuslerp"])
    assert "[needs base_model]" in next(line for line in lines if line.startswith("ties "))
    assert "[needs base_model]" not in next(line for line in lines if line.startswith("nuslerp "))
    greedy = next(line for line in lines if line.startswith("greedy "))
    assert "greedy soup" in greedy and "[needs evaluation]" in greedy
    assert "[needs evaluation]" not in next(line for line in lines if line.startswith("uniform "))
