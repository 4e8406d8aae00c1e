"""Fuzzing the parsers of untrusted input with hypothesis: safetensors headers and recipes.

Whatever the bytes, the header reader either accepts a header whose tensors tile the data
exactly, or raises :class:`CorruptWeightsError`; the recipe loader either returns a recipe or
raises :class:`RecipeError`. Nothing else (KeyError, TypeError, RecursionError...) escapes.
"""

from __future__ import annotations

import json
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_soup.errors import CorruptWeightsError, RecipeError
from hf_soup.io.header import check_header
from hf_soup.io.safetensors_reader import SafetensorsFile, read_header
from hf_soup.recipe import load_recipe, parse_recipe

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
_dtype = st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "F128", "", 3])
_entry = st.fixed_dictionaries({
    "dtype": _dtype,
    "shape": st.lists(st.integers(-2, 6), max_size=3) | _json,
    "data_offsets": st.lists(st.integers(-4, 200), min_size=0, max_size=3) | _json,
})
_header = st.dictionaries(st.text(max_size=6), _entry | _json, max_size=5) | _json


def _file(tmp_path, payload: bytes, data: bytes):
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(struct.pack("<Q", len(payload)) + payload + data)
    return path


@FUZZ
@given(header=_header, data_size=st.integers(0, 256))
def test_header_checker_raises_only_corrupt_weights(header, data_size):
    try:
        checked = check_header(header, "fuzz.safetensors", data_size)
    except CorruptWeightsError:
        return
    spans = sorted(v["data_offsets"] for k, v in checked.items() if k != "__metadata__")
    position = 0
    for begin, end in spans:  # accepted: the tensors tile the data from 0, in bounds
        assert begin == position and end >= begin
        position = end
    assert position <= data_size


@FUZZ
@given(header=_header, data=st.binary(max_size=64))
def test_reading_a_fuzzed_file_raises_only_corrupt_weights(header, data, tmp_path):
    path = _file(tmp_path, json.dumps(header).encode(), data)
    try:
        source = SafetensorsFile(path)
    except CorruptWeightsError:
        return
    for key in source.keys():  # an accepted file reads every tensor in full
        meta = source.meta(key)
        assert len(source.read(key, 0, meta.numel)) == meta.numel
    source.close()


@FUZZ
@given(raw=st.binary(max_size=64), length=st.one_of(st.none(), st.integers(0, 2**64 - 1)))
def test_random_bytes_raise_only_corrupt_weights(raw, length, tmp_path):
    path = tmp_path / "raw.safetensors"
    path.write_bytes((struct.pack("<Q", length) if length is not None else b"") + raw)
    try:
        read_header(path)
    except CorruptWeightsError:
        pass


_recipe_value = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["uniform", "weighted", "greedy", "./x", "org/name", "5GB", "bfloat16", "auto", "cpu"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["name", "params", "dir", "dtype", "model", "revision", "weights", "repo_id",
                                       "max_shard_size", "overwrite", "private", "dataset", "x"]), children, max_size=3),
    max_leaves=12,
)
_recipe = st.dictionaries(
    st.sampled_from(["ingredients", "method", "output", "push_to_hub", "evaluation", "seed", "on_missing", "compare",
                     "device", "allow_nonfinite", "base_model", "unknown"]),
    _recipe_value, max_size=6,
) | _recipe_value


@FUZZ
@given(data=_recipe)
def test_recipe_parser_raises_only_recipe_errors(data):
    try:
        parse_recipe(data, "fuzz")
    except RecipeError:
        pass


@FUZZ
@given(text=st.text(max_size=200) | st.sampled_from(["[" * 2000, "{a: " * 500, "!!python/object:os.system x",
                                                      "ingredients: *a", "- &a [*a]"]))
def test_recipe_files_raise_only_recipe_errors(text, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_recipe(path)
    except RecipeError:
        pass
