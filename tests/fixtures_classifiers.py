"""Tiny real classifiers fine-tuned on scikit-learn's ``load_digits``, shared by the evaluation tests.

* ViT (8x8 RGB images, 4x4 patches) and BERT (the digit pooled to 4x4, each cell's
  intensity a token ``p0``..``p16``).
* A "pre-trained" base is trained once on the training part; each ingredient is then
  fine-tuned from it on a different shard with a different learning rate (as the soup
  papers do), for a few AdamW steps. Everything runs on CPU in a few seconds.

``make_vit_ingredients`` / ``make_bert_ingredients`` return a :class:`DigitIngredients`
with the ingredient folders and the validation split as a ``datasets.Dataset``;
``save_tiny_llamas`` saves random causal LMs over the digit tokens, ``digit_pixels`` gives
the digits as one-channel ViT input (with ``conftest.trainer_vit``, for Trainer runs). The
pytest fixtures below are session-scoped; import them into a test module (or
``conftest.py``) with ``from fixtures_classifiers import digit_vit, digit_bert``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pytest

from hf_soup.testing.train import train_steps

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"p{v}" for v in range(17)]
NUM_VALIDATION = 240


@dataclass
class DigitIngredients:
    """Ingredient folders, the validation ``datasets.Dataset`` and the column names."""

    dirs: list[Path]
    validation: Any
    columns: dict[str, str]
    base_dir: Path


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.int64), digits.target.astype(np.int64)


def digit_pixels() -> tuple[np.ndarray, np.ndarray]:
    """Every digit as ``(N, 1, 8, 8)`` float32 in [0, 1], and the labels (one-channel ViT input for Trainer runs)."""
    images, labels = _digits()
    return (images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8), labels


def digit_text(image: np.ndarray) -> str:
    """An 8x8 digit pooled to 4x4 as 16 tokens ``p0``..``p16``."""
    pooled = image.reshape(4, 2, 4, 2).sum(axis=(1, 3)) // 4
    return " ".join(f"p{int(v)}" for v in pooled.reshape(-1))


def digit_rgb(image: np.ndarray) -> Any:
    """An 8x8 digit as a PIL RGB image."""
    from PIL import Image

    return Image.fromarray(np.stack([_gray(image)] * 3, axis=-1), mode="RGB")


def _gray(image: np.ndarray) -> np.ndarray:
    return (image * 15).clip(0, 255).astype(np.uint8)


def _pixel_values(images: np.ndarray) -> Any:
    """What the saved ViTImageProcessor computes (rescale 1/255, normalise 0.5/0.5), without PIL."""
    import torch

    values = (_gray(images).astype(np.float32) / 255.0 - 0.5) / 0.5
    return torch.as_tensor(values)[:, None].repeat(1, 3, 1, 1)




def single_thread_torch() -> None:
    """One intra-op thread: on a shared 2-core machine, two spinning threads are ~20x slower."""
    import torch

    torch.set_num_threads(1)


def _fine_tunes(model_factory, inputs, labels, root: Path, count: int, base_steps: int, steps: int,
                save_extra, base_lr: float) -> tuple[list[Path], Path]:
    import torch

    single_thread_torch()
    torch.manual_seed(0)
    base = model_factory()
    train_steps(base, inputs, labels, steps=base_steps, lr=base_lr, seed=0, weight_decay=0.0)
    base_dir = root / "base"
    base.save_pretrained(base_dir)
    save_extra(base_dir)
    dirs = []
    shards = np.array_split(np.arange(len(labels)), count)
    lrs = [1e-3, 2e-3, 3e-3, 5e-4, 1.5e-3, 2.5e-3, 4e-3, 7e-4]
    for k in range(count):
        model = model_factory()
        model.load_state_dict(base.state_dict())
        shard = torch.as_tensor(shards[k])
        train_steps(model, {n: v[shard] for n, v in inputs.items()}, labels[shard], steps=steps, lr=lrs[k % len(lrs)],
                    seed=k + 1, weight_decay=0.0)
        out = root / f"ingredient-{k}"
        model.save_pretrained(out)
        save_extra(out)
        dirs.append(out)
    return dirs, base_dir


def make_vit_ingredients(root: Path, count: int = 4, base_steps: int = 150, steps: int = 20) -> DigitIngredients:
    """Fine-tune ``count`` tiny ViT image classifiers; return their folders and the validation split."""
    import datasets
    import torch
    from conftest import vit_processor_class
    from transformers import ViTConfig, ViTForImageClassification

    images, targets = _digits()
    processor = vit_processor_class()(size={"height": 8, "width": 8}, do_resize=False, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    train_labels = targets[:-NUM_VALIDATION]
    pixel_values = _pixel_values(images[:-NUM_VALIDATION])
    config = ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=64, num_labels=10,
                       id2label={i: str(i) for i in range(10)}, label2id={str(i): i for i in range(10)})
    dirs, base_dir = _fine_tunes(lambda: ViTForImageClassification(config), {"pixel_values": pixel_values},
                                 torch.as_tensor(train_labels), root, count, base_steps, steps,
                                 lambda d: processor.save_pretrained(d), 3e-3)
    validation = datasets.Dataset.from_dict(
        {"image": [digit_rgb(i) for i in images[-NUM_VALIDATION:]], "label": targets[-NUM_VALIDATION:].tolist()},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    return DigitIngredients(dirs, validation, {"image_column": "image", "label_column": "label"}, base_dir)


def make_tokenizer(directory: Path) -> Any:
    """A word-level BERT tokenizer over ``VOCAB``, saved in ``directory``."""
    from transformers import BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizer(str(directory / "vocab.txt"), do_lower_case=False)
    tokenizer.save_pretrained(directory)
    return tokenizer


def save_tiny_llamas(root: Path, seeds: Iterable[int], max_position_embeddings: int = 32) -> list[Path]:
    """Tiny random Llama causal LMs with tied embeddings over ``VOCAB``, one folder (model + tokenizer) per seed."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer(root / "tok")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=max_position_embeddings,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id)
    dirs = []
    for seed in seeds:
        torch.manual_seed(seed)
        LlamaForCausalLM(config).save_pretrained(root / f"lm-{seed}")
        tokenizer.save_pretrained(root / f"lm-{seed}")
        dirs.append(root / f"lm-{seed}")
    return dirs


