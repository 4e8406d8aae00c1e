"""Pulling ingredients by repo ID from a local Hub (olah + write server) with the real huggingface_hub client."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import hf_soup
from hf_soup.errors import CorruptWeightsError, IngredientAccessError, IngredientNotFoundError, NoWeightsError, RevisionNotFoundError
from hf_soup.ingredients import parse_ref, resolve_ingredient
from hf_soup.ingredients.hub_pull import select_files
from hub_fixtures import READ_TOKEN, WRITE_TOKEN, hub, local_hub, publish_model, repo_name, save_tiny  # noqa: F401


def _tensors(ingredient) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in ingredient.files:
        tensors.update(load_file(file))
    return tensors


def test_pull_resolves_the_commit_and_fetches_only_what_a_soup_needs(hub, publish_model, tmp_path):
    repo_id, sha = publish_model(seed=0, card={"license": "apache-2.0"})
    hub.commit_files(repo_id, {"pytorch_model.bin": b"legacy duplicate", "notes/big.safetensors": b"x" * 10,
                               "training_args.bin": b"pickle"})
    head = hub.store.resolve(repo_id, "main")

    ingredient = resolve_ingredient(repo_id)

    assert ingredient.sha == head != sha
    assert ingredient.repo_id == repo_id and ingredient.weight_format == "safetensors"
    assert sorted(p.name for p in ingredient.directory.iterdir()) == ["config.json", "model.safetensors"]
    assert ingredient.card_data["license"] == "apache-2.0"
    expected = load_file(tmp_path / "published" / repo_id.replace("/", "--") / "0" / "model.safetensors")
    assert all(torch.equal(expected[k], v) for k, v in _tensors(ingredient).items())


def test_sharded_index_brings_only_its_shards():
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    names = ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
             "model-00002-of-00002.safetensors", "consolidated.safetensors", "pytorch_model.bin", "README.md",
             "tokenizer.json", "sub/model.safetensors"]
    assert select_files(names, lambda name: index) == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "tokenizer.json"]
    assert select_files(["config.json", "pytorch_model.bin", "vocab.txt"], lambda name: {}) == [
        "config.json", "pytorch_model.bin", "vocab.txt"]
    with pytest.raises(NoWeightsError, match="org/x: the repo holds no model weights"):
        select_files(["README.md", "config.json"], lambda name: {}, "org/x")


def test_bin_only_repo_is_pulled_and_read(hub, repo_name, tmp_path):
    folder = save_tiny(tmp_path / "bin", 3)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    repo_id = repo_name("bin")
    hub.publish(folder, repo_id)

    ingredient = resolve_ingredient(repo_id)

    assert ingredient.weight_format == "bin"
    with ingredient.open() as source:
        key = next(iter(state))
        assert source.meta(key).shape == tuple(state[key].shape)


def test_revision_pinning_a_new_commit_does_not_change_a_soup_made_at_the_old_sha(hub, publish_model, tmp_path):
    repo_a, sha_a = publish_model(seed=1, tag="v1")
    repo_b, sha_b = publish_model(seed=2)
    before = hf_soup.soup([f"{repo_a}@v1", f"{repo_b}@{sha_b}"], output_dir=tmp_path / "soup-1")

    changed = {k: v + 1 for k, v in load_file(tmp_path / "published" / repo_a.replace("/", "--") / "1" / "model.safetensors").items()}
    save_file(changed, tmp_path / "changed.safetensors")
    new_sha = hub.commit_files(repo_a, {"model.safetensors": (tmp_path / "changed.safetensors").read_bytes()})
    assert hub.store.resolve(repo_a, "main") == new_sha != sha_a

    pinned = hf_soup.soup([f"{repo_a}@{sha_a}", f"{repo_b}@{sha_b}"], output_dir=tmp_path / "soup-2")
    moved = hf_soup.soup([repo_a, repo_b], output_dir=tmp_path / "soup-3")

    assert [row["sha"] for row in before.report["ingredients"]] == [sha_a, sha_b]
    assert [row["sha"] for row in moved.report["ingredients"]] == [new_sha, sha_b]
    first, second, third = (load_file(d / "model.safetensors") for d in (before.output_dir, pinned.output_dir, moved.output_dir))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], third[k]) for k in first)
    assert before.report["recipe"]["ingredients"][0] == {"model": repo_a, "revision": sha_a}


def test_offline_mode_serves_the_cache_and_names_what_is_missing(hub, publish_model, monkeypatch):
    repo_id, sha = publish_model(seed=4)
    online = resolve_ingredient(repo_id)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    offline = resolve_ingredient(repo_id)

    assert offline.sha == online.sha == sha and offline.directory == online.directory
    with pytest.raises(IngredientNotFoundError, match=r"soup-org/never-pulled: not in the local Hub cache .*HF_HUB_OFFLINE"):
        resolve_ingredient("soup-org/never-pulled")


@pytest.mark.parametrize("case", ["missing repo", "missing revision", "private without token", "wrong token",
                                  "gated without token", "no weights"])
def test_each_failure_has_a_specific_error_naming_the_ref_and_leaves_no_output(case, hub, publish_model, repo_name, tmp_path):
    repo_id, _ = publish_model(seed=5, private=case == "private without token", gated=case == "gated without token")
    good_id, _ = publish_model(seed=6)
    token = None
    ref = repo_id
    if case == "missing repo":
        ref, error, message = repo_name("does-not-exist"), IngredientNotFoundError, "no model repo .* check the spelling"
    elif case == "missing revision":
        ref, error, message = f"{repo_id}@v9", RevisionNotFoundError, "has no branch, tag or commit 'v9'"
    elif case == "private without token":
        error, message = IngredientNotFoundError, "if it is private, log in"
    elif case == "wrong token":
        token, error, message = "hf_wrongTOKEN", IngredientAccessError, "refused the token"
    elif case == "gated without token":
        error, message = IngredientAccessError, "gated repo .* request access"
    else:
        hub.store.commit(repo_id, {}, "remove weights", deletions=["model.safetensors"])
        error, message = NoWeightsError, "holds no model weights"
    destination = tmp_path / "soup"

    with pytest.raises(error, match=message) as raised:
        hf_soup.soup([good_id, ref], output_dir=destination, token=token)

    # a refused token fails on the first ingredient already
    assert str(raised.value).startswith(f"{good_id if token else ref}: ")
    assert not destination.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("soup", ".soup"))]
    if token:
        assert token not in str(raised.value)


def test_the_right_token_opens_private_and_gated_repos(hub, publish_model):
    private_id, private_sha = publish_model(seed=7, private=True)
    gated_id, gated_sha = publish_model(seed=8, gated=True)

    assert resolve_ingredient(private_id, token=READ_TOKEN).sha == private_sha
    assert resolve_ingredient(gated_id, token=WRITE_TOKEN).sha == gated_sha


def test_token_from_the_environment_is_used(hub, publish_model, monkeypatch):
    private_id, private_sha = publish_model(seed=9, private=True)
    monkeypatch.setenv("HF_TOKEN", READ_TOKEN)
    assert resolve_ingredient(parse_ref(private_id)).sha == private_sha


def test_an_index_naming_a_missing_shard_is_reported_with_the_ref(hub, publish_model):
    repo_id, _ = publish_model(seed=23)
    index = {"metadata": {}, "weight_map": {"w": "model-00001-of-00002.safetensors", "v": "model-00002-of-00002.safetensors"}}
    hub.commit_files(repo_id, {"model.safetensors.index.json": json.dumps(index).encode(),
                               "model-00001-of-00002.safetensors": hub.store.read(repo_id, "model.safetensors")})
    with pytest.raises(CorruptWeightsError, match=rf"^{repo_id} \(commit [0-9a-f]{{12}}\): .*model-00002-of-00002"):
        resolve_ingredient(repo_id)


def test_an_unreachable_hub_falls_back_to_the_cache_or_says_so(hub, publish_model, monkeypatch, caplog):
    from hf_soup.errors import HubError
    from hf_soup.testing.olah_process import free_port

    repo_id, sha = publish_model(seed=24)
    resolve_ingredient(repo_id)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there

    assert resolve_ingredient(repo_id).sha == sha
    assert "unreachable" in caplog.text
    with pytest.raises(HubError, match=r"soup-org/absent: cannot reach http://127\.0\.0\.1:\d+ .*not in the local cache"):
        resolve_ingredient("soup-org/absent")


def test_token_from_the_stored_login_is_used(hub, publish_model, tmp_path):
    private_id, private_sha = publish_model(seed=25, private=True)
    (tmp_path / "hf-home").mkdir(exist_ok=True)
    (tmp_path / "hf-home" / "token").write_text(READ_TOKEN)  # what `hf auth login` stores
    assert resolve_ingredient(private_id).sha == private_sha


def test_a_branch_with_a_slash_and_a_short_sha_resolve_online_then_offline(hub, publish_model, monkeypatch):
    repo_id, _ = publish_model(seed=40)
    _, branch_sha = publish_model(seed=41, repo_id=repo_id, branch="feature/x")
    main_sha = hub.store.resolve(repo_id, "main")
    assert branch_sha != main_sha

    on_branch = resolve_ingredient(f"{repo_id}@feature/x")
    by_short_sha = resolve_ingredient(f"{repo_id}@{main_sha[:10]}")
    assert on_branch.sha == branch_sha and by_short_sha.sha == main_sha

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_ingredient(f"{repo_id}@feature/x").sha == branch_sha
    assert resolve_ingredient(f"{repo_id}@{main_sha[:10]}").sha == main_sha
    assert resolve_ingredient(f"{repo_id}@{branch_sha[:8]}").sha == branch_sha  # never pulled by this name
