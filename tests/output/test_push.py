"""Pushing soups to a local Hub and pulling them back, with the generated model card."""

from __future__ import annotations

import logging

import pytest
import torch
from huggingface_hub import ModelCard, snapshot_download
from safetensors.torch import load_file

import hf_soup
from hf_soup.errors import HubError, IngredientNotFoundError
from hf_soup.output.push import push_soup
from hf_soup.ingredients import resolve_ingredient
from conftest import tree_digest
from hub_fixtures import READ_TOKEN, WRITE_TOKEN, hub, local_hub, publish_model, repo_name  # noqa: F401


def _commits(hub, repo_id: str) -> list[tuple[str, str]]:
    return [r for r in hub.requests if r[0] == "POST" and r[1].startswith(f"/api/models/{repo_id}/commit/")]


def test_round_trip_pull_soup_push_pull_back_gives_identical_tensors(hub, publish_model, repo_name, tmp_path):
    card = {"license": "apache-2.0"}
    ingredients = [publish_model(seed=s, card=card) for s in (10, 11, 12)]
    target = repo_name("soup", org="soup-user")

    result = hf_soup.soup([repo for repo, _ in ingredients], output_dir=tmp_path / "soup",
                          push_to_hub={"repo_id": target, "private": False}, token=WRITE_TOKEN)

    url = result.report["pushed_to"]
    sha = hub.store.resolve(target, "main")
    assert url == f"{hub.endpoint}/{target}/commit/{sha}"
    assert len(_commits(hub, target)) == 1
    pushed = set(hub.store.files(target))
    assert {"README.md", "config.json", "model.safetensors", "soup_report.json"} <= pushed

    pulled = resolve_ingredient(target)
    assert pulled.sha == sha
    local, remote = load_file(result.output_dir / "model.safetensors"), load_file(pulled.files[0])
    assert local.keys() == remote.keys() and all(torch.equal(local[k], remote[k]) for k in local)
    naive = [load_file(resolve_ingredient(f"{repo}@{s}").files[0]) for repo, s in ingredients]
    for key in local:
        torch.testing.assert_close(remote[key], sum(n[key] for n in naive) / 3, rtol=0, atol=1e-6)

    folder = snapshot_download(target, revision=sha, cache_dir=tmp_path / "fresh-cache")
    model_card = ModelCard.load(f"{folder}/README.md")
    data = model_card.data
    assert data.base_model == [repo for repo, _ in ingredients]
    assert data.base_model_relation == "merge"
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "text-classification"
    assert data.license == "apache-2.0"
    assert data.tags == ["hf-soup", "model-soup", "merge", "uniform"]
    for repo, ingredient_sha in ingredients:
        assert f"[`{ingredient_sha[:12]}`](/{repo}/tree/{ingredient_sha})" in model_card.text
    assert f'BertForSequenceClassification.from_pretrained("{target}")' in model_card.text
    assert "revision: " + ingredients[0][1] in model_card.text  # the pinned recipe


def test_license_is_left_out_when_ingredients_disagree(hub, publish_model, repo_name, tmp_path):
    a, _ = publish_model(seed=13, card={"license": "mit"})
    b, _ = publish_model(seed=14, card={"license": "apache-2.0"})
    result = hf_soup.soup([a, b], output_dir=tmp_path / "soup")
    data = ModelCard.load(result.output_dir / "README.md").data
    assert data.license is None and data.base_model == [a, b]


def test_push_to_a_private_repo_needs_the_token_to_pull_back(hub, publish_model, repo_name, tmp_path):
    a, _ = publish_model(seed=15)
    b, _ = publish_model(seed=16)
    target = repo_name("private-soup", org="soup-user")
    result = hf_soup.soup([a, b], output_dir=tmp_path / "soup")

    result.push_to_hub(target, private=True, token=WRITE_TOKEN)

    with pytest.raises(IngredientNotFoundError, match="if it is private"):
        resolve_ingredient(target)
    assert resolve_ingredient(target, token=READ_TOKEN).sha == hub.store.resolve(target, "main")


