"""Base-relative soups (task arithmetic, TIES, DARE, breadcrumbs, DELLA), Model Stock, SLERP and NuSLERP.

Deterministic methods are compared with MergeKit 0.1.5 (a test dependency) run on the
same tiny checkpoints: hf-soup computes in float64 and rounds once, so its output equals
MergeKit's float64 computation rounded once to the output dtype. Random methods (DARE,
DELLA) are checked for reproducibility and for the statistics MergeKit's masks have.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_soup.engine.rounding import round_to_storage
from hf_soup import soup
from hf_soup.errors import AlignmentError, MethodParameterError, RecipeError

from conftest import build_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def finetunes(tmp_path_factory) -> dict[str, str]:
    """A tiny Llama base and three fine-tunes of it (base + small seeded noise), in float32."""
    root = tmp_path_factory.mktemp("finetunes")
    base = build_model("llama", 0)
    base.save_pretrained(root / "base")
    paths = {"base": str(root / "base")}
    for k in range(3):
        model = build_model("llama", 0)
        generator = torch.Generator().manual_seed(100 + k)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
        model.save_pretrained(root / f"ft{k}")
        paths[f"ft{k}"] = str(root / f"ft{k}")
    return paths


def _load(path: Path | str) -> dict[str, np.ndarray]:
    """A safetensors file as numpy arrays (bfloat16 as its uint16 storage)."""
    from safetensors.torch import load_file

    return {k: (v.view(torch.int16).numpy().view(np.uint16) if v.dtype == torch.bfloat16 else v.numpy())
            for k, v in load_file(str(path)).items()}


def _weights(directory: Path | str) -> dict[str, np.ndarray]:
    return _load(Path(directory) / "model.safetensors")


def _mergekit(config: dict, out: Path) -> dict[str, np.ndarray]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    run_merge(MergeConfiguration.model_validate(config), str(out), MergeOptions(quiet=True, lazy_unpickle=False))
    return _weights(out)


def _mergekit_config(method, finetunes, models, base=True, shared=None, **extra):
    config = {"merge_method": method, "dtype": "float64", "out_dtype": "float64",
              "models": [{"model": finetunes[name], **({"parameters": p} if p else {})} for name, p in models]}
    if base:
        config["base_model"] = finetunes["base"]
    if shared:
        config["parameters"] = shared
    return {**config, **extra}


W3 = [1.0, 0.5, 0.3]
D3 = [0.3, 0.5, 0.7]
# (MergeKit method, per-model parameters, shared parameters, hf-soup parameters, uses the base)
DETERMINISTIC = {
    "task_arithmetic": ([{"weight": w} for w in W3], {"lambda": 0.8}, {"weights": W3, "lambda": 0.8}),
    "task_arithmetic-normalize": ([{"weight": w} for w in W3], {"normalize": True}, {"weights": W3, "normalize": True}),
    "ties": ([{"weight": w, "density": d} for w, d in zip(W3, D3)], None, {"weights": W3, "density": D3}),
    "ties-rescale": ([{"weight": w, "density": d} for w, d in zip(W3, D3)], {"rescale": True, "int8_mask": True},
                     {"weights": W3, "density": D3, "rescale": True, "int8_mask": True}),
    "breadcrumbs": ([{"weight": w, "density": d, "gamma": 0.05} for w, d in zip(W3, D3)], None,
                    {"weights": W3, "density": D3, "gamma": 0.05}),
    "breadcrumbs_ties": ([{"weight": 1.0, "density": 0.6} for _ in W3], {"normalize": True},
                         {"density": 0.6, "normalize": True}),
    "model_stock": ([None] * 3, None, {}),
    "model_stock-filter_wise": ([None] * 3, {"filter_wise": True}, {"filter_wise": True}),
    "nuslerp": ([{"weight": 0.3}, {"weight": 0.9}], None, {"weights": [0.3, 0.9]}),
    "nuslerp-rows": ([{"weight": 0.3}, {"weight": 0.9}], {"nuslerp_flatten": False, "nuslerp_row_wise": True},
                     {"weights": [0.3, 0.9], "flatten": False, "row_wise": True}),
}


@pytest.mark.parametrize("case", sorted(DETERMINISTIC))
def test_deterministic_methods_equal_mergekit_rounded_once(case, finetunes, tmp_path):
    method = case.split("-")[0]
    per_model, shared, params = DETERMINISTIC[case]
    names = [f"ft{k}" for k in range(len(per_model))]
    reference = _mergekit(_mergekit_config(method, finetunes, list(zip(names, per_model)), shared=shared),
                          tmp_path / "mergekit")
    for dtype in ("F32", "BF16"):
        out = tmp_path / f"hf-soup-{dtype}"
        soup([finetunes[n] for n in names], method, out, base_model=finetunes["base"], dtype=dtype, device="cpu",
             **params)
        ours = _weights(out)
        assert set(ours) == set(reference)
        for key, value in reference.items():
            expected = round_to_storage(value.astype(np.float64), dtype)
            assert np.array_equal(ours[key].view(expected.dtype), expected), (case, dtype, key)


@pytest.mark.parametrize("t", [0.3, [{"filter": "mlp", "value": 0.8}, {"value": 0.25}]])
def test_slerp_equals_mergekit_rounded_once(t, finetunes, tmp_path):
    config = {"merge_method": "slerp", "dtype": "float64", "out_dtype": "float64", "base_model": finetunes["ft0"],
              "models": [{"model": finetunes["ft0"]}, {"model": finetunes["ft1"]}], "parameters": {"t": t}}
    reference = _mergekit(config, tmp_path / "mergekit")
    soup([finetunes["ft0"], finetunes["ft1"]], "slerp", tmp_path / "ours", device="cpu", t=t)
    ours = _weights(tmp_path / "ours")
    for key, value in reference.items():
        assert np.array_equal(ours[key], value.astype(np.float32)), key


def test_bf16_ingredients_are_rounded_once_where_mergekit_rounds_at_every_step(finetunes, tmp_path):
    """In bfloat16 MergeKit computes in bfloat16; hf-soup's result is its float64 result rounded once."""
    paths = {}
    for name in ("base", "ft0", "ft1"):
        model = __import__("transformers").AutoModelForCausalLM.from_pretrained(finetunes[name], dtype=torch.bfloat16)
        model.save_pretrained(tmp_path / name)
        paths[name] = str(tmp_path / name)
    models = [("ft0", {"weight": 1.0}), ("ft1", {"weight": 0.7})]
    exact = _mergekit(_mergekit_config("task_arithmetic", paths, models, shared={"lambda": 0.9}), tmp_path / "f64")
    stepwise = _mergekit(_mergekit_config("task_arithmetic", paths, models, shared={"lambda": 0.9},
                                          dtype="bfloat16", out_dtype="bfloat16"), tmp_path / "bf16")
    soup([paths["ft0"], paths["ft1"]], "task_arithmetic", tmp_path / "ours", base_model=paths["base"], device="cpu",
         weights=[1.0, 0.7], **{"lambda": 0.9})
    ours = _weights(tmp_path / "ours")
    differs = 0
    for key, value in exact.items():
        expected = round_to_storage(value.astype(np.float64), "BF16")
        assert np.array_equal(ours[key], expected), key
        differs += int((stepwise[key].view(np.uint16) != expected).sum())
    assert differs > 0  # MergeKit's bfloat16 arithmetic is not correctly rounded


