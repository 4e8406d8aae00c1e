"""The uniform and weighted soups end to end: correctness, loading, sharding, determinism."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import hf_soup
from conftest import MODEL_CLASS, build_model, tree_digest


def load_soup_state(path):
    index = path / "model.safetensors.index.json"
    if index.exists():
        state = {}
        for name in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(path / name))
        return state
    return load_file(path / "model.safetensors")


@pytest.mark.parametrize("arch", ["llama", "bert", "gpt2", "vit"])
def test_uniform_soup_equals_naive_float32_average(arch, make_ingredients, tmp_path):
    paths = make_ingredients(arch, 3)
    before = {p.name: tree_digest(p) for p in paths}
    result = hf_soup.soup(paths, method="uniform", output_dir=tmp_path / "soup")
    soup = load_soup_state(result.output_dir)
    inputs = [load_file(p / "model.safetensors") for p in paths]
    assert set(soup) == set(inputs[0])
    for key, value in soup.items():
        expected = torch.stack([sd[key].float() for sd in inputs]).mean(0)
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
    assert {p.name: tree_digest(p) for p in paths} == before, "inputs must never change"
    report = json.loads((result.output_dir / "soup_report.json").read_text())
    assert report["method"] == "uniform" and report["num_full_evaluations"] == 0
    assert [row["ref"] for row in report["ingredients"]] == [str(p) for p in paths]
    assert all(row["sha"] is None and row["weight"] == pytest.approx(1 / 3) for row in report["ingredients"])
    assert report["hf_soup_version"] == hf_soup.__version__ and report["timings"]["total"] > 0


@pytest.mark.parametrize("arch", ["llama", "bert", "gpt2", "vit"])
def test_soup_loads_with_from_pretrained_and_runs(arch, make_ingredients, tmp_path):
    import transformers

    paths = make_ingredients(arch, 2)
    out = hf_soup.soup(paths, output_dir=tmp_path / "soup").output_dir
    model = getattr(transformers, MODEL_CLASS[arch]).from_pretrained(out)
    state = model.state_dict()
    originals = [getattr(transformers, MODEL_CLASS[arch]).from_pretrained(p).state_dict() for p in paths]
    for key, value in state.items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(value, (originals[0][key] + originals[1][key]) / 2)
    inputs = torch.zeros(1, 1, 8, 8) if arch == "vit" else torch.arange(6).unsqueeze(0)
    with torch.no_grad():
        output = model(pixel_values=inputs) if arch == "vit" else model(input_ids=inputs)
    assert torch.isfinite(output.logits).all()
    assert (out / "config.json").exists()


def test_uniform_of_identical_models_is_the_model(make_ingredients, tmp_path):
    (path,) = make_ingredients("llama", 1)
    result = hf_soup.soup([path, path, path, path], output_dir=tmp_path / "soup")
    soup, original = load_soup_state(result.output_dir), load_file(path / "model.safetensors")
    for key in original:  # 4 equal values sum and halve exactly in float32
        assert torch.equal(soup[key], original[key]), key


def test_weighted_one_hot_reproduces_that_ingredient_bit_for_bit(make_ingredients, tmp_path):
    paths = make_ingredients("bert", 3)
    result = hf_soup.soup(paths, method="weighted", weights=[0, 1, 0], output_dir=tmp_path / "soup")
    soup, chosen = load_soup_state(result.output_dir), load_file(paths[1] / "model.safetensors")
    assert soup.keys() == chosen.keys()
    assert all(torch.equal(soup[k], chosen[k]) for k in chosen)
    assert [row["weight"] for row in result.report["ingredients"]] == [0, 1, 0]


def test_weighted_unnormalised_is_a_plain_linear_combination(make_ingredients):
    states = [build_model("llama", seed).state_dict() for seed in range(2)]
    merged = hf_soup.merge_state_dicts(states, method="weighted", weights=[2.0, -1.0], normalize=False)
    for key, value in merged.items():
        torch.testing.assert_close(value, 2 * states[0][key] - states[1][key])


def test_sharded_output_and_index(make_ingredients, tmp_path):
    paths = make_ingredients("llama", 2)
    result = hf_soup.soup(paths, output_dir=tmp_path / "soup", max_shard_size="20KB")
    out = result.output_dir
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files == sorted(p.name for p in out.glob("model-*.safetensors"))
    assert all(name.endswith(f"-of-{len(files):05d}.safetensors") for name in files)
    total = 0
    for name in files:
        shard = load_file(out / name)
        size = sum(t.numel() * t.element_size() for t in shard.values())
        assert size <= 20_000 or len(shard) == 1, "only a single oversized tensor may exceed the limit"
        assert all(index["weight_map"][k] == name for k in shard)
        total += size
    assert index["metadata"]["total_size"] == total
    unsharded = hf_soup.soup(paths, output_dir=tmp_path / "whole")
    assert load_soup_state(out).keys() == load_soup_state(unsharded.output_dir).keys()
    assert all(torch.equal(load_soup_state(out)[k], v) for k, v in load_soup_state(unsharded.output_dir).items())
    assert not (unsharded.output_dir / "model.safetensors.index.json").exists()


@pytest.mark.parametrize("method,params", [("uniform", {}), ("weighted", {"weights": [0.3, 1.7, 2.9]})])
def test_same_inputs_give_same_bytes_for_any_chunking_and_thread_count(make_ingredients, tmp_path, monkeypatch,
                                                                       method, params):
    paths = make_ingredients("gpt2", 3)
    first = hf_soup.soup(paths, output_dir=tmp_path / "a", method=method, threads=1, **params).output_dir
    second = hf_soup.soup(paths, output_dir=tmp_path / "b", method=method, threads=1, **params).output_dir
    import hf_soup.engine.chunks as chunks

    monkeypatch.setattr(chunks, "MIN_CHUNK", 7)
    monkeypatch.setattr(chunks, "MAX_CHUNK", 7)
    assert chunks.chunk_elements(3, 4) == 7
    third = hf_soup.soup(paths, output_dir=tmp_path / "c", method=method, threads=3, **params).output_dir
    monkeypatch.setattr(chunks, "MAX_CHUNK", 1000)
    fourth = hf_soup.soup(paths, output_dir=tmp_path / "d", method=method, threads=2, **params).output_dir
    digest = lambda p: tree_digest(p)["model.safetensors"]  # noqa: E731
    assert digest(first) == digest(second) == digest(third) == digest(fourth)


def test_bfloat16_ingredients_round_like_torch(make_ingredients, tmp_path):
    paths = make_ingredients("llama", 3, dtype=torch.bfloat16)
    soup = load_soup_state(hf_soup.soup(paths, output_dir=tmp_path / "soup").output_dir)
    inputs = [load_file(p / "model.safetensors") for p in paths]
    for key, value in soup.items():
        assert value.dtype == torch.bfloat16
        expected = (inputs[0][key].float() + inputs[1][key].float() + inputs[2][key].float()) / 3
        assert torch.equal(value, expected.to(torch.bfloat16)), key


def test_mixed_dtypes_compute_in_float32_and_write_the_widest(make_ingredients, tmp_path):
    (a,) = make_ingredients("llama", 1, prefix="f32")
    b = tmp_path / "bf16"
    build_model("llama", 1, torch.bfloat16).save_pretrained(b)
    result = hf_soup.soup([a, b], output_dir=tmp_path / "soup")
    soup = load_soup_state(result.output_dir)
    assert {v.dtype for v in soup.values()} == {torch.float32}
    assert result.report["alignment"]["dtype_differences"]
    forced = hf_soup.soup([a, b], output_dir=tmp_path / "forced", dtype="bfloat16")
    assert {v.dtype for v in load_soup_state(forced.output_dir).values()} == {torch.bfloat16}
    config = json.loads((forced.output_dir / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"


def test_merge_state_dicts_never_modifies_inputs():
    states = [build_model("bert", seed).state_dict() for seed in range(3)]
    copies = [{k: v.clone() for k, v in sd.items()} for sd in states]
    merged = hf_soup.merge_state_dicts(states)
    for sd, copy in zip(states, copies):
        assert all(torch.equal(sd[k], copy[k]) for k in sd)
    for key, value in merged.items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(value, sum(sd[key] for sd in states) / 3)
        else:  # integer buffers (position ids) are copied, not averaged
            assert torch.equal(value, states[0][key])


def test_a_run_builds_its_method_once(make_ingredients, tmp_path, monkeypatch):
    """parse_recipe builds the method to validate it; the run takes that object instead of building another."""
    import hf_soup.methods.registry as registry
    from hf_soup.pipeline import run_recipe
    from hf_soup.recipe import parse_recipe

    paths = make_ingredients("gpt2", 2)
    built = []
    original = registry.build_method
    monkeypatch.setattr(registry, "build_method", lambda *a, **k: built.append(a) or original(*a, **k))
    import hf_soup.recipe as recipe_module

    monkeypatch.setattr(recipe_module, "build_method", registry.build_method)
    recipe = parse_recipe({"ingredients": [str(p) for p in paths], "output": {"dir": str(tmp_path / "a")}})
    run_recipe(recipe)
    assert len(built) == 1
    recipe.output.dir = str(tmp_path / "b")  # a recipe object run again gets a fresh method
    run_recipe(recipe)
    assert len(built) == 2 and (tmp_path / "b" / "model.safetensors").exists()