def test_a_failed_push_keeps_the_output_and_says_how_to_retry(hub, publish_model, repo_name, tmp_path):
    a, _ = publish_model(seed=17)
    b, _ = publish_model(seed=18)
    target = repo_name("read-only", org="soup-user")
    result = hf_soup.soup([a, b], output_dir=tmp_path / "soup")
    before = tree_digest(result.output_dir)

    with pytest.raises(HubError) as raised:
        push_soup(result.output_dir, target, token=READ_TOKEN)

    message = str(raised.value)
    assert "HTTP 403" in message and "write access" in message
    assert f"retry with: hf-soup push {result.output_dir} {target}" in message
    assert READ_TOKEN not in message
    after = tree_digest(result.output_dir)
    assert after.keys() == before.keys()
    # only the card learns the repo ID (and the report the hash of the card it rendered)
    assert {k for k in before if before[k] != after[k]} <= {"README.md", "soup_report.json"}
    assert not hub.store.exists(target)

    assert push_soup(result.output_dir, target, token=WRITE_TOKEN).startswith(f"{hub.endpoint}/{target}/commit/")


def test_push_to_a_branch_and_as_a_pull_request(hub, publish_model, repo_name, tmp_path):
    a, _ = publish_model(seed=19)
    b, _ = publish_model(seed=20)
    target = repo_name("branches", org="soup-user")
    soup = hf_soup.soup([a, b], output_dir=tmp_path / "soup").output_dir

    first = push_soup(soup, target, token=WRITE_TOKEN, commit_message="first soup")
    dev = push_soup(soup, target, token=WRITE_TOKEN, revision="exp/dev")  # a branch name with a slash
    pr = push_soup(soup, target, token=WRITE_TOKEN, create_pr=True)

    main_sha = hub.store.resolve(target, "main")
    assert first.endswith(main_sha)
    assert dev.endswith(hub.store.resolve(target, "exp/dev"))
    assert pr == f"{hub.endpoint}/{target}/discussions/1"
    assert hub.store.resolve(target, "refs/pr/1") not in (None, main_sha)
    assert hub.store.resolve(target, "main") == main_sha


def test_push_refuses_a_folder_without_a_soup(hub, tmp_path):
    with pytest.raises(HubError, match="not a soup directory"):
        push_soup(tmp_path, "soup-user/nothing", token=WRITE_TOKEN)


def test_the_token_appears_in_no_output_log_or_file(hub, publish_model, repo_name, tmp_path, capsys, caplog):
    from hf_soup.cli import main

    private_id, _ = publish_model(seed=21, private=True)
    public_id, _ = publish_model(seed=22)
    target = repo_name("tokens", org="soup-user")
    caplog.set_level(logging.DEBUG)

    code = main(["merge", "-m", private_id, "-m", public_id, "-o", str(tmp_path / "soup"),
                 "--push-to-hub", target, "--token", WRITE_TOKEN])
    failing = main(["merge", "-m", private_id, "-m", public_id, "-o", str(tmp_path / "soup-2"),
                    "--token", "hf_not" + WRITE_TOKEN[6:]])

    assert code == 0 and failing != 0
    captured = capsys.readouterr()
    texts = [captured.out, captured.err, caplog.text]
    texts += [p.read_bytes().decode("utf-8", "replace") for p in tmp_path.rglob("*") if p.is_file()]
    texts += [hub.store.read(target, name).decode("utf-8", "replace") for name in hub.store.files(target)]
    texts += [p.read_bytes().decode("utf-8", "replace") for p in (hub.root / "olah").rglob("*") if p.is_file()]
    for secret in (WRITE_TOKEN, WRITE_TOKEN[6:]):
        assert not any(secret in text for text in texts)
    assert f"Pushed to {hub.endpoint}/{target}/commit/" in captured.out