def _deltas(result: dict, base: dict, key: str) -> np.ndarray:
    return result[key].astype(np.float64) - base[key].astype(np.float64)


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties", "della_linear", "della"])
def test_random_methods_are_seeded_and_match_mergekit_statistics(method, finetunes, tmp_path):
    names, density = ["ft0", "ft1"], 0.4
    per_model = [{"weight": 1.0, "density": density, **({"epsilon": 0.1} if "della" in method else {})}] * 2
    params = {"density": density, **({"epsilon": 0.1} if "della" in method else {})}
    reference = _mergekit(_mergekit_config(method, finetunes, list(zip(names, per_model))), tmp_path / "mergekit")
    runs = []
    for n, shard in enumerate(["5GB", "10KB"]):  # one file, then many: the same bytes
        out = tmp_path / f"ours{n}"
        soup([finetunes[k] for k in names], method, out, base_model=finetunes["base"], seed=7, device="cpu",
             max_shard_size=shard, **params)
        runs.append(out)
    first = {k: v for f in sorted(runs[0].glob("*.safetensors")) for k, v in _load(f).items()}
    second = {k: v for f in sorted(runs[1].glob("*.safetensors")) for k, v in _load(f).items()}
    assert all(np.array_equal(first[k], second[k]) for k in first)
    other_seed = tmp_path / "seed8"
    soup([finetunes[k] for k in names], method, other_seed, base_model=finetunes["base"], seed=8, device="cpu",
         **params)
    assert any(not np.array_equal(first[k], v) for k, v in _weights(other_seed).items())
    base = _weights(finetunes["base"])
    key = "model.layers.0.mlp.up_proj.weight"  # 2048 entries
    ft = [_weights(finetunes[k]) for k in names]
    for result in (first, reference):
        delta = _deltas(result, base, key)
        changed = np.mean(delta != 0)
        # entries that no ingredient keeps stay at the base: 1 - (1 - density)^2 with two ingredients
        assert abs(changed - (1 - (1 - density) ** 2)) < 0.05, (method, changed)
    if method == "dare_linear":  # each kept task vector keeps its l1 norm (MergeKit's "rescale")
        total = sum(np.abs(_deltas(f, base, key)).sum() for f in ft)
        assert abs(np.abs(_deltas(first, base, key)).sum() / total - 1) < 0.15


