"""Hostile inputs and hard stops (issue 17): one table of bad inputs, each refused in one clean line.

Every row builds a hostile case from real files, runs the ``hf-soup`` CLI, and checks the exit
code, the error text, that no traceback was shown, that nothing was written or left behind
(no output, no staging folder) and that every input is byte-for-byte unchanged. The kill cases
run real processes and send real signals.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import tree_digest

from hf_soup.cli import main

REPO = Path(__file__).resolve().parent.parent
SECRET = "hf_SeCrEtToKeN0123456789abcdefXYZ"


def _save(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def _raw_safetensors(path: Path, header, data: bytes = b"") -> None:
    """A safetensors file with exactly this header (any JSON value, or raw bytes)."""
    payload = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(payload)) + payload + data)


@dataclass
class World:
    """The files of one case: the ingredients, anything else it reads, where the soup goes."""

    tmp: Path
    ingredients: list[Path]
    output: Path
    extra_inputs: list[Path]

    def flags(self) -> list[str]:
        return [arg for path in self.ingredients for arg in ("-m", str(path))]


def _world(tmp: Path, make_ingredients) -> World:
    return World(tmp, make_ingredients("llama", 2), tmp / "out" / "soup", [])


# -- case builders: each returns the argv (the World says what must stay unchanged) -----------------
def index_to_parent(w: World) -> list[str]:
    outside = w.tmp / "secret"
    shutil.copytree(w.ingredients[0], outside)
    index = {"metadata": {}, "weight_map": {}}
    from safetensors import safe_open

    with safe_open(str(w.ingredients[1] / "model.safetensors"), "np") as f:
        index["weight_map"] = {k: "../secret/model.safetensors" for k in f.keys()}
    (w.ingredients[1] / "model.safetensors").unlink()
    (w.ingredients[1] / "model.safetensors.index.json").write_text(json.dumps(index))
    w.extra_inputs.append(outside)
    return ["merge", *w.flags(), "-o", str(w.output)]


def index_to_absolute(w: World) -> list[str]:
    argv = index_to_parent(w)
    index_path = w.ingredients[1] / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"] = {k: str(w.tmp / "secret" / "model.safetensors") for k in index["weight_map"]}
    index_path.write_text(json.dumps(index))
    return argv


def inspect_index_to_parent(w: World) -> list[str]:
    index_to_parent(w)
    return ["inspect", *map(str, w.ingredients)]


def sidecar_symlink(w: World) -> list[str]:
    target = w.tmp / "passwd"
    target.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (w.ingredients[0] / "tokenizer.json").symlink_to(target)
    w.extra_inputs.append(target)
    return ["merge", *w.flags(), "-o", str(w.output)]


def weights_symlink(w: World) -> list[str]:
    moved = w.tmp / "elsewhere.safetensors"
    shutil.move(w.ingredients[1] / "model.safetensors", moved)
    (w.ingredients[1] / "model.safetensors").symlink_to(moved)
    w.extra_inputs.append(moved)
    return ["merge", *w.flags(), "-o", str(w.output)]


def overwrite_a_folder_that_is_no_soup(w: World) -> list[str]:
    w.output.mkdir(parents=True)
    (w.output / "thesis.tex").write_text("years of work")
    (w.output / "data").mkdir()
    (w.output / "data" / "x.csv").write_text("1,2\n")
    w.extra_inputs.append(w.output)
    return ["merge", *w.flags(), "-o", str(w.output), "--overwrite"]


def overwrite_the_current_directory(w: World) -> list[str]:
    w.output.mkdir(parents=True)
    (w.output / "soup_report.json").write_text("{}")  # even a soup: never the folder the user stands in
    w.extra_inputs.append(w.output)
    os.chdir(w.output)
    return ["merge", *w.flags(), "-o", ".", "--overwrite"]


def overwrite_a_parent_of_the_current_directory(w: World) -> list[str]:
    argv = overwrite_the_current_directory(w)
    (w.output / "sub").mkdir()
    os.chdir(w.output / "sub")
    return [*argv[:-3], "-o", str(w.output), "--overwrite"]


def overwrite_a_soup_that_is_an_ingredient(w: World) -> list[str]:
    (w.ingredients[1] / "soup_report.json").write_text("{}")
    return ["merge", *w.flags(), "-o", str(w.ingredients[1]), "--overwrite"]


def token_with_newline(w: World) -> list[str]:
    return ["merge", *w.flags(), "-o", str(w.output), "--token", SECRET + "\n"]


def token_with_space(w: World) -> list[str]:
    return ["inspect", "org/model", "--token", "Bearer " + SECRET]


def token_non_ascii_on_push(w: World) -> list[str]:
    return ["push", str(w.ingredients[0]), "me/soup", "--token", SECRET + "é"]


def _bad_header(header) -> Callable[[World], list[str]]:
    def build(w: World) -> list[str]:
        data = b"\0" * 64
        _raw_safetensors(w.ingredients[1] / "model.safetensors", header, data)
        return ["merge", *w.flags(), "-o", str(w.output)]

    return build


def _overflow(w: World) -> list[str]:
    import numpy as np

    for n, path in enumerate(w.ingredients):
        _save(path / "model.safetensors", {"w": np.full(4, 60000.0 + 20000 * n, dtype=np.float32)})
    return ["merge", *w.flags(), "-o", str(w.output), "--dtype", "float16"]


def _nan(w: World) -> list[str]:
    import numpy as np

    values = np.ones(6, dtype=np.float32)
    _save(w.ingredients[0] / "model.safetensors", {"w": values})
    values[[1, 4]] = [np.nan, np.inf]
    _save(w.ingredients[1] / "model.safetensors", {"w": values})
    return ["merge", *w.flags(), "-o", str(w.output)]


def file_size_limit(w: World) -> list[str]:
    return ["merge", *w.flags(), "-o", str(w.output)]


def evaluate_without_tokenizer(w: World) -> list[str]:
    data = w.tmp / "val.csv"
    data.write_text("text\nhello world\n")
    w.extra_inputs.append(data)
    return ["evaluate", *map(str, w.ingredients), "--eval-dataset", str(data)]


@dataclass
class Case:
    name: str
    build: Callable[[World], list[str]]
    code: int
    error: str
    arch: str = "llama"
    in_subprocess: bool = False  # loads transformers, whose loggers keep the stderr of the first test


CASES = [
    # 1. confinement
    Case("index maps a shard to ../", index_to_parent, 1, "leaves the checkpoint folder"),
    Case("index maps a shard to an absolute path", index_to_absolute, 1, "names the absolute path"),
    Case("inspect of an index that leaves the folder", inspect_index_to_parent, 1, "leaves the checkpoint folder"),
    Case("sidecar is a symlink out of the folder", sidecar_symlink, 1, "outside the ingredient folder"),
    Case("weights are a symlink out of the folder", weights_symlink, 1, "outside the ingredient folder"),
    # 2. --overwrite
    Case("--overwrite of a folder that is no soup", overwrite_a_folder_that_is_no_soup, 1, "holds no soup"),
    Case("--overwrite of the current directory", overwrite_the_current_directory, 1, "is the current directory"),
    Case("--overwrite of a parent of the current directory", overwrite_a_parent_of_the_current_directory, 1,
         "current directory or holds it"),
    Case("--overwrite of a soup that is an ingredient", overwrite_a_soup_that_is_an_ingredient, 2,
         "which this soup reads"),
    # 3. tokens
    Case("token with a trailing newline", token_with_newline, 2, "line break"),
    Case("token with a space", token_with_space, 2, "whitespace"),
    Case("token with a non-ASCII character (push)", token_non_ascii_on_push, 2, "non-ASCII"),
    # 6. malformed headers
    Case("header is a list", _bad_header([1, 2]), 1, "a list, not a mapping"),
    Case("header nested 100000 deep", _bad_header(b"[" * 100000 + b"]" * 100000), 1, "nested too deeply"),
    Case("header lacks data_offsets", _bad_header({"w": {"dtype": "F32", "shape": [2]}}), 1, "lacks data_offsets"),
    Case("header offsets overlap", _bad_header({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                                "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}),
         1, "overlap"),
    Case("header offsets out of order", _bad_header({"a": {"dtype": "F32", "shape": [0], "data_offsets": [16, 8]}}),
         1, "out of order"),
    Case("header shape is negative", _bad_header({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}),
         1, "not a list of non-negative integers"),
    Case("header metadata is not strings", _bad_header({"__metadata__": {"a": 1}}), 1, "__metadata__"),
    Case("header dtype unknown", _bad_header({"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}),
         1, "unsupported dtype"),
    Case("evaluate a GPT-2 folder without tokenizer files", evaluate_without_tokenizer, 1, "no tokenizer files",
         arch="gpt2", in_subprocess=True),
    # 4. non-finite values
    Case("NaN and Inf in an ingredient", _nan, 1, "2 non-finite value(s) (NaN or Inf) in tensor 'w'"),
    Case("values overflow float16", _overflow, 1, "overflow float16"),
]


@pytest.mark.parametrize("build, entry", [(_nan, ("inputs", {"w": 2})), (_overflow, ("overflow", {"w": 4}))])
def test_allow_nonfinite_merges_and_the_report_counts(build, entry, make_ingredients, tmp_path):
    world = _world(tmp_path, make_ingredients)
    argv = build(world)
    assert main([*argv, "--allow-nonfinite"]) == 0
    counts = json.loads((world.output / "soup_report.json").read_text())["output"]["nonfinite"]
    assert counts["allowed"] is True and counts["total"] == sum(entry[1].values())
    found = counts[entry[0]]
    assert (found[str(world.ingredients[1])] if entry[0] == "inputs" else found) == entry[1]
    recipe = tmp_path / "recipe.yaml"  # the recipe key does the same
    recipe.write_text(f"allow_nonfinite: true\ningredients: {json.dumps([str(p) for p in world.ingredients])}\n")
    assert main(["merge", str(recipe), "-o", str(tmp_path / "again")]) == 0


def test_clean_soups_report_zero_nonfinite(make_ingredients, tmp_path):
    world = _world(tmp_path, make_ingredients)
    assert main(["merge", *world.flags(), "-o", str(world.output), "--dtype", "bfloat16"]) == 0
    counts = json.loads((world.output / "soup_report.json").read_text())["output"]["nonfinite"]
    assert counts == {"allowed": False, "inputs": {}, "overflow": {}, "total": 0}


def _left_behind(tmp: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if ".hf-soup-" in p.name)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_is_one_clean_line_and_changes_nothing(case, make_ingredients, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: a request would fail loudly
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    world = World(tmp_path, make_ingredients(case.arch, 2), tmp_path / "out" / "soup", [])
    argv = case.build(world)
    if "--token" not in argv:  # a valid token too: no failing command may show or write it
        argv = [*argv, "--token", SECRET]
    inputs = [*world.ingredients, *world.extra_inputs]
    before = {str(p): tree_digest(p) if p.is_dir() else p.read_bytes() for p in inputs}
    output_existed = world.output.exists()
    import logging

    monkeypatch.setattr(logging.root, "handlers", [])  # basicConfig binds to this test's captured stderr

    if case.in_subprocess:
        result = subprocess.run([sys.executable, "-m", "hf_soup", *argv], env=dict(os.environ, PYTHONPATH=str(REPO)),
                                capture_output=True, text=True, timeout=600)
        code, out, err = result.returncode, result.stdout, result.stderr
    else:
        code = main(argv)
        out, err = capsys.readouterr()
    assert code == case.code, err
    assert case.error in err, err
    lines = [line for line in err.splitlines() if line.startswith("hf-soup:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert SECRET not in out + err
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink() and SECRET.encode() in p.read_bytes()]
    assert {str(p): tree_digest(p) if p.is_dir() else p.read_bytes() for p in inputs} == before
    assert output_existed or not world.output.exists()
    assert _left_behind(tmp_path) == []


# -- hard stops: real processes, real signals ---------------------------------------------------------
_BLOCKING_CHILD = """
import sys, time
from pathlib import Path
import hf_soup.output.files as output
def blocked(*args, **kwargs):  # the shards are in the staging folder: wait here for the signal
    Path(sys.argv[1]).write_text("ready")
    time.sleep(120)
