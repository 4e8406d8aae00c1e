"""PEFT LoRA adapters as soup ingredients: exact full-model soups and adapter outputs.

A tiny config-built ViT (whose checkpoint keys differ from its in-memory names in
transformers 5) and a tiny GPT-2 (Conv1D layers stored transposed, tied embeddings,
same keys on disk and in memory), each with LoRA adapters trained for a few steps with
PEFT on scikit-learn's digits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from hf_soup import soup  # noqa: E402
from hub_fixtures import hub, local_hub, repo_name  # noqa: E402,F401
from hf_soup.errors import (  # noqa: E402
    AdapterBaseError,
    CorruptWeightsError,
    MethodParameterError,
    RecipeError,
    UnsupportedAdapterError,
)

VIT_ADAPTERS = [
    dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    dict(r=2, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "k_proj", "fc1"]),
    dict(r=8, lora_alpha=4, target_modules=["v_proj", "o_proj", "fc2"], rank_pattern={"fc2": 3},
         alpha_pattern={"o_proj": 16}),
]


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images[:512, None] / 16.0, dtype=torch.float32)
    return images, torch.tensor(digits.target[:512])


def _train(model, batches, steps=12, lr=2e-2):
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for step in range(steps):
        inputs = batches(step)
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def _quiet_load(cls, path):
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    return cls.from_pretrained(path)


def _vit_base(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=64, num_labels=10)
    transformers.ViTForImageClassification(config).save_pretrained(path)
    return path


def _vit_adapter(base: Path, path: Path, seed: int, images, labels, **lora) -> Path:
    torch.manual_seed(seed)
    model = peft.get_peft_model(_quiet_load(transformers.ViTForImageClassification, base),
                                peft.LoraConfig(modules_to_save=["classifier"], **lora))
    rows = torch.randperm(len(images))

    def batch(step):
        idx = rows[(step * 64) % len(rows):][:64]
        return {"pixel_values": images[idx], "labels": labels[idx]}

    _train(model, batch)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit")
    images, labels = _digits()
    base = _vit_base(root / "base", seed=0)
    adapters = [_vit_adapter(base, root / f"lora{i}", 10 + i, images, labels, **spec) for i, spec in enumerate(VIT_ADAPTERS)]
    return {"root": root, "base": base, "adapters": adapters, "images": images[:64]}


def _merged(base: Path, adapter: Path, cls=None):
    cls = cls or transformers.ViTForImageClassification
    return peft.PeftModel.from_pretrained(_quiet_load(cls, base), adapter).merge_and_unload().eval()


def _logits(model, images):
    with torch.no_grad():
        return model(pixel_values=images).logits


def _vit_logits(path, images):
    return _logits(_quiet_load(transformers.ViTForImageClassification, path).eval(), images)


def _peft_logits(base, adapter, images):
    model = peft.PeftModel.from_pretrained(_quiet_load(transformers.ViTForImageClassification, base), adapter).eval()
    return _logits(model, images)


def _delta(adapter: Path) -> dict[str, torch.Tensor]:
    """Each in-memory parameter name -> the adapter's ΔW (scale · B @ A) or full modules_to_save tensor."""
    from safetensors.torch import load_file

    config = json.loads((adapter / "adapter_config.json").read_text())
    tensors = {k.removeprefix("base_model.model."): v for k, v in load_file(adapter / "adapter_model.safetensors").items()}
    result = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            module = key.removesuffix(".lora_A.weight")
            b = tensors[module + ".lora_B.weight"]
            rank = a.shape[0]
            alpha = next((v for k, v in config["alpha_pattern"].items() if module.endswith(k)), config["lora_alpha"])
            scale = alpha / math.sqrt(rank) if config["use_rslora"] else alpha / rank
            result[module + ".weight"] = scale * (b @ a)
        elif ".lora_" not in key:
            result[key] = ("full", a)
    return result


