#!/bin/bash
# What `shortlist serve --web-port` logs when its open files run out (docs/agent.md, "Limits": asyncio's
# failed-accept lines, agent/fds.py). Starts `shortlist serve` with a throwaway publish_linear model under
# `ulimit -n 1024` (soft and hard: the agent cannot raise it), holds CONNECTIONS (default 1100) TCP
# connections to the web port for HOLD seconds (default 10), stops the agent, and prints the log's line count,
# byte count and number of "socket.accept() out of system resource" lines, then its most frequent lines.
#
# Run from the repository root; CODE names the checkout whose agent runs (default: this one), e.g. a
# `git worktree add ../before 776bda7` for the figure before the fix:
#
#   bash scripts/experiments/dos/serve_fd_flood.sh 53649 53650
#   CODE=../before bash scripts/experiments/dos/serve_fd_flood.sh 53649 53650
#
# Takes about 30 s. PYTHON (default .venv/bin/python) runs both the agent and the client.
set -u
PORT=${1:?usage: serve_fd_flood.sh PORT WEB_PORT [CONNECTIONS] [HOLD]}
WEB_PORT=${2:?usage: serve_fd_flood.sh PORT WEB_PORT [CONNECTIONS] [HOLD]}
CONNECTIONS=${3:-1100}
HOLD=${4:-10}
PYTHON=$(realpath "${PYTHON:-.venv/bin/python}")
CODE=$(realpath "${CODE:-.}")
D=$(mktemp -d)
"$PYTHON" -c "import sys; from pathlib import Path; from agent.testing import publish_linear
publish_linear(Path(sys.argv[1]), size=(8, 8), dim=16, classes=['a', 'b'], seed=0)" "$D/models"
( ulimit -n 1024; cd "$CODE" && exec env PYTHONPATH="$CODE" "$PYTHON" -m shortlist.cli serve --data-dir "$D/data" \
    --models "$D/models" --port "$PORT" --web-port "$WEB_PORT" --cpu > "$D/log" 2>&1 ) &
PID=$!
sleep 15
"$PYTHON" - "$WEB_PORT" "$CONNECTIONS" "$HOLD" <<'PY'
import socket
import sys
import time

port, n, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
socks = []
for i in range(n):
    try:
        socks.append(socket.create_connection(("127.0.0.1", port), timeout=2))
    except OSError as e:
        print("connect", i, e)
        break
print("held", len(socks))
time.sleep(hold)
for s in socks:
    s.close()
PY
kill "$PID"; wait "$PID"
echo "log lines: $(wc -l < "$D/log"), bytes: $(wc -c < "$D/log"), accept lines: $(grep -c 'socket.accept() out of system resource' "$D/log")"
grep -m3 "open files\|out of system resource" "$D/log" | cut -c1-200
cut -c1-120 "$D/log" | sed -E "s/^[0-9-]+ [0-9:,]+ //" | sort | uniq -c | sort -rn | head -12
rm -rf "$D"