output.write_index = blocked
from hf_soup.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _start_blocked_merge(paths: list[Path], tmp_path: Path, output: Path) -> subprocess.Popen:
    ready = tmp_path / "ready"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    flags = [arg for path in paths for arg in ("-m", str(path))]
    child = subprocess.Popen([sys.executable, "-c", _BLOCKING_CHILD, str(ready), "merge", *flags, "-o", str(output)],
                             env=env, stderr=subprocess.PIPE, text=True)
    for _ in range(900):
        if ready.exists() or child.poll() is not None:
            break
        time.sleep(0.1)
    assert ready.exists(), "the merge never reached the shard index: " + (child.stderr.read() if child.poll() else "")
    return child


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_mid_merge_leave_nothing(stop, make_ingredients, tmp_path):
    paths = make_ingredients("bert", 2)
    before = {p: tree_digest(p) for p in paths}
    child = _start_blocked_merge(paths, tmp_path, tmp_path / "out" / "soup")
    try:
        assert len(list((tmp_path / "out").glob(f".soup.hf-soup-*-{child.pid}-*"))) == 1, "staging names its owner"
        child.send_signal(stop)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == (143 if stop == signal.SIGTERM else 130), err
    assert ("terminated" if stop == signal.SIGTERM else "interrupted") in err and "Traceback" not in err
    assert list((tmp_path / "out").iterdir()) == []
    assert {p: tree_digest(p) for p in paths} == before


