"""Pack ../shared/datasets/cifar10's two tars into .dev/c10.bin (the JPEG bytes, 55 MB) + .dev/c10.json.gz
(split, member name, offset, size): small enough to travel to a device machine (64 MiB limit), where
unpack_cifar10.py rebuilds the same tars. Run from the repository root."""

import gzip
import json
import sys
import tarfile
from pathlib import Path

src = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/datasets/cifar10")
Path(".dev").mkdir(exist_ok=True)
index: list[list[object]] = []
offset = 0
with open(".dev/c10.bin", "wb") as out:
    for split in ("train", "test"):
        with tarfile.open(src / f"{split}.tar") as tar:
            for m in tar:
                if m.isdir():
                    index.append([split, m.name, -1, 0])
                elif m.isfile():
                    f = tar.extractfile(m)
                    assert f is not None
                    data = f.read()
                    out.write(data)
                    index.append([split, m.name, offset, len(data)])
                    offset += len(data)
with gzip.open(".dev/c10.json.gz", "wt") as g:
    json.dump(index, g)
print(f"packed {len(index)} entries, {offset / 1e6:.1f} MB")
