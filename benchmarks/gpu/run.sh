#!/usr/bin/env bash
# One prepared run on a machine with an NVIDIA GPU and no network: GPU byte-identity checks,
# the scale benchmark on cuda and cpu, then the test suite. Every step is time-boxed and
# writes its output under OUT as it goes.
#
#   bash benchmarks/gpu/run.sh [OUT]        # OUT defaults to $OUT, else ./gpu-results
#   HF_SOUP_GPU_STEPS="identity bench" bash benchmarks/gpu/run.sh   # a subset of the steps
#
# Packages the image lacks travel as wheels in .whl/ (git-ignored; fill it with
# benchmarks/gpu/fetch_wheels.sh on a machine with network) and are installed with --no-deps
# into a private folder put first on PYTHONPATH. Without a GPU the GPU parts are skipped.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-${OUT:-$PWD/gpu-results}}"
mkdir -p "$OUT"
STEPS="${HF_SOUP_GPU_STEPS:-env identity bench suite}"
SITE="${HF_SOUP_GPU_SITE:-/tmp/hf-soup-site}"
LOG="$OUT/run.log"
PY="${PYTHON:-python3}"

step() {  # step NAME SECONDS COMMAND...: run COMMAND under a time limit, output into OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
    echo "== $name (limit ${limit}s) start $(date +%T)" | tee -a "$LOG"
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.txt" 2>&1
    echo "   $name rc=$? end $(date +%T)" | tee -a "$LOG"
    tail -n 25 "$OUT/$name.txt" >>"$LOG"
}

if compgen -G ".whl/*.whl" >/dev/null; then  # only what the image lacks, never shadowing its own versions
    "$PY" benchmarks/gpu/install_missing.py .whl "$SITE" >>"$LOG" 2>&1
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$SITE/bin:$PATH"
export HF_SOUP_BENCH_CACHE="${HF_SOUP_BENCH_CACHE:-/tmp/hf-soup-bench}"
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    DEVICE=cuda
else
    DEVICE=cpu
fi
echo "device: $DEVICE" | tee -a "$LOG"

step env 60 bash -c "nvidia-smi || true; nproc; free -g; $PY -c 'import torch, transformers, huggingface_hub, accelerate, safetensors, numpy, pydantic; print(\"torch\", torch.__version__, \"cuda\", torch.cuda.is_available(), \"transformers\", transformers.__version__, \"hub\", huggingface_hub.__version__, \"accelerate\", accelerate.__version__, \"safetensors\", safetensors.__version__, \"numpy\", numpy.__version__, \"pydantic\", pydantic.__version__)'"
step identity 90 "$PY" -m pytest -q -p no:cacheprovider tests/engine/
step bench "${HF_SOUP_GPU_BENCH_SECONDS:-240}" "$PY" benchmarks/bench_scale.py --device "$DEVICE" --runs 1 \
    --layers "${HF_SOUP_GPU_LAYERS:-22}" --json "$OUT/bench_scale.json" --skip "mergekit linear cuda"
# opt-in (HF_SOUP_GPU_STEPS="eval_overhead"): issue 14's target, greedy over 8 BERT-base classifiers, 2,400 rows
step eval_overhead "${HF_SOUP_GPU_EVAL_SECONDS:-300}" "$PY" benchmarks/bench_eval_overhead.py --device "$DEVICE" \
    --hidden 768 --layers 12 --rows 2400 --batch-size 256 --threads "$(nproc)"
# opt-in (HF_SOUP_GPU_STEPS="taskvec"): issue 18's targets, TIES / DARE-TIES / Model Stock vs uniform at the
# 1.1 B shape (HF_SOUP_GPU_LAYERS), CPU, without MergeKit; peak RSS, CPU seconds and wall per method
step taskvec "${HF_SOUP_GPU_TASKVEC_SECONDS:-400}" "$PY" benchmarks/bench_taskvec.py --runs 1 --mergekit "" \
    --layers "${HF_SOUP_GPU_LAYERS:-22}" --methods ties dare_ties model_stock
XDIST=""
if "$PY" -c "import xdist" 2>/dev/null; then XDIST="-n $(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))"; fi
if "$PY" -c "import pytest_timeout" 2>/dev/null; then XDIST="$XDIST --timeout 150"; fi
step suite "${HF_SOUP_GPU_SUITE_SECONDS:-150}" "$PY" -m pytest -q -p no:cacheprovider $XDIST
echo "done $(date +%T)" | tee -a "$LOG"
