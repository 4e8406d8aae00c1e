"""The YAML recipe as validated models.

```yaml
ingredients: [org/run-1, {model: org/run-2, revision: v1.0}, ./local-run]
method: {name: weighted, weights: [1, 2, 1]}
output: {dir: ./soup, dtype: bfloat16, max_shard_size: 2GB}
push_to_hub: {repo_id: me/my-soup, private: true}
```

Unknown keys are errors; messages name the field (``method.lr: must be > 0``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .errors import RecipeError
from .evaluation.spec import EvaluationSpec
from .io import dtypes
from .io.shards import parse_size
from .methods.registry import build_method, format_validation_error


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class IngredientSpec(_Strict):
    """A Hub repo ID or path, with an optional revision (branch, tag or sha)."""

    model: str
    revision: str | None = None


class MethodSpec(_Strict):
    """A method name and its parameters (validated by the method itself)."""

    model_config = ConfigDict(extra="forbid")
    name: str = "uniform"
    params: dict[str, Any] = Field(default_factory=dict)


class OutputSpec(_Strict):
    """Where and how the soup is written."""

    dir: str | None = None
    dtype: str | None = None
    max_shard_size: Union[int, str] = "5GB"
    config_from: int = 0
    overwrite: bool = False
    format: Literal["model", "adapter"] = "model"
    card_template: str | None = None
    rank: Union[Literal["concat"], int] = "concat"  # format adapter: stacked factors, or a truncated SVD rank

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str | None) -> str | None:
        return None if value in (None, "auto") else dtypes.parse_dtype(value)

    @field_validator("max_shard_size")
    @classmethod
    def _size(cls, value: int | str) -> int | str:
        parse_size(value)
        return value

    @field_validator("rank")
    @classmethod
    def _rank(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be 'concat' or a positive integer rank")
        return value

    @model_validator(mode="after")
    def _rank_needs_adapter(self) -> "OutputSpec":
        if self.rank != "concat" and self.format != "adapter":
            raise ValueError("output.rank applies to output.format: adapter only; remove it or set format: adapter")
        return self

    @field_validator("config_from")
    @classmethod
    def _index(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be an ingredient index (0 = the first)")
        return value


class PushSpec(_Strict):
    """``push_to_hub``: the repo to create or update with the soup."""

    repo_id: str
    private: bool | None = None
    revision: str | None = None
    commit_message: str | None = None
    create_pr: bool = False

    @field_validator("repo_id")
    @classmethod
    def _repo_id(cls, value: str) -> str:  # checked before the merge, not when the push fails after it
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(value)
        except HFValidationError:
            raise ValueError(f"{value!r} is not a Hub repo ID; write it as name or org/name (letters, digits, -, _ "
                             "and ., at most 96 characters, not starting or ending with - or .)") from None
        return value


class Recipe(_Strict):
    """A complete soup recipe."""

    _built_method: Any = PrivateAttr(default=None)  # validated by parse_recipe, handed to the run once

    ingredients: list[Any] = Field(min_length=1)
    method: MethodSpec = Field(default_factory=MethodSpec)
    evaluation: EvaluationSpec | None = None
    output: OutputSpec = Field(default_factory=OutputSpec)
    push_to_hub: PushSpec | None = None
    base_model: str | None = None  # base of PEFT adapter ingredients (default: their base_model_name_or_path)
    on_missing: Literal["error", "skip", "first"] = "error"
    compare: bool = False
    seed: int = 0
    device: Literal["cpu", "cuda", "auto"] = "auto"
    threads: int | None = Field(default=None, ge=1)  # merge worker threads (default: the cores this process may use)
    allow_nonfinite: bool = False  # NaN / Inf in the ingredients, or overflow of the output dtype: refused unless true

    def take_method(self) -> Any:
        """The method object for one run: the one :func:`parse_recipe` built to validate the
        recipe (so a run builds it once), or a new one when it was already taken."""
        method, self._built_method = self._built_method, None
        return method if method is not None else build_method(self.method.name, self.method.params)

    @field_validator("ingredients", mode="before")
    @classmethod
    def _ingredients(cls, values: Any) -> Any:
        if not isinstance(values, list):
            raise ValueError("must be a list of repo IDs, paths or {model, revision} mappings")
        parsed = []
        for value in values:
            if isinstance(value, dict) and set(value) <= {"model", "revision"} and "model" in value:
                parsed.append(IngredientSpec(**value).model_dump())
            elif isinstance(value, dict) and "model" in value:
                unknown = sorted(set(value) - {"model", "revision"})
                raise ValueError(f"unknown key(s) {unknown} in an ingredient; use model and revision")
            else:
                parsed.append(value)
        return parsed

    @field_validator("evaluation", mode="before")
    @classmethod
    def _evaluation(cls, value: Any) -> Any:
        if value is None or isinstance(value, (dict, EvaluationSpec)):
            return value
        return {"dataset": value}  # a bare dataset ID, path or datasets.Dataset

    @field_validator("output", mode="before")
    @classmethod
    def _output(cls, value: Any) -> Any:
        return {"dir": value} if isinstance(value, str) else value  # output: ./soup, like method: uniform

    @field_validator("push_to_hub", mode="before")
    @classmethod
    def _push(cls, value: Any) -> Any:
        return {"repo_id": value} if isinstance(value, str) else value  # push_to_hub: me/my-soup

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and "params" not in value:
            value = dict(value)
            name = value.pop("name", "uniform")
            return {"name": name, "params": value}
        return value

    @model_validator(mode="after")
    def _indices(self) -> "Recipe":
        if self.output.config_from >= len(self.ingredients):
            raise ValueError(f"output.config_from: {self.output.config_from} is not an ingredient index (there are {len(self.ingredients)})")
        return self


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    """Validate a recipe mapping; raise :class:`RecipeError` naming each bad field."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: expected a mapping with an 'ingredients' key, got {type(data).__name__}")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as error:
        raise RecipeError(f"{source}: " + format_validation_error(error, "")) from None
    try:
        recipe._built_method = build_method(recipe.method.name, recipe.method.params)
    except RecipeError as error:
        raise type(error)(f"{source}: {error}") from None
    return recipe


def read_recipe_data(path: str | Path, from_mergekit: bool | None = None) -> Any:
    """The mapping of a YAML recipe file; a MergeKit configuration (detected by its
    ``merge_method`` key, or forced with ``from_mergekit``) is translated into a recipe."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"recipe {path} does not exist; check the path (or give the ingredients with -m REF)") from None
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML ({error})") from None
    except RecursionError:
        raise RecipeError(f"{path}: nested too deeply to be a recipe; check the file") from None
    except UnicodeDecodeError as error:
        raise RecipeError(f"{path}: not a text file ({error.reason} at byte {error.start}); give a YAML recipe") from None
    except IsADirectoryError:
        raise RecipeError(f"recipe {path} is a folder; give a YAML recipe file") from None
    from .mergekit_yaml import is_mergekit_config, translate

    if from_mergekit or (from_mergekit is None and is_mergekit_config(data)):
        if isinstance(data, dict) and "ingredients" in data:
            raise RecipeError(f"{path}: an hf-soup recipe (it has ingredients), not a MergeKit configuration; "
                              "drop --from-mergekit")
        data = translate(data, str(path))
    return data


def load_recipe(path: str | Path, from_mergekit: bool | None = None) -> Recipe:
    """Read and validate a YAML recipe file (or a MergeKit configuration, see :mod:`hf_soup.mergekit_yaml`)."""
    return parse_recipe(read_recipe_data(path, from_mergekit), str(path))
