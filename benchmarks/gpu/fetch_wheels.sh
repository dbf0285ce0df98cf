#!/usr/bin/env bash
# Download the wheels of benchmarks/gpu/wheels.txt into .whl/ (git-ignored through .git/info/exclude)
# for the GPU machine's Python 3.12, which has no package registry. Run from the repository root.
set -euo pipefail
grep -qxF /.whl/ .git/info/exclude 2>/dev/null || echo /.whl/ >> "$(git rev-parse --git-path info/exclude)"
mkdir -p .whl
grep -v '^#' benchmarks/gpu/wheels.txt | while read -r req; do
  [ -n "$req" ] || continue
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 -d .whl "$req"
done
ls -la .whl