def test_vit_uniform_soup_is_base_plus_mean_delta_and_mean_of_merged_models(vit, tmp_path):
    result = soup([str(a) for a in vit["adapters"]], output_dir=tmp_path / "soup")
    souped = _quiet_load(transformers.ViTForImageClassification, tmp_path / "soup").state_dict()
    base = _quiet_load(transformers.ViTForImageClassification, vit["base"]).state_dict()
    # base + mean ΔW, computed from the adapter factors in the in-memory key space
    expected = {k: v.clone() for k, v in base.items()}
    deltas = [_delta(a) for a in vit["adapters"]]
    for key in expected:
        fulls = [d[key][1] for d in deltas if isinstance(d.get(key), tuple)]
        if fulls:  # modules_to_save: the mean of each adapter's own tensor
            expected[key] = sum(d[key][1] if isinstance(d.get(key), tuple) else base[key] for d in deltas) / 3
        else:
            expected[key] = base[key] + sum(d[key] for d in deltas if key in d) / 3
    changed = [k for k in expected if not torch.equal(expected[k], base[k])]
    assert any("q_proj" in k for k in changed) and any("fc2" in k for k in changed) and "classifier.weight" in changed
    for key, value in expected.items():
        torch.testing.assert_close(souped[key], value, rtol=0, atol=2e-6, msg=key)
    # ... and the average of PEFT's own merge_and_unload models
    merged = [_merged(vit["base"], a).state_dict() for a in vit["adapters"]]
    for key in souped:
        torch.testing.assert_close(souped[key], sum(m[key] for m in merged) / 3, rtol=0, atol=2e-6, msg=key)
    # the soup is written in checkpoint keys, the base's own on-disk names
    from safetensors import safe_open

    with safe_open(tmp_path / "soup" / "model.safetensors", "pt") as handle, \
            safe_open(vit["base"] / "model.safetensors", "pt") as base_handle:
        keys = set(handle.keys())
        assert keys == set(base_handle.keys())
    assert "vit.encoder.layer.0.attention.attention.query.weight" in keys
    assert result.report["output"]["format"] == "model"
    adapters = result.report["adapters"]
    assert adapters["base_model"]["ref"] == str(vit["base"])
    assert [row["r"] for row in adapters["ingredients"]] == [4, 2, 8]
    assert adapters["ingredients"][1]["use_rslora"] is True


def test_weighted_soup_of_full_fine_tune_and_adapters(vit, tmp_path):
    full = tmp_path / "full"
    _merged(vit["base"], vit["adapters"][0]).save_pretrained(full)
    weights = [0.5, 0.3, 0.2]
    soup([str(full), *map(str, vit["adapters"][1:])], "weighted", tmp_path / "mixed", weights=weights)
    soup(list(map(str, vit["adapters"])), "weighted", tmp_path / "adapters", weights=weights)
    mixed = _quiet_load(transformers.ViTForImageClassification, tmp_path / "mixed").state_dict()
    pure = _quiet_load(transformers.ViTForImageClassification, tmp_path / "adapters").state_dict()
    for key in pure:
        torch.testing.assert_close(mixed[key], pure[key], rtol=0, atol=2e-6, msg=key)


def test_concat_adapter_output_reproduces_the_full_soup(vit, tmp_path):
    adapters = [str(a) for a in vit["adapters"]]
    soup(adapters, "weighted", tmp_path / "model", weights=[2, 1, 1])
    result = soup(adapters, "weighted", tmp_path / "adapter", weights=[2, 1, 1], output_format="adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir() if p.suffix != ".md") == [
        "adapter_config.json", "adapter_model.safetensors", "soup_report.json"]
    expected = _vit_logits(tmp_path / "model", vit["images"])
    got = _peft_logits(vit["base"], tmp_path / "adapter", vit["images"])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    output = result.report["output"]
    assert output["format"] == "adapter" and output["rank"] == "concat" and output["max_relative_error"] == 0.0
    # q_proj is targeted by adapters 0 and 1 (ranks 4 + 2), fc2 by adapter 2 at its rank_pattern rank 3
    assert output["tensors"]["vit.layers.0.attention.q_proj"]["rank"] == 6
    assert output["tensors"]["vit.layers.1.mlp.fc2"]["rank"] == 3
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(vit["base"]) and config["modules_to_save"] == ["classifier"]
    from huggingface_hub import ModelCard

    adapter_card = ModelCard.load(tmp_path / "adapter" / "README.md").data
    assert adapter_card.library_name == "peft" and {"peft", "lora", "merge"} <= set(adapter_card.tags)
    model_card = ModelCard.load(tmp_path / "model" / "README.md").data
    assert model_card.library_name == "transformers" and {"lora", "merge", "weighted"} <= set(model_card.tags)


