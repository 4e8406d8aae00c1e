"""The README's main job: the offline demo runs end to end against its own local Hub."""

from __future__ import annotations

import io

from hf_soup.cli.demo import SOUP_REPO, run_demo


def test_demo_publishes_soups_by_repo_id_and_pushes_the_soup(tmp_path):
    out = io.StringIO()
    result = run_demo(tmp_path, ingredients=2, out=out)

    text = out.getvalue()
    accuracy = result["accuracy"]
    fine_tunes = [accuracy[repo] for repo in result["ingredients"]]
    assert len(result["ingredients"]) == 2 and result["soup_repo"] == SOUP_REPO
    assert f"Soup pushed to {result['pushed_to']}" in text and result["pushed_to"].endswith(result["sha"])
    assert "base_model_relation: merge" in text and "license: apache-2.0" in text
    assert accuracy[SOUP_REPO] > accuracy["hf-soup-demo/digits-vit-base"]
    assert accuracy[SOUP_REPO] >= min(fine_tunes) - 0.02
    assert (tmp_path / "soup" / "README.md").is_file()
