"""Tiny Llama-shaped causal LMs (built from a ``LlamaConfig``, saved as checkpoints) and a text split.

The ingredients are one briefly trained base plus seeded perturbations of it (what fine-tunes
of one base look like to a soup: averaging them moves towards the base), saved with their
tokenizer — a word-level tokenizer built locally, saved with ``padding_side="left"`` so
the evaluation's own padding rule is exercised. Import the session fixture with
``from fixtures_causal import llama_lms``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures_classifiers import VOCAB, DigitIngredients, make_tokenizer


def llama_config(tokenizer, layers: int = 2):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id)


def texts(count: int, seed: int = 0) -> list[str]:
    """``count`` rows of 2 to 20 word tokens (variable lengths, so batches are padded)."""
    rng = np.random.default_rng(seed)
    words = VOCAB[5:]
    out = []
    for _ in range(count):
        start = int(rng.integers(len(words)))
        steps = rng.choice([1, 1, 1, 2], size=int(rng.integers(2, 21)))
        out.append(" ".join(words[(start + int(s)) % len(words)] for s in np.cumsum(steps)))
    return out


def _pretrain(model, tokenizer, steps: int = 40) -> None:
    """A few AdamW steps on other rows than the split's, so that noise hurts and averaging helps."""
    import torch

    batch = tokenizer(texts(64, seed=1), padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def make_llama_ingredients(root: Path, count: int = 4, rows: int = 40) -> DigitIngredients:
    """``count`` perturbed copies of one random tiny Llama, with a ``text`` split of ``rows`` rows."""
    import datasets
    import torch
    from transformers import LlamaForCausalLM

    from transformers import BertTokenizer

    make_tokenizer(root / "tokenizer")
    tokenizer = BertTokenizer(str(root / "tokenizer" / "vocab.txt"), do_lower_case=False, padding_side="left")
    torch.manual_seed(0)
    base = LlamaForCausalLM(llama_config(tokenizer))
    _pretrain(base, tokenizer)
    dirs = []
    for index in range(count):
        generator = torch.Generator().manual_seed(100 + index)
        model = LlamaForCausalLM(llama_config(tokenizer))
        with torch.no_grad():
            for (name, value), (_, own) in zip(base.state_dict().items(), model.state_dict().items()):
                own.copy_(value + 0.3 * value.std().nan_to_num() * torch.randn(value.shape, generator=generator))
        directory = root / f"lm-{index}"
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        dirs.append(directory)
    validation = datasets.Dataset.from_dict({"text": texts(rows)})
    return DigitIngredients(dirs, validation, {"text_column": "text"}, dirs[0])


_MADE: dict[str, DigitIngredients] = {}


@pytest.fixture(scope="session")
def llama_lms(tmp_path_factory) -> DigitIngredients:
    """Four tiny Llama causal LMs (2 layers, untied head) and a 40-row text split (made once per session)."""
    if "llama" not in _MADE:
        _MADE["llama"] = make_llama_ingredients(tmp_path_factory.mktemp("llama-lms"))
    return _MADE["llama"]
