"""The local Hub itself answers like the Hub where hf_soup depends on it."""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub import errors as hf

from hub_fixtures import READ_TOKEN, WRITE_TOKEN, hub, local_hub, publish_model, repo_name  # noqa: F401


def test_whoami_and_tokens(hub):
    api = HfApi(endpoint=hub.endpoint)
    assert api.whoami(token=WRITE_TOKEN)["auth"]["accessToken"]["role"] == "write"
    assert api.whoami(token=READ_TOKEN)["auth"]["accessToken"]["role"] == "read"
    with pytest.raises(hf.HfHubHTTPError) as raised:
        api.whoami(token="hf_wrong")
    assert raised.value.response.status_code == 401


def test_head_keeps_the_real_content_length_and_files_download_whole(hub, publish_model, tmp_path):
    repo_id, sha = publish_model(seed=40)
    size = hub.store.size(repo_id, sha, "model.safetensors")
    connection = http.client.HTTPConnection(urlsplit(hub.endpoint).netloc)
    connection.request("HEAD", f"/{repo_id}/resolve/{sha}/model.safetensors")
    response = connection.getresponse()
    assert response.status == 200 and int(response.getheader("content-length")) == size > 0
    assert response.getheader("x-repo-commit") == sha
    connection.close()
    path = hf_hub_download(repo_id, "model.safetensors", revision=sha, endpoint=hub.endpoint, cache_dir=tmp_path / "c")
    assert open(path, "rb").read() == hub.store.read(repo_id, "model.safetensors", sha)


def test_missing_file_revision_and_repo_get_the_hub_error_codes(hub, publish_model, repo_name, tmp_path):
    repo_id, _ = publish_model(seed=41)
    options = {"endpoint": hub.endpoint, "cache_dir": tmp_path / "c"}
    with pytest.raises(hf.RemoteEntryNotFoundError):
        hf_hub_download(repo_id, "nope.json", **options)
    with pytest.raises(hf.RevisionNotFoundError):
        hf_hub_download(repo_id, "config.json", revision="nope", **options)
    with pytest.raises(hf.RepositoryNotFoundError):
        hf_hub_download(repo_name("nope"), "config.json", **options)


def test_commits_need_a_write_token_and_invalid_card_metadata_is_refused(hub, repo_name):
    api = HfApi(endpoint=hub.endpoint)
    target = repo_name("writes")
    with pytest.raises(hf.HfHubHTTPError) as raised:
        api.create_repo(target, token=READ_TOKEN)
    assert raised.value.response.status_code == 403
    api.create_repo(target, token=WRITE_TOKEN)
    with pytest.raises(ValueError, match="Invalid metadata"):
        api.upload_file(path_or_fileobj=b"---\n[unclosed\n---\nbody\n", path_in_repo="README.md", repo_id=target,
                        token=WRITE_TOKEN)
    info = api.upload_file(path_or_fileobj=b"hello", path_in_repo="a/b.txt", repo_id=target, token=WRITE_TOKEN)
    assert hub.store.read(target, "a/b.txt") == b"hello" and info.oid == hub.store.resolve(target, "main")