def test_base_shapes_missing_base_slerp_count_and_density_fail_before_any_work(finetunes, tmp_path, make_ingredients):
    ft = [finetunes["ft0"], finetunes["ft1"]]
    out = tmp_path / "soup"
    with pytest.raises(RecipeError, match="base_model"):
        soup(ft, "ties", out, device="cpu")
    with pytest.raises(RecipeError, match="density"):
        soup(ft, "ties", out, base_model=finetunes["base"], density=0.0)
    with pytest.raises(RecipeError, match="density"):
        soup(ft, "dare_ties", out, base_model=finetunes["base"], density=[0.5, 1.5])
    with pytest.raises(RecipeError, match="epsilon"):
        soup(ft, "della", out, base_model=finetunes["base"], density=0.1, epsilon=0.2)
    with pytest.raises(MethodParameterError, match="exactly 2"):
        soup(ft + [finetunes["ft2"]], "slerp", out, t=0.5, device="cpu")
    with pytest.raises(MethodParameterError, match="3 ingredients"):
        soup(ft + [finetunes["ft2"]], "ties", out, base_model=finetunes["base"], weights=[1, 2], device="cpu")
    (wide,) = make_ingredients("llama", 1, prefix="wide", intermediate_size=96)
    with pytest.raises(AlignmentError, match="base_model"):
        soup(ft, "task_arithmetic", out, base_model=str(wide), device="cpu")
    assert not out.exists() and not list(tmp_path.glob(".soup*"))


def test_report_and_card_name_the_method_parameters_and_base(finetunes, tmp_path):
    result = soup([finetunes["ft0"], finetunes["ft1"]], "ties", tmp_path / "soup", base_model=finetunes["base"],
                  density=0.5, device="cpu")
    report = json.loads((tmp_path / "soup" / "soup_report.json").read_text())
    assert report["method"] == "ties" and report["parameters"]["density"] == 0.5
    assert report["parameters"]["lambda"] == 1.0 and report["parameters"]["normalize"] is True
    assert report["base_model"]["ref"] == finetunes["base"]
    assert report["recipe"]["base_model"] == finetunes["base"]
    card = (tmp_path / "soup" / "README.md").read_text()
    assert "TIES-Merging" in card and f"pre-trained base model `{finetunes['base']}`" in card
    assert "density: 0.5" in card
    assert result.report["details"]["sign_election"] is True


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hf_soup", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_a_mergekit_yaml_runs_as_it_is_and_gives_mergekit_bytes(finetunes, tmp_path):
    import yaml

    models = [("ft0", {"weight": 1.0, "density": 0.5}), ("ft1", {"weight": 0.6, "density": 0.7})]
    config = _mergekit_config("ties", finetunes, models, out_dtype="float32")
    config["models"].append({"model": finetunes["base"]})  # MergeKit's usual form: the base listed too
    path = tmp_path / "mergekit.yml"
    path.write_text(yaml.safe_dump(config))
    dry = _cli("merge", str(path), "--dry-run", "-o", str(tmp_path / "soup"))
    assert dry.returncode == 0, dry.stderr
    printed = yaml.safe_load(dry.stdout)
    assert printed["method"] == {"name": "ties", "density": [0.5, 0.7], "weights": [1.0, 0.6]}
    assert printed["ingredients"] == [finetunes["ft0"], finetunes["ft1"]]
    assert printed["base_model"] == finetunes["base"] and printed["output"]["dtype"] == "F32"
    assert not (tmp_path / "soup").exists()
    run = _cli("merge", str(path), "--from-mergekit", "-o", str(tmp_path / "soup"), "--device", "cpu")
    assert run.returncode == 0, run.stderr
    reference = _mergekit(config, tmp_path / "mergekit")
    ours = _weights(tmp_path / "soup")
    assert all(np.array_equal(ours[k], v) for k, v in reference.items())


