#!/usr/bin/env bash
# Download (on a machine with network) the wheels that benchmarks/gpu/run.sh installs on a GPU
# image lacking them (Python 3.12, x86-64; see docs/benchmarks.md). They go into .whl/ (git-ignored);
# run.sh installs only the distributions the image does not have.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
for pkg in datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 pydantic==2.14.4 pydantic_core==2.50.5 \
           annotated-types==0.8.0 typing-inspection==0.4.5 mergekit==0.1.5 immutables==0.21 click==8.5.1 \
           sentencepiece==0.2.3 hypothesis==6.170.27 sortedcontainers==2.4.0 pytest-timeout; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$pkg"
done
# the local Hub of the tests (olah) with its dependencies: run.sh installs only those the image lacks
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl olah==0.5.4
