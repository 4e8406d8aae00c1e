"""One merge across 2 CPU processes (gloo): same bytes as one process; a failure stops every process.

The multi-process runs are real launches (``torchrun``, or the same environment torchrun
sets, spawned directly where a test needs each process's own exit code).
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hf_soup.distributed import Dist, assign_shards, get_dist
from hub_fixtures import hub, local_hub, publish_model, repo_name  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 240
SHARD = "24KB"  # several output shards for tiny models, so both processes get work


@pytest.fixture(scope="module")
def ingredients(tmp_path_factory) -> list[str]:
    """Three tiny Llama checkpoints (different seeds), each saved in several shards."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("ingredients")
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=128, tie_word_embeddings=False)
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        path = root / f"run{seed}"
        LlamaForCausalLM(config).save_pretrained(path, max_shard_size="20KB")
        paths.append(str(path))
    return paths


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", HF_SOUP_DIST_TIMEOUT="90")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return {**env, **extra}


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "hf_soup", *args]
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(args: list[str], nproc: int = 2, file_size_limit: dict[int, int] | None = None,
           rank_env: dict[int, dict[str, str]] | None = None, module: bool = True) -> list[tuple[int, str, str]]:
    """Start ``nproc`` processes the way torchrun does; return each one's (exit code, stdout, stderr)."""
    port, limits = _free_port(), file_size_limit or {}
    processes = []
    for rank in range(nproc):
        env = _env(RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(nproc),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **(rank_env or {}).get(rank, {}))
        limit = limits.get(rank)
        setup = (lambda limit=limit: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))) if limit else None
        command = [sys.executable, "-m", "hf_soup", *args] if module else [sys.executable, *args]
        processes.append(subprocess.Popen(command, env=env, cwd=ROOT, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=setup))
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=TIMEOUT)
            results.append((process.returncode, out, err))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return results


def _single(args: list[str]) -> None:
    from hf_soup.cli import main

    assert main(args) == 0


def _merge_args(ingredients: list[str], output: Path, *extra: str) -> list[str]:
    return ["merge", *[a for path in ingredients for a in ("-m", path)], "-o", str(output),
            "--max-shard-size", SHARD, "--device", "cpu", "--quiet", *extra]


def _assert_same_soup(one: Path, two: Path) -> None:
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir())
    assert sum(name.endswith(".safetensors") for name in names) >= 3
    for name in names:
        if name == "soup_report.json":  # it holds timings
            continue
        if name == "README.md":  # the model card names the output directory
            card = (one / name).read_text().replace(str(one), str(two)).replace(f"\n# {one.name}\n", f"\n# {two.name}\n")
            assert card == (two / name).read_text()  # the heading is the folder's name too
            continue
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    reports = [json.loads((d / "soup_report.json").read_text()) for d in (one, two)]
    for report in reports:
        report.pop("timings")
        report.pop("card_sha256")  # the card names the output directory
        report["recipe"]["output"].pop("dir")
    distributed = reports[1].pop("distributed")
    assert reports[0] == reports[1]
    assert distributed["num_processes"] == 2
    written = [name for share in distributed["shards_per_process"] for name in share]
    assert sorted(written) == sorted(n for n in names if n.endswith(".safetensors"))
    assert all(distributed["shards_per_process"])  # both processes wrote shards


def _no_trace(directory: Path) -> None:
    assert not directory.exists()
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(f".{directory.name}.hf-soup")]


def test_shards_are_assigned_by_bytes_and_deterministically():
    sizes = [90, 10, 10, 10, 40, 40, 10]
    shares = assign_shards(sizes, 2)
    assert sorted(i for share in shares for i in share) == list(range(len(sizes)))
    loads = [sum(sizes[i] for i in share) for share in shares]
    assert loads == [100, 110] or loads == [110, 100]
    assert shares == assign_shards(sizes, 2)
    assert assign_shards([5], 3) == [[0], [], []]


