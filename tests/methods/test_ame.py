"""AME (Amortized Model Ensembling): the paper's identities, streaming, reproducibility, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import hf_soup
from hf_soup import merge_state_dicts
from hf_soup.errors import MethodParameterError, RecipeError
from hf_soup.methods.ame.method import AmeSoup
from hf_soup.methods.base import ChunkInfo, MergeContext
from hf_soup.methods.registry import build_method

N = 4


def _state_dicts(count: int = N, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Ingredients that differ like fine-tunes of one model: a shared base plus noise."""
    g = torch.Generator().manual_seed(seed)
    base = {"layer.weight": torch.randn(24, 16, generator=g), "layer.bias": torch.randn(16, generator=g),
            "scale": torch.randn((), generator=g)}
    return [{k: v + 0.3 * (i + 1) * torch.randn(v.shape, generator=g) for k, v in base.items()}
            | {"steps": torch.arange(5) + i} for i in range(count)]


def _uniform(state_dicts):
    return merge_state_dicts(state_dicts, method="uniform")


def _assert_close(a, b, **tol):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], **tol)


def _far_pivot(state_dicts):
    g = torch.Generator().manual_seed(99)
    return {k: 10 + 5 * torch.randn(v.shape, generator=g) for k, v in state_dicts[0].items() if v.is_floating_point()}


# -- identities from the paper ----------------------------------------------------------

@pytest.mark.parametrize("pivot", ["soup", "first", 2, "state_dict"])
def test_gd_lr1_constant_fixed_pivot_one_epoch_is_uniform_soup(pivot):
    """Eq. 3-4: x_soup = x_pivot − (1/N) Σ (x_pivot − x_i), whatever the pivot."""
    sds = _state_dicts()
    pivot_value = _far_pivot(sds) if pivot == "state_dict" else pivot
    merged = merge_state_dicts(sds, method="ame", optimizer="sgd", lr=1.0, lr_schedule="constant",
                               adaptive_pivot=False, pivot=pivot_value, epochs=1, batch_size=1)
    _assert_close(merged, _uniform(sds), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("pivot", ["soup", "first", 3, "state_dict"])
def test_harmonic_adaptive_pivot_is_running_mean(pivot):
    """§3.1: with η_t = lr/t and lr·ζ/N = 1 the adaptive form is the running mean, from any start."""
    sds = _state_dicts()
    pivot_value = _far_pivot(sds) if pivot == "state_dict" else pivot
    merged = merge_state_dicts(sds, method="ame", optimizer="sgd", lr=N / 2, amplification=2.0,
                               lr_schedule="harmonic", adaptive_pivot=True, pivot=pivot_value)
    _assert_close(merged, _uniform(sds), atol=2e-5, rtol=1e-5)


def test_harmonic_with_other_rate_is_not_the_soup():
    """The identity above is specific to lr·ζ/N = 1: the test would notice a wrong schedule."""
    sds = _state_dicts()
    merged = merge_state_dicts(sds, method="ame", optimizer="sgd", lr=1.0, pivot="first")
    assert not torch.allclose(merged["layer.weight"], _uniform(sds)["layer.weight"], atol=1e-3)


def test_proposition_1_adagrad_with_large_eps_is_gd():
    """Adagrad with ε ≫ Σg² and lr = ε·η̃ follows GD ensembling with rate η̃."""
    sds = _state_dicts()
    common = dict(lr_schedule="harmonic", epochs=3, batch_size=2, shuffle=True, seed=5, pivot="first")
    gd = merge_state_dicts(sds, method="ame", optimizer="sgd", lr=0.7, **common)
    eps = 1e4
    adagrad = merge_state_dicts(sds, method="ame", optimizer="adagrad", lr=0.7 * eps, eps=eps, **common)
    _assert_close(adagrad, gd, atol=2e-3, rtol=1e-3)
    adaptive = merge_state_dicts(sds, method="ame", optimizer="adagrad", lr=0.7, eps=1e-10, **common)
    assert (adaptive["layer.weight"] - gd["layer.weight"]).abs().max() > 0.05  # small ε: really adaptive


def test_adam_with_decaying_rate_converges_over_epochs():
    """App. A.3: Adam with β₁² < β₂ and a decaying rate; successive epochs change w less and less."""
    sds = _state_dicts()
    runs = [merge_state_dicts(sds, method="ame", optimizer="adam", lr=0.05, betas=[0.8, 0.99],
                              lr_schedule="harmonic", epochs=e, pivot=0)["layer.weight"] for e in range(1, 8)]
    changes = [float((b - a).norm()) for a, b in zip(runs, runs[1:])]
    assert all(later < earlier for earlier, later in zip(changes, changes[1:])), changes
    assert changes[-1] < 0.3 * changes[0], changes


def test_sgd_schedule_matches_a_hand_written_loop():
    """Order, batches, per-ingredient ζ and momentum follow Algorithm 1 step by step."""
    sds = _state_dicts()
    zetas = [1.0, 2.0, 0.5, 1.5]
    scores = [0.3, 0.9, 0.1, 0.5]
    method = build_method("ame", dict(optimizer="sgd", lr=0.8, momentum=0.5, epochs=2, batch_size=3,
                                      amplification=zetas, pivot="best", order="descending",
                                      lr_schedule="constant"))
    method.setup(MergeContext(N, list("abcd"), scores=scores))
    xs = [sd["layer.weight"].reshape(-1).numpy().astype(np.float64) for sd in sds]
    order = [1, 3, 0, 2]  # descending score
    w, buf = xs[1].copy(), None  # pivot: best
    for _ in range(2):
        for batch in (order[:3], order[3:]):
            g = sum(zetas[j] * (w - xs[j]) for j in batch) / (N * len(batch))
            buf = g if buf is None else 0.5 * buf + g
            w = w - 0.8 * buf
    got = method.merge(ChunkInfo("layer.weight", (24, 16), 0, 384), [x.astype(np.float32) for x in xs])
    np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-5)
    report = method.report()
    assert report["ingredient_order"] == order and report["pivot_ingredient"] == 1
    assert report["epoch_orders"] == [order, order]


