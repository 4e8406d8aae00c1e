"""``hf-soup merge --push-to-hub``, ``hf-soup push`` and ``hf-soup card`` against the local Hub."""

from __future__ import annotations

from huggingface_hub import ModelCard

from hf_soup.cli import main
from hub_fixtures import READ_TOKEN, WRITE_TOKEN, hub, local_hub, publish_model, repo_name, save_tiny  # noqa: F401


def test_merge_pushes_with_a_custom_card_then_push_and_card_commands(hub, publish_model, repo_name, tmp_path, capsys):
    a, _ = publish_model(seed=50)
    b, _ = publish_model(seed=51)
    target, other = repo_name("cli-soup", org="soup-user"), repo_name("cli-other", org="soup-user")
    template = tmp_path / "card.md"
    template.write_text("---\n{{ card_data }}\n---\n\n{{ method }} soup of {{ ingredients | length }}.\n")
    out = tmp_path / "soup"

    assert main(["merge", "-m", a, "-m", b, "-o", str(out), "--push-to-hub", target, "--token", WRITE_TOKEN,
                 "--card-template", str(template)]) == 0
    assert f"Pushed to {hub.endpoint}/{target}/commit/" in capsys.readouterr().out
    pushed = hub.store.read(target, "README.md").decode()
    assert pushed.rstrip().endswith("uniform soup of 2.") and f"- {a}" in pushed

    assert main(["push", str(out), other, "--revision", "dev", "--token", WRITE_TOKEN]) == 0
    assert f"Pushed to {hub.endpoint}/{other}/commit/{hub.store.resolve(other, 'dev')}" in capsys.readouterr().out

    assert main(["push", str(out), repo_name("denied", org="soup-user"), "--token", READ_TOKEN]) == 1
    err = capsys.readouterr().err
    assert "HTTP 403" in err and f"retry with: hf-soup push {out} soup-user/denied-" in err and READ_TOKEN not in err

    assert main(["card", str(out), "--repo-id", target]) == 0
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == [a, b] and f'.from_pretrained("{target}")' in card.text


def test_merge_refuses_mismatched_hub_ingredients_before_downloading(hub, publish_model, repo_name, tmp_path, capsys):
    a, _ = publish_model(seed=52)
    wide = repo_name("wide")
    hub.publish(save_tiny(tmp_path / "wide", 53, "bert", intermediate_size=96), wide)

    assert main(["merge", "-m", a, "-m", wide, "-o", str(tmp_path / "soup")]) != 0

    assert "nothing downloaded" in capsys.readouterr().err
    assert not (tmp_path / "soup").exists()
    assert not list((tmp_path / "hf-home").rglob("*.safetensors"))