def test_svd_adapter_output_full_rank_is_exact_and_low_rank_error_is_reported(vit, tmp_path):
    adapters = [str(a) for a in vit["adapters"]]
    soup(adapters, output_dir=tmp_path / "model")
    soup(adapters, output_dir=tmp_path / "full", output_format="adapter", adapter_rank=64)
    expected = _vit_logits(tmp_path / "model", vit["images"])
    torch.testing.assert_close(_peft_logits(vit["base"], tmp_path / "full", vit["images"]), expected, rtol=0, atol=1e-5)

    result = soup(adapters, output_dir=tmp_path / "low", output_format="adapter", adapter_rank=2)
    tensors = result.report["output"]["tensors"]
    base = _quiet_load(transformers.ViTForImageClassification, vit["base"]).state_dict()
    souped = _quiet_load(transformers.ViTForImageClassification, tmp_path / "model").state_dict()
    approx = _merged(vit["base"], tmp_path / "low").state_dict()
    truncated = 0
    for module, row in tensors.items():
        key = module + ".weight"
        assert row["rank"] == min(2, sum(row["input_ranks"]))
        exact, low = souped[key] - base[key], approx[key] - base[key]
        measured = float(torch.linalg.norm(exact - low) / torch.linalg.norm(exact))
        assert measured == pytest.approx(row["relative_error"], rel=1e-3, abs=1e-5), module
        truncated += row["relative_error"] > 1e-3
    assert truncated >= 3  # rank 2 really truncates the tensors of rank 3 and more
    assert result.report["output"]["max_relative_error"] == max(r["relative_error"] for r in tensors.values())


def _no_output(path: Path) -> bool:
    return not path.exists() and not any(p.name.startswith(f".{path.name}.") for p in path.parent.iterdir())


def test_adapters_of_different_bases_are_refused(vit, tmp_path):
    images, labels = _digits()
    other = _vit_base(tmp_path / "other-base", seed=1)
    stranger = _vit_adapter(other, tmp_path / "stranger", 3, images, labels, r=2, target_modules=["q_proj"])
    with pytest.raises(AdapterBaseError, match="different base models") as error:
        soup([str(vit["adapters"][0]), str(stranger)], output_dir=tmp_path / "out")
    assert "base_model:" in str(error.value) and str(other) in str(error.value)
    assert _no_output(tmp_path / "out")