def make_bert_ingredients(root: Path, count: int = 4, base_steps: int = 300, steps: int = 20) -> DigitIngredients:
    """Fine-tune ``count`` tiny BERT sequence classifiers on digits-as-tokens."""
    import datasets
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    images, targets = _digits()
    tokenizer = make_tokenizer(root / "tokenizer")
    texts = [digit_text(i) for i in images]
    train = tokenizer(texts[:-NUM_VALIDATION], return_tensors="pt")
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=10)
    inputs = {"input_ids": train["input_ids"], "attention_mask": train["attention_mask"]}
    dirs, base_dir = _fine_tunes(lambda: BertForSequenceClassification(config), inputs,
                                 torch.as_tensor(targets[:-NUM_VALIDATION]), root, count, base_steps, steps,
                                 lambda d: tokenizer.save_pretrained(d), 5e-3)
    validation = datasets.Dataset.from_dict({"text": texts[-NUM_VALIDATION:], "label": targets[-NUM_VALIDATION:].tolist()})
    return DigitIngredients(dirs, validation, {"text_column": "text", "label_column": "label"}, base_dir)


_TRAINED: dict[str, DigitIngredients] = {}


def _once(kind: str, factory, tmp_path_factory) -> DigitIngredients:
    # Module-level memo: test modules that import these fixtures share one training run.
    if kind not in _TRAINED:
        _TRAINED[kind] = factory(tmp_path_factory.mktemp(f"digit-{kind}"))
    return _TRAINED[kind]


@pytest.fixture(scope="session")
def digit_vit(tmp_path_factory) -> DigitIngredients:
    """Four tiny ViT digit classifiers fine-tuned from one base (trained once per session)."""
    return _once("vit", make_vit_ingredients, tmp_path_factory)


@pytest.fixture(scope="session")
def digit_bert(tmp_path_factory) -> DigitIngredients:
    """Four tiny BERT digit classifiers fine-tuned from one base (trained once per session)."""
    return _once("bert", make_bert_ingredients, tmp_path_factory)


@contextmanager
def bound_evaluator(digits: DigitIngredients, dirs: list[Path] | None = None, **spec: Any) -> Iterator[Any]:
    """An :class:`~hf_soup.evaluation.Evaluator` on ``digits``' validation split, bound to its ingredients."""
    from contextlib import ExitStack

    from hf_soup.align import align
    from hf_soup.evaluation import EvaluationSpec, Evaluator
    from hf_soup.ingredients import resolve_ingredients

    ingredients = resolve_ingredients([str(d) for d in (dirs or digits.dirs)])
    options = {"dataset": digits.validation, "batch_size": 64, **digits.columns, **spec}
    with ExitStack() as stack:
        sources = {i: stack.enter_context(ing.open()) for i, ing in enumerate(ingredients)}
        alignment = align(list(sources.values()), [i.name for i in ingredients], [i.config for i in ingredients])
        evaluator = Evaluator.for_ingredients(EvaluationSpec(**options), ingredients, device="cpu")
        yield evaluator.bind(alignment.tensors, sources)
