#!/usr/bin/env bash
# llguidance (issue 31's constraint engine: one abi3 wheel, no dependencies) for the GPU machine,
# which has no registry (the version tested here; its wheel needs glibc 2.31): into .whl/ (git-ignored); pass carry [".whl"] to the run and install it
# there with `python3 -m pip install --no-deps .whl/llguidance-*.whl` (see constraints_gpu.py).
set -eu
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_31_x86_64 -d .whl llguidance==1.9.1
ls -la .whl/llguidance-*
