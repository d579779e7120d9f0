#!/usr/bin/env bash
# Sets up everything on a fresh machine: a virtual environment in .venv, the pinned dependencies
# (torch from this machine's local wheels), the project in editable mode, and the generated gRPC code.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.shortlist-deps
want=$(cat requirements.txt requirements-train.txt requirements-dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements-dev.txt
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
  echo "$want" > "$stamp"
fi
.venv/bin/python scripts/gen_protos.py
