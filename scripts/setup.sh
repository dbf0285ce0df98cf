#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv. Idempotent: a second run only
# checks a stamp and returns in about a second unless pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp=.venv/.setup-stamp
want=$(cat pyproject.toml tests/requirements-microsam.txt | sha256sum | cut -d' ' -f1)

if [ ! -x .venv/bin/python ]; then
    echo "medpipe setup: creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "medpipe setup: installing medpipe and its dependencies (first run: several minutes)"
    if ! .venv/bin/python -m pip install --disable-pip-version-check -e '.[test]' > .venv/setup.log 2>&1; then
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
