"""Every input limit (agent.limits) over a real server: the code, a message that names the limit and the
`shortlist serve` flag, and state unchanged by what was refused. Decompression bombs and lying tensors
are refused before anything is decoded or allocated."""

from __future__ import annotations

import json
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from agent import client
from agent.config import Limits
from agent.errors import (
    HANDLED_KEY,
    REJECTED_COUNT_KEY,
    REJECTED_KEY,
    RETRY_AFTER_KEY,
    STORED_KEY,
    TRAILER_REJECTED_CHARS,
    TRAILER_REJECTIONS,
    Rejected,
    rejections_json,
)
from shortlist.images import TooManyPixels, image_header
from shortlist.v1 import agent_pb2
from tests.agent.conftest import Running, make_images, make_samples, png, start

CODE = grpc.StatusCode


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height 8-bit grey pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def rpc_error(fn: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value


def counts(r: Running) -> tuple[int, int]:
    st = r.stub.GetStatus(agent_pb2.GetStatusRequest())
    return st.samples, st.labeled


@pytest.fixture
def tight(tmp_path: Path, registry: Path) -> Iterator[Running]:
    limits = Limits(max_samples_per_request=20, max_image_bytes=4000, max_pixels=200, max_id_chars=10,
                    max_label_chars=8, max_uri_chars=20, max_metadata_entries=2, max_metadata_chars=6,
                    max_ids_per_request=3, max_select_budget=50, max_ingest_streams=1)
    r = start(tmp_path / "data", registry, limits=limits)
    yield r
    r.stop()


def test_header_check_refuses_bombs_before_decoding() -> None:
    t0 = time.perf_counter()
    # 10 gigapixels: Pillow's own bomb guard fires at open; the message gives our limit, not Pillow's
    with pytest.raises(TooManyPixels, match="image of 10,000,000,000 pixels exceeds the limit of 64,000,000 "
                                            "pixels; refused before decoding"):
        image_header(bomb_png(100_000, 100_000))
    with pytest.raises(TooManyPixels, match="90,000,000 pixels exceeds the limit of 64,000,000"):
        image_header(bomb_png(9000, 10_000))  # between Pillow's warning and error: our check
    assert time.perf_counter() - t0 < 5  # header only: decoding 10 gigapixels would take minutes and 10 GB
    assert image_header(bomb_png(30, 20), max_pixels=600) == (30, 20)


def _jpeg(size: tuple[int, int], colour: tuple[int, int, int] = (0, 0, 0), **save: Any) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", **save)
    return buf.getvalue()


def test_a_jpeg_much_smaller_than_its_header_claims_is_refused(running: Running) -> None:
    """The security review's 631-byte JPEG whose frame header says 7000x9000 (a 16x16 image's data, then the
    end marker): libjpeg paints the rest grey without an error, and it was stored as a 63-megapixel sample.
    Refused with a per-sample reason; whole JPEGs, however uniform, small or progressive, still pass."""
    from shortlist.images import TruncatedImage, decode_image

    small = _jpeg((16, 16))
    at = small.find(b"\xff\xc0")
    lying = small[:at + 5] + struct.pack(">HH", 7000, 9000) + small[at + 9:]
    assert len(lying) < 1000 and lying.endswith(b"\xff\xd9")
    with pytest.raises(TruncatedImage, match=r"truncated JPEG: its header says 9000x7000 pixels, whose image "
                                             r"data needs at least 123,047 bytes, but the whole file has \d+"):
        image_header(lying)
    with pytest.raises(TruncatedImage, match="truncated JPEG"):
        decode_image(lying)
    for whole in (_jpeg((4000, 3000), (128, 128, 128), quality=1), _jpeg((4000, 3000), progressive=True, quality=1),
                  _jpeg((1, 1)), small, _jpeg((333, 17), subsampling=0)):
        assert decode_image(whole).shape[2] == 3
    reply = client.ingest(running.stub, [client.image_sample("lying.jpg", lying),
                                         client.image_sample("whole.jpg", _jpeg((64, 48), (200, 10, 10)))])
    assert reply.accepted == 1 and [r.id for r in reply.rejected] == ["lying.jpg"]
    assert reply.rejected[0].reason.startswith("truncated JPEG: its header says 9000x7000 pixels")


def test_per_sample_limits_are_rejections(tight: Running) -> None:
    img = make_images(1, hw=(10, 10))[0]  # 100 pixels
    bad = [
        client.image_sample("a" * 11, png(img)),
        client.image_sample("lbl", png(img), label="x" * 9),
        client.image_sample("uri", png(img), uri="u" * 21),
        client.image_sample("meta", png(img), metadata={"a": "1", "b": "2", "c": "3"}),
        client.image_sample("mkey", png(img), metadata={"k" * 7: "1"}),
        client.image_sample("mempty", png(img), metadata={"": "1"}),
        client.image_sample("mnl", png(img), metadata={"si\nte": "1"}),
        client.image_sample("big", np.random.default_rng(0).bytes(4001)),
        client.image_sample("pixels", png(make_images(1, hw=(20, 20))[0])),
        client.image_sample("bomb", bomb_png(100_000, 100_000)),
        client.tensor_sample("tpix", make_images(1, hw=(15, 15))[0]),
        agent_pb2.Sample(id="lying", tensor=agent_pb2.Tensor(dtype="uint8", shape=[2**40, 2**20, 3], data=b"x")),
        agent_pb2.Sample(id="short", tensor=agent_pb2.Tensor(dtype="float32", shape=[3, 4, 4], data=bytes(8))),
        agent_pb2.Sample(id="neg", tensor=agent_pb2.Tensor(dtype="uint8", shape=[-4, -4, 3], data=bytes(48))),
        client.image_sample("ok", png(img)),
    ]
    reply = client.ingest(tight.stub, bad)
    reasons = {r.id: r.reason for r in reply.rejected}
    assert reply.accepted == 1 and len(reasons) == 14
    assert reasons["mempty"] == "metadata has an empty key: name each entry"
    assert reasons["mnl"].startswith("metadata key \"si\\nte\" holds control characters")
    assert "--max-id-chars" in reasons["a" * 11] and "max_id_chars" in reasons["a" * 11]
    assert "--max-label-chars" in reasons["lbl"] and "--max-uri-chars" in reasons["uri"]
    assert "--max-metadata-entries" in reasons["meta"] and "--max-metadata-chars" in reasons["mkey"]
    assert "4,001 bytes" in reasons["big"] and "--max-image-mb" in reasons["big"]
    assert "400 pixels exceeds the limit of 200" in reasons["pixels"] and "--max-pixels" in reasons["pixels"]
    assert "refused before decoding" in reasons["bomb"] and "--max-pixels" in reasons["bomb"]
    assert "--max-pixels" in reasons["tpix"] and "--max-pixels" in reasons["lying"]
    assert "needs 192" in reasons["short"] and "positive dims" in reasons["neg"]
    assert counts(tight) == (1, 0)


def test_whole_request_limits_are_statuses(tight: Running) -> None:
    client.ingest(tight.stub, make_samples(4, labels=2), batch=4)
    before = counts(tight)
    err = rpc_error(lambda: client.ingest(tight.stub, make_samples(21, prefix="n"), batch=21))
    assert err.code() == CODE.RESOURCE_EXHAUSTED and "--max-samples-per-request" in err.details()
    err = rpc_error(lambda: client.submit_labels(tight.stub, [("s0", "cat")] * 4))
    assert err.code() == CODE.RESOURCE_EXHAUSTED and "--max-ids-per-request" in err.details()
    err = rpc_error(lambda: client.submit_labels(tight.stub, [("s0", "cat")], annotator="z" * 9))
    assert err.code() == CODE.INVALID_ARGUMENT and "annotator" in err.details()
    reply = client.submit_labels(tight.stub, [("s3", "dog" * 3), ("s" * 11, "cat")])
    assert reply.accepted == 0 and all("limit" in r.reason for r in reply.rejected)
    err = rpc_error(lambda: tight.stub.Select(agent_pb2.SelectRequest(budget=51, strategy="random")))
    assert err.code() == CODE.INVALID_ARGUMENT and "--max-budget" in err.details()
    err = rpc_error(lambda: tight.stub.Select(agent_pb2.SelectRequest(budget=2147483647, strategy="coreset")))
    assert err.code() == CODE.INVALID_ARGUMENT
    err = rpc_error(lambda: tight.stub.Select(agent_pb2.SelectRequest(
        budget=1, strategy="random", where={"a": "1", "b": "2", "c": "3"})))
    assert err.code() == CODE.INVALID_ARGUMENT and "--max-metadata-entries" in err.details()
    err = rpc_error(lambda: tight.stub.Select(agent_pb2.SelectRequest(
        budget=1, strategy="random", params={"k" * 7: "1"})))
    assert err.code() == CODE.INVALID_ARGUMENT and "params key" in err.details()
    err = rpc_error(lambda: tight.stub.Select(agent_pb2.SelectRequest(budget=1, strategy="x" * 1_000_000)))
    assert err.code() == CODE.INVALID_ARGUMENT and len(err.details()) < 2100  # echoed names are cut
    err = rpc_error(lambda: list(tight.stub.PriorLabels(agent_pb2.PriorLabelsRequest(
        method="knn", params={"a": "1", "b": "2", "c": "3"}))))
    assert err.code() == CODE.INVALID_ARGUMENT and "--max-metadata-entries" in err.details()
    err = rpc_error(lambda: list(tight.stub.PriorLabels(agent_pb2.PriorLabelsRequest(
        method="knn", ids=["s2", "s3", "s2", "s3"]))))
    assert err.code() == CODE.RESOURCE_EXHAUSTED and "--max-ids-per-request" in err.details()
    assert counts(tight) == before
    assert len(tight.agent.state.selections()) == 0
    # The client splits a long label list into requests the agent takes.
    reply = client.submit_labels(tight.stub, [(f"s{i}", "cat") for i in range(4)], chunk=3)
    assert reply.accepted == 4 and counts(tight) == (4, 4)


def test_an_ingest_stream_ended_by_an_error_sends_its_stored_count_as_trailing_metadata(
        tmp_path: Path, registry: Path) -> None:
    """A pipeline in any language reads how many samples of a broken stream were stored from the trailing
    metadata ``shortlist-stored`` (an integer string), without parsing the English message: a message over
    --max-samples-per-request after stored ones, and a stream left silent past --ingest-idle-timeout."""
    r = start(tmp_path / "data", registry, limits=Limits(max_samples_per_request=4, ingest_idle_timeout_s=1.0))
    try:
        def too_many() -> Iterator[agent_pb2.IngestRequest]:
            yield agent_pb2.IngestRequest(samples=make_samples(3, prefix="a"))
            yield agent_pb2.IngestRequest(samples=make_samples(5, prefix="b"))

        err = rpc_error(lambda: r.stub.Ingest(too_many(), timeout=30))
        assert err.code() == CODE.RESOURCE_EXHAUSTED and "3 samples of this stream were stored" in err.details()
        assert dict(err.trailing_metadata())[STORED_KEY] == "3" and counts(r)[0] == 3
        release = threading.Event()

        def silent() -> Iterator[agent_pb2.IngestRequest]:
            yield agent_pb2.IngestRequest(samples=make_samples(2, prefix="c"))
            release.wait(30)  # a client that forgot its stream

        try:
            err = rpc_error(lambda: r.stub.Ingest(silent(), timeout=30))
        finally:
            release.set()
        assert err.code() == CODE.DEADLINE_EXCEEDED and "sent nothing for 1 s" in err.details()
        assert dict(err.trailing_metadata())[STORED_KEY] == "2" and counts(r)[0] == 5
        err = rpc_error(lambda: r.stub.Select(agent_pb2.SelectRequest(budget=1, strategy="nope")))
        assert STORED_KEY not in dict(err.trailing_metadata() or ())  # an Ingest stream's key only
    finally:
        r.stop()


def test_a_broken_ingest_stream_says_how_many_samples_were_handled_and_which_were_rejected(
        tmp_path: Path, registry: Path) -> None:
    """``shortlist-stored`` counts newly stored samples only; a pipeline resumes from ``shortlist-handled``
    (stored, already stored or rejected, from the stream's start) and learns the rejections of the broken
    stream from ``shortlist-rejected-count`` / ``shortlist-rejected`` (JSON): a first message of 2 resent, 5
    damaged and 5 new samples, then a message refused as a whole."""
    r = start(tmp_path / "data", registry, limits=Limits(max_samples_per_request=12))
    try:
        old = make_samples(2, prefix="old")
        r.stub.Ingest(iter([agent_pb2.IngestRequest(samples=old)]), timeout=30)
        damaged = [client.image_sample(f"bad{i}", b"\xff\xd8 not a jpeg") for i in range(5)]

        def stream() -> Iterator[agent_pb2.IngestRequest]:
            yield agent_pb2.IngestRequest(samples=[*old, *damaged, *make_samples(5, prefix="new")])
            yield agent_pb2.IngestRequest(samples=make_samples(13, prefix="late"))

        err = rpc_error(lambda: r.stub.Ingest(stream(), timeout=30))
        sent = dict(err.trailing_metadata())
        assert err.code() == CODE.RESOURCE_EXHAUSTED and counts(r)[0] == 7
        assert sent[STORED_KEY] == "5" and sent[HANDLED_KEY] == "12" and sent[REJECTED_COUNT_KEY] == "5"
        rejected = json.loads(sent[REJECTED_KEY])
        assert [x["id"] for x in rejected] == [f"bad{i}" for i in range(5)] and all(x["reason"] for x in rejected)
        assert {x["code"] for x in rejected} == {"REJECTION_CODE_INVALID_PAYLOAD"}  # for programs: not the words
        assert "the first 12 samples it sent were handled (5 stored, 2 already stored, 5 rejected" in err.details()
        assert "resend from sample 13 on" in err.details()
    finally:
        r.stop()


def test_the_rejections_in_the_trailers_stay_small() -> None:
    """At most TRAILER_REJECTIONS entries within TRAILER_REJECTED_CHARS, ASCII (trailers are capped at 8 KiB)."""
    many = [Rejected(f"id{i}\x7f\n" + "é" * 300, agent_pb2.REJECTION_CODE_INVALID_PAYLOAD, "r" * 500)
            for i in range(50)]
    text = rejections_json(many)
    assert len(text) <= TRAILER_REJECTED_CHARS and text.isascii() and "\x7f" not in text and "\n" not in text
    shown = json.loads(text)
    assert 0 < len(shown) <= TRAILER_REJECTIONS and shown[0]["id"].startswith("id0\x7f\n")
    assert shown[0]["code"] == "REJECTION_CODE_INVALID_PAYLOAD"
    assert rejections_json([]) == "[]"


def test_concurrent_ingest_streams_beyond_the_limit_are_refused_at_once(tight: Running) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow() -> Iterator[agent_pb2.IngestRequest]:
        yield agent_pb2.IngestRequest(samples=make_samples(2, prefix="a"))
        entered.set()
        release.wait(20)

    first: list[agent_pb2.IngestReply] = []
    t = threading.Thread(target=lambda: first.append(tight.stub.Ingest(slow(), timeout=30)))
    t.start()
    try:
        assert entered.wait(10)
        deadline = time.monotonic() + 20
        while counts(tight)[0] < 2:  # the first batch is stored: the stream holds the only slot
            assert time.monotonic() < deadline
            time.sleep(0.05)
        err = rpc_error(lambda: client.ingest(tight.stub, make_samples(2, prefix="b"), timeout=10))
        assert err.code() == CODE.RESOURCE_EXHAUSTED and "--max-ingest-streams" in err.details()
        assert int(dict(err.trailing_metadata())[RETRY_AFTER_KEY]) > 0
    finally:
        release.set()
        t.join(30)
    assert first[0].accepted == 2
    assert client.ingest(tight.stub, make_samples(2, prefix="b")).accepted == 2


def test_list_and_prior_replies_stream(running: Running) -> None:
    client.ingest(running.stub, make_samples(30, labels=6), batch=8)
    agent = running.agent
    assert not isinstance(agent.list_samples(False, True), list)
    priors = agent.prior_labels("knn", [], {})
    assert not isinstance(priors, list) and len(list(priors)) == 24
    assert [r.id for r, _ in agent.state.iter_records(chunk=7)] == [f"s{i}" for i in range(30)]
    assert [lab for _, lab in agent.state.iter_records(labeled_only=True, chunk=4)] == [0, 1, 2, 0, 1, 2]