def test_ascending_order_puts_the_weakest_first_for_losses_too():
    method = build_method("ame", {"order": "ascending", "pivot": "first"})
    method.setup(MergeContext(3, list("abc"), scores=[0.2, 0.9, 0.5], higher_is_better=False))
    assert method.report()["ingredient_order"] == [1, 2, 0]  # highest loss = weakest first
    assert method.report()["pivot_ingredient"] == 1


def test_pivot_first_is_the_first_ingredient_visited_even_when_shuffled():
    """Algorithm 1 line 1: w₀ = x₁ of the visiting order; with shuffle, epoch 1's first ingredient."""
    sds = _state_dicts()
    method = build_method("ame", dict(pivot="first", shuffle=True, seed=0, epochs=2, optimizer="sgd", lr=1.0,
                                      lr_schedule="constant", adaptive_pivot=False))
    method.setup(MergeContext(N, list("abcd")))
    first = method.report()["epoch_orders"][0][0]
    assert first != 0  # seed 0 shuffles ingredient 2 to the front: the test tells the two readings apart
    assert method.report()["pivot_ingredient"] == first
    # fixed pivot, constant lr 1: w = x_first - 2 * mean_j (x_first - x_j) over two epochs
    xs = [sd["layer.weight"].reshape(-1).numpy().astype(np.float64) for sd in sds]
    expected = xs[first] - 2 * sum(xs[first] - x for x in xs) / N
    got = method.merge(ChunkInfo("layer.weight", (24, 16), 0, 384), [x.astype(np.float32) for x in xs])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


# -- streaming ----------------------------------------------------------------------------