@pytest.mark.parametrize("config, key", [
    ({"merge_method": "passthrough", "slices": [{"sources": [{"model": "a", "layer_range": [0, 2]}]}]}, "slices"),
    ({"merge_method": "passthrough", "models": [{"model": "a"}]}, "merge_method"),
    ({"merge_method": "sce", "models": [{"model": "a"}]}, "merge_method"),
    ({"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": [0, 1]}}]},
     "models[0].parameters.weight"),
    ({"merge_method": "ties", "base_model": "b", "models": [{"model": "a", "parameters": {"tau": 1}}]},
     "models[0].parameters.tau"),
    ({"merge_method": "ties", "base_model": "b", "models": [{"model": "a"}], "tokenizer_source": "union"},
     "tokenizer_source"),
    ({"merge_method": "linear", "models": [{"model": "a+lora"}]}, "models[0].model"),
    ({"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": [{"filter": "mlp", "value": 1}]}}]},
     "models[0].parameters.weight"),
    ({"merge_method": "linear", "models": [{"model": "a"}], "chat_template": "chatml"}, "chat_template"),
    ({"merge_method": "slerp", "base_model": "a", "models": [{"model": "a"}, {"model": "b"}],
      "parameters": {"t": [{"filter": "mlp", "value": [0, 1]}, {"value": 0.5}]}}, "parameters.t[0].value"),
])
def test_mergekit_configs_hf_soup_cannot_express_are_refused_by_key(config, key, tmp_path):
    import yaml

    path = tmp_path / "mergekit.yml"
    path.write_text(yaml.safe_dump(config))
    run = _cli("merge", str(path), "-o", str(tmp_path / "soup"))
    assert run.returncode != 0
    assert f"MergeKit config: {key}:" in run.stderr, run.stderr
    assert not (tmp_path / "soup").exists()


def test_mergekit_translation_of_linear_slerp_and_tokenizer_source():
    from hf_soup.mergekit_yaml import translate

    linear = translate({"merge_method": "linear", "dtype": "bfloat16", "parameters": {"normalize": False},
                        "models": [{"model": "org/a@v1", "parameters": {"weight": 2}}, {"model": "./b",
                                   "parameters": {"weight": 1}}], "tokenizer_source": "./b"})
    assert linear == {"ingredients": ["org/a@v1", "./b"], "method": {"name": "weighted", "normalize": False,
                      "weights": [2, 1]}, "output": {"dtype": "bfloat16", "config_from": 1}}
    slerp = translate({"merge_method": "slerp", "base_model": "b", "models": [{"model": "a"}, {"model": "b"}],
                       "parameters": {"t": [{"filter": "self_attn", "value": 0.2}, {"value": 0.6}]}})
    assert slerp == {"ingredients": ["b", "a"], "method": {"name": "slerp", "t": [
        {"filter": "self_attn", "value": 0.2}, {"value": 0.6}]}}
    stock = translate({"merge_method": "model_stock", "base_model": "b", "models": [{"model": "a"}, {"model": "c"}],
                       "out_dtype": "float16", "dtype": "float32"})
    assert stock == {"ingredients": ["a", "c"], "method": {"name": "model_stock"}, "base_model": "b",
                     "output": {"dtype": "float16"}}
    with pytest.raises(RecipeError, match="tokenizer_source: 'base' cannot be expressed"):
        translate({"merge_method": "ties", "base_model": "b", "models": [{"model": "a"}], "tokenizer_source": "base"})


