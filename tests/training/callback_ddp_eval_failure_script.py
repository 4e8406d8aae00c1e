"""Run by tests/training/test_callback_ddp_eval_failure.py under ``torch.distributed.run --nproc_per_node=2`` (CPU).

Trains the tiny ViT in two processes, then three greedy SoupCallbacks score through the
Trainer's own evaluation loop, and process 1 fails in the middle of each one's first pass:

* ``forward``: its evaluation batches have 3 image channels for a 1-channel model, so the
  model's forward pass raises (the way an out-of-memory error would, inside ``prediction_step``);
* ``collate``: the data collator raises on its evaluation batches;
* ``metrics``: ``compute_metrics`` raises.

The failure is switched on by a callback listed before each SoupCallback (``on_train_end``
runs in list order), so training itself is untouched. One JSON line per rank.
``python callback_ddp_eval_failure_script.py OUTPUT [forward,collate,metrics]`` (default: all three).
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)

from datasets import Dataset  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from test_callback import tiny_vit, training_args  # noqa: E402
from transformers import Trainer, TrainerCallback, default_data_collator  # noqa: E402

from hf_soup import SoupCallback  # noqa: E402

output_dir = Path(sys.argv[1])
FAILING = os.environ["RANK"] == "1"
failure = {"now": None}


class FailNext(TrainerCallback):
    """From the end of training on, process 1 fails in ``mode`` (the next SoupCallback's evaluation)."""

    def __init__(self, mode: str):
        self.mode = mode

    def on_train_end(self, args, state, control, **kwargs):
        failure["now"] = self.mode if FAILING else None


def collate(rows):
    if failure["now"] == "collate":
        raise RuntimeError("collator: this process's evaluation batch is broken")
    batch = default_data_collator(rows)
    if failure["now"] == "forward":
        batch["pixel_values"] = batch["pixel_values"].repeat(1, 3, 1, 1)  # 3 channels: the forward pass refuses
    return batch


def accuracy(prediction):
    if failure["now"] == "metrics":
        raise RuntimeError("compute_metrics: this process cannot score")
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


images, labels = load_digits(return_X_y=True)
pixels = (images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
train = Dataset.from_dict({"pixel_values": pixels[:320].tolist(), "labels": labels[:320].tolist()})
# 256 rows = 4 batches of 64 per pass, 2 per process: process 1 fails in the pass's first batch
validation = Dataset.from_dict({"pixel_values": pixels[1400:1656].tolist(), "labels": labels[1400:1656].tolist()})

modes = sys.argv[2].split(",") if len(sys.argv) > 2 else ("forward", "collate", "metrics")
callbacks = []
for mode in modes:
    callbacks += [FailNext(mode), SoupCallback("greedy", output_dir=output_dir / f"soup-{mode}",
                                               harvest_dir=output_dir / f"h-{mode}")]
trainer = Trainer(tiny_vit(), training_args(output_dir, max_steps=10, eval_strategy="no", ddp_timeout=1800), train_dataset=train,
                  eval_dataset=validation, data_collator=collate, compute_metrics=accuracy, callbacks=callbacks)
trainer.train()
soups = [c for c in callbacks if isinstance(c, SoupCallback)]
line = json.dumps({
    "rank": trainer.args.process_index,
    "world_size": trainer.args.world_size,
    "has_result": [callback.result is not None for callback in soups],
    "errors": {mode: [f"{type(e).__name__}: {e}" for e in c.errors] for mode, c in zip(modes, soups)},
})
sys.stdout.flush()
os.write(1, (line + "\n").encode())  # one write: the two ranks share the pipe
if torch.distributed.is_initialized():
    torch.distributed.barrier()  # the process group still works after the failed soups
    torch.distributed.destroy_process_group()
