"""Rejection.code: every per-item rejection of Ingest, SubmitLabels, RetractLabels and DeleteSamples carries a
stable RejectionCode beside its human ``reason`` (docs/agent.md, "Rejection codes"), so that a pipeline in
another language decides on the code, not on English that changes between releases.

A registry: each RPC's table below lists its rejection paths and the code each must carry; the tests drive every
path over gRPC and compare, and ``test_every_code_has_a_path`` checks that the tables name every code. A new cause
of rejection gets a row here (and in the docs' table)."""

from __future__ import annotations

import ast
import io
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent import client
from agent.config import Limits
from agent.errors import Rejected, code_name, rejection_message
from agent.ingest import PAYLOAD_ERROR_KEY
from shortlist.v1 import agent_pb2
from tests.agent.conftest import Running, make_images, make_samples, png, start

C = agent_pb2
LONG_ID = "x" * 600  # over the default --max-id-chars (512)
# Ingest: id -> the code of its rejection. The stored samples (``pool``): k0 (a payload), k1 (site=a), k2
# (label cat), k3 (label cat, taken back).
INGEST = {
    "": C.REJECTION_CODE_INVALID_ID,
    " pad": C.REJECTION_CODE_INVALID_ID,
    LONG_ID: C.REJECTION_CODE_ID_TOO_LONG,
    "comma": C.REJECTION_CODE_INVALID_LABEL,
    "longlabel": C.REJECTION_CODE_INVALID_LABEL,
    "zebra": C.REJECTION_CODE_UNKNOWN_CLASS,
    "renamed": C.REJECTION_CODE_UNKNOWN_CLASS,
    "emptykey": C.REJECTION_CODE_INVALID_METADATA,
    "reserved": C.REJECTION_CODE_INVALID_METADATA,
    "longuri": C.REJECTION_CODE_INVALID_METADATA,
    "nopayload": C.REJECTION_CODE_INVALID_PAYLOAD,
    "notimage": C.REJECTION_CODE_INVALID_PAYLOAD,
    "badtensor": C.REJECTION_CODE_INVALID_PAYLOAD,
    "bytes": C.REJECTION_CODE_PAYLOAD_TOO_LARGE,
    "bomb": C.REJECTION_CODE_PAYLOAD_TOO_LARGE,
    "k0": C.REJECTION_CODE_ID_TAKEN,
    "k4": C.REJECTION_CODE_FILE_CHANGED,  # another image from the uri k4 was stored from (replaced in place)
    "twice": C.REJECTION_CODE_ID_TAKEN,  # its second item, another payload in the same request
    "again": C.REJECTION_CODE_RESEND_CHANGES_SAMPLE,  # its second item, other metadata in the same request
    "relabel": C.REJECTION_CODE_RESEND_CHANGES_LABEL,  # its second item, another label in the same request
    "k1": C.REJECTION_CODE_RESEND_CHANGES_SAMPLE,
    "k2": C.REJECTION_CODE_RESEND_CHANGES_LABEL,
    "k3": C.REJECTION_CODE_RESEND_CHANGES_LABEL,
}
# SubmitLabels: (id, label, if_current or None) -> code; k4 is unlabelled, k2 is labelled cat.
SUBMIT = [
    (("", "cat", None), C.REJECTION_CODE_INVALID_ID),
    ((LONG_ID, "cat", None), C.REJECTION_CODE_ID_TOO_LONG),
    (("nope", "cat", None), C.REJECTION_CODE_UNKNOWN_ID),
    (("k4", "", None), C.REJECTION_CODE_INVALID_LABEL),
    (("k4", "a,b", None), C.REJECTION_CODE_INVALID_LABEL),
    (("k4", "l" * 300, None), C.REJECTION_CODE_INVALID_LABEL),
    (("k4", "zebra", None), C.REJECTION_CODE_UNKNOWN_CLASS),
    (("k4", "deer", None), C.REJECTION_CODE_UNKNOWN_CLASS),
    (("k5", "cat", None), None),  # accepted
    (("k5", "dog", None), C.REJECTION_CODE_DUPLICATE_IN_REQUEST),
    (("k2", "dog", "frog"), C.REJECTION_CODE_CONFLICT),
]
# RetractLabels: (id, if_current or None) -> code; k6 is labelled, k4 unlabelled, k2 labelled cat.
RETRACT = [
    (("", None), C.REJECTION_CODE_INVALID_ID),
    ((LONG_ID, None), C.REJECTION_CODE_ID_TOO_LONG),
    (("nope", None), C.REJECTION_CODE_UNKNOWN_ID),
    (("k6", None), None),
    (("k6", None), C.REJECTION_CODE_DUPLICATE_IN_REQUEST),
    (("k4", None), C.REJECTION_CODE_NOT_LABELLED),
    (("k2", "frog"), C.REJECTION_CODE_CONFLICT),
]
# RetractLabels with restore_previous, after a restart whose closed class list dropped the label before.
RESTORE = [("k7", C.REJECTION_CODE_CANNOT_RESTORE)]
# DeleteSamples: id -> code.
DELETE = [
    ("", C.REJECTION_CODE_INVALID_ID),
    (LONG_ID, C.REJECTION_CODE_ID_TOO_LONG),
    ("nope", C.REJECTION_CODE_UNKNOWN_ID),
    ("k8", None),
    ("k8", C.REJECTION_CODE_DUPLICATE_IN_REQUEST),
]
# The Python client's own: a sample too large for any gRPC message is not sent (agent.client.batches).
CLIENT = [("huge", C.REJECTION_CODE_PAYLOAD_TOO_LARGE)]
CLASSES = ("cat", "dog", "frog", "deer")


