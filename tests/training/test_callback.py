"""SoupCallback inside real transformers.Trainer runs (tiny ViT on 8x8 scikit-learn digits)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from safetensors.numpy import load_file  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments, ViTConfig, ViTForImageClassification  # noqa: E402

from hf_soup import SoupCallback  # noqa: E402
from hf_soup.errors import MethodParameterError, NothingToSoupError, RecipeError, UnknownMethodError  # noqa: E402
from hf_soup.output.report import read_report  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    from fixtures_classifiers import digit_pixels

    images, labels = digit_pixels()

    def split(start, stop):
        return datasets.Dataset.from_dict({"pixel_values": images[start:stop].tolist(), "labels": labels[start:stop].tolist()})

    return {"train": split(0, 320), "validation": split(1400, 1560)}


def tiny_vit(seed: int = 0) -> ViTForImageClassification:
    """``conftest.trainer_vit`` written out: callback_ddp_script.py imports this module alone."""
    torch.manual_seed(seed)
    config = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=64, num_labels=10,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return ViTForImageClassification(config)


def training_args(output_dir, **overrides) -> TrainingArguments:
    values = dict(per_device_train_batch_size=16, per_device_eval_batch_size=64, learning_rate=3e-3, max_steps=20,
                  save_steps=5, save_total_limit=2, eval_strategy="steps", eval_steps=5, logging_steps=5,
                  use_cpu=True, report_to=[], disable_tqdm=True, seed=0)
    values.update(overrides)
    return TrainingArguments(str(output_dir), **values)


class Recorder(TrainerCallback):
    """Keeps each checkpoint's weights (read from disk) and the harvest's inode at save time."""

    def __init__(self, soup_callback: SoupCallback):
        self.soup_callback = soup_callback
        self.weights: dict[int, dict[str, np.ndarray]] = {}
        self.same_inode: dict[int, bool] = {}

    def on_save(self, args, state, control, **kwargs):
        step = state.global_step
        checkpoint = Path(args.output_dir) / f"checkpoint-{step}" / "model.safetensors"
        harvested = Path(args.output_dir) / "soup-ingredients" / f"checkpoint-{step}" / "model.safetensors"
        self.weights[step] = load_file(str(checkpoint))
        self.same_inode[step] = harvested.is_file() and os.stat(harvested).st_ino == os.stat(checkpoint).st_ino


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_run_soups_every_checkpoint_despite_rotation(tmp_path, digits):
    callback = SoupCallback()
    recorder = Recorder(callback)
    trainer = Trainer(tiny_vit(), training_args(tmp_path / "run"), train_dataset=digits["train"],
                      eval_dataset=digits["validation"], callbacks=[callback, recorder])
    trainer.train()

    assert callback.error is None
    run_dir = tmp_path / "run"
    # save_total_limit=2 rotated the first checkpoints away, yet the soup holds all four
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-15", "checkpoint-20"]
    assert recorder.same_inode == {5: True, 10: True, 15: True, 20: True}  # hard links: no weight bytes copied
    soup_dir = run_dir / "soup"
    assert callback.result.output_dir == soup_dir.resolve()
    report = read_report(soup_dir)
    rows = report["ingredients"]
    assert [row["label"] for row in rows] == ["checkpoint-5", "checkpoint-10", "checkpoint-15", "checkpoint-20"]
    assert [row["step"] for row in rows] == [5, 10, 15, 20]
    assert all(row["kept"] and row["weight"] == pytest.approx(0.25) for row in rows)
    assert all(row["score"] == pytest.approx(row["metrics"]["eval_loss"]) for row in rows)
    training = report["training"]
    assert training["kind"] == "checkpoints" and training["metric"] == "eval_loss" and not training["greater_is_better"]
    assert [e["label"] for e in training["entries"] if e["used"]] == [row["label"] for row in rows]
    assert report["recipe"]["output"]["dir"] == str(soup_dir.resolve())
    card = (soup_dir / "README.md").read_text()
    for step in (5, 10, 15, 20):  # the model card lists every checkpoint that went in
        assert f"| checkpoint-{step} | {step} |" in card

    # the soup is the mean of the four checkpoints, and loads as a model
    soup = load_file(str(soup_dir / "model.safetensors"))
    assert set(soup) == set(recorder.weights[5])
    for key, value in soup.items():
        expected = np.mean([recorder.weights[step][key] for step in (5, 10, 15, 20)], axis=0)
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
    model = ViTForImageClassification.from_pretrained(soup_dir)
    with torch.no_grad():
        logits = model(pixel_values=torch.tensor(digits["validation"]["pixel_values"][:8])).logits
    assert logits.shape == (8, 10) and torch.isfinite(logits).all()
    # the harvest folder is gone after a successful soup, and no staging folder is left
    assert not (run_dir / "soup-ingredients").exists()
    assert leftovers(run_dir) == []


class HarvestCounter(TrainerCallback):
    def __init__(self):
        self.counts: list[int] = []

    def on_save(self, args, state, control, **kwargs):
        self.counts.append(len(list((Path(args.output_dir) / "soup-ingredients").iterdir())))


def test_last_k_keeps_at_most_k_harvests(tmp_path, digits):
    callback = SoupCallback(last_k=2, keep_ingredients=True, output_dir=tmp_path / "soup")
    counter = HarvestCounter()
    trainer = Trainer(tiny_vit(), training_args(tmp_path / "run", max_steps=20, save_total_limit=None,
                                                eval_strategy="no"),
                      train_dataset=digits["train"], callbacks=[callback, counter])
    trainer.train()

    assert callback.error is None
    report = read_report(tmp_path / "soup")
    assert [row["label"] for row in report["ingredients"]] == ["checkpoint-15", "checkpoint-20"]
    assert report["training"]["selection"] == "last 2"
    assert counter.counts == [1, 2, 2, 2]  # older harvests were dropped as training went
    harvested = tmp_path / "run" / "soup-ingredients"
    assert sorted(p.name for p in harvested.iterdir()) == ["checkpoint-15", "checkpoint-20"]
    # only weights and config travel: no optimizer state in a harvest
    assert sorted(p.name for p in (harvested / "checkpoint-15").iterdir()) == [
        "config.json", "model.safetensors", "soup_ingredient.json"]
    # without rotation the checkpoints themselves are untouched
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == [
        "checkpoint-10", "checkpoint-15", "checkpoint-20", "checkpoint-5"]


def test_no_checkpoint_is_reported_and_training_finishes(tmp_path, digits, caplog):
    callback = SoupCallback()
    trainer = Trainer(tiny_vit(), training_args(tmp_path / "run", max_steps=4, save_strategy="no", eval_strategy="no"),
                      train_dataset=digits["train"], callbacks=[callback])
    with caplog.at_level(logging.ERROR, logger="hf_soup"):
        output = trainer.train()

    assert output.global_step == 4 and trainer.state.global_step == 4
    assert isinstance(callback.error, NothingToSoupError)
    assert callback.result is None
    message = " ".join(r.getMessage() for r in caplog.records if r.name == "hf_soup")
    assert "no checkpoint was saved" in message and "save_strategy" in message
    assert "Training itself is not affected" in message
    assert not (tmp_path / "run" / "soup").exists()


def test_merge_failure_leaves_no_partial_soup(tmp_path, digits, caplog):
    # three weights for four checkpoints: the merge fails at the end of training, cleanly
    callback = SoupCallback(method="weighted", weights=[1.0, 2.0, 3.0])
    trainer = Trainer(tiny_vit(), training_args(tmp_path / "run", eval_strategy="no"),
                      train_dataset=digits["train"], callbacks=[callback])
    with caplog.at_level(logging.ERROR, logger="hf_soup"):
        trainer.train()

    assert trainer.state.global_step == 20
    assert isinstance(callback.error, MethodParameterError)
    assert "3 weights for 4 ingredients" in str(callback.error)
    run_dir = tmp_path / "run"
    assert not (run_dir / "soup").exists() and leftovers(run_dir) == []
    # the harvest is kept so that the checkpoints can still be souped by hand
    assert len(list((run_dir / "soup-ingredients").iterdir())) == 4


def test_bad_parameters_fail_before_training():
    with pytest.raises(UnknownMethodError):
        SoupCallback(method="no-such-method")
    with pytest.raises(RecipeError, match="last_k"):
        SoupCallback(last_k=0)
    with pytest.raises(MethodParameterError):
        SoupCallback(method="weighted", weights=[])


class CrashAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("simulated crash")


def test_resumed_run_soups_the_checkpoints_of_both_parts(tmp_path, digits):
    run_dir = tmp_path / "run"
    # a stale harvest of an older run in the same folder must not leak into this soup
    stale = run_dir / "soup-ingredients" / "checkpoint-99"
    stale.mkdir(parents=True)
    (stale / "soup_ingredient.json").write_text('{"kind": "checkpoint", "label": "checkpoint-99", "step": 99}')

    first = SoupCallback()
    trainer = Trainer(tiny_vit(), training_args(run_dir, eval_strategy="no"), train_dataset=digits["train"],
                      callbacks=[first, CrashAt(12)])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert sorted(p.name for p in (run_dir / "soup-ingredients").iterdir()) == ["checkpoint-10", "checkpoint-5"]

    second = SoupCallback()
    trainer = Trainer(tiny_vit(), training_args(run_dir, eval_strategy="no"), train_dataset=digits["train"],
                      callbacks=[second])
    trainer.train(resume_from_checkpoint=str(run_dir / "checkpoint-10"))
    assert second.error is None
    labels = [row["label"] for row in read_report(run_dir / "soup")["ingredients"]]
    assert labels == ["checkpoint-5", "checkpoint-10", "checkpoint-15", "checkpoint-20"]


def test_trainer_evaluation_scores_like_the_trainer(tmp_path, digits):
    from hf_soup.training.trainer_evaluation import evaluation_from_trainer, metric_of

    def accuracy(prediction):
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    # (TrainingArguments(use_cpu=True) resets accelerate's state: build them all before the Trainer)
    assert metric_of(training_args(tmp_path / "x")) == ("eval_loss", False)
    args = training_args(tmp_path / "run", max_steps=10, save_strategy="no", eval_strategy="no",
                         metric_for_best_model="accuracy")
    trainer = Trainer(tiny_vit(), args, train_dataset=digits["train"], eval_dataset=digits["validation"],
                      compute_metrics=accuracy)
    trainer.train()
    assert metric_of(args) == ("eval_accuracy", True)

    spec = evaluation_from_trainer(trainer)
    assert spec["higher_is_better"] is True and spec["batch_size"] == 64
    batch = spec["collate_fn"]([spec["dataset"][i] for i in range(len(spec["dataset"]))])
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = trainer.model.eval()(**batch).logits
    assert spec["metric"](logits.numpy(), labels.numpy()) == pytest.approx(trainer.evaluate()["eval_accuracy"])


def accuracy_metrics(prediction):
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def validation_accuracy(model_dir: Path, validation) -> float:
    model = ViTForImageClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(pixel_values=torch.tensor(validation["pixel_values"])).logits
    return float((logits.argmax(-1).numpy() == np.array(validation["labels"])).mean())


def test_sweep_greedy_soup_scores_at_least_the_best_trial(tmp_path, digits):
    optuna = pytest.importorskip("optuna")

    class PruneTrialOne(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return trial.number == 1

    callback = SoupCallback(method="greedy", keep_ingredients=True)
    args = training_args(tmp_path / "sweep", max_steps=60, save_strategy="no", eval_steps=20,
                         metric_for_best_model="accuracy")
    trainer = Trainer(model_init=lambda trial=None: tiny_vit(), args=args, train_dataset=digits["train"],
                      eval_dataset=digits["validation"], compute_metrics=accuracy_metrics, callbacks=[callback])

    def space(trial):
        return {"learning_rate": trial.suggest_float("learning_rate", 1e-3, 6e-3, log=True),
                "seed": trial.suggest_int("seed", 0, 1000)}

    trainer.hyperparameter_search(backend="optuna", hp_space=space, n_trials=3, direction="maximize",
                                  pruner=PruneTrialOne(), sampler=optuna.samplers.RandomSampler(seed=0))
    assert callback.errors == []
    result = callback.soup_sweep()

    report = read_report(result.output_dir)
    assert result.output_dir == (tmp_path / "sweep" / "soup").resolve()
    training = report["training"]
    assert training["kind"] == "sweep" and training["metric"] == "eval_accuracy" and training["greater_is_better"]
    entries = {e["label"]: e for e in training["entries"]}
    assert sorted(entries) == ["run-0", "run-1", "run-2"]
    # every trial is recorded with its hyperparameters and score; the pruned one is left out
    assert entries["run-1"]["pruned"] and not entries["run-1"]["used"] and entries["run-1"]["reason"] == "pruned"
    assert entries["run-1"]["step"] == 20
    for name in ("run-0", "run-2"):
        assert not entries[name]["pruned"] and entries[name]["used"] and entries[name]["step"] == 60
    for entry in entries.values():
        assert set(entry["params"]) == {"learning_rate", "seed"}
        assert 0.0 <= entry["score"] <= 1.0 and entry["objective"] == pytest.approx(entry["score"])
    assert {row["label"] for row in report["ingredients"]} == {"run-0", "run-2"}
    assert any(row["kept"] for row in report["ingredients"])
    card = (result.output_dir / "README.md").read_text()
    assert "| run-1 |" in card and "no (pruned)" in card
    for name, entry in entries.items():  # each trial's hyperparameters and score are on the card
        assert f"`seed={entry['params']['seed']}`" in card and f"{entry['score']:.4f}" in card

    # on the validation split, the greedy soup is at least as good as every trial
    trial_scores = {name: validation_accuracy(tmp_path / "sweep" / "soup-trials" / name, digits["validation"])
                    for name in entries}
    for name, entry in entries.items():
        assert trial_scores[name] == pytest.approx(entry["score"])
    soup_score = validation_accuracy(result.output_dir, digits["validation"])
    assert soup_score >= max(trial_scores.values()) - 1e-9
    assert trial_scores["run-1"] < max(trial_scores.values())


def test_multi_process_run_main_process_soups_others_wait(tmp_path):
    import json
    import subprocess
    import sys

    script = Path(__file__).with_name("callback_ddp_script.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = sorted((json.loads(line) for line in completed.stdout.splitlines() if line.startswith('{"rank"')),
                   key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert all(r["soup_complete"] and r["errors"] == [] for r in ranks)
    assert [r["has_result"] for r in ranks] == [True, False]  # only the main process merged
    report = read_report(tmp_path / "run" / "soup")
    assert [row["label"] for row in report["ingredients"]] == ["checkpoint-5", "checkpoint-10"]


def test_greedy_without_validation_data_fails_when_the_trainer_is_built(tmp_path, digits):
    with pytest.raises(RecipeError, match="eval_dataset"):
        Trainer(tiny_vit(), training_args(tmp_path / "run", eval_strategy="no"), train_dataset=digits["train"],
                callbacks=[SoupCallback(method="greedy")])


def test_evaluation_error_is_logged_and_training_finishes(tmp_path, digits, caplog):
    from hf_soup.errors import EvaluationError

    callback = SoupCallback(method="greedy")
    args = training_args(tmp_path / "run", max_steps=10, eval_strategy="no", metric_for_best_model="f1")
    trainer = Trainer(tiny_vit(), args, train_dataset=digits["train"], eval_dataset=digits["validation"],
                      compute_metrics=accuracy_metrics, callbacks=[callback])
    with caplog.at_level(logging.ERROR, logger="hf_soup"):
        trainer.train()

    assert trainer.state.global_step == 10
    assert isinstance(callback.error, EvaluationError) and "'f1'" in str(callback.error)
    assert any("souping the checkpoints failed" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "run" / "soup").exists() and leftovers(tmp_path / "run") == []


def test_sweep_trials_with_checkpoints_are_linked_and_top_k_kept(tmp_path, digits):
    optuna = pytest.importorskip("optuna")
    callback = SoupCallback(top_k=1, keep_ingredients=True)
    args = training_args(tmp_path / "sweep", max_steps=10, save_steps=10, eval_strategy="no")
    trainer = Trainer(model_init=lambda trial=None: tiny_vit(), args=args, train_dataset=digits["train"],
                      eval_dataset=digits["validation"], callbacks=[callback])
    trainer.hyperparameter_search(
        backend="optuna", n_trials=2, direction="minimize", sampler=optuna.samplers.RandomSampler(seed=1),
        hp_space=lambda trial: {"learning_rate": trial.suggest_float("learning_rate", 1e-3, 5e-3)})
    result = callback.soup_sweep()

    assert callback.errors == []
    trials = tmp_path / "sweep" / "soup-trials"
    for name in ("run-0", "run-1"):  # the trial's last checkpoint holds its final weights: hard-linked
        checkpoint = tmp_path / "sweep" / name / "checkpoint-10" / "model.safetensors"
        assert os.stat(trials / name / "model.safetensors").st_ino == os.stat(checkpoint).st_ino
    entries = {e["label"]: e for e in result.report["training"]["entries"]}
    # no evaluation during training: each trial was scored by the search right after it, and recorded
    scores = {name: entry["score"] for name, entry in entries.items()}
    assert all(isinstance(score, float) for score in scores.values())
    best = min(scores, key=scores.get)  # eval loss: lower is better
    assert [row["label"] for row in result.report["ingredients"]] == [best]
    other = ({"run-0", "run-1"} - {best}).pop()
    assert entries[other]["reason"] == "not selected" and not entries[other]["used"]
    assert result.report["training"]["selection"].startswith("best 1 by eval_loss")
    soup = load_file(str(result.output_dir / "model.safetensors"))
    trial = load_file(str(trials / best / "model.safetensors"))
    assert all(np.array_equal(soup[key], trial[key]) for key in trial)


def test_push_failure_keeps_the_local_soup(tmp_path, digits, caplog, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing can be pushed: the push fails, the soup stays
    callback = SoupCallback(push_to_hub={"repo_id": "me/digits-soup", "private": True})
    trainer = Trainer(tiny_vit(), training_args(tmp_path / "run", max_steps=10, eval_strategy="no"),
                      train_dataset=digits["train"], callbacks=[callback])
    with caplog.at_level(logging.ERROR, logger="hf_soup"):
        trainer.train()

    assert trainer.state.global_step == 10
    assert callback.error is not None and callback.result is not None
    assert any("pushing the soup to me/digits-soup failed" in r.getMessage() for r in caplog.records)
    assert [row["label"] for row in read_report(tmp_path / "run" / "soup")["ingredients"]] == [
        "checkpoint-5", "checkpoint-10"]
    with pytest.raises(RecipeError, match="repo_id"):
        SoupCallback(push_to_hub={"private": True})


def test_configured_evaluation_wins_over_the_trainers(tmp_path, digits):
    from transformers import default_data_collator

    evaluation = {"dataset": digits["validation"], "collate_fn": default_data_collator, "metric": "accuracy"}
    callback = SoupCallback(method="greedy", evaluation=evaluation)
    trainer = Trainer(tiny_vit(), training_args(tmp_path / "run", eval_strategy="no"), train_dataset=digits["train"],
                      callbacks=[callback])  # no eval_dataset: the configured evaluation is enough
    trainer.train()

    assert callback.error is None
    report = read_report(tmp_path / "run" / "soup")
    assert report["evaluation"]["metric"] == "accuracy" and report["evaluation"]["higher_is_better"] is True
    assert report["details"]["higher_is_better"] is True  # greedy ranked by accuracy, not by the Trainer's eval loss
    rows = report["ingredients"]
    assert len(rows) == 4 and all(0.0 <= row["score"] <= 1.0 for row in rows)
    best = max(rows, key=lambda row: row["score"])
    assert best["kept"] and report["score"] >= best["score"]


def test_peft_trainer_with_epoch_saves_and_best_model_soups_its_adapters(tmp_path, digits, caplog):
    peft = pytest.importorskip("peft")
    base = tiny_vit()
    base.save_pretrained(tmp_path / "base")  # the PEFT model below is built from a config: its adapters name no base

    def run(callback, name):
        model = peft.get_peft_model(tiny_vit(), peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                                modules_to_save=["classifier"]))
        args = training_args(tmp_path / name, max_steps=-1, num_train_epochs=2, save_strategy="epoch",
                             eval_strategy="epoch", load_best_model_at_end=True, save_total_limit=1)
        Trainer(model, args, train_dataset=digits["train"].select(range(64)), eval_dataset=digits["validation"],
                callbacks=[callback]).train()
        return callback

    caplog.set_level(logging.ERROR, logger="hf_soup")
    unnamed = run(SoupCallback(), "unnamed")
    assert unnamed.result is None and "SoupCallback(base_model=...)" in str(unnamed.error)
    assert not (tmp_path / "unnamed" / "soup").exists()

    named = run(SoupCallback(base_model=tmp_path / "base"), "named")
    assert named.error is None
    report = read_report(named.result.output_dir)
    assert [row["label"] for row in report["ingredients"]] == ["checkpoint-4", "checkpoint-8"]
    assert report["adapters"]["base_model"]["ref"] == str(tmp_path / "base")
    merged = ViTForImageClassification.from_pretrained(named.result.output_dir)
    assert merged.config.num_labels == 10


def test_a_token_given_in_push_to_hub_is_refused_without_being_echoed():
    secret = "hf_callbackSECRETtoken0123456789"
    with pytest.raises(RecipeError) as raised:
        SoupCallback(push_to_hub={"repo_id": "me/soup", "token": secret})
    assert secret not in str(raised.value) and secret not in repr(raised.value)
    assert "push_to_hub.token: unknown key" in str(raised.value) and "HF_TOKEN" in str(raised.value)