def test_sigkill_leftovers_are_swept_by_the_next_run(make_ingredients, tmp_path, caplog):
    paths = make_ingredients("bert", 2)
    output = tmp_path / "out" / "soup"
    child = _start_blocked_merge(paths, tmp_path, output)
    child.kill()  # SIGKILL: no handler runs
    child.communicate(timeout=60)
    left = list((tmp_path / "out").glob(".soup.hf-soup-*"))
    assert len(left) == 1 and any(left[0].iterdir()), "a killed run leaves its staging folder"
    alive = tmp_path / "out" / f".soup.hf-soup-{os.uname().nodename}-{os.getpid()}-abcdefgh"
    alive.mkdir()  # a live process's staging folder (this one's) is never touched
    with caplog.at_level("WARNING", logger="hf_soup"):
        assert main(["merge", *[a for p in paths for a in ("-m", str(p))], "-o", str(output)]) == 0
    assert f"removed {left[0]}" in caplog.text and "killed" in caplog.text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([alive.name, "soup"])


def _merge_in_child(paths, output, limit) -> subprocess.CompletedProcess:
    """``hf-soup merge`` of ``paths`` into ``output`` in a child process that calls ``limit()`` first."""
    flags = [arg for path in paths for arg in ("-m", str(path))]
    return subprocess.run([sys.executable, "-m", "hf_soup", "merge", *flags, "-o", str(output)],
                          env=dict(os.environ, PYTHONPATH=str(REPO)), preexec_fn=limit, capture_output=True,
                          text=True, timeout=300)


