"""The Evaluator on real tiny transformers models and real data (scikit-learn digits)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fixtures_classifiers import bound_evaluator, digit_bert, digit_vit, save_tiny_llamas  # noqa: F401
from hf_soup.errors import EvaluationError, RecipeError
from hf_soup.evaluation import EvaluationSpec, Evaluator

torch = pytest.importorskip("torch")


def _vit_logits(directory, images):
    from conftest import vit_processor_class
    from transformers import ViTForImageClassification

    model = ViTForImageClassification.from_pretrained(directory).eval()
    pixels = vit_processor_class().from_pretrained(directory)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixel_values=pixels).logits


def test_ingredient_score_matches_from_pretrained_through_key_conversion(digit_vit):
    # ViT checkpoints store other keys than the model's state_dict in transformers 5: a plain
    # load_state_dict would load nothing; the score must equal the from_pretrained model's.
    images = list(digit_vit.validation["image"])
    labels = torch.tensor(digit_vit.validation["label"])
    with bound_evaluator(digit_vit) as evaluator:
        for index in (0, 2):
            expected = (_vit_logits(digit_vit.dirs[index], images).argmax(-1) == labels).double().mean().item()
            assert evaluator.evaluate_ingredient(index) == pytest.approx(expected, abs=1e-12)
        assert evaluator.num_full_evaluations == 2
        assert evaluator.evaluate_ingredient(0) == evaluator.known_ingredient_scores()[0]
        assert evaluator.num_full_evaluations == 2  # memoised
        assert evaluator.task == "image-classification" and evaluator.higher_is_better


def _bert_batch(directory, texts):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)(texts, padding=True, return_tensors="pt")


def test_soup_loss_matches_hand_averaged_model(digit_bert):
    from transformers import BertForSequenceClassification

    models = [BertForSequenceClassification.from_pretrained(d).eval() for d in digit_bert.dirs[:3]]
    averaged = {k: sum(m.state_dict()[k] for m in models) / 3 for k in models[0].state_dict()}
    models[0].load_state_dict(averaged)
    batch = _bert_batch(digit_bert.dirs[0], list(digit_bert.validation["text"]))
    labels = torch.tensor(digit_bert.validation["label"])
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(models[0](**batch).logits, labels).item()
    with bound_evaluator(digit_bert, metric="loss") as evaluator:
        assert not evaluator.higher_is_better
        assert evaluator.evaluate_soup([0, 1, 2]) == pytest.approx(expected, rel=1e-5)


def test_logit_cache_ensemble_matches_hand_ensemble_in_memory_on_disk_and_float16(digit_vit, tmp_path):
    from hf_soup.evaluation.logit_cache import LogitCache

    images = list(digit_vit.validation["image"])
    labels = torch.tensor(digit_vit.validation["label"])
    hand = torch.stack([_vit_logits(d, images) for d in digit_vit.dirs]).mean(0)
    expected_accuracy = (hand.argmax(-1) == labels).double().mean().item()
    expected_loss = torch.nn.functional.cross_entropy(hand, labels).item()
    with bound_evaluator(digit_vit) as evaluator:
        cache = evaluator.logit_cache()
        assert evaluator.num_logit_passes == 4 and not cache.on_disk
        assert cache.score(range(4)) == pytest.approx(expected_accuracy, abs=1e-12)
        np.testing.assert_allclose(cache.mean_logits(range(4)), hand.numpy(), rtol=1e-5, atol=1e-5)
        on_disk = LogitCache.build(evaluator, memory_limit=0)
        assert on_disk.on_disk and on_disk.score(range(4)) == pytest.approx(expected_accuracy, abs=1e-12)
        folder = on_disk.directory
        on_disk.close()
        assert not folder.exists()
    with bound_evaluator(digit_vit, metric="loss", logits_dtype="float16", cache_dir=str(tmp_path / "c")) as evaluator:
        cache = evaluator.logit_cache()
        assert cache.arrays[0].dtype == np.float16
        assert cache.score(range(4)) == pytest.approx(expected_loss, rel=2e-3)
        # each ingredient's own score comes from its float32 logits: exact
        assert cache.scores[1] == pytest.approx(
            torch.nn.functional.cross_entropy(_vit_logits(digit_vit.dirs[1], images), labels).item(), rel=1e-6)


def test_averaged_logits_track_soup_logits_to_first_order(digit_bert):
    # RADIN eq. 3: f(x, mean w_k) ~ mean f(x, w_k) up to O(|w_k - w_0|^2). With the fine-tuning
    # deltas scaled to 10% and then 1% (the Taylor regime), the gap must shrink ~100x while each
    # model's logits move ~10x. (Measured: gap 0.122 -> 0.00101, spread 0.633 -> 0.0679.)
    from safetensors.torch import load_file

    base = load_file(str(digit_bert.base_dir / "model.safetensors"))
    tuned = [load_file(str(d / "model.safetensors")) for d in digit_bert.dirs]

    def scaled(sd, t):
        return {k: base[k] + t * (sd[k] - base[k]) if sd[k].is_floating_point() else sd[k] for k in sd}

    errors, spreads = [], []
    with bound_evaluator(digit_bert) as evaluator:
        base_logits, _ = evaluator.logits(base)
        for t in (0.1, 0.01):
            members = [scaled(sd, t) for sd in tuned]
            member_logits = [evaluator.logits(m)[0] for m in members]
            mean_logits = np.mean(member_logits, axis=0)
            soup = {k: sum(m[k] for m in members) / len(members) if members[0][k].is_floating_point() else members[0][k]
                    for k in members[0]}
            soup_logits, _ = evaluator.logits(soup)
            errors.append(np.abs(soup_logits - mean_logits).max())
            spreads.append(np.mean([np.abs(m - base_logits).max() for m in member_logits]))
    assert spreads[1] / spreads[0] == pytest.approx(0.1, rel=0.3)  # each model's logits move ~linearly with t
    assert errors[1] / errors[0] < 0.03  # the gap is second order (ideal 0.01)
    assert errors[0] < spreads[0]


@pytest.mark.parametrize("source", ["save_to_disk", "dataset_dict", "csv", "parquet", "json"])
def test_dataset_sources_give_the_same_score(digit_bert, tmp_path, source):
    import datasets

    validation = digit_bert.validation
    if source == "save_to_disk":
        validation.save_to_disk(str(tmp_path / "ds"))
        spec = {"dataset": str(tmp_path / "ds")}
    elif source == "dataset_dict":
        datasets.DatasetDict({"train": validation.select(range(3)), "test": validation}).save_to_disk(str(tmp_path / "dd"))
        spec = {"dataset": str(tmp_path / "dd"), "split": "test"}
    else:
        path = tmp_path / f"val.{source}"
        getattr(validation, f"to_{source}")(str(path))
        spec = {"dataset": str(path)}
    with bound_evaluator(digit_bert) as evaluator:
        expected = evaluator.evaluate_ingredient(1)
    with bound_evaluator(digit_bert, **spec) as evaluator:
        assert evaluator.num_examples == len(validation)
        assert evaluator.evaluate_ingredient(1) == expected


def test_callable_metric_and_max_samples(digit_vit):
    def error_rate(logits, labels):
        assert logits.dtype == np.float32 and logits.shape == (100, 10) and labels.shape == (100,)
        return float((logits.argmax(-1) != labels).mean())

    with bound_evaluator(digit_vit, max_samples=100) as evaluator:
        accuracy = evaluator.evaluate_ingredient(0)
    with bound_evaluator(digit_vit, max_samples=100, metric=error_rate, higher_is_better=False) as evaluator:
        assert evaluator.metric.name == "error_rate" and not evaluator.higher_is_better
        assert evaluator.evaluate_ingredient(0) == pytest.approx(1 - accuracy)
        assert evaluator.logit_cache().score([0]) == pytest.approx(1 - accuracy)


def test_string_labels_are_mapped_through_label2id(digit_vit):
    named = digit_vit.validation.cast_column("label", __import__("datasets").Value("string"))
    with bound_evaluator(digit_vit) as evaluator:
        expected = evaluator.evaluate_ingredient(3)
    with bound_evaluator(digit_vit, dataset=named) as evaluator:
        assert evaluator.evaluate_ingredient(3) == expected


@pytest.fixture(scope="module")
def tiny_llamas(tmp_path_factory):
    return save_tiny_llamas(tmp_path_factory.mktemp("llama"), (0, 1))


def test_causal_lm_perplexity_counts_only_scored_tokens(tiny_llamas, digit_bert):
    import datasets
    from transformers import AutoTokenizer, LlamaForCausalLM

    from fixtures_classifiers import DigitIngredients

    # variable lengths, so padding must be ignored
    texts = [" ".join(t.split()[: 3 + i % 9]) for i, t in enumerate(digit_bert.validation["text"][:40])]
    data = DigitIngredients(tiny_llamas, datasets.Dataset.from_dict({"text": texts}), {"text_column": "text"},
                            tiny_llamas[0])
    tokenizer = AutoTokenizer.from_pretrained(tiny_llamas[0])
    model = LlamaForCausalLM.from_pretrained(tiny_llamas[1]).eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            nll += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    with bound_evaluator(data, metric="perplexity", batch_size=8) as evaluator:
        assert evaluator.task == "causal-lm" and not evaluator.higher_is_better
        assert evaluator.evaluate_ingredient(1) == pytest.approx(math.exp(nll / count), rel=1e-5)
        cache = evaluator.logit_cache()
        assert cache.num_rows == count and cache.arrays[0].shape == (count, len(tokenizer))
        assert cache.scores[1] == pytest.approx(math.exp(nll / count), rel=1e-5)


# -- error cases: each names the field and fails before any merge work ----------------------


def _evaluator(digits, **spec):
    from hf_soup.ingredients import resolve_ingredients

    options = {"dataset": digits.validation, **digits.columns, **spec}
    return Evaluator.for_ingredients(EvaluationSpec(**options), resolve_ingredients([str(d) for d in digits.dirs]),
                                     device="cpu")


def test_missing_column_is_named_with_the_available_ones(digit_bert):
    with pytest.raises(EvaluationError, match=r"evaluation.text_column: column 'sentence' is not in the dataset \(columns: text, label\)"):
        _evaluator(digit_bert, text_column="sentence")
    with pytest.raises(EvaluationError, match="evaluation.label_column: column 'target'"):
        _evaluator(digit_bert, label_column="target")


def test_labels_outside_the_model_range_are_refused(digit_vit):
    bad = digit_vit.validation.map(lambda row, i: {"label": 12 if i == 5 else row["label"]}, with_indices=True)
    with pytest.raises(EvaluationError, match=r"row 5 has label 12, outside the model's 10 labels \[0, 9\]"):
        _evaluator(digit_vit, dataset=bad)
    unknown = digit_vit.validation.cast_column("label", __import__("datasets").Value("string"))
    unknown = unknown.map(lambda row, i: {"label": "seven" if i == 2 else row["label"]}, with_indices=True)
    with pytest.raises(EvaluationError, match="row 2 has label 'seven', which is not among the model's labels"):
        _evaluator(digit_vit, dataset=unknown)


def test_empty_split_missing_split_and_bad_metric(digit_bert, tmp_path):
    import datasets

    with pytest.raises(EvaluationError, match="is empty"):
        _evaluator(digit_bert, dataset=digit_bert.validation.select([]))
    with pytest.raises(EvaluationError, match=r"has no split 'validation' \(it has train, test\)"):
        _evaluator(digit_bert, dataset=datasets.DatasetDict({"train": digit_bert.validation, "test": digit_bert.validation}))
    with pytest.raises(EvaluationError, match="perplexity needs a causal LM"):
        _evaluator(digit_bert, metric="perplexity")
    with pytest.raises(EvaluationError, match="does not exist"):
        _evaluator(digit_bert, dataset=str(tmp_path / "nothing.csv"))


def test_recipe_evaluation_errors_name_the_field(digit_bert, tmp_path):
    from hf_soup.recipe import parse_recipe

    refs = [str(d) for d in digit_bert.dirs]
    with pytest.raises(RecipeError, match=r"evaluation.metric: .*unknown metric 'f1'"):
        parse_recipe({"ingredients": refs, "evaluation": {"dataset": "x.csv", "metric": "f1"}})
    with pytest.raises(RecipeError, match=r"evaluation.colum: unknown key"):
        parse_recipe({"ingredients": refs, "evaluation": {"dataset": "x.csv", "colum": "text"}})
    with pytest.raises(RecipeError, match="evaluation.batch_size"):
        parse_recipe({"ingredients": refs, "evaluation": {"dataset": "x.csv", "batch_size": 0}})
    recipe = parse_recipe({"ingredients": refs, "evaluation": "./val.parquet"})
    assert recipe.evaluation.dataset == "./val.parquet" and recipe.evaluation.metric == "accuracy"


def test_bad_evaluation_fails_before_any_output(digit_bert, tmp_path):
    import hf_soup

    out = tmp_path / "soup"
    with pytest.raises(EvaluationError, match="text_column"):
        hf_soup.soup([str(d) for d in digit_bert.dirs], method="greedy", output_dir=out,
                     evaluation={"dataset": digit_bert.validation, "text_column": "nope"})
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(RecipeError, match="method 'greedy' needs an evaluation dataset"):
        hf_soup.soup([str(d) for d in digit_bert.dirs], method="greedy", output_dir=out)
    with pytest.raises(RecipeError, match="compare: true needs an evaluation dataset"):
        hf_soup.soup([str(d) for d in digit_bert.dirs], output_dir=out, compare=True)
    assert not out.exists()


def test_a_collate_fn_replaces_the_tokenizer(digit_bert):
    from fixtures_classifiers import VOCAB

    ids = {token: i for i, token in enumerate(VOCAB)}
    seen = []

    def collate(rows):
        seen.append(len(rows))
        input_ids = [[ids["[CLS]"]] + [ids[t] for t in row["text"].split()] + [ids["[SEP]"]] for row in rows]
        return {"input_ids": torch.tensor(input_ids), "labels": torch.tensor([row["label"] for row in rows])}

    with bound_evaluator(digit_bert) as evaluator:
        expected = evaluator.evaluate_ingredient(2)
    with bound_evaluator(digit_bert, collate_fn=collate, batch_size=50) as evaluator:
        assert evaluator.evaluate_ingredient(2) == pytest.approx(expected, abs=1e-12)
    assert seen == [50, 50, 50, 50, 40]