def test_push_in_offline_mode_says_how_to_push_later(hub, publish_model, tmp_path, monkeypatch):
    a, _ = publish_model(seed=23)
    b, _ = publish_model(seed=24)
    soup = hf_soup.soup([a, b], output_dir=tmp_path / "soup").output_dir
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match=rf"offline mode is on .* hf-soup push {soup} soup-user/later"):
        push_soup(soup, "soup-user/later", token=WRITE_TOKEN)


def test_a_sharded_soup_round_trips_through_its_index(hub, publish_model, repo_name, tmp_path):
    a, _ = publish_model(seed=25, arch="llama")
    b, _ = publish_model(seed=26, arch="llama")
    target = repo_name("sharded", org="soup-user")
    result = hf_soup.soup([a, b], output_dir=tmp_path / "soup", max_shard_size="40KB")
    shards = sorted(p.name for p in result.output_dir.glob("model-*.safetensors"))
    assert len(shards) > 1

    push_soup(result.output_dir, target, token=WRITE_TOKEN)
    pulled = resolve_ingredient(target)

    assert sorted(p.name for p in pulled.files) == shards
    local, remote = {}, {}
    for name in shards:
        local.update(load_file(result.output_dir / name))
        remote.update(load_file(pulled.directory / name))
    assert local.keys() == remote.keys() and all(torch.equal(local[k], remote[k]) for k in local)


def test_pushing_a_new_soup_over_an_old_one_leaves_no_stale_weights(hub, publish_model, repo_name, tmp_path):
    a, _ = publish_model(seed=27, arch="llama")
    b, _ = publish_model(seed=28, arch="llama")
    target = repo_name("replaced", org="soup-user")
    old = hf_soup.soup([a, b], output_dir=tmp_path / "old", max_shard_size="40KB").output_dir
    push_soup(old, target, token=WRITE_TOKEN)
    hub.commit_files(target, {"LICENSE": b"my own file\n", "gguf/soup-q4.gguf": b"not ours\n"})
    assert "model.safetensors.index.json" in hub.store.files(target)

    new = hf_soup.soup([a, b], output_dir=tmp_path / "new", method="weighted",
                       weights=[0.9, 0.1]).output_dir
    push_soup(new, target, token=WRITE_TOKEN)

    remote = set(hub.store.files(target))
    assert not any(name.startswith("model-0") for name in remote)
    assert "model.safetensors.index.json" not in remote
    assert {"model.safetensors", "LICENSE", "gguf/soup-q4.gguf", "soup_report.json"} <= remote
    pulled = resolve_ingredient(target)
    assert [p.name for p in pulled.files] == ["model.safetensors"]
    local, remote_tensors = load_file(new / "model.safetensors"), load_file(pulled.files[0])
    assert all(torch.equal(local[k], remote_tensors[k]) for k in local)


def test_private_push_to_an_existing_public_repo_is_refused_before_uploading(hub, publish_model, repo_name, tmp_path):
    a, _ = publish_model(seed=29)
    b, _ = publish_model(seed=30)
    target = repo_name("public", org="soup-user")
    soup = hf_soup.soup([a, b], output_dir=tmp_path / "soup").output_dir
    push_soup(soup, target, token=WRITE_TOKEN)
    head = hub.store.resolve(target, "main")

    with pytest.raises(HubError, match="already exists and is public"):
        push_soup(soup, target, token=WRITE_TOKEN, private=True)

    assert hub.store.resolve(target, "main") == head and len(_commits(hub, target)) == 1
    private_target = repo_name("private", org="soup-user")
    push_soup(soup, private_target, token=WRITE_TOKEN, private=True)
    push_soup(soup, private_target, token=WRITE_TOKEN, private=True)  # an existing private repo is fine
    assert len(_commits(hub, private_target)) == 2
