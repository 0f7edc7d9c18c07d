#!/usr/bin/env bash
# The GPU check in one call on a lent GPU machine (PyTorch there, no network, no Ray).
#
#   bash bench/gpu_check.sh prepare   # here: the wheels the machine lacks, into .whl/ (ignored)
#   bash bench/gpu_check.sh run       # there, from the repository root: install them and lrtune
#                                     # (--no-deps) under /tmp/site, run the check into $OUT
#
# With the device tool: run(command="bash bench/gpu_check.sh run", carry=[".whl"],
# timeout_s=420); then, here, `.venv/bin/python -m bench.gpu_check --report
# <files_at>/gpu_check.json --write` records the section "GPU check" of bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

# What lrtune's training code imports that the machine's image lacks, at the versions installed
# here (the venv's), for its Python 3.12.
MISSING=(pydantic pydantic-core annotated-types typing-inspection schedulefree mnist1d)

case "${1:-}" in
prepare)
    rm -rf .whl && mkdir -p .whl
    for name in "${MISSING[@]}"; do
        version=$(.venv/bin/python -m pip show "$name" | awk '/^Version:/ {print $2}')
        python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 -d .whl "$name==$version"
    done
    ls -la .whl
    ;;
run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    # lrtune itself, its dependencies left out (Ray, FastAPI and the rest are not needed here).
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
        --target /tmp/site .
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    python3 -m bench.gpu_check --device cuda --out "${OUT:-.}/gpu_check.json"
    ;;
*)
    echo "usage: bash bench/gpu_check.sh prepare|run" >&2
    exit 2
    ;;
esac
