"""GetImages: originals, thumbnails (upright, bounded, cached), limits, errors; ListSamples by ids."""

from __future__ import annotations

import io
import re
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from agent import client
from shortlist.v1 import agent_pb2
from tests.agent.conftest import Running, make_samples


def _rpc_code(fn) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code()


def _jpeg_rotated(width: int, height: int, orientation: int) -> bytes:
    """A JPEG stored width x height with EXIF Orientation ``orientation`` (6: shown rotated 90 degrees)."""
    img = Image.new("RGB", (width, height), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


def test_thumbnails_are_upright_bounded_and_cached(running: Running) -> None:
    client.ingest(running.stub, [*make_samples(3),
                                 client.image_sample("phone", _jpeg_rotated(400, 200, 6))])
    reply = running.stub.GetImages(agent_pb2.GetImagesRequest(ids=["phone", "s1"], max_side=64))
    phone, s1 = reply.images
    assert (phone.id, phone.mime_type, phone.error) == ("phone", "image/jpeg", "")
    assert (phone.width, phone.height) == (32, 64)  # stored landscape, EXIF says portrait
    with Image.open(io.BytesIO(phone.data)) as img:
        assert img.size == (32, 64)
    assert (s1.width, s1.height) == (10, 12)  # never enlarged
    assert len(phone.sha256) == 64
    hits = running.agent.images.cache.hits
    again = running.stub.GetImages(agent_pb2.GetImagesRequest(ids=["phone"], max_side=64, format="webp"))
    assert again.images[0].mime_type == "image/webp"
    running.stub.GetImages(agent_pb2.GetImagesRequest(ids=["phone"], max_side=64))
    assert running.agent.images.cache.hits == hits + 1


def test_original_is_the_stored_payload(running: Running) -> None:
    samples = make_samples(2)
    pixels = np.zeros((5, 7, 3), np.uint8)
    client.ingest(running.stub, [*samples, client.tensor_sample("t", pixels)])
    reply = running.stub.GetImages(agent_pb2.GetImagesRequest(ids=["s0", "t"]))
    assert reply.images[0].data == samples[0].encoded_image and reply.images[0].mime_type == "image/png"
    assert (reply.images[1].mime_type, reply.images[1].width, reply.images[1].height) == ("image/png", 7, 5)


def test_originals_browsers_cannot_show_come_as_png_of_the_decode(running: Running) -> None:
    """The web app's large view (/image/ID) showed the stored bytes as image/tiff, image/x-tga, image/jp2 or
    image/mpo, which browsers do not decode: those come as a PNG of Shortlist's decode (upright, 16-bit
    scaled); the formats browsers show come as stored, an MPO as the JPEG it starts with."""
    def encoded(img: Image.Image, fmt: str, **save: object) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **save)
        return buf.getvalue()

    rgb = Image.new("RGB", (12, 6), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    gray16 = Image.fromarray(np.full((4, 5), 65535 // 2, np.uint16))
    payloads = {"t.tif": encoded(gray16, "TIFF"), "t.tga": encoded(rgb, "TGA"), "t.jp2": encoded(rgb, "JPEG2000"),
                "rot.tif": encoded(rgb, "TIFF", exif=exif), "m.jpg": encoded(rgb, "MPO", save_all=True),
                "p.png": encoded(rgb, "PNG"), "a.avif": encoded(rgb, "AVIF")}
    assert client.ingest(running.stub, [client.image_sample(k, v) for k, v in payloads.items()]).accepted == 7
    reply = running.stub.GetImages(agent_pb2.GetImagesRequest(ids=list(payloads)))
    got = {im.id: im for im in reply.images}
    assert {k: im.mime_type for k, im in got.items()} == {
        "t.tif": "image/png", "t.tga": "image/png", "t.jp2": "image/png", "rot.tif": "image/png",
        "m.jpg": "image/jpeg", "p.png": "image/png", "a.avif": "image/avif"}
    for name in ("m.jpg", "p.png", "a.avif"):
        assert got[name].data == payloads[name]
    with Image.open(io.BytesIO(got["t.tif"].data)) as img:
        assert (img.format, img.mode, img.size) == ("PNG", "RGB", (5, 4))
        assert np.asarray(img)[0, 0].tolist() == [127, 127, 127]  # 32767 / 257, not white
    with Image.open(io.BytesIO(got["rot.tif"].data)) as img:
        assert img.size == (6, 12) and (got["rot.tif"].width, got["rot.tif"].height) == (6, 12)  # upright
    with Image.open(io.BytesIO(got["t.tga"].data)) as img:
        assert np.asarray(img)[0, 0].tolist() == [200, 30, 30]


def test_bad_requests(running: Running) -> None:
    client.ingest(running.stub, make_samples(2))
    get = running.stub.GetImages
    assert _rpc_code(lambda: get(agent_pb2.GetImagesRequest(ids=["nope"]))) == grpc.StatusCode.NOT_FOUND
    assert _rpc_code(lambda: get(agent_pb2.GetImagesRequest(ids=["s0"], max_side=8))) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert _rpc_code(lambda: get(agent_pb2.GetImagesRequest(ids=["s0"], max_side=5000))) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert _rpc_code(lambda: get(agent_pb2.GetImagesRequest(ids=["s0"] * 257, max_side=64))) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert _rpc_code(lambda: get(agent_pb2.GetImagesRequest(ids=["s0"], max_side=64, format="gif"))) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert _rpc_code(lambda: get(agent_pb2.GetImagesRequest())) == grpc.StatusCode.INVALID_ARGUMENT


def test_missing_blob_is_an_error_for_that_image_only(running: Running) -> None:
    client.ingest(running.stub, make_samples(2))
    rec = running.agent.state.lookup("s0")
    assert rec is not None and running.agent.blobs is not None
    running.agent.blobs.path(rec.sha256).unlink()
    reply = running.stub.GetImages(agent_pb2.GetImagesRequest(ids=["s0", "s1"], max_side=32))
    assert "missing" in reply.images[0].error and not reply.images[0].data
    assert reply.images[1].data and not reply.images[1].error


def test_list_samples_by_ids(running: Running) -> None:
    client.ingest(running.stub, make_samples(4, labels=2))
    got = list(running.stub.ListSamples(agent_pb2.ListSamplesRequest(ids=["s3", "s0"])))
    assert [(s.id, s.label) for s in got] == [("s3", ""), ("s0", "cat")]
    labelled = list(running.stub.ListSamples(agent_pb2.ListSamplesRequest(ids=["s3", "s0"], labeled_only=True)))
    assert [s.id for s in labelled] == ["s0"]
    assert _rpc_code(lambda: list(running.stub.ListSamples(agent_pb2.ListSamplesRequest(ids=["x"])))) == \
        grpc.StatusCode.NOT_FOUND


def test_a_stored_eps_payload_is_an_error_without_running_ghostscript(
        running: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool filled by an agent before EPS was refused at Ingest can hold PostScript blobs: showing one (the
    web app's large view) must not hand it to Pillow's EPS plugin, which starts Ghostscript (``gs``; a fake one
    first on PATH leaves a marker). That image gets an error; the others are answered."""
    from tests.shortlist.test_images import EPS, fake_ghostscript

    marker = fake_ghostscript(tmp_path, monkeypatch)
    client.ingest(running.stub, make_samples(2))
    images = running.agent.images
    stored = images._blob
    monkeypatch.setattr(images, "_blob", lambda sid, digest: EPS if sid == "s0" else stored(sid, digest))
    reply = running.stub.GetImages(agent_pb2.GetImagesRequest(ids=["s0", "s1"]))
    assert "cannot read the stored payload" in reply.images[0].error and not reply.images[0].data
    assert reply.images[1].data and not reply.images[1].error
    assert not marker.exists()


def test_every_image_open_is_limited_to_raster_formats() -> None:
    """Image.open without ``formats=`` lets Pillow pick any plugin by the bytes, EPS (Ghostscript) included:
    every image Shortlist opens goes through shortlist.images.open_image, the only Image.open in the code."""
    root = Path(__file__).resolve().parents[2]
    calls = [f"{p.relative_to(root)}:{n}" for folder in ("agent", "shortlist", "training", "bench", "exporters")
             for p in sorted((root / folder).rglob("*.py"))
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"\bImage\.open\(", line)]
    assert len(calls) == 1 and calls[0].startswith("shortlist/images.py:"), calls
