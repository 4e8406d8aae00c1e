"""Model soups from a Trainer: average a run's checkpoints, then soup a hyperparameter sweep.

Copy this file and replace the tiny ViT / digits data by your model and dataset.

    pip install hf-soup optuna scikit-learn
    python examples/soup_callback.py            # runs on CPU in about a minute

Part 1 — checkpoint averaging. ``SoupCallback`` harvests every checkpoint as it is saved
(hard links: no extra disk, even though ``save_total_limit=2`` deletes old checkpoints)
and soups them when training ends, into ``<output_dir>/soup``.

Part 2 — a sweep soup (Wortsman et al., 2022). Each trial of ``hyperparameter_search``
fine-tunes the same starting model (here: the soup of part 1, standing in for a pretrained
model) with other hyperparameters; ``soup_sweep()`` then makes a greedy soup of the trials'
final models, scored on the Trainer's eval dataset with its ``compute_metrics`` and
``metric_for_best_model``.

Ray Tune instead of optuna: ``backend="ray"`` works the same way when the Ray workers share
``output_dir`` with the driver (one machine, or a shared file system): each trial registers
its model on disk, and ``callback.soup_sweep()`` runs on the driver after the search.
"""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from sklearn.datasets import load_digits
from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

from hf_soup import SoupCallback


def digits() -> tuple[Dataset, Dataset]:
    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)

    def split(start: int, stop: int) -> Dataset:
        return Dataset.from_dict({"pixel_values": images[start:stop].tolist(), "labels": labels[start:stop].tolist()})

    return split(0, 1200), split(1200, 1500)


def new_model() -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=128, num_labels=10)
    return ViTForImageClassification(config)


def accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def main() -> None:
    train, validation = digits()
    common = dict(per_device_train_batch_size=32, per_device_eval_batch_size=128, learning_rate=3e-3,
                  eval_strategy="steps", eval_steps=50, metric_for_best_model="accuracy",
                  use_cpu=True, report_to=[], disable_tqdm=True)

    # Part 1: soup the checkpoints of one run.
    callback = SoupCallback(method="uniform", last_k=4)
    args = TrainingArguments("runs/one-run", max_steps=300, save_steps=50, save_total_limit=2, **common)
    trainer = Trainer(new_model(), args, train_dataset=train, eval_dataset=validation,
                      compute_metrics=accuracy, callbacks=[callback])
    trainer.train()
    if callback.error is not None:  # the failure was logged; training itself finished
        raise SystemExit(f"no soup: {callback.error}")
    start = callback.result.output_dir
    trainer.model = ViTForImageClassification.from_pretrained(start)
    print("checkpoints:", {row["label"]: row.get("score") for row in callback.result.report["ingredients"]})
    print("checkpoint soup:", trainer.evaluate()["eval_accuracy"])

    # Part 2: fine-tune that model with several hyperparameters, and greedy-soup the trials.
    def model_init(trial=None) -> ViTForImageClassification:
        return ViTForImageClassification.from_pretrained(start)  # every trial starts from the same weights

    callback = SoupCallback(method="greedy")
    args = TrainingArguments("runs/sweep", max_steps=150, save_strategy="no", **common)
    trainer = Trainer(model_init=model_init, args=args, train_dataset=train, eval_dataset=validation,
                      compute_metrics=accuracy, callbacks=[callback])

    def space(trial):
        return {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 2e-3, log=True),
                "weight_decay": trial.suggest_float("weight_decay", 0.0, 0.1),
                "seed": trial.suggest_int("seed", 0, 1000)}

    best = trainer.hyperparameter_search(backend="optuna", hp_space=space, n_trials=4, direction="maximize")
    result = callback.soup_sweep()
    print("best trial:", best.objective, "greedy soup:", result.report.get("score"))
    for row in result.report["training"]["entries"]:
        print(f"  {row['label']}: score={row.get('score')} kept={row['kept']} params={row.get('params')}")


if __name__ == "__main__":
    main()