@pytest.mark.parametrize("options", [
    dict(optimizer="adam", lr=0.01, betas=[0.8, 0.99], epochs=3, batch_size=2, shuffle=True, seed=3),
    dict(optimizer="rmsprop", lr=0.01, centered=True, momentum=0.9, epochs=2, lr_schedule="cosine",
         adaptive_pivot=False, amplification=[1.0, 0.5, 2.0]),
    dict(optimizer="adadelta", weight_decay=0.1, epochs=2, batch_size=3, pivot=1),
    dict(optimizer="sgd", lr=0.5, momentum=0.9, nesterov=True, epochs=2, shuffle=True, seed=1, pivot="state_dict"),
    dict(optimizer="adam", lr=0.01, weight_decay=0.1, amsgrad=True, epochs=2, num_threads=3),
    dict(optimizer="sgd", lr=0.5, momentum=0.9, epochs=2, fused=False, adaptive_pivot=False),
])
def test_streamed_equals_whole_model_at_once(options):
    """Tensor by tensor, chunk by chunk == one run over the whole flattened model (same bytes)."""
    from hf_soup.align import align
    from hf_soup.engine import execute
    from hf_soup.engine.sinks import StateDictSink
    from hf_soup.io.torch_source import StateDictSource

    g = torch.Generator().manual_seed(1)
    shapes = {"emb": (300_001,), "a.weight": (7, 13), "a.bias": (13,), "norm": (), "big": (640, 300)}
    sds = [{k: torch.randn(s, generator=g) for k, s in shapes.items()} for _ in range(3)]
    if options.get("pivot") == "state_dict":
        options = {**options, "pivot": {k: torch.randn(s, generator=g) for k, s in shapes.items()}}
    method = build_method("ame", options)
    sources = {i: StateDictSource(sd) for i, sd in enumerate(sds)}
    alignment = align(list(sources.values()), ["a", "b", "c"])
    method.setup(MergeContext(3, ["a", "b", "c"], alignment=alignment))
    sink = StateDictSink()
    execute(method, alignment.tensors, sources, [0, 1, 2], lambda _: sink, buffer_bytes=1 << 20)  # 64k-element chunks
    streamed = np.concatenate([sink.state_dict[k].reshape(-1).numpy() for k in shapes])

    whole_method = method
    if isinstance(options.get("pivot"), dict):  # the whole-model run gets the pivot flattened the same way
        flat_pivot = torch.cat([options["pivot"][k].reshape(-1) for k in shapes])
        whole_method = build_method("ame", {**options, "pivot": {"all": flat_pivot}})
        whole_method.setup(MergeContext(3, ["a", "b", "c"]))
    whole = [np.concatenate([sd[k].reshape(-1).numpy() for k in shapes]) for sd in sds]
    at_once = whole_method.merge(ChunkInfo("all", (whole[0].size,), 0, whole[0].size), whole)
    np.testing.assert_array_equal(streamed, at_once.astype(np.float32))  # the engine's one rounding


def test_thread_count_does_not_change_the_bytes():
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(700_001, generator=g).numpy() for _ in range(3)]
    results = []
    for threads in (1, 2, 3):
        method = build_method("ame", dict(optimizer="sgd", lr=0.5, momentum=0.9, epochs=2, num_threads=threads))
        method.setup(MergeContext(3, list("abc")))
        results.append(method.merge(ChunkInfo("x", (700_001,), 0, 700_001), xs))
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


def test_integer_buffers_are_copied_from_the_reference_ingredient():
    sds = _state_dicts()
    merged = merge_state_dicts(sds, method="ame", optimizer="adam", lr=0.01, pivot=2)
    assert torch.equal(merged["steps"], sds[0]["steps"])
    assert merged["steps"].dtype == torch.int64


def test_inputs_are_not_modified():
    sds = _state_dicts()
    before = [{k: v.clone() for k, v in sd.items()} for sd in sds]
    merge_state_dicts(sds, method="ame", optimizer="adamw", lr=0.1, epochs=2, pivot=1, adaptive_pivot=False)
    for sd, copy in zip(sds, before):
        _assert_close(sd, copy, atol=0, rtol=0)


# -- reproducibility through the real pipeline on saved transformers models --------------

@pytest.fixture(scope="module")
def llama_dirs(tmp_path_factory) -> list[str]:
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("ame-llamas")
    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=64, max_position_embeddings=32)
    dirs = []
    for i in range(3):
        torch.manual_seed(i)
        path = root / f"run-{i}"
        LlamaForCausalLM(config).save_pretrained(path)
        dirs.append(str(path))
    return dirs


def _weights(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(Path(directory).glob("*.safetensors")))


