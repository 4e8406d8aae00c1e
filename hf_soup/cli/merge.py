"""``hf-soup merge``: a recipe file and/or flags → one soup (written, reported, optionally pushed).

    hf-soup merge -m ./run1 -m ./run2 --method uniform -o ./soup
    hf-soup merge recipe.yaml --dtype bfloat16

Flags override the recipe's keys (:func:`recipe_data`); ``--dry-run`` prints the recipe instead.
"""

from __future__ import annotations

import sys
from typing import Any

from ..errors import RecipeError
from .common import add_eval_flags, add_token_flag, add_visibility_flags, key_value, plural


def add_merge_parser(sub) -> None:
    """Add ``hf-soup merge`` to a sub-parser group."""
    p = sub.add_parser("merge", help="merge ingredients into a soup", description="Merge checkpoints into a soup.")
    p.add_argument("recipe", nargs="?",
                   help="YAML recipe; the flags below override it (relative paths in it are read from the current directory)")
    p.add_argument("-m", "--model", action="append", default=[], metavar="REF",
                   help="ingredient: Hub repo ID (org/name[@revision]) or local path; repeat for each")
    p.add_argument("--method", help="soup method (see `hf-soup methods`); default uniform")
    p.add_argument("-p", "--param", action="append", default=[], type=key_value, metavar="KEY=VALUE",
                   help="method parameter, value parsed as YAML (e.g. weights=[1,2,1]); repeatable")
    p.add_argument("-o", "--output", help="output directory")
    p.add_argument("--dtype", help="output dtype: float32, float16, bfloat16 (default: the ingredients')")
    p.add_argument("--max-shard-size", help="largest safetensors shard, e.g. 2GB (default 5GB)")
    p.add_argument("--on-missing", choices=["error", "skip", "first"], help="what to do with keys some ingredients lack")
    p.add_argument("--config-from", type=int, help="index of the ingredient whose config/tokenizer files are copied")
    p.add_argument("--base-model", metavar="REF",
                   help="the pre-trained model the ingredients were fine-tuned from (base-relative methods such as "
                        "ties); for PEFT adapters, their base (default: the one they name)")
    p.add_argument("--format", dest="output_format", choices=["model", "adapter"],
                   help="write a full model (default) or, for adapter soups, a LoRA adapter")
    p.add_argument("--rank", help="adapter output rank: concat (exact, default) or an integer (truncated SVD)")
    p.add_argument("--seed", type=int, help="random seed for methods that draw or shuffle")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"],
                   help="where the math runs (default auto: a CUDA GPU when one is visible, else the CPU)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="merge worker threads (default: the cores this process may use, shared by torchrun processes)")
    add_eval_flags(p)
    p.add_argument("--compare", action="store_true", default=None,
                   help="also score the best ingredient, uniform and greedy soups and the logit ensemble")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output directory (only an empty folder or a previous soup)")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="merge even with NaN / Inf in the ingredients or values the output dtype cannot hold "
                        "(refused by default; the report counts them either way)")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="push the soup to this Hub repo")
    add_visibility_flags(p, "the pushed repo")
    add_token_flag(p)
    p.add_argument("--card-template", metavar="PATH", help="Jinja template for the soup's README.md (default: hf-soup's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--from-mergekit", action="store_true", default=None,
                   help="read the recipe file as a MergeKit configuration (default: detected by its merge_method key)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the recipe that would run (a MergeKit configuration translated) and stop")
    p.set_defaults(handler=merge_command)


