"""Harvesting checkpoint folders: hard links, the copy fallback, records, and clean failures."""

from __future__ import annotations

import json
import os

import pytest

from hf_soup.errors import NoWeightsError
from hf_soup.training import harvest
from hf_soup.training.harvest import RECORD_FILE, harvest_checkpoint, read_records


@pytest.fixture
def checkpoint(tmp_path):
    folder = tmp_path / "run" / "checkpoint-7"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights" * 100)
    (folder / "config.json").write_text('{"model_type": "vit"}')
    (folder / "optimizer.pt").write_bytes(b"optimizer state")
    (folder / "trainer_state.json").write_text("{}")
    return folder


def test_weights_are_hard_linked_and_only_model_files_kept(checkpoint, tmp_path):
    target = tmp_path / "harvest" / "checkpoint-7"
    assert harvest_checkpoint(checkpoint, target, {"label": "checkpoint-7", "step": 7}) == "link"
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", RECORD_FILE]
    assert os.stat(target / "model.safetensors").st_ino == os.stat(checkpoint / "model.safetensors").st_ino
    assert os.stat(target / "config.json").st_ino != os.stat(checkpoint / "config.json").st_ino
    [(folder, record)] = read_records(tmp_path / "harvest")
    assert folder == target and record["step"] == 7 and record["source"] == str(checkpoint)
    # the harvest outlives the checkpoint, as after save_total_limit rotation
    for path in checkpoint.iterdir():
        path.unlink()
    checkpoint.rmdir()
    assert (target / "model.safetensors").read_bytes() == b"weights" * 100


def test_copy_when_links_are_impossible(checkpoint, tmp_path, monkeypatch):
    def no_links(source, target):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(harvest.os, "link", no_links)
    target = tmp_path / "harvest" / "checkpoint-7"
    assert harvest_checkpoint(checkpoint, target, {"step": 7}) == "copy"
    assert (target / "model.safetensors").read_bytes() == b"weights" * 100
    assert os.stat(target / "model.safetensors").st_ino != os.stat(checkpoint / "model.safetensors").st_ino


def test_a_new_harvest_replaces_the_old_one_and_failures_leave_nothing(checkpoint, tmp_path):
    target = tmp_path / "harvest" / "checkpoint-7"
    harvest_checkpoint(checkpoint, target, {"step": 7, "epoch": 1.0})
    harvest_checkpoint(checkpoint, target, {"step": 7, "epoch": 2.0})
    assert json.loads((target / RECORD_FILE).read_text())["epoch"] == 2.0

    empty = tmp_path / "run" / "checkpoint-8"
    empty.mkdir()
    (empty / "optimizer.pt").write_bytes(b"x")
    with pytest.raises(NoWeightsError, match="no weight file"):
        harvest_checkpoint(empty, tmp_path / "harvest" / "checkpoint-8", {"step": 8})
    assert sorted(p.name for p in (tmp_path / "harvest").iterdir()) == ["checkpoint-7"]


def test_damaged_or_partial_records_are_not_ingredients(tmp_path):
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / RECORD_FILE).write_text('{"step": 1}')
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / RECORD_FILE).write_text("{not json")
    (tmp_path / ".good.partial").mkdir()
    (tmp_path / ".good.partial" / RECORD_FILE).write_text('{"step": 2}')
    (tmp_path / "no-record").mkdir()
    assert [folder.name for folder, _ in read_records(tmp_path)] == ["good"]
    assert read_records(tmp_path / "missing") == []
