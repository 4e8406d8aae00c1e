"""Shared fixtures: tiny config-built transformers models saved with ``save_pretrained``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

# Two torch threads on a busy 2-core machine are many times slower than one.
torch.set_num_threads(1)

TINY = {
    "llama": lambda: __import__("transformers").LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=64),
    "bert": lambda: __import__("transformers").BertConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=128, max_position_embeddings=64, num_labels=3),
    "gpt2": lambda: __import__("transformers").GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=64),
    "vit": lambda: __import__("transformers").ViTConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=8, patch_size=4, num_channels=1, num_labels=10),
}
MODEL_CLASS = {
    "llama": "LlamaForCausalLM",
    "bert": "BertForSequenceClassification",
    "gpt2": "GPT2LMHeadModel",
    "vit": "ViTForImageClassification",
}


def build_model(arch: str, seed: int, dtype: torch.dtype = torch.float32, **overrides):
    """A randomly initialised tiny model of ``arch`` (seeded)."""
    import transformers

    config = TINY[arch]()
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = getattr(transformers, MODEL_CLASS[arch])(config)
    return model.to(dtype)


def trainer_vit(seed: int = 0):
    """The one-channel tiny ViT digit classifier the Trainer tests train (no dropout: evaluations repeat exactly)."""
    return build_model("vit", seed, num_hidden_layers=1, num_attention_heads=2, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)


def vit_processor_class():
    """``ViTImageProcessorPil`` where transformers has it (needs no torchvision), else ``ViTImageProcessor``."""
    import transformers

    return getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor


@pytest.fixture
def make_ingredients(tmp_path):
    """``make_ingredients(arch, n)`` saves n seeded tiny models; returns their folders."""

    def make(arch: str, n: int = 3, dtype: torch.dtype = torch.float32, prefix: str = "run", **overrides) -> list[Path]:
        paths = []
        for seed in range(n):
            path = tmp_path / f"{prefix}-{arch}-{seed}"
            build_model(arch, seed, dtype, **overrides).save_pretrained(path)
            paths.append(path)
        return paths

    return make


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (to prove inputs and outputs are untouched)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*")) if p.is_file()
    }


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test starts on one torch thread, whatever an earlier test set, and leaves it as it found it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _method_registry_restored():
    """A method a test registers (``@register_method``) is gone after the test, whatever the test order."""
    from hf_soup.methods import registry

    saved = dict(registry._REGISTERED)
    yield
    registry._REGISTERED.clear()
    registry._REGISTERED.update(saved)
