#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv. Idempotent: a second run only
# checks a stamp and returns in about a second unless pyproject.toml (or TORCH_CUDA) changed.
#
# TORCH_CUDA picks the PyTorch build (README "Installation" gives each one's driver floor):
#   unset        the PyPI wheel (CUDA 13 builds: NVIDIA driver branch R580 or newer)
#   cu126, cu128 a CUDA 12.x build from PyTorch's own wheel index (R535 / R570 drivers, CUDA 12.x)
#   cpu          a CPU-only build (no GPU jobs)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp=.venv/.setup-stamp
TORCH_CUDA=${TORCH_CUDA:-}
case "$TORCH_CUDA" in
    "" | cpu | cu1[0-9][0-9]) ;;
    *) echo "medpipe setup: TORCH_CUDA=$TORCH_CUDA is not a PyTorch build name (cu126, cu128, cpu or unset)" >&2
       exit 2 ;;
esac
want=$({ cat pyproject.toml tests/requirements-microsam.txt; echo "torch:$TORCH_CUDA"; } | sha256sum | cut -d' ' -f1)

if [ ! -x .venv/bin/python ]; then
    echo "medpipe setup: creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "medpipe setup: installing medpipe and its dependencies (first run: several minutes)"
    : > .venv/setup.log
    if [ -n "$TORCH_CUDA" ]; then
        # torch and torchvision first, from PyTorch's index for that build, within pyproject's pins;
        # the editable install below then keeps them (they satisfy its requirements)
        pins=$(.venv/bin/python - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(d for d in deps if re.match(r"(torch|torchvision)\b", d)))
PY
)
        echo "medpipe setup: torch from https://download.pytorch.org/whl/$TORCH_CUDA ($pins)"
        # shellcheck disable=SC2086
        if ! .venv/bin/python -m pip install --disable-pip-version-check \
                --index-url "https://download.pytorch.org/whl/$TORCH_CUDA" $pins > .venv/setup.log 2>&1; then
            tail -n 40 .venv/setup.log
            echo "medpipe setup: no torch build $TORCH_CUDA for $pins; full log in .venv/setup.log" >&2
            exit 1
        fi
    fi
    if ! .venv/bin/python -m pip install --disable-pip-version-check -e '.[test]' >> .venv/setup.log 2>&1; then
        tail -n 40 .venv/setup.log
        echo "medpipe setup: pip install failed; full log in .venv/setup.log" >&2
        exit 1
    fi
    # The SAM2 baseline: sam2 ships only as source; without its optional CUDA extension it is pure
    # Python, and building against the installed torch avoids a second torch download.
    if ! { .venv/bin/python -m pip install --disable-pip-version-check 'setuptools>=69' wheel &&
           SAM2_BUILD_CUDA=0 .venv/bin/python -m pip install --disable-pip-version-check --no-build-isolation \
               'sam2>=1.1,<2'; } >> .venv/setup.log 2>&1; then
        tail -n 40 .venv/setup.log
        echo "medpipe setup: installing sam2 failed; full log in .venv/setup.log" >&2
        exit 1
    fi
    # micro-sam for the cross-check tests and the compatibility table, without its dependencies: they
    # would replace our segment_anything (tests/requirements-microsam.txt says why).
    if ! .venv/bin/python -m pip install --disable-pip-version-check --no-deps -r tests/requirements-microsam.txt \
            >> .venv/setup.log 2>&1; then
        tail -n 40 .venv/setup.log
        echo "medpipe setup: installing micro-sam failed; full log in .venv/setup.log" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
else
    echo "medpipe setup: .venv is up to date"
fi
