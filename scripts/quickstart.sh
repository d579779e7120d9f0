#!/usr/bin/env bash
# The README's main job on a fresh machine: set up, then run the CIFAR-10 quick benchmark through the
# agent (pretrain a small encoder for 3 minutes, export it, serve it, stream the pool through Ingest, and
# compare strategies with a simulated annotator). Prints the table and where the plots are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DATA=${DATA:-../shared/datasets/cifar10}
OUT=${OUT:-runs/quick}
.venv/bin/shortlist bench cifar10 --profile quick --data "$DATA" --out "$OUT" "$@"
echo
echo "The shortlist command is in .venv/bin. Put it on PATH in this shell with:"
echo "    source .venv/bin/activate"
echo "(or call .venv/bin/shortlist). Next: README.md, 'How a pipeline uses it'."
echo "Label this pool in the browser (a copy: the benchmark reuses $OUT/agent-base as it is):"
echo "    cp -r $OUT/agent-base runs/label && .venv/bin/shortlist serve --data-dir runs/label --models $OUT/models --web-port 8080"
echo "then open http://127.0.0.1:8080 (README.md, 'Labelling in the browser')."