def _bomb() -> bytes:
    """A tiny PNG whose header claims 20000x20000 pixels (over the test's --max-pixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))


def _noisy_png(seed: int) -> bytes:
    """A 64x64 PNG of noise: about 12 KB, over the test's --max-image-bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def pool(tmp_path: Path, registry: Path) -> Iterator[Running]:
    """An agent with a closed class list (``deer`` renamed to ``roe_deer``) and samples k0..k8."""
    r = start(tmp_path / "data", registry, classes=CLASSES,
              limits=Limits(max_image_bytes=8_000, max_pixels=1_000_000, max_uri_chars=100))
    try:
        samples = make_samples(9, prefix="k")
        samples[1].metadata["site"] = "a"
        samples[4].uri = "/d/k4.png"
        samples[2].label = samples[3].label = samples[6].label = samples[7].label = "cat"
        assert client.ingest(r.stub, samples).accepted == 9
        assert client.retract_labels(r.stub, ["k3"], "zoe").accepted == 1
        r.stub.RenameClass(agent_pb2.RenameClassRequest(from_class="deer", to_class="roe_deer", annotator="lead"))
        yield r
    finally:
        r.stop()


def _codes(rejected: Iterable[agent_pb2.Rejection]) -> list[tuple[str, str]]:
    return [(r.id, code_name(r.code)) for r in rejected]


def _expected(rows: Sequence[tuple[str, int | None]]) -> list[tuple[str, str]]:
    return [(i, code_name(c)) for i, c in rows if c is not None]


def test_ingest_rejections_carry_their_codes(pool: Running) -> None:
    imgs = [png(x) for x in make_images(12, seed=5)]
    stored = make_samples(9, prefix="k")

    def sample(sid: str, n: int, **kw: object) -> agent_pb2.Sample:
        return client.image_sample(sid, imgs[n], **kw)  # type: ignore[arg-type]

    items = [
        sample("", 0), sample(" pad", 0), sample(LONG_ID, 0),
        sample("comma", 0, label="a,b"), sample("longlabel", 0, label="l" * 300),
        sample("zebra", 0, label="zebra"), sample("renamed", 0, label="deer"),
        sample("emptykey", 0, metadata={"": "v"}), sample("reserved", 0, metadata={PAYLOAD_ERROR_KEY: "x"}),
        sample("longuri", 0, uri="u" * 101),
        agent_pb2.Sample(id="nopayload"), client.image_sample("notimage", b"not an image"),
        agent_pb2.Sample(id="badtensor", tensor=agent_pb2.Tensor(dtype="int64", shape=[2, 2, 3], data=b"\0" * 96)),
        client.image_sample("bytes", _noisy_png(1)), client.image_sample("bomb", _bomb()),
        sample("k0", 1),  # another image under a stored id
        sample("k4", 6, uri="/d/./k4.png"),  # another image from the stored one's file
        sample("twice", 2), sample("twice", 3),
        sample("again", 4, metadata={"k": "1"}), sample("again", 4, metadata={"k": "2"}),
        sample("relabel", 5, label="cat"), sample("relabel", 5, label="dog"),
        client.image_sample("k1", stored[1].encoded_image, metadata={"site": "b"}),
        client.image_sample("k2", stored[2].encoded_image, label="dog"),
        client.image_sample("k3", stored[3].encoded_image, label="cat"),  # its label was taken back
    ]
    reply = client.ingest(pool.stub, items)
    assert reply.accepted == 3  # the first items of "twice", "again" and "relabel"
    assert sorted(_codes(reply.rejected)) == sorted((i, code_name(c)) for i, c in INGEST.items())
    assert all(r.reason for r in reply.rejected)  # the words stay, for people


def test_submit_labels_rejections_carry_their_codes(pool: Running) -> None:
    reply = pool.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(annotator="ann", labels=[
        agent_pb2.LabelAssignment(id=i, label=lab, **({} if cur is None else {"if_current": cur}))
        for (i, lab, cur), _ in SUBMIT]))
    assert _codes(reply.rejected) == _expected([(i, c) for (i, _, _), c in SUBMIT])
    conflict = reply.rejected[-1]
    assert conflict.HasField("now") and conflict.now.label == "cat"


