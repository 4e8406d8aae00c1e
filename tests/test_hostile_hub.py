"""Hostile Hub repos and the card's safety (issue 17): confinement of Hub snapshots, hand-edited
cards, private ingredients, custom code, names that could break the card, reproducible recipes."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from hub_fixtures import (  # noqa: F401
    READ_TOKEN,
    WRITE_TOKEN,
    hub,
    local_hub,
    publish_model,
    repo_name,
    save_tiny,
)
from huggingface_hub import HfApi

import hf_soup
from hf_soup.cli import main
from hf_soup.errors import HubError, UnsafePathError
from hf_soup.hub import push_soup


@pytest.mark.parametrize("shard", ["../../../../secret.safetensors", "/etc/secret.safetensors"])
def test_a_hub_index_naming_files_outside_the_snapshot_is_refused_before_download(
        shard, hub, publish_model, repo_name, tmp_path):
    good, _ = publish_model(seed=1)
    folder = save_tiny(tmp_path / "evil", seed=2)
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "np") as f:
        keys = list(f.keys())
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: shard for k in keys}}))
    evil = repo_name("evil")
    hub.publish(folder, evil)
    with pytest.raises(UnsafePathError, match="leaves the checkpoint folder|absolute path") as raised:
        hf_soup.soup([good, evil], output_dir=tmp_path / "soup")
    assert evil in str(raised.value) and shard in str(raised.value)
    assert not (tmp_path / "soup").exists()


def test_hub_snapshots_whose_files_link_into_the_blob_store_are_fine(hub, publish_model, tmp_path):
    a, _ = publish_model(seed=3)
    b, _ = publish_model(seed=4)
    result = hf_soup.soup([a, b], output_dir=tmp_path / "soup")  # the cache's own symlinks: allowed
    assert (result.output_dir / "model.safetensors").is_file()


def _soup(publish_model, tmp_path, **options):
    a, _ = publish_model(seed=5, **options)
    b, _ = publish_model(seed=6, **options)
    return hf_soup.soup([a, b], output_dir=tmp_path / "soup", token=READ_TOKEN).output_dir


def test_a_hand_edited_card_is_pushed_as_it_is_unless_regenerated(hub, publish_model, repo_name, tmp_path, capsys):
    soup = _soup(publish_model, tmp_path)
    report = json.loads((soup / "soup_report.json").read_text())
    readme = soup / "README.md"
    import hashlib

    assert report["card_sha256"] == hashlib.sha256(readme.read_bytes()).hexdigest()
    edited = readme.read_text().replace("# soup", "# soup\n\nMy own notes: trained on my data.")
    readme.write_text(edited)  # the default-template marker is still there
    target = repo_name("edited", org="soup-user")
    push_soup(soup, target, token=WRITE_TOKEN)
    assert readme.read_text() == edited
    assert hub.store.read(target, "README.md").decode() == edited

    assert main(["push", str(soup), target, "--token", WRITE_TOKEN, "--regenerate-card"]) == 0
    regenerated = hub.store.read(target, "README.md").decode()
    assert "My own notes" not in regenerated and f'from_pretrained("{target}")' in regenerated


def test_an_unedited_card_learns_the_repo_id(hub, publish_model, repo_name, tmp_path):
    soup = _soup(publish_model, tmp_path)
    target = repo_name("unedited", org="soup-user")
    push_soup(soup, target, token=WRITE_TOKEN)
    assert f'from_pretrained("{target}")' in (soup / "README.md").read_text()


def test_private_ingredients_make_a_private_repo_unless_public(hub, publish_model, repo_name, tmp_path, caplog):
    soup = _soup(publish_model, tmp_path, private=True)
    rows = json.loads((soup / "soup_report.json").read_text())["ingredients"]
    assert all(row["private"] for row in rows)
    api = HfApi(endpoint=hub.endpoint, token=WRITE_TOKEN)

    target = repo_name("from-private", org="soup-user")
    with caplog.at_level(logging.WARNING, logger="hf_soup"):
        push_soup(soup, target, token=WRITE_TOKEN)
    assert api.model_info(target).private is True
    assert "pass --public" in caplog.text

    public = repo_name("public-anyway", org="soup-user")
    push_soup(soup, public, token=WRITE_TOKEN, private=False)
    assert api.model_info(public).private is False

    with pytest.raises(HubError, match="is public, and ingredient"):  # an existing public repo is not used silently
        push_soup(soup, public, token=WRITE_TOKEN)


def test_auto_map_code_files_travel_with_the_soup(hub, repo_name, tmp_path):
    code = "# custom model code\nfrom transformers import BertConfig\n\nclass MyConfig(BertConfig):\n    pass\n"
    repos = []
    for seed in (7, 8):
        folder = save_tiny(tmp_path / f"custom-{seed}", seed)
        config = json.loads((folder / "config.json").read_text())
        config["auto_map"] = {"AutoConfig": "configuration_my.MyConfig", "AutoModel": "other/repo--modeling.M"}
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "configuration_my.py").write_text(code)
        repos.append(repo_name("custom"))
        hub.publish(folder, repos[-1])
    soup = hf_soup.soup(repos, output_dir=tmp_path / "soup").output_dir
    assert (soup / "configuration_my.py").read_text() == code
    assert json.loads((soup / "config.json").read_text())["auto_map"]["AutoConfig"] == "configuration_my.MyConfig"


def test_auto_map_without_its_code_is_dropped_and_said(make_ingredients, tmp_path, caplog):
    paths = make_ingredients("bert", 2)
    config = json.loads((paths[0] / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_gone.Model"}
    (paths[0] / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="hf_soup"):
        soup = hf_soup.soup(paths, output_dir=tmp_path / "soup").output_dir
    assert "auto_map" not in json.loads((soup / "config.json").read_text())
    assert "modeling_gone.py" in caplog.text and "without auto_map" in caplog.text


def test_names_cannot_break_the_card(make_ingredients, tmp_path):
    paths = make_ingredients("bert", 2)
    hostile = tmp_path / "run | `x` <script>alert(1)</script>\nrow"
    shutil.move(paths[1], hostile)
    soup = hf_soup.soup([paths[0], hostile], output_dir=tmp_path / "soup").output_dir
    text = (soup / "README.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| 1 |")]
    assert len(table) == 1, text  # the newline did not end the row
    # a code span longer than the name's backtick run: | is escaped, the HTML is literal text
    assert table[0].startswith("| 1 | ``/") and "/run \\| `x` <script>alert(1)</script> row`` | local |" in table[0]
    for line in text.split("```yaml")[0].splitlines():  # elsewhere only inside a double-backtick code span
        assert "<script>" not in line or line.index("``") < line.index("<script>") < line.rindex("``"), line


def test_the_card_recipe_says_which_ingredients_are_local_and_gone(make_ingredients, tmp_path, monkeypatch):
    paths = make_ingredients("bert", 2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the push fails; the soup and its card stay
    assert main(["merge", "-m", paths[0].name, "-m", paths[1].name, "-o", "soup",
                 "--push-to-hub", "me/never-pushed"]) == 1
    soup = tmp_path / "soup"
    text = (soup / "README.md").read_text()
    assert "Local ingredients (folders, not Hub repos)" in text and f"`{paths[0].name}`" in text
    recipe = text.split("```yaml")[1]
    assert "push_to_hub" not in recipe and "dir:" not in recipe
    shutil.rmtree(paths[1])
    assert main(["card", str(soup)]) == 0
    assert f"Not found when this card was written: `{paths[1].name}`" in (soup / "README.md").read_text()


def test_a_callback_card_says_its_harvested_checkpoints_are_gone():
    from hf_soup.output.reproduce import reproduce_notes

    report = {"ingredients": [{"ref": "/out/.soup/checkpoint-10"}], "training": {"ingredients_kept": False}}
    assert "cannot be run again" in reproduce_notes(report)[0]
