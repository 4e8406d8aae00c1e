"""Candidates formed on the evaluation device: the scored weights are the written soup's, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest

import hf_soup
from fixtures_classifiers import bound_evaluator, digit_bert, digit_vit  # noqa: F401
from hf_soup.errors import EvaluationError
from fixtures_evaluation import scored  # noqa: F401

torch = pytest.importorskip("torch")


def _bits(tensor):
    return tensor.detach().reshape(-1).contiguous().view(torch.uint8)


def _assert_same_bits(state, expected) -> None:
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert state[key].dtype == value.dtype, key
        assert torch.equal(_bits(state[key]), _bits(value)), key


def _snapshot(model):
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _written(directory: Path):
    """The soup as written, loaded back into a task model built from its config."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from hf_soup.evaluation import build_task_model, load_checkpoint_weights

    model = build_task_model(AutoConfig.from_pretrained(directory))
    load_checkpoint_weights(model, load_file(directory / "model.safetensors"))
    return _snapshot(model)


@pytest.mark.parametrize("kind,dtype", [("bert", None), ("vit", None), ("bert", "bfloat16")])
def test_greedy_scores_exactly_the_bytes_it_writes(kind, dtype, digit_bert, digit_vit, scored, tmp_path):
    digits = digit_vit if kind == "vit" else digit_bert
    report = hf_soup.soup([str(d) for d in digits.dirs], method="greedy", order="ascending", output_dir=tmp_path / "soup",
                          dtype=dtype, device="cpu", evaluation={"dataset": digits.validation, **digits.columns}).report
    steps = report["details"]["steps"]
    last = [step for step in steps if step["kept"]][-1]
    description = "greedy: + ingredient {}".format(last["ingredient"]) if last is not steps[0] else \
        "ingredient {}".format(last["ingredient"])
    assert len(report["details"]["kept"]) >= 3  # the sum path: worst first keeps several here
    _assert_same_bits(scored[description], _written(tmp_path / "soup"))


def test_radin_scores_exactly_the_bytes_it_writes(digit_bert, scored, tmp_path):
    report = hf_soup.soup([str(d) for d in digit_bert.dirs], method="radin", budget=3, include_singles=False,
                          output_dir=tmp_path / "soup", device="cpu",
                          evaluation={"dataset": digit_bert.validation, **digit_bert.columns}).report
    details = report["details"]
    chosen = next(c for c in details["evaluated_candidates"] if c["ingredients"] == details["kept"])
    description = f"radin: candidate {chosen['rank'] + 1}/{details['budget']}"
    _assert_same_bits(scored[description], _written(tmp_path / "soup"))


def _host_state(evaluator, method, indices):
    from hf_soup.evaluation.device_candidates import HostCandidates

    HostCandidates(evaluator.model, evaluator.builder).load(method, indices)
    return _snapshot(evaluator.model)


def _stored_in_bfloat16(digits, root: Path):
    """``digits`` with every ingredient's weights stored in bfloat16 (config and tokenizer copied)."""
    import dataclasses
    import shutil

    from safetensors.torch import load_file, save_file

    dirs = []
    for directory in digits.dirs:
        target = root / directory.name
        shutil.copytree(directory, target)
        weights = load_file(target / "model.safetensors")
        save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in weights.items()},
                  target / "model.safetensors", metadata={"format": "pt"})
        dirs.append(target)
    return dataclasses.replace(digits, dirs=dirs)


@pytest.mark.parametrize("kind,dtype", [("bert", "float32"), ("vit", "float32"), ("bert", "bfloat16"),
                                        ("bert-bf16-stored", "float32")])
def test_device_path_equals_the_host_path_resident_or_streamed(kind, dtype, digit_bert, digit_vit, tmp_path):
    from hf_soup.evaluation.device_candidates import DeviceCandidates, DeviceRunningSum
    from hf_soup.methods.uniform import UniformSoup
    from hf_soup.methods.weighted import WeightedSoup

    digits = digit_vit if kind == "vit" else digit_bert
    if kind == "bert-bf16-stored":
        digits = _stored_in_bfloat16(digits, tmp_path)
    uniform = UniformSoup(UniformSoup.Params())
    weighted = WeightedSoup(WeightedSoup.Params(weights=[0.3, 1.0, 2.7]))
    plans = [(uniform, [2, 0, 3]), (weighted, [1, 3, 0]), (uniform, [3])]
    with bound_evaluator(digits, dtype=dtype) as evaluator:
        expected = [_host_state(evaluator, method, indices) for method, indices in plans]
        running = evaluator.builder.running_sum()
        running.add(3)
        running.add(1)
        from hf_soup.evaluation.task_model import load_checkpoint_weights

        load_checkpoint_weights(evaluator.model, running.candidate(0))
        expected_running = _snapshot(evaluator.model)
        assert {t.dtype for t in evaluator.builder.tensors if t.action == "merge"} == (
            {"BF16"} if kind == "bert-bf16-stored" else {"F32"})
        largest = max(t.meta.numel for t in evaluator.builder.tensors) * (4 + 4 + 8 + 8)
        for budget in (None, largest):  # everything resident; every ingredient streamed
            evaluator.spec.device_memory = budget
            evaluator.bind(evaluator.builder.tensors, evaluator.builder.sources)
            assert isinstance(evaluator.candidates, DeviceCandidates)
            assert (evaluator.candidates.resident_bytes == 0) == (budget is not None)
            for (method, indices), state in zip(plans, expected):
                evaluator.load_plan(method, indices)
                _assert_same_bits(_snapshot(evaluator.model), state)
            running = evaluator.running_sum()
            assert isinstance(running, DeviceRunningSum)
            running.add(3)
            running.add(1)
            evaluator.evaluate_state_dict(evaluator.builder.ingredient(2))  # transformers may swap the tensors
            running.load_candidate(0)
            _assert_same_bits(_snapshot(evaluator.model), expected_running)


