"""Header-only alignment check of Hub ingredients (safetensors headers through range requests)."""

from __future__ import annotations

import os

import pytest

from hf_soup.errors import AlignmentError, IngredientNotFoundError
from hf_soup.ingredients.hub_headers import precheck_hub_alignment
from hub_fixtures import hub, local_hub, publish_model, repo_name, save_tiny  # noqa: F401


def _downloaded_weights(home) -> list[str]:
    return [name for _, _, names in os.walk(home) for name in names if name.endswith(".safetensors")]


def test_matching_ingredients_pass_without_downloading_weights(hub, publish_model, tmp_path):
    a, _ = publish_model(seed=30)
    b, _ = publish_model(seed=31)
    assert precheck_hub_alignment([a, {"model": b, "revision": "main"}]) is True
    assert _downloaded_weights(tmp_path / "hf-home") == []


def test_different_shapes_are_refused_from_the_headers(hub, publish_model, repo_name, tmp_path):
    a, _ = publish_model(seed=32)
    wide = repo_name("wide-bert")
    hub.publish(save_tiny(tmp_path / "wide", 33, "bert", intermediate_size=96), wide)  # same keys, other shapes

    with pytest.raises(AlignmentError, match=r"nothing downloaded.*differ in shape") as raised:
        precheck_hub_alignment([a, wide])
    assert any("intermediate" in d["key"] for d in raised.value.differences)
    assert _downloaded_weights(tmp_path / "hf-home") == []


def test_different_model_types_and_missing_repos_fail_early(hub, publish_model, repo_name):
    bert, _ = publish_model(seed=36, arch="bert")
    gpt2, _ = publish_model(seed=37, arch="gpt2")
    with pytest.raises(AlignmentError, match="different model types"):
        precheck_hub_alignment([bert, gpt2])
    with pytest.raises(IngredientNotFoundError, match="no model repo"):
        precheck_hub_alignment([bert, repo_name("missing")])


def test_local_and_single_hub_ingredients_are_left_to_the_full_alignment(hub, publish_model, make_ingredients):
    bert, _ = publish_model(seed=38)
    (local,) = make_ingredients("bert", 1)
    assert precheck_hub_alignment([bert, str(local)]) is False