def test_unsupported_adapter_options_are_named(vit, tmp_path):
    model = peft.get_peft_model(_quiet_load(transformers.ViTForImageClassification, vit["base"]),
                                peft.LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    model.save_pretrained(tmp_path / "dora")
    with pytest.raises(UnsupportedAdapterError, match="use_dora"):
        soup([str(vit["adapters"][0]), str(tmp_path / "dora")], output_dir=tmp_path / "out")
    model = peft.get_peft_model(_quiet_load(transformers.ViTForImageClassification, vit["base"]),
                                peft.IA3Config(target_modules=["q_proj", "v_proj"], feedforward_modules=[]))
    model.save_pretrained(tmp_path / "ia3")
    with pytest.raises(UnsupportedAdapterError, match="peft_type='IA3'"):
        soup([str(vit["adapters"][0]), str(tmp_path / "ia3")], output_dir=tmp_path / "out")
    config = json.loads((vit["adapters"][1] / "adapter_config.json").read_text())
    (tmp_path / "biased").mkdir()
    (tmp_path / "biased" / "adapter_model.safetensors").write_bytes((vit["adapters"][1] / "adapter_model.safetensors").read_bytes())
    (tmp_path / "biased" / "adapter_config.json").write_text(json.dumps({**config, "bias": "lora_only"}))
    with pytest.raises(UnsupportedAdapterError, match="bias='lora_only'"):
        soup([str(vit["adapters"][0]), str(tmp_path / "biased")], output_dir=tmp_path / "out")
    assert _no_output(tmp_path / "out")


def test_corrupt_adapter_file_is_refused_without_output(vit, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((vit["adapters"][1] / "adapter_config.json").read_text())
    data = (vit["adapters"][1] / "adapter_model.safetensors").read_bytes()
    (broken / "adapter_model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CorruptWeightsError, match="truncated"):
        soup([str(vit["adapters"][0]), str(broken)], output_dir=tmp_path / "out")
    assert _no_output(tmp_path / "out")


def test_adapter_output_refuses_what_it_cannot_express(vit, tmp_path):
    from hf_soup.methods.base import TensorMethod
    from hf_soup.methods.registry import register_method

    @register_method
    class ElementwiseMax(TensorMethod):
        name = "test_elementwise_max"

        def merge(self, info, chunks):
            return np.maximum.reduce(list(chunks))

    adapters = [str(a) for a in vit["adapters"]]
    with pytest.raises(RecipeError, match="not linear in ΔW"):
        soup(adapters, "test_elementwise_max", tmp_path / "out", output_format="adapter")
    with pytest.raises(MethodParameterError, match="sum to 2"):
        soup(adapters, "weighted", tmp_path / "out", weights=[1, 0.5, 0.5], normalize=False, output_format="adapter")
    full = tmp_path / "full"
    _merged(vit["base"], vit["adapters"][0]).save_pretrained(full)
    with pytest.raises(RecipeError, match="is a full model"):
        soup([str(full), *adapters[1:]], output_dir=tmp_path / "out", output_format="adapter")
    assert _no_output(tmp_path / "out")


def test_vit_key_mapping_uses_the_transformers_conversion(vit):
    from safetensors import safe_open

    from hf_soup.adapters.layout import BaseLayout

    with safe_open(vit["base"] / "model.safetensors", "pt") as handle:
        layout = BaseLayout(handle.keys(), vit["base"], "ViTForImageClassification")
    assert layout.checkpoint_key("vit.layers.1.attention.o_proj.weight", "x") == "vit.encoder.layer.1.attention.output.dense.weight"
    assert layout.checkpoint_key("vit.layers.0.mlp.fc1.weight", "x") == "vit.encoder.layer.0.intermediate.dense.weight"
    assert layout.checkpoint_key("classifier.weight", "x") == "classifier.weight"
    assert layout.module_kind("vit.layers.0.attention.q_proj") == "linear"
    with pytest.raises(AdapterBaseError, match="set base_model:"):
        layout.checkpoint_key("model.layers.0.self_attn.q_proj.weight", "x")


# --- GPT-2: Conv1D (transposed) layers, an embedding LoRA, tied embeddings, keys equal on disk and in memory ---


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt2")
    images, _ = _digits()
    tokens = (images.reshape(len(images), -1) * 16).round().long()  # 64 pixel intensities in 0..16 per digit
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=17, n_positions=64, n_embd=32, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(root / "base")
    specs = [dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True),
             dict(r=2, lora_alpha=2, use_rslora=True, target_modules=["wte", "c_fc", "c_attn"], fan_in_fan_out=True)]
    adapters = []
    for i, spec in enumerate(specs):
        torch.manual_seed(20 + i)
        model = peft.get_peft_model(_quiet_load(transformers.GPT2LMHeadModel, root / "base"), peft.LoraConfig(**spec))
        _train(model, lambda step: {"input_ids": tokens[step * 32:][:32], "labels": tokens[step * 32:][:32]}, steps=8)
        model.save_pretrained(root / f"lora{i}")
        adapters.append(root / f"lora{i}")
    return {"base": root / "base", "adapters": adapters, "tokens": tokens[:16]}


def _lm_logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens).logits


def test_gpt2_conv1d_and_embedding_adapters(gpt2, tmp_path):
    adapters = [str(a) for a in gpt2["adapters"]]
    soup(adapters, output_dir=tmp_path / "model")
    result = soup(adapters, output_dir=tmp_path / "adapter", output_format="adapter")
    souped = _quiet_load(transformers.GPT2LMHeadModel, tmp_path / "model").eval()
    merged = [_merged(gpt2["base"], a, transformers.GPT2LMHeadModel).state_dict() for a in gpt2["adapters"]]
    state = souped.state_dict()
    for key in ("transformer.wte.weight", "transformer.h.0.attn.c_attn.weight", "transformer.h.0.mlp.c_fc.weight"):
        torch.testing.assert_close(state[key], (merged[0][key] + merged[1][key]) / 2, rtol=0, atol=2e-6, msg=key)
    kinds = {m: row["key"] for m, row in result.report["output"]["tensors"].items()}
    assert "transformer.wte" in kinds and "transformer.h.0.attn.c_attn" in kinds
    # GPT-2 ties lm_head to wte: an *unmerged* PeftModel applies the wte LoRA to the input embedding only, while
    # merging (PEFT's merge_and_unload, and any soup) changes the shared matrix. Compare merged models.
    with_adapter = _merged(gpt2["base"], tmp_path / "adapter", transformers.GPT2LMHeadModel)
    torch.testing.assert_close(_lm_logits(with_adapter, gpt2["tokens"]), _lm_logits(souped, gpt2["tokens"]),
                               rtol=0, atol=1e-5)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True and config["rank_pattern"]["transformer.h.0.attn.c_attn"] == 6


def test_recipe_base_model_and_cli_adapter_output(vit, tmp_path, capsys):
    import yaml

    from hf_soup.cli import main

    anonymous = tmp_path / "anonymous"
    anonymous.mkdir()
    config = json.loads((vit["adapters"][2] / "adapter_config.json").read_text())
    (anonymous / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    (anonymous / "adapter_model.safetensors").write_bytes((vit["adapters"][2] / "adapter_model.safetensors").read_bytes())
    refs = [str(vit["adapters"][0]), str(anonymous)]
    with pytest.raises(AdapterBaseError, match="does not name its base"):
        soup(refs, output_dir=tmp_path / "out")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"ingredients": refs, "base_model": str(vit["base"]),
                                      "output": {"dir": str(tmp_path / "cli"), "format": "adapter", "rank": 3}}))
    assert main(["merge", str(recipe), "--quiet"]) == 0
    report = json.loads((tmp_path / "cli" / "soup_report.json").read_text())
    assert report["output"]["format"] == "adapter" and report["output"]["rank"] == 3
    assert report["recipe"]["base_model"] == str(vit["base"])
    assert all(row["rank"] <= 3 for row in report["output"]["tensors"].values())
    assert main(["merge", "-m", refs[0], "-m", refs[1], "--base-model", str(vit["base"]), "-o", str(tmp_path / "m2"),
                 "--rank", "2", "--quiet"]) == 2
    assert "output.rank applies to output.format: adapter only" in capsys.readouterr().err
    assert main(["inspect", *refs, "--base-model", str(vit["base"]), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] and summary["model_types"] == ["vit", "vit"]


# --- HRM-Text: renamed (o_proj) and fused (q_proj in gqkv_proj, gate/up in gate_up_proj) checkpoint weights ---


@pytest.fixture(scope="module")
def hrm(tmp_path_factory):
    root = tmp_path_factory.mktemp("hrm")
    config = transformers.HrmTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                        num_key_value_heads=4, vocab_size=64)
    torch.manual_seed(0)
    transformers.HrmTextForCausalLM(config).save_pretrained(root / "base")
    paths = {}
    for name, targets in {"renamed-0": ["o_proj", "down_proj"], "renamed-1": ["o_proj"], "fused": ["q_proj"]}.items():
        torch.manual_seed(len(paths))  # init_lora_weights=False: random, non-zero A and B
        model = peft.get_peft_model(_quiet_load(transformers.HrmTextForCausalLM, root / "base"),
                                    peft.LoraConfig(r=2, lora_alpha=4, target_modules=targets, init_lora_weights=False))
        model.save_pretrained(root / name)
        paths[name] = root / name
    return {"base": root / "base", **paths}


