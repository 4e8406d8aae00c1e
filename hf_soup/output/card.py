"""Render a soup's README.md from ``soup_report.json`` with a Jinja template.

The default template is rendered here, without importing ``huggingface_hub`` (its import takes
about a third of a second, paid by every local merge); the text is the one
``huggingface_hub.ModelCard.from_template`` gives (tests/output/test_card_text.py). A user's own
template goes through ``ModelCard.from_template``, so its YAML header is normalised the way the
Hub library does it.

>>> card = render_card(read_report("./soup"), repo_id="me/my-soup")  # doctest: +SKIP
>>> card.data.base_model  # doctest: +SKIP
['org/run-1', 'org/run-2']
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import yaml

from ..errors import HfSoupError, RecipeError
from .card_metadata import card_fields, front_matter, kept_ingredients, model_card_data
from .escape import fence_for, md_code, md_text
from .reproduce import card_recipe as _card_recipe
from .reproduce import repo_id_given, reproduce_notes

TEMPLATE_DIR_NAME = "templates"
DEFAULT_TEMPLATE = "default.md"
# Written at the end of a card rendered from the default template, so a push can re-render it
# with the repo ID (the "use it" snippet then names the repo).
DEFAULT_MARKER = "<!-- hf-soup card: default template -->"
CARD_HASH = "card_sha256"  # report entry: sha256 of the README.md hf-soup last wrote
_FRONT_MATTER = re.compile(r"\A\s*---\n.*?\n---[ \t]*(?:\n|\Z)", re.DOTALL)  # the YAML block a card starts with

if TYPE_CHECKING:
    from huggingface_hub import ModelCard


def default_template() -> Path:
    """The default template, shipped as package data next to this module."""
    candidate = Path(__file__).resolve().parent / TEMPLATE_DIR_NAME / DEFAULT_TEMPLATE
    if candidate.is_file():
        return candidate
    raise HfSoupError(f"the default model card template {candidate} is missing; reinstall hf-soup")


def _method_class(name: str | None) -> Any:
    """The registered class of method ``name``, or ``None`` when it is not known here."""
    from ..methods.registry import get_method_class

    try:
        return get_method_class(name or "")
    except (HfSoupError, ImportError):
        return None


def _method_info(cls: Any, name: str | None) -> tuple[str, str | None, str | None]:
    """The method's one-paragraph description (its module's docstring), its paper link and title."""
    if cls is None:
        return f"The `{name}` soup method.", None, None
    module_doc = (inspect.getmodule(cls).__doc__ or "").strip()
    doc = (module_doc or cls.__doc__ or f"The `{name}` soup method.").strip().split("\n\n")[0]
    return " ".join(doc.split()), cls.paper, cls.paper_title


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


def _score_lines(report: dict[str, Any]) -> list[str]:
    from ..summary import score_lines

    summary = report.get("summary")
    return score_lines(summary) if isinstance(summary, dict) else []


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
    method = _method_class(report.get("method"))
    description, paper, paper_title = _method_info(method, report.get("method"))
    rows = [dict(row, score=row.get("score"), weight=row.get("weight"), kept=row.get("kept", True),
                 ref_code=md_code(row.get("ref")))  # a name with | ` < or a newline cannot break the card
            for row in report.get("ingredients", [])]
    recipe_yaml = _dump(_card_recipe(report))
    context = {
        "model_name": md_text(_title(report, model_id)),
        "repo_id": model_id,
        "method": report.get("method"),
        "method_description": description,
        "paper_url": paper,
        "paper_title": paper_title or paper or "paper",  # a link without a title shows its URL
        "base_model": report.get("base_model"),  # the pre-trained base of a base-relative soup
        "ingredients": rows,
        "kept_count": len(kept_ingredients(report)),
        "show_scores": any(row["score"] is not None for row in rows),
        "score": report.get("score"),
        "metric": md_text(evaluation.get("metric") or "accuracy"),
        "dataset": _escaped(dataset.get("path") if isinstance(dataset, dict) else dataset),
        "split": _escaped(evaluation.get("split")),
        "num_full_evaluations": report.get("num_full_evaluations") or 0,
        # the same lines `hf-soup merge` prints, and the report's warnings (hf_soup.summary)
        "score_lines": _score_lines(report),
        "warnings": [str(w) for w in ((report.get("summary") or {}).get("warnings") or [])],
        # a method may add resolved values (defaults filled in, seeds...) as details["card_parameters"]
        "parameters_yaml": _dump({**(report.get("parameters") or {}),
                                  **((report.get("details") or {}).get("card_parameters") or {})}),
        "recipe_yaml": recipe_yaml,
        "recipe_fence": fence_for(recipe_yaml),
        "reproduce_notes": reproduce_notes(report, pushed=repo_id_given(model_id)),
        "comparison": [(md_text(name), value) for name, value in _comparison(report)],
        "comparison_plot": (report.get("comparison") or {}).get("plot") if isinstance(report.get("comparison"), dict) else None,
        "comparison_info": _comparison_info(report),
        "load_code": _load_code(report, model_id),
        "hf_soup_version": report.get("hf_soup_version", ""),
        "report": report,
    }
    section = method.card_section if method is not None else None
    context["method_section"] = jinja2.Template(section).render(**context) if section else ""
    return context


def _escaped(value: Any) -> str | None:
    return md_text(value) if value else None


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


def render_card_text(report: dict[str, Any], template_path: str | Path | None = None, *,
                     repo_id: str | None = None) -> str:
    """The README.md text of a soup from its report (``template_path``: your own Jinja template).

    ``repo_id`` names the soup in the card and its loading snippet (default: ``./soup``).
    """
    if template_path is not None and not Path(template_path).is_file():
        raise RecipeError(f"card template {template_path} does not exist; give a Jinja Markdown file")
    model_id = repo_id or "./soup"
    fields = card_fields(report, model_id if repo_id else _title(report, model_id))  # model-index name
    path = Path(template_path) if template_path is not None else default_template()
    try:
        context = template_context(report, model_id)
        if template_path is None:
            return _default_card(fields, path, context)
        from huggingface_hub import ModelCard

        return str(ModelCard.from_template(model_card_data(fields), template_path=str(path), **context))
    except jinja2.TemplateError as error:
        raise RecipeError(f"card template {path}: {template_error(error)}; fix the template "
                          "(the variables it can use are listed in hf_soup.output.card.template_context)") from None


def render_card(report: dict[str, Any], template_path: str | Path | None = None, *,
                repo_id: str | None = None) -> ModelCard:
    """:func:`render_card_text` as a ``huggingface_hub.ModelCard``."""
    from huggingface_hub import ModelCard

    return ModelCard(render_card_text(report, template_path, repo_id=repo_id))


def _default_card(fields: dict[str, Any], path: Path, context: dict[str, Any]) -> str:
    """The default template rendered the way ``ModelCard.from_template`` renders it, tidied and marked."""
    metadata = front_matter(fields)
    header = yaml.dump(metadata, allow_unicode=True, sort_keys=False).strip()
    content = jinja2.Template(path.read_text(encoding="utf-8")).render(card_data=header, **{**metadata, **context})
    match = _FRONT_MATTER.match(content)
    text = content[match.end():] if match else content
    return f"---\n{header}\n---\n" + _tidy(text).rstrip() + "\n\n" + DEFAULT_MARKER + "\n"


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
    from .report import REPORT_FILE, read_report

    output_dir = Path(output_dir)
    if not (output_dir / REPORT_FILE).is_file():
        raise HfSoupError(f"{output_dir}: no {REPORT_FILE}; give the folder `hf-soup merge` wrote")
    report = read_report(output_dir)
    text = render_card_text(report, template_path, repo_id=repo_id)
    path = output_dir / "README.md"
    # a path with non-UTF-8 bytes reaches the report as lone surrogates: shown as "?" in the card
    data = text.encode("utf-8", errors="replace")
    _replace_atomically(path, data)
    report[CARD_HASH] = hashlib.sha256(data).hexdigest()  # a push re-renders only a card nobody edited since
    _replace_atomically(output_dir / REPORT_FILE, (json.dumps(report, indent=2, default=str) + "\n").encode())
    return path


def card_edited(output_dir: str | Path) -> bool | None:
    """Whether README.md differs from the card hf-soup last rendered (``None``: no README or no recorded hash)."""
    from .report import read_report

    readme = Path(output_dir) / "README.md"
    recorded = read_report(output_dir).get(CARD_HASH)
    if not readme.is_file() or not recorded:
        return None
    return hashlib.sha256(readme.read_bytes()).hexdigest() != recorded


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