def test_same_seed_same_bytes_different_seed_differs(llama_dirs, tmp_path):
    options = dict(method="ame", optimizer="adam", lr=0.01, epochs=3, batch_size=2, shuffle=True)
    a = hf_soup.soup(llama_dirs, output_dir=tmp_path / "a", seed=7, **options)
    b = hf_soup.soup(llama_dirs, output_dir=tmp_path / "b", seed=7, **options)
    c = hf_soup.soup(llama_dirs, output_dir=tmp_path / "c", seed=8, **options)
    assert _weights(a.output_dir) == _weights(b.output_dir)
    assert _weights(a.output_dir) != _weights(c.output_dir)
    assert a.report["details"]["epoch_orders"] != c.report["details"]["epoch_orders"]
    # a recipe's method seed wins over the recipe's seed (soup()'s seed= is the recipe's)
    from hf_soup.recipe import parse_recipe

    params = {k: v for k, v in options.items() if k != "method"} | {"seed": 7}
    recipe = parse_recipe({"ingredients": llama_dirs, "method": {"name": "ame", **params}, "seed": 123,
                           "output": {"dir": str(tmp_path / "d")}})
    d = hf_soup.run_recipe(recipe)
    assert _weights(d.output_dir) == _weights(a.output_dir)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(a.output_dir)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_report_records_optimizer_schedule_and_pivot(llama_dirs, tmp_path):
    result = hf_soup.soup(llama_dirs, output_dir=tmp_path / "soup", method="ame", optimizer="adamw", lr=0.02,
                          betas=[0.8, 0.99], weight_decay=0.05, lr_schedule="cosine", epochs=2, batch_size=2,
                          pivot="first", seed=4)
    details = json.loads((tmp_path / "soup" / "soup_report.json").read_text())["details"]
    assert details["optimizer"] == "AdamW"
    assert details["optimizer_args"]["lr"] == 0.02 and details["optimizer_args"]["betas"] == [0.8, 0.99]
    assert details["optimizer_args"]["weight_decay"] == 0.05 and "eps" in details["optimizer_args"]
    assert (details["lr_schedule"], details["epochs"], details["batch_size"], details["shuffle"]) == ("cosine", 2, 2, False)
    assert (details["pivot"], details["pivot_ingredient"], details["seed"], details["order"]) == ("first", 0, 4, "given")
    assert details["num_steps"] == 4 and "not optimized" in details["non_float_tensors"]
    assert result.report["method"] == "ame"
    # the model card shows the resolved optimizer arguments, schedule and seed
    import yaml

    card = (tmp_path / "soup" / "README.md").read_text()
    shown = yaml.safe_load(card.split("## Parameters")[1].split("```yaml")[1].split("```")[0])
    assert shown["optimizer"] == "AdamW" and shown["optimizer_args"]["betas"] == [0.8, 0.99]
    assert (shown["lr_schedule"], shown["epochs"], shown["batch_size"], shown["seed"], shown["pivot"]) == \
        ("cosine", 2, 2, 4, "first")


def test_state_dict_pivot_through_soup(llama_dirs, tmp_path):
    from safetensors.torch import load_file

    pivot = load_file(str(Path(llama_dirs[1]) / "model.safetensors"))
    result = hf_soup.soup(llama_dirs, output_dir=tmp_path / "soup", method="ame", lr=1.0, lr_schedule="constant",
                          adaptive_pivot=False, pivot=pivot)
    uniform = hf_soup.soup(llama_dirs, output_dir=tmp_path / "uniform")
    merged = load_file(str(result.output_dir / "model.safetensors"))
    expected = load_file(str(uniform.output_dir / "model.safetensors"))
    _assert_close(merged, expected, atol=1e-6, rtol=1e-5)
    assert result.report["details"]["pivot"] == "state dict"
    assert result.report["recipe"]["method"]["params"]["pivot"].startswith("<state dict of")