def test_renamed_checkpoint_weights_are_merged_and_fused_ones_refused(hrm, tmp_path):
    from safetensors import safe_open

    adapters = [str(hrm["renamed-0"]), str(hrm["renamed-1"])]
    soup(adapters, output_dir=tmp_path / "soup")
    with safe_open(hrm["base"] / "model.safetensors", "pt") as handle:
        assert "model.L_module.layers.0.attn.o_proj.weight" in set(handle.keys())  # on disk: attn.o_proj
    souped = _quiet_load(transformers.HrmTextForCausalLM, tmp_path / "soup").state_dict()
    merged = [_merged(hrm["base"], a, transformers.HrmTextForCausalLM).state_dict() for a in adapters]
    base = _quiet_load(transformers.HrmTextForCausalLM, hrm["base"]).state_dict()
    key = "model.L_module.layers.0.self_attn.o_proj.weight"
    assert not torch.equal(souped[key], base[key])
    for name in souped:
        torch.testing.assert_close(souped[name], (merged[0][name] + merged[1][name]) / 2, rtol=0, atol=2e-6, msg=name)
    with pytest.raises(UnsupportedAdapterError, match="fuses or splits weights") as error:
        soup([adapters[0], str(hrm["fused"])], output_dir=tmp_path / "out")
    assert "q_proj" in str(error.value) and "gqkv_proj" in str(error.value)
    assert _no_output(tmp_path / "out")


