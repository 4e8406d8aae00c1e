"""The offline end-to-end demo: fine-tune, publish, soup by repo ID, push with a card, pull back.

    hf-soup demo [--workdir DIR] [--ingredients 3] [--serve]
    python -m hf_soup.demo

Everything runs on this machine: a local Hub (olah + hf_soup's write server on loopback,
see :mod:`hf_soup.testing.hub_server`) stands in for huggingface.co. A tiny ViT is pretrained
on scikit-learn's 8×8 digits, fine-tuned N times with different learning rates and data
orders, each fine-tune is published as a Hub repo, and the soup of those repos is pushed
with its model card — the same calls a user makes against the real Hub. Takes seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

DEMO_TOKEN = "hf_soup_demo_local_token"
ORG, USER = "hf-soup-demo", "demo-user"
SOUP_REPO = f"{USER}/digits-vit-soup"
_FINE_TUNES = [(1e-3, 1), (2e-3, 2), (5e-4, 3), (1.5e-3, 4), (7e-4, 5), (3e-3, 6)]  # (learning rate, data seed)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _digits():
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    return images, labels, {"train": order[:1200], "test": order[1200:]}


def _train(model, images, labels, indices, *, lr: float, epochs: int, seed: int) -> None:
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        shuffled = indices[torch.randperm(len(indices), generator=generator)]
        for start in range(0, len(shuffled), 32):
            batch = shuffled[start:start + 32]
            model(pixel_values=images[batch], labels=labels[batch]).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()


def _accuracy(model, images, labels, indices) -> float:
    import torch

    with torch.no_grad():
        return (model(pixel_values=images[indices]).logits.argmax(-1) == labels[indices]).float().mean().item()


def _card(base: str | None) -> str:
    lines = ["license: apache-2.0", "pipeline_tag: image-classification", "library_name: transformers",
             "tags: [digits, hf-soup-demo]"] + ([f"base_model: {base}"] if base else [])
    return "---\n" + "\n".join(lines) + "\n---\n\nA tiny ViT on scikit-learn's 8x8 digits (hf-soup demo).\n"


def run_demo(workdir: str | Path | None = None, *, ingredients: int = 3, serve: bool = False,
             out=sys.stdout) -> dict[str, Any]:
    """Run the demo in ``workdir`` (a new temporary folder by default); return what it measured."""
    from ..testing.hub_server import LocalHub

    from ..errors import RecipeError

    if not 2 <= ingredients <= len(_FINE_TUNES):
        raise RecipeError(f"--ingredients: {ingredients} is out of range; give a number between 2 and {len(_FINE_TUNES)}")
    if workdir is not None and Path(workdir).expanduser().exists() and not Path(workdir).expanduser().is_dir():
        raise RecipeError(f"--workdir: {workdir} is a file; give a folder (it is created if missing)")
    workdir = Path(workdir or tempfile.mkdtemp(prefix="hf-soup-demo-")).expanduser().resolve()
    say = lambda text="": print(text, file=out, flush=True)  # noqa: E731
    with LocalHub(workdir / "hub", token=DEMO_TOKEN, user=USER) as hub, _environment(
        {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(workdir / "hf-home"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    ):
        say(f"Local Hub running at {hub.endpoint} (olah for reads, hf_soup's write server for commits)")
        result = _soup_digits(hub, workdir, ingredients, say)
        if serve:
            say(f"\nServing {hub.endpoint} until Ctrl-C; try:\n  HF_ENDPOINT={hub.endpoint} hf-soup inspect "
                + " ".join(result["ingredients"]))
            with contextlib.suppress(KeyboardInterrupt):
                import threading

                threading.Event().wait()
    return result


def _soup_digits(hub, workdir: Path, count: int, say) -> dict[str, Any]:
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    import hf_soup
    from hf_soup.ingredients import resolve_ingredient

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and polite on a shared machine
    try:
        images, labels, split = _digits()
        config = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=8, patch_size=2, num_channels=1, num_labels=10)
        torch.manual_seed(0)
        base = ViTForImageClassification(config)
        _train(base, images, labels, split["train"], lr=3e-3, epochs=10, seed=0)
        base_dir = workdir / "models" / "base"
        base.save_pretrained(base_dir)
        (base_dir / "README.md").write_text(_card(None))
        base_repo = f"{ORG}/digits-vit-base"
        hub.publish(base_dir, base_repo, message="Pretrained tiny ViT")
        accuracy = {base_repo: _accuracy(base, images, labels, split["test"])}
        say(f"pretrained {base_repo}: test accuracy {accuracy[base_repo]:.3f}")

        repos = []
        for number, (lr, seed) in enumerate(_FINE_TUNES[:count]):
            model = copy.deepcopy(base)
            _train(model, images, labels, split["train"], lr=lr, epochs=3, seed=seed)
            folder = workdir / "models" / f"ft-{number}"
            model.save_pretrained(folder)
            (folder / "README.md").write_text(_card(base_repo))
            repo = f"{ORG}/digits-vit-ft-{number}"
            sha = hub.publish(folder, repo, message=f"Fine-tune lr={lr} seed={seed}")
            accuracy[repo] = _accuracy(model, images, labels, split["test"])
            repos.append(repo)
            say(f"published {repo}@{sha[:8]} (lr {lr:g}, seed {seed}): test accuracy {accuracy[repo]:.3f}")

        say(f"\nhf_soup.soup({repos}, push_to_hub={SOUP_REPO!r})")
        result = hf_soup.soup(repos, method="uniform", output_dir=workdir / "soup", overwrite=True,
                              push_to_hub={"repo_id": SOUP_REPO}, token=hub.token)
        pulled = resolve_ingredient(SOUP_REPO)
        soup_model = ViTForImageClassification.from_pretrained(pulled.directory)
        accuracy[SOUP_REPO] = _accuracy(soup_model, images, labels, split["test"])
    finally:
        torch.set_num_threads(threads)

    mean = sum(accuracy[r] for r in repos) / len(repos)
    say(f"\n{'model':<34} test accuracy")
    for repo, value in accuracy.items():
        say(f"{repo:<34} {value:.3f}")
    say(f"{'(mean of the fine-tunes)':<34} {mean:.3f}")
    card = hub.store.read(SOUP_REPO, "README.md").decode()
    say(f"\nSoup pushed to {result.report['pushed_to']}")
    say(f"  repo {hub.endpoint}/{SOUP_REPO} at {pulled.sha}: {', '.join(hub.store.files(SOUP_REPO, pulled.sha))}")
    say(f"  local copy {result.output_dir}; pulled back into {pulled.directory}")
    say(f"  stored as the git repo {hub.store.path(SOUP_REPO)} (everything is under {workdir})")
    say("  model card metadata:\n    " + card.split("---")[1].strip().replace("\n", "\n    "))
    return {"endpoint": hub.endpoint, "ingredients": repos, "soup_repo": SOUP_REPO, "sha": pulled.sha,
            "pushed_to": result.report["pushed_to"], "accuracy": accuracy, "mean_ingredient_accuracy": mean,
            "output_dir": str(result.output_dir), "workdir": str(workdir)}


def add_demo_parser(sub) -> argparse.ArgumentParser:
    """Add ``hf-soup demo`` to a sub-parser group."""
    p = sub.add_parser("demo", help="offline end-to-end demo with a local Hub",
                       description="Fine-tune tiny digit classifiers, publish them to a local Hub, soup them "
                                   "by repo ID and push the soup with its model card.")
    p.add_argument("--workdir", help="where to keep the models, the Hub and the soup (default: a new temp folder)")
    p.add_argument("--ingredients", type=int, default=3, help="number of fine-tunes to soup (2-6, default 3)")
    p.add_argument("--serve", action="store_true", help="keep the local Hub running until Ctrl-C")
    p.set_defaults(handler=demo_command)
    return p


def demo_command(args: argparse.Namespace) -> int:
    """Handler of ``hf-soup demo``."""
    run_demo(args.workdir, ingredients=args.ingredients, serve=args.serve)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_soup.demo")
    sub = parser.add_subparsers(dest="command")
    add_demo_parser(sub)
    args = parser.parse_args(["demo", *(argv if argv is not None else sys.argv[1:])])
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
