#!/usr/bin/env bash
# Creates .venv and installs meshd with its dev extra. Idempotent: a venv whose
# stamp matches pyproject.toml is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
stamp=.venv/.meshd-setup-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/meshd ]; then
    echo "setup: .venv is up to date"
    exit 0
fi

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "setup: meshd needs Python >= 3.11; set PYTHON=/path/to/python3.11 and run 'make setup' again" >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi
echo "setup: installing meshd and its dev tools into .venv (first run takes a minute)"
.venv/bin/python -m pip install --quiet --upgrade pip
# setuptools too: scripts/native.py builds the compiled modules with it, in place.
.venv/bin/python -m pip install --quiet 'setuptools>=77' wheel
# The editable install itself builds nothing (MESHD_NATIVE=0); make setup runs
# scripts/native.py next, which builds in place and again whenever a source changes.
MESHD_NATIVE=0 .venv/bin/python -m pip install --quiet -e '.[dev]'
echo "$want" > "$stamp"
echo "setup: done — tools are in .venv/bin"
