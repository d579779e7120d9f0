#!/usr/bin/env bash
# Label Studio for the end-to-end test tests/agent/web/test_labelstudio_live.py (.ci/run calls this):
# label-studio (pinned: the version docs/app.md was checked against) in its own virtual environment,
# .venv-labelstudio (its pins clash with .venv's), and in it a template data folder whose SQLite database
# is already migrated, which the test copies: a fresh Label Studio spends ~80 s in its migrations on a
# 2-core machine, a migrated one starts in ~7 s. About 1 GB, ~1 min to install. Idempotent: a second
# run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/free_space.sh
VERSION=1.23.2
VENV=${SHORTLIST_LABELSTUDIO_VENV:-.venv-labelstudio}
PY=${PYTHON:-python3}
stamp=$VENV/.shortlist-labelstudio
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$VERSION" ] && [ -f "$VENV/template/label_studio.sqlite3" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("label-studio"))' 2>/dev/null)" != "$VERSION" ]; then
  # 1300 MB: the environment takes about 1.0 GB
  need_free_space 1300 "labelstudio_setup: $VENV needs about 1.3 GB free here; {free} MB are free." || exit 1
  PIP_NO_CACHE_DIR=1 "$VENV/bin/python" -m pip install -q --disable-pip-version-check "label-studio==$VERSION"
fi
# The template: `init --quiet` migrates the database and creates no user (the test creates its own at start).
rm -rf "$VENV/template"
LATEST_VERSION_CHECK=false SENTRY_DSN='' COLLECT_ANALYTICS=false \
  "$VENV/bin/label-studio" init --quiet --no-browser --data-dir "$VENV/template" > "$VENV/template.log" 2>&1 ||
  { cat "$VENV/template.log" >&2; exit 1; }
echo "$VERSION" > "$stamp"
