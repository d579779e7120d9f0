#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up, then lint (ruff), type-check (mypy), test (pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
# Fail early and plainly when the temporary folder's disk is nearly full (a CI run once died of ENOSPC mid-suite).
tmp="${TMPDIR:-/tmp}"
free_kb=$(df -Pk "$tmp" | awk 'NR==2 {print $4}')
if [ "$free_kb" -lt 1048576 ]; then
  echo "error: $tmp has $((free_kb / 1024)) MB free; the tests need about 1 GB there. Free space or set TMPDIR to a roomier folder." >&2
  exit 1
fi
.venv/bin/python -m pytest -q "$@"