def test_too_small_a_memory_budget_is_refused_before_any_evaluation(digit_bert, tmp_path):
    with bound_evaluator(digit_bert, device_memory="1KiB") as evaluator:
        with pytest.raises(EvaluationError, match=r"evaluation.device_memory: forming tensor '.*' \(.* elements\)"):
            evaluator.candidates
        assert evaluator.num_full_evaluations == 0
    with pytest.raises(EvaluationError, match=r"needs .* KiB, more than the memory budget of 1.0 KiB"):
        hf_soup.soup([str(d) for d in digit_bert.dirs], method="greedy", output_dir=tmp_path / "soup", device="cpu",
                     evaluation={"dataset": digit_bert.validation, **digit_bert.columns, "device_memory": "1KiB"})
    assert not (tmp_path / "soup").exists()


def test_weights_without_a_checkpoint_key_keep_the_host_path(digit_bert):
    from hf_soup.evaluation.device_candidates import HostCandidates, parameter_map

    with bound_evaluator(digit_bert) as evaluator:
        tensors = evaluator.builder.tensors
        assert parameter_map(evaluator.model, tensors) is not None
        assert parameter_map(evaluator.model, [t for t in tensors if "classifier" not in t.key]) is None
        evaluator.builder.tensors = [t for t in tensors if "classifier" not in t.key]
        assert isinstance(evaluator.candidates, HostCandidates)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_linear_combination_into_reused_buffers_gives_the_host_bytes(dtype):
    """The buffers the device path passes (``out``, ``scratch``) change no bit of the engine's arithmetic."""
    import numpy as np

    from hf_soup.methods.linear_math import linear_combination, linear_combination_torch

    generator = torch.Generator().manual_seed(0)
    chunks = [(torch.randn(4097, generator=generator) * 10 ** i).to(getattr(torch, dtype)) for i in range(4)]
    chunks[1][:7] = -0.0
    host = [c.to(torch.float64).numpy() if dtype == "float64" else c.float().numpy() for c in chunks]
    for weights, divisor in [([1.0] * 4, 4.0), ([0.3, 1.0, 0.0, 2.7], 4.0), ([1.0, 1.0, 1.0, 1.0], 1.0)]:
        expected = linear_combination(host, weights, divisor)
        out, scratch = torch.full((4097,), np.nan, dtype=torch.float64), torch.empty(4097, dtype=torch.float64)
        result = linear_combination_torch(chunks, weights, divisor, out=out, scratch=scratch)
        assert result is out
        assert np.array_equal(result.numpy().view(np.int64), expected.view(np.int64))
        assert np.array_equal(linear_combination_torch(chunks, weights, divisor).numpy().view(np.int64),
                              expected.view(np.int64))


def test_tied_causal_lm_candidates_equal_the_host_path(digit_bert, tmp_path):
    """A Llama with tied embeddings: the checkpoint has no lm_head, the device path fills the tie's source."""
    import datasets

    from fixtures_classifiers import DigitIngredients, save_tiny_llamas
    from hf_soup.evaluation.device_candidates import DeviceCandidates
    from hf_soup.methods.uniform import UniformSoup

    dirs = save_tiny_llamas(tmp_path, range(3))
    texts = digit_bert.validation["text"][:16]
    data = DigitIngredients(dirs, datasets.Dataset.from_dict({"text": texts}), {"text_column": "text"}, dirs[0])
    uniform = UniformSoup(UniformSoup.Params())
    with bound_evaluator(data, metric="loss", batch_size=8) as evaluator:
        assert all("lm_head" not in t.key for t in evaluator.builder.tensors)
        expected = _host_state(evaluator, uniform, [2, 0, 1])
        expected_score = evaluator._score_model(evaluator.model, "host")
        assert isinstance(evaluator.candidates, DeviceCandidates)
        evaluator.load_plan(uniform, [2, 0, 1])
        state = _snapshot(evaluator.model)
        _assert_same_bits(state, expected)
        assert torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
        assert evaluator._score_model(evaluator.model, "device") == expected_score


def test_fused_weight_conversions_are_not_mapped():
    """Mixtral's experts are fused on load (a converter, not a rename): the host path loads them."""
    import types

    from transformers import MixtralConfig, MixtralForCausalLM

    from hf_soup.evaluation.device_candidates import parameter_map

    config = MixtralConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           num_key_value_heads=2, vocab_size=64, num_local_experts=2)
    model = MixtralForCausalLM(config)
    tensors = [types.SimpleNamespace(key=key, shape=tuple(value.shape), action="merge")
               for key, value in model.state_dict().items()]
    assert parameter_map(model, tensors) is None