def test_bfloat16_llama_soup_is_computed_in_float32_and_rounded_once(tmp_path):
    from safetensors.torch import load_file

    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=64)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path / "base")
    for seed in range(2):
        torch.manual_seed(seed + 1)
        model = peft.get_peft_model(transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.bfloat16),
                                    peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"],
                                                    init_lora_weights=False))
        model.save_pretrained(tmp_path / f"lora{seed}")
    result = soup([str(tmp_path / "lora0"), str(tmp_path / "lora1")], output_dir=tmp_path / "soup")
    assert result.report["output"]["dtypes"] == ["BF16"]
    souped, base = load_file(tmp_path / "soup" / "model.safetensors"), load_file(tmp_path / "base" / "model.safetensors")
    factors = [load_file(tmp_path / f"lora{seed}" / "adapter_model.safetensors") for seed in range(2)]
    for module in ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"):
        prefix = f"base_model.model.{module}"
        delta = sum(2.0 * f[f"{prefix}.lora_B.weight"].float() @ f[f"{prefix}.lora_A.weight"].float() for f in factors) / 2
        expected = (base[module + ".weight"].float() + delta).to(torch.bfloat16)
        assert souped[module + ".weight"].dtype == torch.bfloat16
        got = souped[module + ".weight"]
        # one rounding of the float32 result: equal bits, except where float32 matmul order flips a tie (1 ulp)
        torch.testing.assert_close(got.float(), expected.float(), rtol=2**-7, atol=0, msg=module)
        assert (got == expected).float().mean() > 0.99, module
    assert torch.equal(souped["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


def test_card_metadata_of_adapter_and_full_model_soups():
    from hf_soup.adapters.card import card_metadata

    adapters = {"base_model": {"ref": "org/base", "repo_id": "org/base", "sha": "1" * 40},
                "ingredients": [{"ref": "org/lora-a", "repo_id": "org/lora-a"}, {"ref": "./local", "repo_id": None},
                                {"ref": "org/lora-b", "repo_id": "org/lora-b"}],
                "full_model_ingredients": ["org/full"]}
    rows = [{"ref": "org/lora-a", "repo_id": "org/lora-a", "kept": True}, {"ref": "./local", "repo_id": None, "kept": True},
            {"ref": "org/lora-b", "repo_id": "org/lora-b", "kept": False}, {"ref": "org/full", "repo_id": "org/full", "kept": True}]
    adapter = card_metadata({"output": {"format": "adapter"}, "adapters": adapters, "ingredients": rows})
    assert adapter == {"base_model": ["org/base"], "library_name": "peft", "tags": ["peft", "lora", "merge"]}
    merged = card_metadata({"output": {"format": "model"}, "adapters": adapters, "ingredients": rows})
    assert merged["base_model"] == ["org/lora-a", "org/full", "org/base"] and merged["base_model_relation"] == "merge"
    assert card_metadata({"output": {"format": "model"}, "ingredients": rows}) is None


def test_hub_adapters_pull_their_base_by_repo_id(vit, tmp_path, hub, repo_name):
    import shutil

    base_repo = repo_name("vit-base")
    base_sha = hub.publish(vit["base"], base_repo)
    refs = []
    for n, adapter in enumerate(vit["adapters"][:2]):
        folder = tmp_path / f"hub-lora{n}"
        shutil.copytree(adapter, folder)
        config = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": base_repo}))
        repo = repo_name(f"vit-lora{n}")
        hub.publish(folder, repo)
        refs.append(repo)
    result = soup(refs, output_dir=tmp_path / "hub-soup")
    local = soup([str(a) for a in vit["adapters"][:2]], output_dir=tmp_path / "local-soup")
    assert (tmp_path / "hub-soup" / "model.safetensors").read_bytes() == (tmp_path / "local-soup" / "model.safetensors").read_bytes()
    adapters = result.report["adapters"]
    assert adapters["base_model"] == {"ref": base_repo, "repo_id": base_repo, "sha": base_sha}
    assert [row["repo_id"] for row in adapters["ingredients"]] == refs and all(row["sha"] for row in adapters["ingredients"])
    assert local.report["adapters"]["base_model"]["repo_id"] is None
    # the pinned recipe pins the base too: re-running it reads the same base even after the repo moves on
    assert result.report["recipe"]["base_model"] == f"{base_repo}@{base_sha}"
    assert "base_model" not in local.report["recipe"]


def test_adapter_output_when_one_adapter_saves_a_module_another_adapts(vit, tmp_path):
    torch.manual_seed(7)
    model = peft.get_peft_model(_quiet_load(transformers.ViTForImageClassification, vit["base"]),
                                peft.LoraConfig(r=2, target_modules=["classifier", "q_proj"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "lora-head")
    refs = [str(vit["adapters"][0]), str(tmp_path / "lora-head")]
    soup(refs, output_dir=tmp_path / "model")
    result = soup(refs, output_dir=tmp_path / "adapter", output_format="adapter")
    assert "vit.layers.0.attention.q_proj" in result.report["output"]["tensors"]
    assert "classifier" not in result.report["output"]["tensors"]  # souped in full: base + ΔW and the saved head
    assert result.report["output"]["modules_to_save"] == ["classifier.bias", "classifier.weight"]
    torch.testing.assert_close(_peft_logits(vit["base"], tmp_path / "adapter", vit["images"]),
                               _vit_logits(tmp_path / "model", vit["images"]), rtol=0, atol=1e-5)


def _digits_evaluation(rows: slice) -> dict:
    """An evaluation of digits rows ``rows`` (pixel tensors collated as they are)."""
    import datasets
    import numpy as np

    images, labels = _digits()
    validation = datasets.Dataset.from_dict({"pixel_values": images[rows].numpy(), "label": labels[rows].numpy()})

    def collate(batch):
        return {"pixel_values": torch.tensor(np.stack([row["pixel_values"] for row in batch]), dtype=torch.float32),
                "labels": torch.tensor([row["label"] for row in batch])}

    return {"dataset": validation, "collate_fn": collate, "label_column": "label"}


def test_greedy_soup_of_adapters_is_scored_as_base_plus_delta(vit, tmp_path):
    images, labels = _digits()
    rows = slice(384, 512)
    adapters = [str(a) for a in vit["adapters"]]
    result = soup(adapters, "greedy", tmp_path / "greedy", evaluation=_digits_evaluation(rows))
    report = result.report
    scores = [row["score"] for row in report["ingredients"]]
    for adapter, score in zip(adapters, scores):  # each adapter is scored as base + its ΔW
        logits = _logits(_merged(vit["base"], Path(adapter)), images[rows])
        assert score == pytest.approx((logits.argmax(-1) == labels[rows]).float().mean().item())
    assert report["score"] >= max(scores) and report["num_full_evaluations"] == 2 * len(adapters) - 1
    written = _vit_logits(tmp_path / "greedy", images[rows])
    assert report["score"] == pytest.approx((written.argmax(-1) == labels[rows]).float().mean().item())


def test_reference_scores_of_adapters(vit):
    import hf_soup

    images, labels = _digits()
    rows = slice(384, 448)
    adapters = [str(a) for a in vit["adapters"]]
    scores = hf_soup.evaluate(adapters, _digits_evaluation(rows))
    merged = [_logits(_merged(vit["base"], Path(a)), images[rows]) for a in adapters]
    ensemble = torch.stack(merged).mean(0)
    assert scores["ensemble_score"] == pytest.approx((ensemble.argmax(-1) == labels[rows]).float().mean().item())
