"""How tests/agent/data/schema0/ was made: a data folder written by the release before schema versions
(main at 111fbea, SQLite ``user_version`` 0), kept byte for byte so tests/agent/test_faults.py can check
that a newer agent migrates it. Run from the repository root at that commit:
``python tests/agent/data/make_schema0.py tests/agent/data/schema0``.

Contents: samples old0..old5 (metadata site=a, uri file:///oldI.png), old0=cat and old1=dog labelled at
ingest, old3=frog labelled by annotator alice, one random Select, embeddings and an index snapshot under
v0001 = ``publish_linear(size=(8, 8), dim=16, classes=CLASSES, rotation=True, seed=0)``.
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

from agent.core import Agent, Incoming
from agent.testing import publish_linear
from tests.agent.conftest import CLASSES, SIZE, make_images, png


def main(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    reg = Path(tempfile.mkdtemp()) / "models"
    publish_linear(reg, size=SIZE, dim=16, classes=CLASSES, rotation=True, seed=0)
    a = Agent(out, reg, background=False, use_cuda=False)
    samples = [Incoming(f"old{i}", "image", png(im), png(im), uri=f"file:///old{i}.png", metadata={"site": "a"},
                        label=CLASSES[i % 3] if i < 2 else "") for i, im in enumerate(make_images(6, seed=7))]
    assert a.ingest(samples).accepted == 6
    a.submit_labels([("old3", "frog")], "alice")
    a.select(2, "random", {}, 0, {})
    a.close()
    db = sqlite3.connect(out / "state.sqlite")  # one self-contained file
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("PRAGMA journal_mode=DELETE")
    db.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