def test_file_size_limit_mid_write_is_one_clean_line(make_ingredients, tmp_path):
    """A write that fails for lack of room (here the process's file size limit: EFBIG) leaves nothing."""
    import resource

    paths = make_ingredients("llama", 2)
    before = {p: tree_digest(p) for p in paths}

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    result = _merge_in_child(paths, tmp_path / "out" / "soup", limit)
    assert result.returncode == 1, result.stderr
    assert "hf-soup: error: File too large" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    assert {p: tree_digest(p) for p in paths} == before


def test_too_many_open_files_is_one_clean_line(make_ingredients, tmp_path):
    import resource

    import hf_soup

    paths = []
    for n, path in enumerate(make_ingredients("llama", 2)):  # re-shard each ingredient into many files
        paths.append(hf_soup.soup([path], output_dir=tmp_path / f"sharded-{n}", max_shard_size="1KB").output_dir)
    assert len(list(paths[0].glob("*.safetensors"))) > 15

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))

    result = _merge_in_child(paths, tmp_path / "out" / "soup", limit)
    assert result.returncode == 1, result.stderr
    assert "hf-soup: error: Too many open files" in result.stderr and "ulimit -n" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


_TORCHRUN_CHILD = """
import os, sys, time
from pathlib import Path
Path(sys.argv[1], "pid-" + os.environ["RANK"]).write_text(str(os.getpid()))
import hf_soup.output.files as output
def blocked(*args, **kwargs):  # process 0, shards written: wait here to be stopped
    Path(sys.argv[1], "ready").write_text("ready")
    time.sleep(120)
output.write_index = blocked
from hf_soup.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_killed_torchrun_rank_leaves_nothing_behind(make_ingredients, tmp_path):
    """SIGKILL of process 1: torchrun stops process 0 with SIGTERM, which removes the staging folder."""
    paths = make_ingredients("bert", 2)
    before = {p: tree_digest(p) for p in paths}
    script, state = tmp_path / "child.py", tmp_path / "state"
    script.write_text(_TORCHRUN_CHILD)
    state.mkdir()
    flags = [arg for path in paths for arg in ("-m", str(path))]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               str(state), "merge", *flags, "-o", str(tmp_path / "out" / "soup"), "--device", "cpu", "--quiet",
               "--max-shard-size", "20KB"]
    launcher = subprocess.Popen(command, env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1800):
            if (state / "ready").exists() or launcher.poll() is not None:
                break
            time.sleep(0.1)
        assert (state / "ready").exists(), launcher.communicate(timeout=60)[1][-3000:]
        assert list((tmp_path / "out").glob(".soup.hf-soup-*")), "expected a staging folder mid-merge"
        os.kill(int((state / "pid-1").read_text()), signal.SIGKILL)
        _, err = launcher.communicate(timeout=180)
    finally:
        launcher.kill()
    assert launcher.returncode != 0
    assert list((tmp_path / "out").iterdir()) == [], err[-3000:]
    assert {p: tree_digest(p) for p in paths} == before
