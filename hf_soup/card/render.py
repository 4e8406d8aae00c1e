"""Render a soup's README.md from ``soup_report.json`` with ``ModelCard.from_template`` (Jinja).

>>> card = render_card(read_report("./soup"), repo_id="me/my-soup")  # doctest: +SKIP
>>> card.data.base_model  # doctest: +SKIP
['org/run-1', 'org/run-2']
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import jinja2
import yaml
from huggingface_hub import ModelCard

from ..errors import HfSoupError, RecipeError
from .metadata import card_data, kept_ingredients

TEMPLATE_DIR_NAME = "model_card_templates"
DEFAULT_TEMPLATE = "default.md"
# Written at the end of a card rendered from the default template, so a push can re-render it
# with the repo ID (the "use it" snippet then names the repo).
DEFAULT_MARKER = "<!-- hf-soup card: default template -->"
_PAPER_TITLES = {
    "https://arxiv.org/abs/2203.05482": "Model soups: averaging weights of multiple fine-tuned models improves "
                                        "accuracy without increasing inference time (Wortsman et al., 2022)",
    "https://github.com/nblt/MEHL-Soup": "Scalable Learned Model Soup on a Single GPU: An Efficient Subspace "
                                         "Training Strategy (Li et al., ECCV 2024), code and paper",
    "https://arxiv.org/abs/2212.04089": "Editing Models with Task Arithmetic (Ilharco et al., ICLR 2023)",
    "https://arxiv.org/abs/2306.01708": "TIES-Merging: Resolving Interference When Merging Models "
                                        "(Yadav et al., NeurIPS 2023)",
    "https://arxiv.org/abs/2311.03099": "Language Models are Super Mario: Absorbing Abilities from Homologous "
                                        "Models as a Free Lunch (Yu et al., ICML 2024)",
    "https://arxiv.org/abs/2312.06795": "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks "
                                        "(Davari & Belilovsky, ECCV 2024)",
    "https://arxiv.org/abs/2406.11617": "DELLA-Merging: Reducing Interference in Model Merging through "
                                        "Magnitude-Based Sampling (Deep et al., 2024)",
    "https://arxiv.org/abs/2403.19522": "Model Stock: All we need is just a few fine-tuned models "
                                        "(Jang et al., ECCV 2024)",
    "https://dl.acm.org/doi/10.1145/325165.325242": "Animating rotation with quaternion curves (Shoemake, 1985)",
}


def default_template() -> Path:
    """The default template: shipped inside the package, or at the top of a source checkout."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / TEMPLATE_DIR_NAME / DEFAULT_TEMPLATE, here.parent / TEMPLATE_DIR_NAME / DEFAULT_TEMPLATE):
        if candidate.is_file():
            return candidate
    raise HfSoupError(f"the default model card template {TEMPLATE_DIR_NAME}/{DEFAULT_TEMPLATE} is missing; reinstall hf-soup")


def _method_info(name: str | None) -> tuple[str, str | None]:
    """A one-paragraph description of the method and its paper URL."""
    try:
        from ..methods.registry import get_method_class

        cls = get_method_class(name or "")
    except (HfSoupError, ImportError):
        return f"The `{name}` soup method.", None
    module_doc = (inspect.getmodule(cls).__doc__ or "").strip()
    doc = (module_doc or cls.__doc__ or f"The `{name}` soup method.").strip().split("\n\n")[0]
    return " ".join(doc.split()), getattr(cls, "paper", None)


def _load_code(report: dict[str, Any], model_id: str) -> str:
    architectures = (report.get("model") or {}).get("architectures") or []
    if architectures:
        cls = architectures[0]
        return f'from transformers import {cls}\n\nmodel = {cls}.from_pretrained("{model_id}")'
    return (
        "from huggingface_hub import snapshot_download\nfrom safetensors.torch import load_file\n\n"
        f'folder = snapshot_download("{model_id}")\n'
        'state_dict = load_file(f"{folder}/model.safetensors")  # sharded: see model.safetensors.index.json'
    )


def _comparison(report: dict[str, Any]) -> list[tuple[str, float | None]]:
    comparison = report.get("comparison")
    if isinstance(comparison, dict) and isinstance(comparison.get("rows"), list):
        comparison = comparison["rows"]  # hf_soup.evaluation.compare's table
    if isinstance(comparison, dict):
        return [(str(k), v if isinstance(v, (int, float)) else (v or {}).get("score")) for k, v in comparison.items()]
    if isinstance(comparison, list):
        return [(str(item.get("name")), item.get("score")) for item in comparison if isinstance(item, dict)]
    return []


def _comparison_info(report: dict[str, Any]) -> dict[str, Any]:
    """Which split the comparison was scored on (and chosen on), and its metric."""
    comparison = report.get("comparison") if isinstance(report.get("comparison"), dict) else {}
    evaluation = report.get("evaluation") if isinstance(report.get("evaluation"), dict) else {}
    return {
        "split": comparison.get("split") or evaluation.get("split"),
        "selection_split": comparison.get("selection_split"),
        "metric": comparison.get("metric") or evaluation.get("metric"),
        "higher_is_better": comparison.get("higher_is_better", evaluation.get("higher_is_better")),
    }


def _dump(value: Any) -> str:
    return yaml.safe_dump(json.loads(json.dumps(value, default=str)), sort_keys=False).strip() if value else "{}"


