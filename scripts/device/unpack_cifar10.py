"""Rebuild train.tar / test.tar (same member names and order as ../shared/datasets/cifar10) from the pack
that pack_cifar10.py wrote into .dev/. Usage: python3 scripts/device/unpack_cifar10.py OUT_FOLDER."""

import gzip
import io
import json
import sys
import tarfile
from pathlib import Path

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
with gzip.open(".dev/c10.json.gz") as g:
    index = json.load(g)
blob = Path(".dev/c10.bin").read_bytes()
tars: dict[str, tarfile.TarFile] = {}
for split, name, offset, size in index:
    if split not in tars:
        tars[split] = tarfile.open(out / f"{split}.tar", "w", format=tarfile.GNU_FORMAT)  # noqa: SIM115 (closed below)
    info = tarfile.TarInfo(name)
    if offset < 0:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tars[split].addfile(info)
    else:
        info.size, info.mode = size, 0o644
        tars[split].addfile(info, io.BytesIO(blob[offset:offset + size]))
for t in tars.values():
    t.close()
print("unpacked", {k: (out / f"{k}.tar").stat().st_size for k in tars})
