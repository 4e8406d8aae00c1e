"""Run by tests/test_callback.py under ``torch.distributed.run --nproc_per_node=2`` (CPU, gloo).

Trains the tiny ViT with a SoupCallback in two processes and prints one JSON line per rank.
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

output_dir = sys.argv[1]
images, labels = load_digits(return_X_y=True)
train = Dataset.from_dict({"pixel_values": (images[:320] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8).tolist(),
                           "labels": labels[:320].tolist()})
callback = SoupCallback()
trainer = Trainer(tiny_vit(), training_args(output_dir, max_steps=10, eval_strategy="no"), train_dataset=train,
                  callbacks=[callback])
trainer.train()
# when train() returns, the soup is complete on every rank: the others waited for the main process
line = json.dumps({
    "rank": trainer.args.process_index,
    "world_size": trainer.args.world_size,
    "soup_complete": os.path.isfile(os.path.join(output_dir, "soup", "soup_report.json")),
    "has_result": callback.result is not None,
    "errors": [repr(error) for error in callback.errors],
})
# one write of the line and its newline: print() writes them apart, and the two ranks share the pipe
sys.stdout.flush()
os.write(1, (line + "\n").encode())
# leave the process group cleanly: without this, gloo's threads can abort a rank at interpreter exit
if torch.distributed.is_initialized():
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