def test_single_process_soups_alone_inside_a_launched_job(ingredients, tmp_path):
    # Process 0 soups alone (as a training callback does) while process 1 only waits at a barrier.
    code = ("import os, sys, torch.distributed as td\n"
            "from hf_soup.distributed import single_process\n"
            "from hf_soup.cli import main\n"
            "td.init_process_group('gloo')\n"
            "rc = 0\n"
            "if td.get_rank() == 0:\n"
            "    with single_process():\n"
            "        rc = main(sys.argv[1:])\n"
            "td.barrier()\n"
            "td.destroy_process_group()\n"
            "sys.exit(rc)\n")
    results = _spawn(["-c", code, *_merge_args(ingredients, tmp_path / "soup")], module=False)
    assert [c for c, _, _ in results] == [0, 0], results[0][2][-3000:] + results[1][2][-3000:]
    assert "distributed" not in json.loads((tmp_path / "soup" / "soup_report.json").read_text())


def test_a_single_process_merge_imports_neither_torch_nor_accelerate(ingredients, tmp_path):
    code = ("import sys; from hf_soup.cli import main; rc = main(sys.argv[1:]); "
            "assert rc == 0; assert 'torch' not in sys.modules and 'accelerate' not in sys.modules, 'imported'")
    args = _merge_args(ingredients, tmp_path / "soup")
    args[args.index("--device") + 1] = "auto"
    run = subprocess.run([sys.executable, "-c", code, *args], env=_env(CUDA_VISIBLE_DEVICES=""), cwd=ROOT,
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr
    assert isinstance(get_dist("cpu"), Dist) and get_dist("cpu").world_size == 1


def test_torchrun_uniform_soup_has_the_bytes_of_one_process(ingredients, tmp_path):
    _single(_merge_args(ingredients, tmp_path / "one"))
    run = _torchrun(_merge_args(ingredients, tmp_path / "two"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("Soup written to") == 1  # process 0 speaks for all
    _assert_same_soup(tmp_path / "one", tmp_path / "two")


METHODS = {
    "weighted": ["-p", "weights=[0.2,0.5,0.3]"],
    "ame": ["-p", "optimizer=adam", "-p", "lr=0.01", "-p", "epochs=2", "-p", "shuffle=true"],
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_processes_give_the_bytes_of_one_process(method, ingredients, tmp_path):
    from hf_soup.methods.registry import available_methods

    if method not in available_methods():
        pytest.skip(f"method {method} is not on this branch yet")
    extra = ["--method", method, *METHODS[method]]
    _single(_merge_args(ingredients, tmp_path / "one", *extra))
    results = _spawn(_merge_args(ingredients, tmp_path / "two", *extra))
    assert [code for code, _, _ in results] == [0, 0], results[0][2][-3000:] + results[1][2][-3000:]
    _assert_same_soup(tmp_path / "one", tmp_path / "two")


def test_a_failing_process_stops_every_process_and_leaves_nothing(ingredients, tmp_path):
    # Process 1 may write only 4 KB (RLIMIT_FSIZE): its first shard fails with EFBIG.
    results = _spawn(_merge_args(ingredients, tmp_path / "soup"), file_size_limit={1: 4096})
    codes = [code for code, _, _ in results]
    assert all(code != 0 for code in codes), codes
    assert "File too large" in results[1][2]
    assert "process 1 of 2 failed (merging its shards): OSError" in results[0][2]
    assert "Soup written" not in results[0][1] + results[1][1]
    _no_trace(tmp_path / "soup")


def test_an_unreadable_ingredient_shard_fails_every_process_under_torchrun(ingredients, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(ingredients[1], broken)
    shard = sorted(broken.glob("model-*.safetensors"))[2]
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated download
    run = _torchrun(_merge_args([ingredients[0], str(broken), ingredients[2]], tmp_path / "soup"))
    assert run.returncode != 0
    assert run.stderr.count("hf-soup: error:") == 2 and "truncated" in run.stderr
    _no_trace(tmp_path / "soup")


def test_device_cuda_without_a_gpu_fails_before_any_work(ingredients, tmp_path, capsys):
    from hf_soup.cli import main
    from hf_soup.engine.device import cuda_available

    if cuda_available():
        pytest.skip("a CUDA GPU is visible")
    args = _merge_args(ingredients, tmp_path / "soup")
    args[args.index("--device") + 1] = "cuda"
    assert main(args) == 2
    assert "device: cuda was asked for but no CUDA GPU is visible" in capsys.readouterr().err
    assert not (tmp_path / "soup").exists()


@pytest.fixture(scope="module")
def digit_classifiers(tmp_path_factory):
    """Three tiny BERT digit classifiers (the evaluation tests' fixture) and their validation file."""
    fixtures = pytest.importorskip("fixtures_classifiers", reason="the evaluation is not on this branch yet")
    root = tmp_path_factory.mktemp("digits")
    digits = fixtures.make_bert_ingredients(root, count=3, base_steps=150, steps=15)
    validation = root / "validation.parquet"
    digits.validation.to_parquet(str(validation))
    return digits.dirs, validation


@pytest.mark.parametrize("method", [["greedy"], ["radin", "-p", "budget=2"]], ids=["greedy", "radin"])
def test_two_processes_data_driven_soups_have_the_metrics_and_bytes_of_one_process(method, digit_classifiers, tmp_path):
    dirs, validation = digit_classifiers
    # 240 rows in batches of 50: 5 batches, so the two processes get 3 and 2 (+ padding) batches;
    # --compare adds the uniform and greedy soups and the logit ensembles (cached logits).
    extra = ["--method", *method, "--compare", "--eval-dataset", str(validation), "-e", "batch_size=50"]
    _single(_merge_args([str(d) for d in dirs], tmp_path / "one", *extra))
    results = _spawn(_merge_args([str(d) for d in dirs], tmp_path / "two", *extra))
    assert [code for code, _, _ in results] == [0, 0], results[0][2][-3000:] + results[1][2][-3000:]
    one, two = (json.loads((tmp_path / d / "soup_report.json").read_text()) for d in ("one", "two"))
    assert one["score"] == two["score"] and one["details"]["scores"] == two["details"]["scores"]
    assert one["num_full_evaluations"] == two["num_full_evaluations"] >= 2 * len(dirs) - 1
    # the comparison: uniform soup, logit ensembles from cached logits, greedy soup
    assert one["comparison"]["rows"] == two["comparison"]["rows"]
    names = " | ".join(row["name"] for row in one["comparison"]["rows"])
    assert "greedy soup" in names and "logit ensemble" in names and "uniform soup" in names
    assert [row["kept"] for row in one["ingredients"]] == [row["kept"] for row in two["ingredients"]]
    for shard in (tmp_path / "one").glob("*.safetensors"):
        assert shard.read_bytes() == (tmp_path / "two" / shard.name).read_bytes()
    # each ingredient's logit pass ran once in all, on one process (round-robin), not on both
    assert two["distributed"]["logit_passes_per_process"] == [[0, 2], [1]]
    assert one["details"].get("num_logit_passes") == two["details"].get("num_logit_passes")


def test_shared_logit_passes_give_one_process_losses_and_bytes(digit_classifiers, tmp_path):
    # RADIN scored by the loss: the cached logits of each ingredient must be one process's, bit for bit
    dirs, validation = digit_classifiers
    extra = ["--method", "radin", "-p", "budget=2", "-p", "include_singles=false", "--eval-dataset", str(validation),
             "-e", "batch_size=50", "-e", "metric=loss"]
    run = _torchrun(_merge_args([str(d) for d in dirs], tmp_path / "one", *extra), nproc=1)
    assert run.returncode == 0, run.stderr[-3000:]
    results = _spawn(_merge_args([str(d) for d in dirs], tmp_path / "two", *extra))
    assert [code for code, _, _ in results] == [0, 0], results[0][2][-3000:] + results[1][2][-3000:]
    one, two = (json.loads((tmp_path / d / "soup_report.json").read_text()) for d in ("one", "two"))
    assert one["details"]["scores"] == two["details"]["scores"]
    assert one["details"]["evaluated_candidates"] == two["details"]["evaluated_candidates"]
    assert one["details"]["num_logit_passes"] == two["details"]["num_logit_passes"] == len(dirs)
    assert two["distributed"]["logit_passes_per_process"] == [[0, 2], [1]]
    for shard in (tmp_path / "one").glob("*.safetensors"):
        assert shard.read_bytes() == (tmp_path / "two" / shard.name).read_bytes()


def test_a_process_whose_logit_pass_fails_stops_both_and_nothing_is_written(digit_classifiers, tmp_path):
    dirs, validation = digit_classifiers
    code = ("import os, sys\n"
            "from hf_soup.evaluation import logit_cache\n"
            "def full_disk(self, logits, labels):\n"
            "    raise OSError(28, 'No space left on device')\n"
            "if os.environ['RANK'] == '1':\n"
            "    logit_cache._RowWriter.__call__ = full_disk\n"
            "from hf_soup.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    extra = ["--method", "radin", "-p", "budget=2", "--eval-dataset", str(validation), "-e", "batch_size=50"]
    results = _spawn(["-c", code, *_merge_args([str(d) for d in dirs], tmp_path / "soup", *extra)], module=False)
    (code0, _, err0), (code1, _, err1) = results
    assert code0 != 0 and code1 != 0
    assert "No space left on device" in err1
    assert "process 1 of 2 failed (computing its ingredients' logits): OSError" in err0, err0[-3000:]
    assert "Traceback" not in err0 + err1
    _no_trace(tmp_path / "soup")


def test_a_process_whose_evaluation_batch_fails_stops_both_and_nothing_is_written(digit_classifiers, tmp_path):
    # process 1's model fails on its 5th batch, in the middle of a data-parallel greedy evaluation
    dirs, validation = digit_classifiers
    code = ("import os, sys\n"
            "from hf_soup.evaluation import evaluator\n"
            "build = evaluator.build_task_model\n"
            "def flaky_model(*args, **kwargs):\n"
            "    model, calls = build(*args, **kwargs), [0]\n"
            "    forward = model.forward\n"
            "    def fail_fifth(*a, **k):\n"
            "        calls[0] += 1\n"
            "        if calls[0] == 5:\n"
            "            raise RuntimeError('CUDA out of memory (simulated)')\n"
            "        return forward(*a, **k)\n"
            "    if os.environ['RANK'] == '1':\n"
            "        model.forward = fail_fifth\n"
            "    return model\n"
            "evaluator.build_task_model = flaky_model\n"
            "from hf_soup.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    extra = ["--method", "greedy", "--eval-dataset", str(validation), "-e", "batch_size=50"]
    results = _spawn(["-c", code, *_merge_args([str(d) for d in dirs], tmp_path / "soup", *extra)], module=False)
    (code0, _, err0), (code1, _, err1) = results
    assert code0 != 0 and code1 != 0
    assert "CUDA out of memory (simulated)" in err1
    assert "process 1 of 2 failed (evaluating its batch): RuntimeError: CUDA out of memory (simulated)" in err0, err0[-3000:]
    assert "Traceback" not in err0 + err1 and "collective mismatch" not in err0 + err1
    _no_trace(tmp_path / "soup")


def test_the_main_process_downloads_and_the_other_reads_its_cache(hub, publish_model, tmp_path):
    # Process 1 is offline: it can only succeed if process 0 filled the cache before it resolved.
    published = [publish_model(seed) for seed in range(2)]
    refs = [repo for repo, _ in published]
    args = ["merge", "-m", refs[0], "-m", refs[1], "-o", str(tmp_path / "soup"), "--max-shard-size", "8KB",
            "--device", "cpu", "--quiet"]
    results = _spawn(args, rank_env={1: {"HF_HUB_OFFLINE": "1"}})
    assert [code for code, _, _ in results] == [0, 0], results[0][2][-3000:] + results[1][2][-3000:]
    report = json.loads((tmp_path / "soup" / "soup_report.json").read_text())
    assert [row["sha"] for row in report["ingredients"]] == [sha for _, sha in published]
    assert all(report["distributed"]["shards_per_process"])


def test_a_card_failure_on_process_0_keeps_the_old_soup_and_stops_both(ingredients, tmp_path):
    from conftest import tree_digest

    output = tmp_path / "soup"
    _single(_merge_args(ingredients[:2], output))
    before = tree_digest(output)
    template = tmp_path / "broken.md"
    # valid Jinja (a syntax error is refused before any work), failing only when process 0 renders it
    template.write_text("---\n{{ card_data }}\n---\n{{ no_such_variable.attribute }}\n")

    results = _spawn(_merge_args(ingredients, output, "--overwrite", "--card-template", str(template)))

    codes = [code for code, _, _ in results]
    assert all(code != 0 for code in codes), codes
    assert "UndefinedError" in results[0][2]
    assert "process 0 of 2 failed (writing the soup)" in results[1][2]
    assert tree_digest(output) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".soup.hf-soup")]


def test_a_bad_timeout_setting_is_refused_before_any_work(ingredients, tmp_path):
    results = _spawn(_merge_args(ingredients, tmp_path / "soup"),
                     rank_env={0: {"HF_SOUP_DIST_TIMEOUT": "ten"}, 1: {"HF_SOUP_DIST_TIMEOUT": "ten"}})
    for code, _, err in results:
        assert code != 0
        assert "hf-soup: error:" in err and "HF_SOUP_DIST_TIMEOUT='ten'" in err and "Traceback" not in err
    _no_trace(tmp_path / "soup")


def test_a_push_longer_than_the_timeout_does_not_fail_the_waiting_process(ingredients, tmp_path):
    # Process 0 pushes (here: a stand-in that takes longer than the collective timeout); process 1
    # must not sit in a collective waiting for it, or it times out and torchrun kills the push.
    code = ("import sys, time, hf_soup.output.push as hub\n"
            "def slow_push(output_dir, repo_id, **kwargs):\n"
            "    time.sleep(12)\n"
            "    return f'https://hub.example/{repo_id}/commit/1'\n"
            "hub.push_soup = slow_push\n"
            "from hf_soup.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    args = _merge_args(ingredients, tmp_path / "soup", "--push-to-hub", "me/slow-soup")
    results = _spawn(["-c", code, *args], module=False,
                     rank_env={0: {"HF_SOUP_DIST_TIMEOUT": "6"}, 1: {"HF_SOUP_DIST_TIMEOUT": "6"}})
    assert [c for c, _, _ in results] == [0, 0], results[0][2][-3000:] + results[1][2][-3000:]
    assert "me/slow-soup/commit/1" in results[0][1]


def test_a_process_that_dies_gives_the_other_a_clear_error_and_leaves_nothing(ingredients, tmp_path):
    code = ("import os, sys, hf_soup.output.files as output\n"
            "def die(*args, **kwargs):\n"
            "    os._exit(3)  # killed mid-merge (out of memory, a node lost)\n"
            "if os.environ['RANK'] == '1':\n"
            "    output.write_shards = die\n"
            "from hf_soup.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    results = _spawn(["-c", code, *_merge_args(ingredients, tmp_path / "soup")], module=False)
    (code0, _, err0), (code1, _, _) = results
    assert code1 == 3 and code0 == 1, err0[-3000:]
    assert "hf-soup: error:" in err0 and "another process stopped" in err0 and "Traceback" not in err0
    _no_trace(tmp_path / "soup")


def test_hf_soup_distributed_0_gives_one_process_inside_a_launch(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("HF_SOUP_DISTRIBUTED", "0")
    dist = get_dist("cpu")
    assert type(dist) is Dist and (dist.rank, dist.world_size, dist.device) == (0, 1, "cpu")
