"""``shortlist bench agent --source``'s images (agent.bench.bench_images): a folder with a file that is not a
readable image is benched on the rest, the file named, as ingest and pretrain do."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from agent.bench import bench_images


def _png(colour: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (colour, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def test_unreadable_files_of_the_source_are_left_out_and_named(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One unreadable file made the whole bench exit 2 with "not a readable image: ..." naming no file."""
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(_png(10 * i))
    (tmp_path / "pic.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(40))
    with caplog.at_level("WARNING", logger="agent.bench"):
        images = bench_images(10, (8, 8), str(tmp_path))
    assert images == [_png(0), _png(10), _png(20)]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith("1 of 4 images are not readable and were left out (")
    assert f"{tmp_path / 'pic.jpg'}: not a readable image" in said[0]
    assert len(bench_images(2, (8, 8), str(tmp_path))) == 2  # n readable ones, no more

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"none of the 1 files of .*bad is a readable image: .*a\.jpg: empty image"):
        bench_images(10, (8, 8), str(bad))
