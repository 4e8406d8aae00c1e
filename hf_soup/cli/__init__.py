"""The ``hf-soup`` command (also ``python -m hf_soup``).

    hf-soup merge -m ./run1 -m ./run2 --method uniform -o ./soup
    hf-soup merge recipe.yaml --dtype bfloat16
    hf-soup inspect ./run1 ./run2 --json
    hf-soup evaluate ./run1 ./run2 --eval-dataset ./val.csv      # + the logit ensemble
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Sequence

from ..errors import AlignmentError, HfSoupError, RecipeError


def add_token_flag(parser: argparse.ArgumentParser, purpose: str = "") -> None:
    """The ``--token`` flag every Hub-facing command takes (``purpose``: e.g. " with write access")."""
    parser.add_argument("--token", help=f"Hub token{purpose} (default: HF_TOKEN or the stored login)")


def _key_value(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)


def _add_merge(sub) -> None:
    p = sub.add_parser("merge", help="merge ingredients into a soup", description="Merge checkpoints into a soup.")
    p.add_argument("recipe", nargs="?",
                   help="YAML recipe; the flags below override it (relative paths in it are read from the current directory)")
    p.add_argument("-m", "--model", action="append", default=[], metavar="REF",
                   help="ingredient: Hub repo ID (org/name[@revision]) or local path; repeat for each")
    p.add_argument("--method", help="soup method (see `hf-soup methods`); default uniform")
    p.add_argument("-p", "--param", action="append", default=[], type=_key_value, metavar="KEY=VALUE",
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
    p.add_argument("--eval-dataset", metavar="DATASET",
                   help="evaluation data: Hub dataset ID, save_to_disk folder or csv/json/parquet file")
    p.add_argument("-e", "--eval", action="append", default=[], type=_key_value, metavar="KEY=VALUE",
                   help="evaluation setting, e.g. split=test, text_column=sentence, metric=loss; repeatable")
    p.add_argument("--compare", action="store_true", default=None,
                   help="also score the best ingredient, uniform and greedy soups and the logit ensemble")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output directory (only an empty folder or a previous soup)")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="merge even with NaN / Inf in the ingredients or values the output dtype cannot hold "
                        "(refused by default; the report counts them either way)")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="push the soup to this Hub repo")
    visibility = p.add_mutually_exclusive_group()
    visibility.add_argument("--private", action="store_true", default=None, help="create the pushed repo as private")
    visibility.add_argument("--public", dest="private", action="store_false", default=None,
                            help="create the pushed repo as public even when ingredients are private")
    add_token_flag(p)
    p.add_argument("--card-template", metavar="PATH", help="Jinja template for the soup's README.md (default: hf-soup's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--from-mergekit", action="store_true", default=None,
                   help="read the recipe file as a MergeKit configuration (default: detected by its merge_method key)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the recipe that would run (a MergeKit configuration translated) and stop")
    p.set_defaults(handler=merge_command)


def _recipe_data(args) -> dict[str, Any]:
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
    method = data.get("method", "uniform")
    method = {"name": method} if isinstance(method, str) else dict(method)
    if args.method and args.method != method.get("name"):
        method = {"name": args.method}
    method.update(dict(args.param))
    data["method"] = method
    output = data.get("output") or {}
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
    data["output"] = output
    if args.eval_dataset or args.eval:
        evaluation = data.get("evaluation") or {}
        evaluation = dict(evaluation) if isinstance(evaluation, dict) else {"dataset": evaluation}
        if args.eval_dataset:
            evaluation["dataset"] = args.eval_dataset
        evaluation.update(dict(args.eval))
        data["evaluation"] = evaluation
    if args.compare:
        data["compare"] = True
    if args.on_missing:
        data["on_missing"] = args.on_missing
    if args.base_model:
        data["base_model"] = args.base_model
    if args.seed is not None:
        data["seed"] = args.seed
    if args.device:
        data["device"] = args.device
    if getattr(args, "threads", None) is not None:
        data["threads"] = args.threads
    if args.allow_nonfinite:
        data["allow_nonfinite"] = True
    if args.push_to_hub:
        push = data.get("push_to_hub") or {}
        push = {"repo_id": push} if isinstance(push, str) else dict(push)
        push["repo_id"] = args.push_to_hub
        if args.private is not None:
            push["private"] = args.private
        data["push_to_hub"] = push
    return data


def merge_command(args) -> int:
    from ..pipeline import run_recipe
    from ..recipe import parse_recipe

    recipe = parse_recipe(_recipe_data(args), args.recipe or "command line")
    if args.dry_run:
        import yaml

        dump = recipe.model_dump(mode="json", exclude_defaults=True)
        dump["method"] = {"name": recipe.method.name, **recipe.method.params}
        print(yaml.safe_dump(dump, sort_keys=False), end="")
        return 0
    result = run_recipe(recipe, token=args.token, progress=not args.quiet and sys.stderr.isatty())
    report = result.report
    if not result.is_main_process:  # torchrun / accelerate launch: process 0 speaks for all
        return 0
    rows = report["ingredients"]
    kept = sum(1 for row in rows if row.get("kept", True))
    used = _plural(len(rows), "ingredient") if kept == len(rows) else f"{kept} of {len(rows)} ingredients kept"
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
    return 0


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="check that ingredients can be souped", description="Print the alignment of ingredients.")
    p.add_argument("refs", nargs="+", metavar="REF", help="ingredient: Hub repo ID (org/name[@revision]) or local path")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--on-missing", choices=["error", "skip", "first"], default="error",
                   help="keys some ingredients lack: error (default), skip them, or copy them from the first that has them")
    add_token_flag(p)
    p.add_argument("--base-model", metavar="REF", help="base model of PEFT adapter ingredients (default: the one they name)")
    p.set_defaults(handler=inspect_command)


def inspect_command(args) -> int:
    from contextlib import ExitStack

    from ..prepare import open_aligned, resolve_with_bases

    try:
        ingredients, _ = resolve_with_bases(args.refs, args.base_model, token=args.token)
    except HfSoupError as error:
        if args.json:  # scripts get JSON on stdout for every failure; the error also goes to stderr
            print(json.dumps({"ok": False, "ingredients": list(args.refs), "error": str(error),
                              "error_type": type(error).__name__, "differences": []}, indent=2))
        raise
    names = [i.name for i in ingredients]
    with ExitStack() as stack:
        try:
            summary = open_aligned(stack, ingredients, on_missing=args.on_missing)[1].summary()
            summary["ok"] = True
        except AlignmentError as error:
            summary = {"ok": False, "ingredients": names, "error": str(error), "differences": error.differences}
    summary["revisions"] = {i.name: i.sha for i in ingredients}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return 0 if summary["ok"] else 1


def _print_summary(summary: dict[str, Any]) -> None:
    for name in summary["ingredients"]:
        sha = summary["revisions"].get(name)
        print(f"  ingredient  {name}" + (f" @ {sha[:12]}" if sha else ""))
    if not summary["ok"]:
        print(f"cannot be souped: {summary['error']}")
        return
    print(f"model type    {', '.join(sorted({t for t in summary['model_types'] if t})) or 'unknown (no config)'}")
    print(f"parameters    {summary['num_parameters']:,} in {summary['num_tensors']} tensors "
          f"({summary['shared_keys']} shared by all)")
    for name, keys in summary["missing_keys"].items():
        print(f"missing in {name}: {len(keys)} key(s), e.g. {', '.join(keys[:3])}")
    for tie in summary["tied_weights"]:
        print(f"tied          {tie['ingredient']}: {tie['key']} -> {tie['tied_to']}")
    for diff in summary["dtype_differences"][:5]:
        print(f"dtype differs {diff['key']}: {diff['dtypes']}")
    if summary["copied_keys"]:
        print(f"copied        {len(summary['copied_keys'])} non-float tensor(s) taken from the first ingredient")
    print("ok: these ingredients can be souped")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score ingredients, their logit ensemble and the uniform soup",
                       description="Score each ingredient, the logit ensemble (a reference, not a soup) and soups.")
    p.add_argument("refs", nargs="+", metavar="REF")
    p.add_argument("--eval-dataset", metavar="DATASET", required=True,
                   help="evaluation data: Hub dataset ID, save_to_disk folder or csv/json/parquet file")
    p.add_argument("-e", "--eval", action="append", default=[], type=_key_value, metavar="KEY=VALUE",
                   help="evaluation setting, e.g. split=test, text_column=sentence, metric=loss; repeatable")
    p.add_argument("--soup", action="append", metavar="METHOD", help="soup method to score (default: uniform); repeatable")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_token_flag(p)
    p.set_defaults(handler=evaluate_command)


def evaluate_command(args) -> int:
    from ..evaluation.compare import comparison_markdown
    from ..scores import evaluate

    result = evaluate(args.refs, {"dataset": args.eval_dataset, **dict(args.eval)}, token=args.token,
                      soups=args.soup or ("uniform",), progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        split = f" ({result['split']} split)" if result.get("split") else ""  # data files have no split name
        print(f"{result['metric']} on {result['num_examples']} examples{split}, "
              f"{_plural(result['num_full_evaluations'], 'full evaluation')}:")
        print(comparison_markdown(result))
    return 0


def _add_methods(sub) -> None:
    p = sub.add_parser("methods", help="list the soup methods",
                       description="List the soup methods (see `hf-soup merge --method NAME -p KEY=VALUE`).")
    p.set_defaults(handler=methods_command)


def methods_command(args) -> int:
    """Print each registered method with the first line of its description."""
    from ..methods.registry import available_methods, get_method_class

    for name in available_methods():
        cls = get_method_class(name)
        summary = (cls.__doc__ or "").strip().splitlines()[0].replace("``", "") if cls.__doc__ else ""
        needs = "  [needs evaluation]" if cls.needs_evaluation else ""
        needs += "  [needs base_model]" if getattr(cls, "uses_base", "never") == "required" else ""
        print(f"{name:<16} {summary}{needs}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-soup", description="Model soups from Hugging Face checkpoints.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what hf_soup does")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_merge(sub)
    _add_inspect(sub)
    _add_evaluate(sub)
    _add_methods(sub)
    from .demo import add_demo_parser
    from .hub import add_card_parser, add_push_parser

    add_push_parser(sub)
    add_card_parser(sub)
    add_demo_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input, 1 for other failures, 130 / 143 when stopped).

    Every failure is one line on stderr; the traceback of an unexpected one is shown with ``-v``.
    """
    from ..hard_stop import Terminated, sigterm_as_interrupt
    from ..hub_token import redact
    from ..io.os_errors import describe

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")

    def say(message: str) -> None:  # a token never reaches the terminal, whatever an error quotes
        print(redact(f"hf-soup: {message}", getattr(args, "token", None)), file=sys.stderr)

    try:
        with sigterm_as_interrupt():
            return args.handler(args)
    except RecipeError as error:
        say(f"error: {error}")
        return 2
    except HfSoupError as error:
        say(f"error: {error}")
        return 1
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        say(f"{'terminated' if terminated else 'interrupted'}; an unfinished soup is never left in the output directory")
        return 143 if terminated else 130
    except OSError as error:
        if describe(error) is None and args.verbose:
            raise
        say(f"error: {describe(error) or _one_line(error)}")
        return 1
    except Exception as error:
        if args.verbose:
            raise
        say(f"error: unexpected {_one_line(error)}; rerun with -v for the traceback, and please report it")
        return 1


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())[:300]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
