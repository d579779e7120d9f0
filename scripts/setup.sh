#!/usr/bin/env bash
# Sets up everything on a fresh machine: a virtual environment in .venv, the pinned dependencies
# (torch from this machine's local wheels), the project in editable mode, and the generated gRPC code.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/free_space.sh
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.shortlist-deps
want=$(cat requirements.txt requirements-train.txt requirements-dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # torch 2.14.1 with torchvision 0.29.1 is a CUDA build: the environment takes about 6.2 GB. Say so
  # before pip fails halfway with a bare "No space left on device".
  need_free_space 6656 "setup: .venv needs about 6.5 GB free here; {free} MB are free on {mount}." \
    "setup: free some space (pip's cache: ~/.cache/pip) and run again." || exit 1  # 6656 MiB: 6.5 GB
  # --no-cache-dir: a wheel fetched from the registry is not kept a second time in ~/.cache/pip.
  export PIP_NO_CACHE_DIR=1
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements-dev.txt
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
  echo "$want" > "$stamp"
fi
.venv/bin/python scripts/gen_protos.py
