"""SoupCallback scores soups through the Trainer's own evaluation loop, for every kind of eval data a Trainer takes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from transformers import Trainer, TrainingArguments, ViTForImageClassification  # noqa: E402

from conftest import trainer_vit  # noqa: E402
from fixtures_classifiers import digit_pixels  # noqa: E402
from hf_soup import SoupCallback  # noqa: E402
from hf_soup.errors import EvaluationError  # noqa: E402


@pytest.fixture(scope="module")
def rows():
    images, labels = digit_pixels()
    as_rows = [{"pixel_values": torch.from_numpy(images[i]), "labels": int(labels[i])} for i in range(len(labels))]
    return {"train": as_rows[:320], "validation": as_rows[1400:1500], "other": as_rows[1500:1560]}


class TorchRows(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


class StreamedRows(torch.utils.data.IterableDataset):
    def __init__(self, rows):
        self.rows = rows

    def __iter__(self):
        return iter(self.rows)


def as_hf_dataset(rows):
    return datasets.Dataset.from_dict({"pixel_values": [r["pixel_values"].tolist() for r in rows],
                                       "labels": [r["labels"] for r in rows]})


KINDS = {
    "list of dicts": lambda rows: rows,
    "torch Dataset": TorchRows,
    "datasets.Dataset": as_hf_dataset,
    "IterableDataset": StreamedRows,
}


def accuracy(prediction):
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def train(tmp_path, rows, eval_dataset, **overrides):
    callback = SoupCallback(method="greedy")
    args = TrainingArguments(str(tmp_path / "run"), **{
        **dict(per_device_train_batch_size=16, per_device_eval_batch_size=32, learning_rate=3e-3, max_steps=12,
               save_steps=4, save_total_limit=1, eval_strategy="no", use_cpu=True, report_to=[], disable_tqdm=True,
               seed=0), **overrides})
    trainer = Trainer(trainer_vit(), args, train_dataset=rows["train"], eval_dataset=eval_dataset,
                      compute_metrics=accuracy, callbacks=[callback])
    trainer.train()
    return trainer, callback


def evaluate_soup(trainer, callback, **kwargs) -> dict[str, float]:
    """What ``trainer.evaluate()`` prints for the written soup."""
    trainer.model = trainer.model_wrapped = ViTForImageClassification.from_pretrained(callback.result.output_dir)
    return trainer.evaluate(**kwargs)


@pytest.mark.parametrize("kind", list(KINDS))
def test_soup_score_is_what_trainer_evaluate_prints(tmp_path, rows, kind):
    metric = "loss" if kind in ("torch Dataset", "IterableDataset") else "accuracy"
    trainer, callback = train(tmp_path, rows, KINDS[kind](rows["validation"]), metric_for_best_model=metric)
    assert callback.errors == [] and callback.result is not None
    report = callback.result.report
    assert len(report["details"]["scores"]) == 3  # every harvested checkpoint was scored
    assert report["evaluation"]["metric"] == f"eval_{metric}"
    assert report["evaluation"]["num_examples"] == 100
    assert report["score"] == pytest.approx(evaluate_soup(trainer, callback)[f"eval_{metric}"], rel=1e-6)


def test_dict_of_eval_datasets_scores_on_the_one_metric_for_best_model_names(tmp_path, rows):
    eval_sets = {"val": as_hf_dataset(rows["validation"]), "val_other": rows["other"]}
    trainer, callback = train(tmp_path, rows, eval_sets, metric_for_best_model="eval_val_other_accuracy")
    assert callback.errors == []
    assert callback.result.report["evaluation"]["dataset"] == "val_other"
    recipe = callback.result.report["recipe"]["evaluation"]  # the card's recipe says what to give instead
    assert recipe["dataset"] == "<Trainer eval_dataset['val_other']: list; save it with save_to_disk and give the folder>"
    assert "trainer" not in recipe
    printed = evaluate_soup(trainer, callback)
    assert callback.result.report["score"] == pytest.approx(printed["eval_val_other_accuracy"], rel=1e-6)


def test_dict_of_eval_datasets_without_a_choice_is_a_clear_error(tmp_path, rows, caplog):
    eval_sets = {"val": rows["validation"], "other": rows["other"]}
    trainer, callback = train(tmp_path, rows, eval_sets, max_steps=4)
    assert callback.result is None
    error = callback.errors[0]
    assert isinstance(error, EvaluationError)
    assert "several eval datasets (val, other)" in str(error) and "metric_for_best_model" in str(error)
    assert "eval_val_loss" in str(error)


def test_radin_ranks_with_the_trainer_loops_logits(tmp_path, rows):
    callback = SoupCallback(method="radin", budget=2, candidates=4)
    args = TrainingArguments(str(tmp_path / "run"), per_device_train_batch_size=16, per_device_eval_batch_size=32,
                             learning_rate=3e-3, max_steps=12, save_steps=4, save_total_limit=1, eval_strategy="no",
                             use_cpu=True, report_to=[], disable_tqdm=True, seed=0, metric_for_best_model="accuracy")
    trainer = Trainer(trainer_vit(), args, train_dataset=rows["train"], eval_dataset=StreamedRows(rows["validation"]),
                      compute_metrics=accuracy, callbacks=[callback])
    trainer.train()
    assert callback.errors == []
    assert callback.result.report["score"] == pytest.approx(evaluate_soup(trainer, callback)["eval_accuracy"])
