#!/usr/bin/env bash
# LMQL 0.7.3 and the packages it needs that the GPU machine lacks, as wheels for that machine's
# Python (3.12, x86-64), into .whl/ (git-ignored) of the checkout that the device tool sends: run
# it here, where pip reaches the registry, then pass carry [".whl"] to the run (see workloads.py).
# torch, transformers, accelerate, aiohttp and tiktoken are already on the GPU machine.
set -eu
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl lmql==0.7.3 openai==3.57.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
    typing-inspection==0.4.5 jiter==0.19.0 distro==1.9.0 sniffio==1.3.1 astunparse==1.6.3 termcolor==3.3.0
ls .whl
