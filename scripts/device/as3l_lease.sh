#!/bin/bash
# One device lease: SimSiam pretraining on the GPU, then `bench as3l --profile gpu-lease` on that encoder.
# Usage (on the device machine, repo root, with .dev carried): bash scripts/device/as3l_lease.sh MINUTES SECONDS [bench args]
# .dev holds what the bare machine lacks: the CIFAR-10 pack (scripts/device/pack_cifar10.py), cp312 wheels of
# grpcio, protobuf, grpcio-health-checking and grpcio-reflection (.dev/whl), pybind11's wheel (.dev/build) and
# hnswlib 0.8.0's sdist (.dev/sdist; it has no cp312 wheel, so it is built there). MINUTES of SimSiam pretraining
# (skipped when /tmp/run already holds an encoder), then SECONDS of `bench as3l --profile gpu-lease`; SECONDS = 0
# stops after pretraining. What comes back is under $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
PM=$1; AT=$2; shift 2
T0=$(date +%s); el(){ echo "[$(( $(date +%s)-T0 )) s] $*"; }
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
el setup
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .dev/whl/*.whl || exit 1
python3 -c 'import pybind11' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --target /tmp/build .dev/build/*.whl
PYTHONPATH=/tmp/build python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .dev/sdist/hnswlib-0.8.0.tar.gz 2>&1 | tail -5
export PYTHONPATH=/tmp/site:$PWD
nproc; free -g | head -2
# The folder's name is the data set's name in the results' titles.
[ -f /tmp/cifar10/test.tar ] || python3 scripts/device/unpack_cifar10.py /tmp/cifar10
SL="python3 -m shortlist.cli"
if [ ! -f /tmp/run/encoder.pt ]; then
  el pretrain
  $SL pretrain --data /tmp/cifar10 --out /tmp/run --method simsiam --arch resnet18_w32 --minutes $PM --batch-size 512 --lr 0.08 2>&1 | tee $OUT/pretrain.log
fi
cp /tmp/run/encoder.pt /tmp/run/config.json /tmp/run/metrics.jsonl $OUT/ 2>/dev/null
el as3l
[ "$AT" = 0 ] && { el "no as3l this call"; exit 0; }
timeout $AT $SL bench as3l --data /tmp/cifar10 --profile gpu-lease --encoder /tmp/run --out /tmp/as3l "$@" 2>&1 | tee $OUT/as3l.log
el pack
tar czf $OUT/as3l.tgz --exclude='*.onnx' --exclude='agent-base' --exclude='agent-work' --exclude='*.sqlite*' -C /tmp as3l 2>&1 | tail -2
ls -la $OUT; el done
