"""Every bad input gets its specific error, and nothing is left at (or taken from) the destination."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

import hf_soup
from conftest import build_model, tree_digest
from hf_soup.errors import (
    AlignmentError,
    CorruptWeightsError,
    IngredientNotFoundError,
    MethodParameterError,
    NoWeightsError,
    OutputExistsError,
    RecipeError,
    UnknownMethodError,
)


def assert_untouched(tmp_path, destination):
    assert not destination.exists()
    assert not [p for p in tmp_path.iterdir() if ".hf-soup-" in p.name], "staging directory left behind"


def test_different_model_types_are_refused(make_ingredients, tmp_path):
    (bert,) = make_ingredients("bert", 1)
    (llama,) = make_ingredients("llama", 1)
    with pytest.raises(AlignmentError, match="different model types.*bert.*llama"):
        hf_soup.soup([bert, llama], output_dir=tmp_path / "soup")
    assert_untouched(tmp_path, tmp_path / "soup")


def test_different_shapes_are_refused_with_the_first_differences(make_ingredients, tmp_path):
    (small,) = make_ingredients("llama", 1, prefix="small")
    (wide,) = make_ingredients("llama", 1, prefix="wide", intermediate_size=96)
    with pytest.raises(AlignmentError) as caught:
        hf_soup.soup([small, wide], output_dir=tmp_path / "soup")
    first = caught.value.differences[0]
    assert first["key"].endswith("mlp.down_proj.weight") or "mlp" in first["key"]
    assert "[32, 64]" in str(caught.value) or "[64, 32]" in str(caught.value)
    assert "[32, 96]" in str(caught.value) or "[96, 32]" in str(caught.value)
    assert_untouched(tmp_path, tmp_path / "soup")


def _drop_key(path, key):
    from safetensors.torch import load_file

    state = load_file(path / "model.safetensors")
    del state[key]
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})


def test_missing_keys_error_skip_and_first(make_ingredients, tmp_path):
    paths = make_ingredients("bert", 2)
    dropped = "classifier.bias"
    _drop_key(paths[1], dropped)
    with pytest.raises(AlignmentError, match="(?s)classifier.bias: missing in .*run-bert-1.*on_missing"):
        hf_soup.soup(paths, output_dir=tmp_path / "soup")
    assert_untouched(tmp_path, tmp_path / "soup")
    skipped = hf_soup.soup(paths, output_dir=tmp_path / "skip", on_missing="skip")
    from safetensors.torch import load_file

    assert dropped not in load_file(skipped.output_dir / "model.safetensors")
    assert skipped.report["alignment"]["skipped_keys"] == [dropped]
    first = hf_soup.soup(paths, output_dir=tmp_path / "first", on_missing="first")
    original = load_file(paths[0] / "model.safetensors")[dropped]
    assert torch.equal(load_file(first.output_dir / "model.safetensors")[dropped], original)


def test_existing_destination_is_kept_without_overwrite(make_ingredients, tmp_path):
    paths = make_ingredients("llama", 2)
    destination = tmp_path / "soup"
    destination.mkdir()
    (destination / "keep.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        hf_soup.soup(paths, output_dir=destination)
    assert (destination / "keep.txt").read_text() == "precious"
    with pytest.raises(OutputExistsError, match="holds no soup"):  # overwrite replaces only soups (issue 17)
        hf_soup.soup(paths, output_dir=destination, overwrite=True)
    assert (destination / "keep.txt").read_text() == "precious"
    (destination / "soup_report.json").write_text("{}")  # a previous soup is replaced
    hf_soup.soup(paths, output_dir=destination, overwrite=True)
    assert not (destination / "keep.txt").exists() and (destination / "model.safetensors").exists()


def test_failed_merge_leaves_previous_output_intact(make_ingredients, tmp_path):
    paths = make_ingredients("llama", 2)
    destination = hf_soup.soup(paths, output_dir=tmp_path / "soup").output_dir
    good = tree_digest(destination)
    (tmp_path / "broken").mkdir()
    shutil.copy(paths[1] / "config.json", tmp_path / "broken" / "config.json")
    data = (paths[1] / "model.safetensors").read_bytes()
    (tmp_path / "broken" / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptWeightsError, match="truncated"):
        hf_soup.soup([paths[0], tmp_path / "broken"], output_dir=destination, overwrite=True)
    assert tree_digest(destination) == good


def test_failure_during_writing_leaves_nothing(make_ingredients, tmp_path):
    from hf_soup.methods.base import TensorMethod
    from hf_soup.methods.registry import register_method

    @register_method
    class Exploding(TensorMethod):
        name = "exploding-test"
        calls = 0

        def merge(self, info, chunks):
            Exploding.calls += 1
            if Exploding.calls > 3:
                raise RuntimeError("boom")
            return chunks[0]

    paths = make_ingredients("llama", 2)
    with pytest.raises(RuntimeError, match="boom"):
        hf_soup.soup(paths, method="exploding-test", output_dir=tmp_path / "soup")
    assert_untouched(tmp_path, tmp_path / "soup")


def test_unresolvable_references(tmp_path):
    with pytest.raises(IngredientNotFoundError, match="neither an existing path nor a Hub repo ID"):
        hf_soup.soup(["./does/not/exist", "./nor/this"], output_dir=tmp_path / "soup")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(NoWeightsError, match="no weights found"):
        hf_soup.soup([tmp_path / "empty"], output_dir=tmp_path / "soup")
    assert_untouched(tmp_path, tmp_path / "soup")


def test_corrupt_header_and_index(make_ingredients, tmp_path):
    (path,) = make_ingredients("llama", 1)
    bad = tmp_path / "garbage"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CorruptWeightsError, match="corrupt safetensors header"):
        hf_soup.soup([path, bad], output_dir=tmp_path / "soup")
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CorruptWeightsError, match="not there: model-00001-of-00002"):
        hf_soup.soup([path, shards], output_dir=tmp_path / "soup")
    assert_untouched(tmp_path, tmp_path / "soup")


def test_bin_checkpoints_load_weights_only(tmp_path):
    import pickle

    model = build_model("bert", 0)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    model.config.save_pretrained(legacy)
    torch.save(model.state_dict(), legacy / "pytorch_model.bin")
    (modern,) = [tmp_path / "modern"]
    build_model("bert", 1).save_pretrained(modern)
    merged = hf_soup.soup([legacy, modern], output_dir=tmp_path / "soup")
    assert merged.report["output"]["num_parameters"] > 0

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil"
    evil.mkdir()
    with open(evil / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"weight": Payload()}, handle)
    with pytest.raises(CorruptWeightsError, match="refused to unpickle|cannot read"):
        hf_soup.soup([modern, evil], output_dir=tmp_path / "evil-soup")
    assert_untouched(tmp_path, tmp_path / "evil-soup")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"method": "nope"}, UnknownMethodError, "unknown soup method 'nope'"),
        ({"method": "weighted", "weights": [1.0]}, MethodParameterError, "method.weights: got 1 weights for 2"),
        ({"method": "weighted", "weights": [1.0, -1.0]}, MethodParameterError, "sum to 0"),
        ({"method": "uniform", "lr": 3}, MethodParameterError, "method.lr: unknown key"),
        ({"dtype": "int8"}, RecipeError, "output.dtype: .*unknown dtype"),
        ({"max_shard_size": "lots"}, RecipeError, "output.max_shard_size"),
        ({"on_missing": "maybe"}, RecipeError, "on_missing"),
    ],
)
def test_bad_parameters_fail_before_any_work(kwargs, error, message, make_ingredients, tmp_path):
    paths = make_ingredients("llama", 2)
    with pytest.raises(error, match=message):
        hf_soup.soup(paths, output_dir=tmp_path / "soup", **kwargs)
    assert_untouched(tmp_path, tmp_path / "soup")


def test_a_failed_swap_whose_restore_also_fails_keeps_the_old_output(tmp_path, monkeypatch):
    import os

    from hf_soup.errors import OutputExistsError
    from hf_soup.io import staging as staging_module

    old = tmp_path / "soup"
    old.mkdir()
    (old / "model.safetensors").write_bytes(b"the old soup")
    (old / "soup_report.json").write_text("{}")
    new = tmp_path / ".soup.hf-soup-new"
    new.mkdir()
    calls = []
    real_replace = os.replace

    def flaky_replace(src, dst):
        calls.append((src, dst))
        if len(calls) > 1:  # the old output moved aside; then the swap and the way back both fail
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(staging_module.os, "replace", flaky_replace)
    with pytest.raises(OutputExistsError, match="previous output is kept in"):
        staging_module.publish(new, old, overwrite=True)
    monkeypatch.undo()

    kept = [p for p in tmp_path.rglob("model.safetensors") if p.read_bytes() == b"the old soup"]
    assert len(kept) == 1