def test_float64_results_are_rounded_once_to_bfloat16():
    rng = np.random.default_rng(0)
    values = rng.standard_normal(20000) * np.exp(rng.uniform(-30, 30, 20000))
    # halfway cases between bfloat16 neighbours, nudged by less than a float32 ulp
    halves = 1.0 + np.arange(2000, dtype=np.float64) % 100 * 2.0 ** -7 + 2.0 ** -8  # bfloat16's ulp at 1 is 2^-7
    values = np.concatenate([values, halves, halves + 2.0 ** -40, halves - 2.0 ** -40])
    rounded = round_to_storage(values, "BF16")
    back = (rounded.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    up = ((rounded.astype(np.uint32) + 1) << 16).view(np.float32).astype(np.float64)
    down = ((rounded.astype(np.uint32) - 1) << 16).view(np.float32).astype(np.float64)
    error = np.abs(values - back)
    assert np.all(error <= np.abs(values - up)) and np.all(error <= np.abs(values - down))
    assert np.array_equal(rounded[20000 + 2000:20000 + 4000] - rounded[20000 + 4000:], np.ones(2000, np.uint16))


@pytest.mark.parametrize("method, params", [("ties", ["-p", "density=0.5"]),
                                            ("dare_ties", ["-p", "density=0.5", "--seed", "3"]),
                                            ("model_stock", [])])
def test_two_processes_give_the_bytes_of_one_process(method, params, tmp_path):
    """Base-relative soups under a 2-process launch: every process reads the base, same bytes as one process."""
    from test_distributed import _assert_same_soup, _merge_args, _single, _spawn

    root = tmp_path / "models"
    paths = []
    for seed in range(3):
        build_model("llama", seed, num_key_value_heads=4).save_pretrained(root / f"run{seed}", max_shard_size="20KB")
        paths.append(str(root / f"run{seed}"))
    extra = ["--method", method, "--base-model", paths[0], *params]
    _single(_merge_args(paths[1:], tmp_path / "one", *extra))
    results = _spawn(_merge_args(paths[1:], tmp_path / "two", *extra))
    assert [code for code, _, _ in results] == [0, 0], results[0][2][-3000:] + results[1][2][-3000:]
    _assert_same_soup(tmp_path / "one", tmp_path / "two")


def test_rank_selection_equals_a_stable_sort():
    from hf_soup.methods.sparsify import rank_mask

    rng = np.random.default_rng(1)
    for _ in range(300):  # small integers: many ties
        n = int(rng.integers(1, 60))
        values = rng.integers(0, 6, n).astype(np.float64)
        lo = int(rng.integers(0, n))
        hi = int(rng.integers(lo, n + 1))
        expected = np.zeros(n, dtype=bool)
        expected[np.argsort(values, kind="stable")[lo:hi]] = True
        assert np.array_equal(rank_mask(values, lo, hi), expected), (values, lo, hi)


def test_lora_adapters_enter_as_their_updates(finetunes, tmp_path):
    """Adapter ingredients read as base + ΔW; against their own base the task vectors are the ΔW_k."""
    import peft
    import transformers

    base_path = finetunes["base"]
    adapters, merged = [], []
    for k in range(2):
        torch.manual_seed(20 + k)
        model = transformers.AutoModelForCausalLM.from_pretrained(base_path)
        lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                          init_lora_weights=False))
        lora.save_pretrained(tmp_path / f"lora{k}")
        adapters.append(str(tmp_path / f"lora{k}"))
        merged.append({n: p.detach().double().numpy() for n, p in lora.merge_and_unload().state_dict().items()})
    weights, scale = [0.7, 0.4], 0.9
    soup(adapters, "task_arithmetic", tmp_path / "soup", device="cpu", weights=weights, **{"lambda": scale})
    ours = _weights(tmp_path / "soup")
    base = {k: v.astype(np.float64) for k, v in _weights(base_path).items()}
    targeted = 0
    for key, value in ours.items():
        expected = base[key] + scale * sum(w * (m[key] - base[key]) for w, m in zip(weights, merged))
        np.testing.assert_allclose(value, expected, rtol=0, atol=1e-6, err_msg=key)
        if "q_proj" in key or "v_proj" in key:
            targeted += 1
            assert not np.array_equal(value, base[key].astype(np.float32))
        else:  # untouched by the adapters: exactly the base
            assert np.array_equal(value, base[key].astype(np.float32)), key
    assert targeted == 4
    ties = soup(adapters, "ties", tmp_path / "ties", device="cpu", density=0.5)
    assert ties.report["base_model"]["ref"] == base_path and ties.report["adapters"]["base_model"]["ref"] == base_path