def recipe_data(args) -> dict[str, Any]:
    """The recipe mapping: the recipe file's (checked first), with the flags' values put over it."""
    if args.recipe:
        from ..recipe import parse_recipe, read_recipe_data

        data = read_recipe_data(args.recipe, getattr(args, "from_mergekit", None))
        parse_recipe(data, args.recipe)  # validates and gives file-level errors first
    else:
        data = {}
    if args.model:
        data["ingredients"] = list(args.model)
    if not data.get("ingredients"):
        raise RecipeError("ingredients: none given; pass a recipe file or -m REF for each ingredient")
    data["method"] = _method(data.get("method", "uniform"), args)
    data["output"] = _output(data.get("output") or {}, args)
    if args.eval_dataset or args.eval:
        data["evaluation"] = _evaluation(data.get("evaluation") or {}, args)
    for key, value in (("compare", args.compare or None), ("on_missing", args.on_missing),
                       ("base_model", args.base_model or None), ("seed", args.seed), ("device", args.device or None),
                       ("threads", getattr(args, "threads", None)), ("allow_nonfinite", args.allow_nonfinite or None)):
        if value is not None:
            data[key] = value
    if args.push_to_hub:
        data["push_to_hub"] = _push(data.get("push_to_hub") or {}, args)
    return data


def _method(method: Any, args) -> dict[str, Any]:
    method = {"name": method} if isinstance(method, str) else dict(method)
    if args.method and args.method != method.get("name"):
        method = {"name": args.method}
    method.update(dict(args.param))
    return method


def _output(output: Any, args) -> dict[str, Any]:
    output = {"dir": output} if isinstance(output, str) else dict(output)  # output: ./soup is short for output: {dir: ./soup}
    for key, value in (("dir", args.output), ("dtype", args.dtype), ("max_shard_size", args.max_shard_size),
                       ("config_from", args.config_from)):
        if value is not None:
            output[key] = value
    if args.output_format:
        output["format"] = args.output_format
    if args.rank:
        output["rank"] = int(args.rank) if args.rank.isdigit() else args.rank
    if args.overwrite:
        output["overwrite"] = True
    if args.card_template:
        output["card_template"] = args.card_template
    return output


def _evaluation(evaluation: Any, args) -> dict[str, Any]:
    evaluation = dict(evaluation) if isinstance(evaluation, dict) else {"dataset": evaluation}
    if args.eval_dataset:
        evaluation["dataset"] = args.eval_dataset
    evaluation.update(dict(args.eval))
    return evaluation


def _push(push: Any, args) -> dict[str, Any]:
    push = {"repo_id": push} if isinstance(push, str) else dict(push)
    push["repo_id"] = args.push_to_hub
    if args.private is not None:
        push["private"] = args.private
    return push


def merge_command(args) -> int:
    """Handler of ``hf-soup merge``: run the recipe; process 0 prints what was written."""
    from ..pipeline import run_recipe
    from ..recipe import parse_recipe

    recipe = parse_recipe(recipe_data(args), args.recipe or "command line")
    if args.dry_run:
        import yaml

        dump = recipe.model_dump(mode="json", exclude_defaults=True)
        dump["method"] = {"name": recipe.method.name, **recipe.method.params}
        print(yaml.safe_dump(dump, sort_keys=False), end="")
        return 0
    result = run_recipe(recipe, token=args.token, progress=not args.quiet and sys.stderr.isatty())
    if result.is_main_process:  # torchrun / accelerate launch: process 0 speaks for all
        _print_result(result)
    return 0


def _print_result(result: Any) -> None:
    report = result.report
    rows = report["ingredients"]
    kept = sum(1 for row in rows if row.get("kept", True))
    used = plural(len(rows), "ingredient") if kept == len(rows) else f"{kept} of {len(rows)} ingredients kept"
    print(f"Soup written to {result.output_dir} ({report['method']}, {report['output']['num_parameters']:,} parameters, "
          f"{used}, {report['timings']['total']:.2f}s)")
    from ..summary import score_lines

    for line in score_lines(report.get("summary")):
        print(line)
    if report.get("comparison"):
        from ..evaluation.compare import comparison_markdown

        print(comparison_markdown(report["comparison"]))
    if report.get("pushed_to"):
        print(f"Pushed to {report['pushed_to']}")