def test_retract_labels_rejections_carry_their_codes(pool: Running) -> None:
    reply = pool.stub.RetractLabels(agent_pb2.RetractLabelsRequest(
        annotator="ann", ids=[i for (i, _), _ in RETRACT],
        if_current={i: cur for (i, cur), _ in RETRACT if cur is not None}))
    assert _codes(reply.rejected) == _expected([(i, c) for (i, _), c in RETRACT])


def test_delete_samples_rejections_carry_their_codes(pool: Running) -> None:
    reply = pool.stub.DeleteSamples(agent_pb2.DeleteSamplesRequest(annotator="ann", reason="test",
                                                                   ids=[i for i, _ in DELETE]))
    assert _codes(reply.rejected) == _expected(DELETE)


def test_an_undo_that_cannot_put_the_label_back_says_so_by_code(tmp_path: Path, registry: Path) -> None:
    r = start(tmp_path / "data", registry, classes=CLASSES)
    try:
        assert client.ingest(r.stub, make_samples(8, prefix="k")).accepted == 8
        client.submit_labels(r.stub, [("k7", "deer")], "a")
        client.submit_labels(r.stub, [("k7", "dog")], "b")
    finally:
        r.stop()
    r = start(tmp_path / "data", registry, classes=("cat", "dog", "frog"))  # deer dropped
    try:
        reply = r.stub.RetractLabels(agent_pb2.RetractLabelsRequest(annotator="b", restore_previous=True,
                                                                    ids=[i for i, _ in RESTORE]))
        assert _codes(reply.rejected) == _expected(list(RESTORE))
    finally:
        r.stop()


def test_the_clients_own_rejection_of_a_sample_too_large_to_send(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "MAX_MESSAGE_BYTES", client.REQUEST_MARGIN + 1000)
    rejected: list[agent_pb2.Rejection] = []
    sent = list(client.batches([client.image_sample("huge", b"\0" * 5000)], 10, rejected=rejected))
    assert not sent and _codes(rejected) == _expected(list(CLIENT))


def test_every_code_has_a_path() -> None:
    """The tables above drive every RejectionCode but UNSPECIFIED (an older agent's)."""
    tables: list[Sequence[tuple[object, int | None]]] = [list(INGEST.items()), SUBMIT, RETRACT, RESTORE, DELETE,
                                                          CLIENT]
    driven = {c for table in tables for _, c in table if c is not None}
    assert driven == set(agent_pb2.RejectionCode.values()) - {C.REJECTION_CODE_UNSPECIFIED}


def test_a_rejection_without_a_code_is_logged_as_a_bug(caplog: pytest.LogCaptureFixture) -> None:
    """Sent all the same (the write it answers may be committed), but logged as an error."""
    assert rejection_message(Rejected("a", C.REJECTION_CODE_UNSPECIFIED, "why")).code == 0
    assert rejection_message(Rejected("b", 999, "why")).code == 999  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "bug: the rejection of 'a' has no RejectionCode (0): why",
        "bug: the rejection of 'b' has no RejectionCode (999): why"]
    msg = rejection_message(Rejected("a", C.REJECTION_CODE_CONFLICT, "why", ("cat", "bob")))
    assert (msg.code, msg.reason, msg.now.label, msg.now.annotator) == (C.REJECTION_CODE_CONFLICT, "why", "cat", "bob")


def test_no_rejection_message_is_built_outside_the_helper() -> None:
    """``agent_pb2.Rejection(...)`` appears only in agent.errors.rejection_message (which refuses a missing
    code); every other place builds an ``agent.errors.Rejected``, whose code is a required field."""
    root = Path(__file__).resolve().parents[2]
    found = []
    for path in sorted([*(root / "agent").rglob("*.py"), *(root / "shortlist").rglob("*.py")]):
        if path.name.endswith("_pb2.py") or path.name.endswith("_pb2_grpc.py"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        scopes = {n: f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
                if name == "Rejection":
                    found.append((str(path.relative_to(root)), scopes.get(node, "")))
    assert found == [("agent/errors.py", "rejection_message")]


def test_codes_travel_on_grpc_as_enum_values(pool: Running) -> None:
    """A client in another language sees the number on the wire and the name in the descriptor."""
    reply = pool.stub.SubmitLabels(agent_pb2.SubmitLabelsRequest(
        annotator="ann", labels=[agent_pb2.LabelAssignment(id="nope", label="cat")]))
    raw = agent_pb2.SubmitLabelsReply.FromString(reply.SerializeToString())
    assert raw.rejected[0].code == C.REJECTION_CODE_UNKNOWN_ID == 11
    enum = agent_pb2.Rejection.DESCRIPTOR.fields_by_name["code"].enum_type
    assert enum is not None and enum.name == "RejectionCode"
