"""Behaviour that must hold whether or not a GPU is visible: process-wide accelerate state, devices per process,
image processors without torchvision."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from fixtures_classifiers import digit_vit  # noqa: E402,F401,F811  (session fixture, trained once)
from hf_soup.engine.device import gpu_of_rank  # noqa: E402
from hf_soup.errors import DistributedError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_more_processes_than_gpus_is_refused_with_the_fix():
    assert gpu_of_rank(0, 1) == "cuda:0" and gpu_of_rank(3, 4) == "cuda:3"
    with pytest.raises(DistributedError) as caught:
        gpu_of_rank(1, 1)
    message = str(caught.value)
    assert "process 1 on this machine has no GPU of its own (1 visible)" in message
    assert "--nproc_per_node=1" in message and "--device cpu" in message


_CPU_AFTER_STATE = r"""
import sys
import accelerate
import hf_soup
from accelerate.state import AcceleratorState, PartialState

dirs, data = sys.argv[1:-1], sys.argv[-1]
evaluation = {"dataset": data, "image_column": "image", "batch_size": 16}
accelerate.Accelerator()  # what a Trainer or a notebook does first: accelerate's state, on the GPU when there is one
first = hf_soup.evaluate(dirs, evaluation=evaluation, ensemble=False, soups=())  # the default device
assert AcceleratorState._shared_state, "accelerate's state is set"
again = hf_soup.evaluate(dirs, evaluation=evaluation, ensemble=False, soups=(), device="cpu")
for a, b in zip(first["ingredient_scores"], again["ingredient_scores"]):
    assert abs(a - b) < 1e-4, (first["ingredient_scores"], again["ingredient_scores"])
print("ok", PartialState().device)
"""


def test_cpu_evaluation_after_accelerate_state_is_set_in_the_same_process(digit_vit, tmp_path):  # noqa: F811
    """On a GPU machine accelerate's process-wide state is on CUDA and the first evaluation runs there;
    ``device: cpu`` afterwards must still work (it used to raise inside accelerate)."""
    folder = tmp_path / "images"
    digit_vit.validation.select(range(32)).save_to_disk(str(folder))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _CPU_AFTER_STATE, *map(str, digit_vit.dirs[:2]), str(folder)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok ")


def test_single_process_cpu_evaluation_leaves_accelerate_state_alone():
    from accelerate.state import PartialState

    from hf_soup.evaluation.evaluator import Evaluator
    from hf_soup.evaluation.local_accelerator import LocalAccelerator

    before = dict(PartialState._shared_state)
    accelerator = Evaluator._make_accelerator("cpu")
    assert isinstance(accelerator, LocalAccelerator) and accelerator.device == torch.device("cpu")
    assert PartialState._shared_state == before


def test_image_processor_loads_without_torchvision(tmp_path):
    transformers = pytest.importorskip("transformers")
    from transformers.utils import is_torchvision_available

    from conftest import vit_processor_class
    from hf_soup.evaluation.data import load_image_processor

    vit_processor_class()(size={"height": 8, "width": 8}, do_resize=False).save_pretrained(tmp_path)
    processor = load_image_processor(tmp_path)
    if not is_torchvision_available():
        assert type(processor).__name__ == "ViTImageProcessorPil"
    assert isinstance(processor, transformers.image_processing_utils.BaseImageProcessor)