def test_merge_state_dicts_with_a_base_state_dict(finetunes, tmp_path):
    from hf_soup import merge_state_dicts

    state = {name: {k: torch.from_numpy(v.copy()) for k, v in _weights(finetunes[name]).items()}
             for name in ("base", "ft0", "ft1")}
    merged = merge_state_dicts([state["ft0"], state["ft1"]], "ties", base_state_dict=state["base"], density=0.5)
    soup([finetunes["ft0"], finetunes["ft1"]], "ties", tmp_path / "soup", base_model=finetunes["base"], density=0.5,
         device="cpu")
    written = _weights(tmp_path / "soup")
    assert all(np.array_equal(merged[k].numpy(), v) for k, v in written.items())
    with pytest.raises(RecipeError, match="base_state_dict"):
        merge_state_dicts([state["ft0"], state["ft1"]], "ties")


def test_the_base_listed_as_an_ingredient_is_warned_about(finetunes, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="hf_soup"):
        soup([finetunes["ft0"], finetunes["base"]], "task_arithmetic", tmp_path / "soup", base_model=finetunes["base"],
             device="cpu")
    assert "ingredients[1]" in caplog.text and "is the base model" in caplog.text


def test_the_example_mergekit_config_translates():
    from hf_soup.recipe import load_recipe

    recipe = load_recipe(ROOT / "examples" / "mergekit" / "ties.yml")
    assert recipe.method.name == "ties" and recipe.base_model == "meta-llama/Llama-3.2-1B"
    assert recipe.ingredients == ["my-org/llama-ft-math", "my-org/llama-ft-code"]
    assert recipe.method.params["density"] == [0.5, 0.5] and recipe.output.dtype == "BF16"


@pytest.mark.parametrize("name, params", [
    ("task_arithmetic", {}), ("ties", {"density": 0.5}), ("dare_ties", {"density": 0.5}),
    ("breadcrumbs", {"density": 0.5}), ("della", {"density": 0.5}), ("model_stock", {}),
    ("model_stock", {"filter_wise": True}), ("nuslerp", {"flatten": False, "row_wise": True}), ("slerp", {"t": 0.5})])
def test_empty_scalar_and_single_column_tensors(name, params):
    from hf_soup.methods.base import ChunkInfo, MergeContext
    from hf_soup.methods.registry import build_method

    method = build_method(name, params)
    two = name in ("slerp", "nuslerp")
    method.setup(MergeContext(2 if two else 3, [], seed=0, base=None if two else "base"))
    rng = np.random.default_rng(0)
    for shape in [(0,), (), (5,), (0, 4), (4, 0), (3, 1)]:
        size = int(np.prod(shape))
        chunks = [rng.random(size, dtype=np.float32) for _ in range(2 if two else 4)]
        info = ChunkInfo("w", shape, 0, size)
        if method.needs_prepass:
            method.prepare_tensor(info, lambda start, stop: [c[start:stop] for c in chunks])
        result = method.merge(info, chunks)
        assert result.size == size and np.all(np.isfinite(result)), shape


def test_task_arithmetic_of_adapters_written_as_one_adapter(tmp_path):
    """base + λ Σ w_k ΔW_k is a LoRA update: written as stacked factors, PEFT loads the full-model soup."""
    import peft
    import transformers

    base_path = tmp_path / "base"
    build_model("llama", 0).save_pretrained(base_path)
    adapters = []
    for k in range(2):
        torch.manual_seed(30 + k)
        model = transformers.AutoModelForCausalLM.from_pretrained(base_path)
        lora = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "o_proj"],
                                                          init_lora_weights=False, modules_to_save=["lm_head"]))
        with torch.no_grad():
            lora.base_model.model.lm_head.modules_to_save["default"].weight.add_(0.01)
        lora.save_pretrained(tmp_path / f"lora{k}")
        adapters.append(str(tmp_path / f"lora{k}"))
    params = {"weights": [0.8, 1.3], "lambda": 0.7}
    soup(adapters, "task_arithmetic", tmp_path / "full", device="cpu", **params)
    soup(adapters, "task_arithmetic", tmp_path / "adapter", device="cpu", output_format="adapter", **params)
    loaded = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base_path),
                                            tmp_path / "adapter").merge_and_unload().state_dict()
    full = _weights(tmp_path / "full")
    for key, value in full.items():
        np.testing.assert_allclose(loaded[key].numpy(), value, rtol=0, atol=2e-6, err_msg=key)
