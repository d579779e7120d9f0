#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up, then lint (ruff), type-check (mypy), test (pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