def _title(report: dict[str, Any], model_id: str) -> str:
    """The card's heading: the repo's name, or (not pushed) the name of the folder the soup was written to."""
    output_dir = ((report.get("recipe") or {}).get("output") or {}).get("dir")
    if model_id == "./soup" and isinstance(output_dir, str) and Path(output_dir).name not in ("", ".", ".."):
        return Path(output_dir).name
    return model_id.rstrip("/").rsplit("/", 1)[-1] if "/" in model_id else model_id


def template_context(report: dict[str, Any], model_id: str) -> dict[str, Any]:
    """The variables a template sees (besides ``card_data``, the YAML metadata)."""
    evaluation = report.get("evaluation") if isinstance(report.get("evaluation"), dict) else {}
    dataset = evaluation.get("dataset")
    description, paper = _method_info(report.get("method"))
    rows = [dict(row, score=row.get("score"), weight=row.get("weight"), kept=row.get("kept", True))
            for row in report.get("ingredients", [])]
    return {
        "model_name": _title(report, model_id),
        "repo_id": model_id,
        "method": report.get("method"),
        "method_description": description,
        "paper_url": paper,
        "paper_title": _PAPER_TITLES.get(paper or "", paper or "paper"),  # an unknown link shows its URL
        "base_model": report.get("base_model"),  # the pre-trained base of a base-relative soup
        "ingredients": rows,
        "kept_count": len(kept_ingredients(report)),
        "show_scores": any(row["score"] is not None for row in rows),
        "score": report.get("score"),
        "metric": evaluation.get("metric") or "accuracy",
        "dataset": (dataset.get("path") if isinstance(dataset, dict) else dataset),
        "split": evaluation.get("split"),
        "num_full_evaluations": report.get("num_full_evaluations") or 0,
        # a method may add resolved values (defaults filled in, seeds...) as details["card_parameters"]
        "parameters_yaml": _dump({**(report.get("parameters") or {}),
                                  **((report.get("details") or {}).get("card_parameters") or {})}),
        "recipe_yaml": _dump(report.get("recipe")),
        "comparison": _comparison(report),
        "comparison_plot": (report.get("comparison") or {}).get("plot") if isinstance(report.get("comparison"), dict) else None,
        "comparison_info": _comparison_info(report),
        "load_code": _load_code(report, model_id),
        "hf_soup_version": report.get("hf_soup_version", ""),
        "report": report,
    }


def template_error(error: Exception) -> str:
    """A one-line description of a Jinja error, with its line when known."""
    line = getattr(error, "lineno", None)
    return f"{'line ' + str(line) + ': ' if line else ''}{type(error).__name__}: {str(error).rstrip('.')}"


def check_template(template_path: str | Path | None) -> None:
    """Fail early (before any merge work) when a card template is missing or not valid Jinja."""
    if template_path is None:
        return
    path = Path(template_path)
    if not path.is_file():
        raise RecipeError(f"card template {template_path} does not exist; give a Jinja Markdown file")
    try:
        jinja2.Environment().parse(path.read_text(encoding="utf-8"))
    except jinja2.TemplateSyntaxError as error:
        raise RecipeError(f"card template {path}: {template_error(error)}; fix the template") from None


def render_card(report: dict[str, Any], template_path: str | Path | None = None, *,
                repo_id: str | None = None) -> ModelCard:
    """Render the card of a soup from its report (``template_path``: your own Jinja template).

    ``repo_id`` names the soup in the card and its loading snippet (default: ``./soup``).
    """
    if template_path is not None and not Path(template_path).is_file():
        raise RecipeError(f"card template {template_path} does not exist; give a Jinja Markdown file")
    model_id = repo_id or "./soup"
    data = card_data(report, model_id if repo_id else _title(report, model_id))  # model-index name
    path = Path(template_path) if template_path is not None else default_template()
    try:
        card = ModelCard.from_template(data, template_path=str(path), **template_context(report, model_id))
    except jinja2.TemplateError as error:
        raise RecipeError(f"card template {path}: {template_error(error)}; fix the template "
                          "(the variables it can use are listed in hf_soup.card.render.template_context)") from None
    if template_path is None:
        card.text = _tidy(card.text).rstrip() + "\n\n" + DEFAULT_MARKER + "\n"
    return card


def _tidy(text: str) -> str:
    """Collapse the blank-line runs left by skipped template sections (outside code fences)."""
    import re

    parts = text.split("```")
    return "```".join(re.sub(r"\n{3,}", "\n\n", part) if i % 2 == 0 else part for i, part in enumerate(parts))


def write_card(output_dir: str | Path, template_path: str | Path | None = None, *,
               repo_id: str | None = None) -> Path:
    """Write ``README.md`` into a soup directory from its ``soup_report.json``; return its path.

    >>> write_card("./soup")  # doctest: +SKIP
    PosixPath('soup/README.md')
    """
    from ..report import REPORT_FILE, read_report

    output_dir = Path(output_dir)
    if not (output_dir / REPORT_FILE).is_file():
        raise HfSoupError(f"{output_dir}: no {REPORT_FILE}; give the folder `hf-soup merge` wrote")
    card = render_card(read_report(output_dir), template_path, repo_id=repo_id)
    path = output_dir / "README.md"
    # a path with non-UTF-8 bytes reaches the report as lone surrogates: shown as "?" in the card
    data = str(card).encode("utf-8", errors="replace")
    _replace_atomically(path, data)
    return path


def _replace_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary sibling, so a failed write leaves the old file whole."""
    import os
    import tempfile

    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)  # mkstemp made it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_default_card(readme: str | Path) -> bool:
    """Whether a README.md was rendered by hf-soup from the default template (and may be re-rendered)."""
    path = Path(readme)
    return path.is_file() and DEFAULT_MARKER in path.read_text(encoding="utf-8")
