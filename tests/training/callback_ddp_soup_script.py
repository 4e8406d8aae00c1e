"""Run by tests/training/test_callback_ddp.py under ``torch.distributed.run --nproc_per_node=2`` (CPU, gloo).

Trains the tiny ViT in two processes with data-driven SoupCallbacks scored through the
Trainer's evaluation loop, and prints one JSON line per rank.

``python callback_ddp_soup_script.py OUTPUT ok``: a greedy and a RADIN callback on the same run,
both keeping their harvested checkpoints (the test soups them again in one process).
``... OUTPUT fail``: one greedy callback; process 1 cannot build its evaluation model.
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
from transformers import Trainer  # noqa: E402

from hf_soup import SoupCallback  # noqa: E402

output_dir, mode = Path(sys.argv[1]), sys.argv[2]
images, labels = load_digits(return_X_y=True)
pixels = (images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
train = Dataset.from_dict({"pixel_values": pixels[:320].tolist(), "labels": labels[:320].tolist()})
# 128 rows = 2 global batches of 2 x 64: no padded batch, whose repeated rows the Trainer's own
# eval_loss (a mean of per-batch means) would count under DDP (see docs/distributed.md)
validation = Dataset.from_dict({"pixel_values": pixels[1400:1528].tolist(), "labels": labels[1400:1528].tolist()})

if mode == "ok":
    callbacks = [SoupCallback("greedy", output_dir=output_dir / "soup-greedy", harvest_dir=output_dir / "h-greedy",
                              keep_ingredients=True),
                 SoupCallback("radin", output_dir=output_dir / "soup-radin", harvest_dir=output_dir / "h-radin",
                              keep_ingredients=True, budget=2)]
else:
    callbacks = [SoupCallback("greedy", output_dir=output_dir / "soup-greedy")]
    if os.environ["RANK"] == "1":  # this process cannot build its evaluation model (out of memory, say)
        from hf_soup.errors import EvaluationError
        from hf_soup.training import trainer_evaluator

        def refuse(self, ingredients, **kwargs):
            raise EvaluationError("no memory left for the evaluation model on this process")

        trainer_evaluator.TrainerEvaluationSpec.build_evaluator = refuse

trainer = Trainer(tiny_vit(), training_args(output_dir, max_steps=15, eval_strategy="no"), train_dataset=train,
                  eval_dataset=validation, callbacks=callbacks)
trainer.train()
line = json.dumps({
    "rank": trainer.args.process_index,
    "world_size": trainer.args.world_size,
    "has_result": [callback.result is not None for callback in callbacks],
    "errors": [[f"{type(error).__name__}: {error}" for error in callback.errors] for callback in callbacks],
})
sys.stdout.flush()
os.write(1, (line + "\n").encode())  # one write: the two ranks share the pipe
if torch.distributed.is_initialized():
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