def test_cli_merge_with_ame(llama_dirs, tmp_path):
    from hf_soup.cli import main

    args = ["merge", *[x for d in llama_dirs for x in ("-m", d)], "--method", "ame", "-p", "optimizer=adam",
            "-p", "lr=0.01", "-p", "betas=[0.8,0.99]", "-p", "epochs=2", "-o", str(tmp_path / "out"), "--quiet"]
    assert main(args) == 0
    details = json.loads((tmp_path / "out" / "soup_report.json").read_text())["details"]
    assert details["optimizer"] == "Adam" and details["optimizer_args"]["betas"] == [0.8, 0.99]
    assert main(["merge", "-m", llama_dirs[0], "-m", llama_dirs[1], "--method", "ame", "-p", "optimizer=lbfgs",
                 "-o", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


# -- bad parameters fail before any work --------------------------------------------------

@pytest.mark.parametrize("params, fragment", [
    (dict(optimizer="adamm"), "unknown optimizer 'adamm'"),
    (dict(optimizer="lbfgs"), "cannot be used by AME"),
    (dict(optimizer="adafactor"), "not elementwise"),
    (dict(lr=0), "method.lr: must be a number > 0"),
    (dict(lr=-0.1), "method.lr: must be a number > 0"),
    (dict(batch_size=0), "method.batch_size: must be at least 1"),
    (dict(batch_size=4), "method.batch_size: 4 is more than the 3 ingredients"),
    (dict(epochs=0), "method.epochs: must be at least 1"),
    (dict(pivot="best"), "needs an evaluation"),
    (dict(order="descending"), "needs an evaluation"),
    (dict(pivot="middle"), "method.pivot: must be soup, first, best"),
    (dict(pivot=3), "method.pivot: 3 is not an ingredient index"),
    (dict(lr_schedule="linear"), "method.lr_schedule"),
    (dict(optimizer="adam", momentum=0.9), "unknown parameter 'momentum'"),
    (dict(optimizer="adam", betas=[1.2, 0.99]), "Invalid beta parameter"),
    (dict(amplification=[1.0, 2.0]), "method.amplification: got 2 values for 3 ingredients"),
    (dict(amplification=0), "method.amplification"),
    (dict(epoch=2), "unknown parameter 'epoch'"),
    (dict(pivot={"model.embed_tokens.weight": torch.zeros(3)}), "method.pivot: the pivot state dict does not match"),
])
def test_bad_parameters_fail_before_any_work(llama_dirs, tmp_path, monkeypatch, params, fragment):
    def no_merge(*args, **kwargs):
        raise AssertionError("merging started despite bad parameters")

    monkeypatch.setattr("hf_soup.output.files.execute", no_merge)
    with pytest.raises(RecipeError) as caught:
        hf_soup.soup(llama_dirs, method="ame", output_dir=tmp_path / "out", **params)
    assert fragment in str(caught.value) or (fragment == "needs an evaluation"
                                             and "needs an evaluation dataset" in str(caught.value))
    assert isinstance(caught.value, MethodParameterError) or fragment == "needs an evaluation"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("params, fragment", [
    (dict(pivot="best"), "method.pivot: best ranks the ingredients by validation score"),
    (dict(order="descending"), "method.order: descending ranks the ingredients by validation score"),
])
def test_score_based_choices_without_scores_are_clear_errors(params, fragment):
    with pytest.raises(MethodParameterError, match=fragment):
        merge_state_dicts(_state_dicts(), method="ame", **params)


# -- device -------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    sds = _state_dicts()
    options = dict(optimizer="adam", lr=0.01, epochs=3, batch_size=2, shuffle=True, seed=2)
    cpu, gpu = build_method("ame", options), build_method("ame", options)
    cpu.setup(MergeContext(N, list("abcd")))
    gpu.setup(MergeContext(N, list("abcd"), device="cuda"))
    xs = [sd["layer.weight"].reshape(-1).numpy() for sd in sds]
    info = ChunkInfo("layer.weight", (24, 16), 0, 384)
    np.testing.assert_array_equal(gpu.merge(info, xs), cpu.merge(info, xs))  # the portable default: same bits


def test_cuda_request_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    method = build_method("ame", {})
    with pytest.raises(RecipeError, match="no CUDA device"):
        method.setup(MergeContext(2, ["a", "b"], device="cuda"))


def test_amesoup_is_registered():
    assert "ame" in hf_soup.available_methods()
    assert isinstance(build_method("ame", {}), AmeSoup)


# -- the schedule ---------------------------------------------------------------------------

def test_schedule_rates_batches_and_shuffles():
    from hf_soup.methods.ame.schedule import build_schedule

    common = dict(epochs=3, batch_size=2, seed=11, order=[0, 1, 2, 3, 4], lr=0.5)
    cosine = build_schedule(5, shuffle=False, lr_schedule="cosine", **common)
    assert [s.batch for s in cosine[:3]] == [(0, 1), (2, 3), (4,)]  # last batch of an epoch is smaller
    rates = [s.lr for s in cosine]
    assert rates[0] == 0.5 and rates[-1] > 0 and all(b < a for a, b in zip(rates, rates[1:]))
    harmonic = build_schedule(5, shuffle=False, lr_schedule="harmonic", **common)
    assert [s.lr for s in harmonic] == [0.5 / t for t in range(1, 10)]
    shuffled = build_schedule(5, shuffle=True, lr_schedule="constant", **common)
    epochs = [[i for s in shuffled if s.epoch == e for i in s.batch] for e in (1, 2, 3)]
    assert all(sorted(e) == [0, 1, 2, 3, 4] for e in epochs) and len({tuple(e) for e in epochs}) > 1
    assert shuffled == build_schedule(5, shuffle=True, lr_schedule="constant", **common)
    assert shuffled != build_schedule(5, shuffle=True, lr_schedule="constant", **{**common, "seed": 12})


# -- the functional optimizer path == torch's Optimizer.step(), bit for bit -----------------

_OPTIMIZER_CASES = [
    ("sgd", {}),
    ("sgd", dict(momentum=0.9)),
    ("sgd", dict(momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("sgd", dict(momentum=0.5, dampening=0.1, maximize=False)),
    ("sgd", dict(momentum=0.9, weight_decay=0.1, fused=True)),
    ("sgd", dict(momentum=0.9, foreach=True, maximize=True)),
    ("adam", {}),
    ("adam", dict(betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True)),
    ("adam", dict(weight_decay=0.05, amsgrad=True, fused=True)),
    ("adam", dict(weight_decay=0.1, decoupled_weight_decay=True, maximize=False, foreach=True)),
    ("adamw", {}),
    ("adamw", dict(weight_decay=0.1, amsgrad=True)),
    ("adamw", dict(betas=(0.5, 0.9), fused=True)),
    ("adagrad", {}),
    ("adagrad", dict(lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.5)),
    ("adagrad", dict(initial_accumulator_value=0.1, eps=1e-3, fused=True)),
    ("adadelta", {}),
    ("adadelta", dict(rho=0.5, weight_decay=0.1, eps=1e-4)),
    ("rmsprop", {}),
    ("rmsprop", dict(centered=True)),
    ("rmsprop", dict(momentum=0.9, alpha=0.9)),
    ("rmsprop", dict(centered=True, momentum=0.9, weight_decay=0.1, foreach=True)),
    ("adamax", {}),
    ("adamax", dict(betas=(0.8, 0.99), weight_decay=0.1)),
    ("nadam", {}),
    ("nadam", dict(weight_decay=0.1, decoupled_weight_decay=True, momentum_decay=0.01)),
    ("radam", {}),
    ("radam", dict(weight_decay=0.1, decoupled_weight_decay=True)),
    ("asgd", {}),
    ("asgd", dict(t0=2, lambd=0.01, alpha=0.5, weight_decay=0.1)),
    ("rprop", {}),
    ("rprop", dict(etas=(0.3, 1.5), step_sizes=(1e-4, 1.0))),
]


@pytest.mark.parametrize("name, kwargs", _OPTIMIZER_CASES, ids=lambda v: v if isinstance(v, str) else
                         ",".join(f"{k}={w}" for k, w in v.items()) or "defaults")
def test_functional_path_equals_optimizer_step_bit_for_bit(name, kwargs):
    """Several steps at changing rates: same weights and same state as ``torch.optim.X.step()``."""
    from hf_soup.methods.ame.functional import FunctionalOptimizer
    from hf_soup.methods.ame.optim import optimizer_group, resolve_optimizer

    g = torch.Generator().manual_seed(5)
    start = torch.randn(1000, generator=g)
    gradients = [torch.randn(1000, generator=g) for _ in range(6)]
    gradients[3] = -gradients[2]  # a sign flip (Rprop's and AMSGrad's branches)
    rates = [0.1, 0.05, 0.3, 0.02, 0.2, 0.01]

    weights = torch.nn.Parameter(start.clone())
    weights.grad = torch.empty(1000)
    # built at another rate: the rate each step runs at is set in the group, as AME does
    reference = resolve_optimizer(name)([weights], lr=1.0, **kwargs)
    values, grad = start.clone(), torch.empty(1000)
    ours = FunctionalOptimizer(name, values, grad, optimizer_group(name, 1.0, kwargs))
    for gradient, rate in zip(gradients, rates):
        weights.grad.copy_(gradient)
        reference.param_groups[0]["lr"] = rate
        reference.step()
        grad.copy_(gradient)
        ours.step(rate)
        assert torch.equal(values, weights.detach())
    assert not torch.equal(values, start)
    theirs = reference.state[weights]
    assert ours.state.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(ours.state[key], value), key
        assert ours.state[key].dtype == value.dtype and ours.state[key].device == value.device, key


def test_every_optimizer_argument_is_forwarded():
    """Each group entry of the installed torch's optimizers is passed on by the functional path."""
    from hf_soup.methods.ame.functional import FORWARDED, unforwarded
    from hf_soup.methods.ame.optim import ELEMENTWISE, optimizer_group, resolve_optimizer

    assert set(FORWARDED) == set(ELEMENTWISE)
    for name in ELEMENTWISE:
        weights = torch.nn.Parameter(torch.zeros(1))
        group = resolve_optimizer(name)([weights], lr=0.1).param_groups[0]
        assert unforwarded(name, group) == [], name
        assert optimizer_group(name, 0.1, {}) == {k: v for k, v in group.items() if k != "params"}, name


def test_optimizer_arguments_are_still_checked_by_torch():
    from hf_soup.methods.ame.optim import check_optimizer

    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum"):
        check_optimizer("sgd", 0.1, {"nesterov": True})
    with pytest.raises(ValueError, match="Invalid eta values"):
        check_optimizer("rprop", 0.1, {"etas": [1.5, 0.5]})
    with pytest.raises(ValueError, match="fused.*foreach"):
        check_optimizer("adam", 0.1, {"fused": True, "foreach": True})
    assert check_optimizer("adagrad", 0.1, {"initial_accumulator_value": 0.5})["initial_accumulator_value"] == 0.5


def test_ame_never_imports_torch_dynamo(llama_dirs, tmp_path):
    """Neither the Python API nor the CLI builds a torch Optimizer (its step imports ~70 MB of dynamo)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys, torch, hf_soup\n"
        "sds = [{'w': torch.randn(300, 70) + i, 'b': torch.randn(5)} for i in range(3)]\n"
        "for options in [dict(optimizer='adam'), dict(optimizer='adamw', amsgrad=True, epochs=2, batch_size=2),\n"
        "                dict(optimizer='sgd', momentum=0.9), dict(optimizer='rprop'), dict(optimizer='asgd')]:\n"
        "    hf_soup.merge_state_dicts(sds, method='ame', **options)\n"
        "assert 'torch._dynamo' not in sys.modules, 'merge_state_dicts imported torch._dynamo'\n"
        "from hf_soup.cli import main\n"
        f"args = ['merge', *[x for d in {llama_dirs!r} for x in ('-m', d)], '--method', 'ame', '-p', 'optimizer=adam',\n"
        f"        '-p', 'epochs=2', '-o', {str(tmp_path / 'out')!r}, '--quiet']\n"
        "assert main(args) == 0\n"
        "assert 'torch._dynamo' not in sys.modules, 'the CLI merge imported torch._dynamo'\n"
    )
    # a CPU merge (on a GPU, AME runs through torch's optimizers): no GPU visible to the child
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
           "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "soup_report.json").exists()
