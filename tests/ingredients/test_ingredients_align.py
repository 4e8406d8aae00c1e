"""Ingredient kinds and key alignment: checkpoints, bare files, wrapped prefixes, tied weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import hf_soup
from conftest import build_model
from hf_soup.ingredients import parse_ref
from hf_soup.errors import IngredientNotFoundError, RecipeError


def test_parse_refs():
    assert parse_ref("org/model").kind == "hub"
    assert parse_ref("gpt2").kind == "hub"
    ref = parse_ref({"model": "org/model", "revision": "abc123"})
    assert (ref.name, ref.revision, str(ref)) == ("org/model", "abc123", "org/model@abc123")
    assert parse_ref("org/model@v2").revision == "v2"
    with pytest.raises(IngredientNotFoundError, match="neither an existing path"):
        parse_ref("./missing/folder")
    with pytest.raises(RecipeError, match="names revision 'v2' but revision: 'v3'"):
        parse_ref({"model": "org/model@v2", "revision": "v3"})


def test_trainer_checkpoint_folders_ignore_optimizer_state(tmp_path):
    runs = []
    for seed in range(2):
        checkpoint = tmp_path / f"out-{seed}" / "checkpoint-500"
        build_model("bert", seed).save_pretrained(checkpoint)
        torch.save({"state": {}}, checkpoint / "optimizer.pt")
        (checkpoint / "trainer_state.json").write_text("{}")
        torch.save({"lr": 1.0}, checkpoint / "training_args.bin")
        runs.append(checkpoint)
    result = hf_soup.soup(runs, output_dir=tmp_path / "soup")
    files = sorted(p.name for p in result.output_dir.iterdir())
    assert files == ["README.md", "config.json", "model.safetensors", "soup_report.json"]


def test_bare_safetensors_files_make_a_state_dict_soup(tmp_path):
    files = []
    for seed in range(3):
        path = tmp_path / f"weights-{seed}.safetensors"
        save_file({k: v.contiguous() for k, v in build_model("llama", seed).state_dict().items()}, path)
        files.append(path)
    result = hf_soup.soup(files, output_dir=tmp_path / "soup")
    assert not (result.output_dir / "config.json").exists()
    merged = load_file(result.output_dir / "model.safetensors")
    inputs = [load_file(f) for f in files]
    for key, value in merged.items():
        torch.testing.assert_close(value, sum(sd[key] for sd in inputs) / 3)


def test_wrapper_prefixes_are_normalised(make_ingredients, tmp_path):
    (plain,) = make_ingredients("llama", 1)
    wrapped = tmp_path / "ddp-compiled.safetensors"
    state = load_file(plain / "model.safetensors")
    save_file({f"module._orig_mod.{k}": v for k, v in state.items()}, wrapped)
    result = hf_soup.soup([plain, wrapped], output_dir=tmp_path / "soup")
    merged = load_file(result.output_dir / "model.safetensors")
    assert set(merged) == set(state)
    assert all(torch.equal(merged[k], state[k]) for k in state)


def test_tied_lm_head_omitted_by_some_ingredients_is_not_a_mismatch(make_ingredients, tmp_path):
    paths = make_ingredients("gpt2", 2)  # GPT-2 ties lm_head to wte and omits it on save
    untied_copy = tmp_path / "explicit-head"
    state = load_file(paths[1] / "model.safetensors")
    assert "lm_head.weight" not in state
    state["lm_head.weight"] = state["transformer.wte.weight"].clone()
    explicit_dir = untied_copy
    explicit_dir.mkdir()
    (explicit_dir / "config.json").write_bytes((paths[1] / "config.json").read_bytes())
    save_file(state, explicit_dir / "model.safetensors", metadata={"format": "pt"})
    result = hf_soup.soup([paths[0], explicit_dir], output_dir=tmp_path / "soup")
    merged = load_file(result.output_dir / "model.safetensors")
    assert "lm_head.weight" not in merged, "the reference ties the head, so the soup does too"
    assert result.report["alignment"]["tied_weights"] == [
        {"ingredient": str(paths[0]), "key": "lm_head.weight", "tied_to": "transformer.wte.weight"}
    ]
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(result.output_dir)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    # reversed: the reference stores the head; the other ingredient's embedding stands in for it
    reverse = hf_soup.soup([explicit_dir, paths[0]], output_dir=tmp_path / "reverse")
    merged = load_file(reverse.output_dir / "model.safetensors")
    torch.testing.assert_close(merged["lm_head.weight"], merged["transformer.wte.weight"])


def test_integer_buffers_are_copied_not_averaged(tmp_path):
    states = []
    for seed in range(2):
        state = {k: v.clone() for k, v in build_model("bert", seed).state_dict().items()}
        state["counter"] = torch.tensor([seed * 10 + 1, 2], dtype=torch.int64)
        states.append(state)
    merged = hf_soup.merge_state_dicts(states)
    assert torch.equal(merged["counter"], torch.tensor([1, 2]))
