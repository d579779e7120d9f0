"""Property-based tests (hypothesis) of every RPC's request fields against one real agent over gRPC.

For any request, well-formed or hostile: the agent never crashes (GetStatus still answers), never
answers UNKNOWN or INTERNAL (nor hangs until a deadline), and its state stays valid: a rejected
request changes no count, an accepted sample is counted and embedded, labels only change by what
was accepted. One agent serves the whole module; examples are derandomised (tests/conftest.py)."""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agent import client
from agent.priors import PRIOR_METHODS
from agent.service import SERVICE_NAME
from agent.strategies import STRATEGIES
from agent.testing import publish_linear
from shortlist.v1 import agent_pb2
from tests.agent.conftest import CLASSES, SIZE, Running, make_images, make_samples, png, start

T = TypeVar("T")

# Codes that say "your request is wrong / too much / not now"; anything else for bad input is a bug
# (UNKNOWN, INTERNAL), a crash (UNAVAILABLE) or a hang (DEADLINE_EXCEEDED).
CLEAN_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
               grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE}
TIMEOUT = 30.0
BASE = 30  # samples ingested before the examples (ids base0..base29, the first 9 labelled)
BASE_IDS = [f"base{i}" for i in range(BASE)]
# Every registered strategy, prior method and declared param (a new one is fuzzed without editing this file).
STRATEGY_NAMES = sorted(STRATEGIES)
PRIOR_NAMES = sorted(PRIOR_METHODS)
PARAM_NAMES = sorted({p.name for e in (*STRATEGIES.values(), *PRIOR_METHODS.values()) for p in e.params})

# ---- value strategies ------------------------------------------------------------------------------
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=24)  # proto strings: no lone surrogates
LONG = st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", "\x00", "/", "../", "🙂"]), st.integers(0, 20_000))
ANY_TEXT = st.one_of(TEXT, LONG)
IDS = st.one_of(st.sampled_from(BASE_IDS), TEXT, LONG, st.sampled_from(["", ".", "..", "/etc/passwd", "a/../../b",
                                                                         "\x00", " ", "base0 ", "BASE0"]))
LABELS = st.one_of(st.sampled_from(CLASSES), TEXT, LONG, st.just(""))
METADATA = st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=4)
PARAM_VALUES = st.one_of(st.integers(-3, 40).map(str), st.floats(-3, 3).map(repr), TEXT,
                         st.sampled_from(["", "nan", "inf", "-inf", "1e-300", "abc", " 3 ", "0x10", "1_0", "٣",
                                          "-0", "0.5", "3.0"]))
PARAMS = st.dictionaries(st.one_of(st.sampled_from(PARAM_NAMES), TEXT), PARAM_VALUES, max_size=3)
HUGE = ["1e9", "1000000000", "2147483647", "9223372036854775808", "99999999999999999999999", "1e308", "-1e308",
        "1e-320", "-2147483648"]
INT32 = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, -1, 1, 2**31 - 1, -(2**31)]))
DIMS = st.one_of(st.integers(-3, 40), st.sampled_from([0, -1, 2**31, 2**40, 2**62, 2**63 - 1, -(2**63)]))
DTYPES = st.one_of(st.sampled_from(["uint8", "float32", "float64", "float16", "int16", "bool", "", "UINT8",
                                    "<f4", "u1"]), TEXT)


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` RGB pixels and holds almost no data (a decompression
    bomb as far as its header goes)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


VALID_PNGS = [png(img) for img in make_images(4, seed=7, hw=(9, 11))]
IMAGE_BYTES = st.one_of(
    st.binary(max_size=2048),
    st.sampled_from(VALID_PNGS),
    st.builds(lambda b, k: b[:k], st.sampled_from(VALID_PNGS), st.integers(0, 200)),  # truncated
    st.builds(lambda w, h: png_header(w, h), st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
    st.builds(lambda s: png(np.random.default_rng(s).integers(0, 256, (1 + s % 17, 1 + s % 13, 3), np.uint8)),
              st.integers(0, 10_000)),  # fresh valid images of odd sizes
)


@st.composite
def tensors(draw: st.DrawFn) -> agent_pb2.Tensor:
    dtype = draw(DTYPES)
    shape = draw(st.lists(DIMS, max_size=5))
    itemsize = 4 if dtype == "float32" else 1
    n = math.prod(shape) * itemsize if shape and all(d > 0 for d in shape) else -1
    if 0 < n <= 4096 and draw(st.booleans()):  # the right length: random bytes, or valid pixels
        if draw(st.booleans()):
            data = draw(st.binary(min_size=n, max_size=n))
        else:
            rng = np.random.default_rng(draw(st.integers(0, 1000)))
            arr = rng.random(shape).astype(np.float32) if dtype == "float32" else rng.integers(0, 256, shape)
            data = np.asarray(arr, np.float32 if dtype == "float32" else np.uint8).tobytes()
    else:
        data = draw(st.binary(max_size=2048))
    return agent_pb2.Tensor(dtype=dtype, shape=shape, data=data)


@st.composite
def samples(draw: st.DrawFn) -> agent_pb2.Sample:
    s = agent_pb2.Sample(id=draw(IDS), uri=draw(ANY_TEXT), metadata=draw(METADATA), label=draw(LABELS))
    kind = draw(st.sampled_from(["image", "tensor", "none"]))
    if kind == "image":
        s.encoded_image = draw(IMAGE_BYTES)
    elif kind == "tensor":
        s.tensor.CopyFrom(draw(tensors()))
    return s


# ---- the agent and its invariants ------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    publish_linear(root / "models", size=SIZE, dim=16, classes=CLASSES, rotation=True, seed=0)
    r = start(root / "data", root / "models")
    reply = client.ingest(r.stub, make_samples(BASE, prefix="base", labels=9))
    assert reply.accepted == BASE
    yield r
    r.stop()


def counts(r: Running) -> tuple[int, int, int]:
    """(samples, labeled, embedded): GetStatus must answer, whatever came before."""
    st_ = r.stub.GetStatus(agent_pb2.GetStatusRequest(), timeout=TIMEOUT)
    return st_.samples, st_.labeled, st_.embedded


def call(fn: Callable[[], T]) -> tuple[T | None, grpc.StatusCode | None, str]:
    try:
        return fn(), None, ""
    except grpc.RpcError as e:
        assert isinstance(e, grpc.Call)
        return None, e.code(), e.details() or ""


def assert_clean(code: grpc.StatusCode | None, details: str, what: object) -> None:
    assert code is None or code in CLEAN_CODES, f"{code}: {details!r} for {str(what)[:600]}"
    if code is not None:
        assert details, f"{code} without a message for {str(what)[:600]}"


# ---- the RPCs --------------------------------------------------------------------------------------
@given(requests=st.lists(st.lists(samples(), max_size=6), max_size=2))
@example(requests=[[agent_pb2.Sample(id="bomb", encoded_image=png_header(60_000, 60_000))]])
@example(requests=[[agent_pb2.Sample(id="huge", tensor=agent_pb2.Tensor(dtype="uint8", shape=[2**62, 2**62, 3]))]])
@example(requests=[[agent_pb2.Sample(id="neg", tensor=agent_pb2.Tensor(dtype="float32", shape=[3, -(2**63), -1]))]])
def test_ingest_any_samples(served: Running, requests: list[list[agent_pb2.Sample]]) -> None:
    before = counts(served)
    sent = sum(len(b) for b in requests)
    reply, code, details = call(lambda: served.stub.Ingest(
        iter([agent_pb2.IngestRequest(samples=b) for b in requests]), timeout=TIMEOUT))
    assert_clean(code, details, requests)
    after = counts(served)
    assert after[2] == after[0], "every stored sample is embedded by the serving model"
    assert after[1] - before[1] <= after[0] - before[0], "only new samples can bring labels"
    if reply is not None:
        assert reply.accepted + reply.duplicates + len(reply.rejected) == sent
        assert after[0] == before[0] + reply.accepted
        assert all(r.reason for r in reply.rejected)
    elif len(requests) == 1:
        assert after == before, "a refused request changes nothing"


@given(select=st.builds(agent_pb2.SelectRequest, budget=INT32,
                        strategy=st.one_of(st.sampled_from(STRATEGY_NAMES), TEXT, LONG),
                        params=PARAMS, seed=st.integers(0, 2**64 - 1),
                        where=st.one_of(st.just({}), st.just({"site": "a"}), METADATA)))
@example(select=agent_pb2.SelectRequest(budget=2**31 - 1, strategy="coreset"))
@example(select=agent_pb2.SelectRequest(budget=-(2**31), strategy="random"))
def test_select_any_request(served: Running, select: agent_pb2.SelectRequest) -> None:
    before = counts(served)
    reply, code, details = call(lambda: served.stub.Select(select, timeout=TIMEOUT))
    assert_clean(code, details, select)
    assert counts(served)[:2] == before[:2]
    if reply is not None:
        ids = [s.id for s in reply.selected]
        assert select.budget >= 1 and len(ids) <= select.budget and len(set(ids)) == len(ids)
        assert reply.strategy == select.strategy and reply.selection_id
        assert all(served.agent.state.lookup(i) is not None for i in ids)


@given(strategy=st.sampled_from(STRATEGY_NAMES), name=st.sampled_from(PARAM_NAMES), value=st.sampled_from(HUGE),
       budget=st.sampled_from([1, 5, 2**31 - 1]))
def test_select_huge_params_are_refused_or_bounded(served: Running, strategy: str, name: str, value: str,
                                                   budget: int) -> None:
    req = agent_pb2.SelectRequest(budget=budget, strategy=strategy, params={name: value})
    _, code, details = call(lambda: served.stub.Select(req, timeout=TIMEOUT))
    assert_clean(code, details, req)
    counts(served)


@given(labels=st.lists(st.tuples(IDS, LABELS), max_size=8), annotator=ANY_TEXT,
       source=st.one_of(st.sampled_from(["", "manual", "prior:knn", "ingest", "Manual"]), ANY_TEXT))
@example(labels=[("base20", "dog"), ("base20", "horse"), ("nope", "cat"), ("", "")], annotator="\x00", source="")
def test_submit_labels_any(served: Running, labels: list[tuple[str, str]], annotator: str, source: str) -> None:
    before = counts(served)
    req = agent_pb2.SubmitLabelsRequest(labels=[agent_pb2.LabelAssignment(id=i, label=lab) for i, lab in labels],
                                        annotator=annotator, source=source)
    reply, code, details = call(lambda: served.stub.SubmitLabels(req, timeout=TIMEOUT))
    assert_clean(code, details, req)
    after = counts(served)
    assert after[0] == before[0] and after[2] == before[2]
    if reply is not None:
        assert reply.accepted + len(reply.rejected) == len(labels)
        assert before[1] <= after[1] <= before[1] + reply.accepted
    else:
        assert after == before


@given(ids=st.lists(st.one_of(st.sampled_from(BASE_IDS), IDS), max_size=6), annotator=ANY_TEXT,
       source=st.one_of(st.sampled_from(["", "manual", "ingest"]), ANY_TEXT))
def test_retract_labels_any(served: Running, ids: list[str], annotator: str, source: str) -> None:
    before = counts(served)
    req = agent_pb2.RetractLabelsRequest(ids=ids, annotator=annotator, source=source)
    reply, code, details = call(lambda: served.stub.RetractLabels(req, timeout=TIMEOUT))
    assert_clean(code, details, req)
    after = counts(served)
    if reply is not None:
        assert reply.accepted + len(reply.rejected) == len(ids)
        assert after[1] == before[1] - reply.accepted
        client.submit_labels(served.stub, [(i, "cat") for i in ids if i in BASE_IDS])  # keep labels for the rest
    else:
        assert after == before


@given(name=st.one_of(st.sampled_from(["", "web"]), TEXT), ids=st.lists(st.one_of(st.sampled_from(BASE_IDS), IDS),
                                                                       max_size=6),
       marks=st.lists(st.tuples(st.one_of(st.sampled_from(BASE_IDS), IDS),
                                st.one_of(st.sampled_from(["", "skip", "unsure"]), TEXT)), max_size=4),
       replace=st.booleans())
def test_update_queue_any(served: Running, name: str, ids: list[str], marks: list[tuple[str, str]],
                          replace: bool) -> None:
    before = counts(served)
    req = agent_pb2.UpdateQueueRequest(name=name, marks=[agent_pb2.QueueMark(id=i, mark=m) for i, m in marks])
    if replace:
        req.queue.CopyFrom(agent_pb2.Queue(ids=ids, source="map"))
    reply, code, details = call(lambda: served.stub.UpdateQueue(req, timeout=TIMEOUT))
    assert_clean(code, details, req)
    assert counts(served) == before
    if reply is not None:
        assert served.stub.GetQueue(agent_pb2.GetQueueRequest(name=name), timeout=TIMEOUT) == reply


@given(method=st.one_of(st.sampled_from(PRIOR_NAMES), TEXT, LONG),
       ids=st.lists(st.one_of(st.sampled_from(BASE_IDS), IDS), max_size=6), params=PARAMS)
def test_prior_labels_any(served: Running, method: str, ids: list[str], params: dict[str, str]) -> None:
    before = counts(served)
    req = agent_pb2.PriorLabelsRequest(method=method, ids=ids, params=params)
    rows, code, details = call(lambda: list(served.stub.PriorLabels(req, timeout=TIMEOUT)))
    assert_clean(code, details, req)
    assert counts(served) == before
    for p in rows or []:
        assert p.label in CLASSES and abs(sum(p.probs.values()) - 1) < 1e-3
        assert not ids or p.id in ids


@given(method=st.sampled_from(PRIOR_NAMES), name=st.sampled_from(PARAM_NAMES), value=st.sampled_from(HUGE))
def test_prior_huge_params_are_refused_or_bounded(served: Running, method: str, name: str, value: str) -> None:
    req = agent_pb2.PriorLabelsRequest(method=method, params={name: value})
    _, code, details = call(lambda: list(served.stub.PriorLabels(req, timeout=TIMEOUT)))
    assert_clean(code, details, req)
    counts(served)


@given(labeled_only=st.booleans(), include_payload=st.booleans())
def test_list_samples_flags(served: Running, labeled_only: bool, include_payload: bool) -> None:
    samples_, labeled, _ = counts(served)
    req = agent_pb2.ListSamplesRequest(labeled_only=labeled_only, include_payload=include_payload)
    rows, code, details = call(lambda: list(served.stub.ListSamples(req, timeout=TIMEOUT)))
    assert code is None, details
    assert rows is not None and len(rows) == (labeled if labeled_only else samples_)
    assert all(bool(s.WhichOneof("payload")) == include_payload for s in rows)
    assert all(s.label for s in rows) if labeled_only else True


INT64 = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, -1, 1, 2**63 - 1, -(2**63)]))


@given(offset=INT64, limit=INT64, chunk=INT32)
def test_get_map_any_page(served: Running, offset: int, limit: int, chunk: int) -> None:
    req = agent_pb2.GetMapRequest(offset=offset, limit=limit, chunk=chunk)
    chunks, code, details = call(lambda: list(served.stub.GetMap(req, timeout=TIMEOUT)))
    assert_clean(code, details, req)
    if code is None:
        assert chunks and all(len(c.points) <= (chunk or 4096) for c in chunks)
        assert sum(len(c.points) for c in chunks) <= (limit or 2**63)
    counts(served)


# ---- bytes that are not (quite) a message ----------------------------------------------------------
METHODS = {m.name: m for m in agent_pb2.DESCRIPTOR.services_by_name["Agent"].methods}
VALID: dict[str, bytes] = {
    "Ingest": agent_pb2.IngestRequest(samples=[client.image_sample("raw0", VALID_PNGS[0], label="cat",
                                                                   metadata={"k": "v"})]).SerializeToString(),
    "Select": agent_pb2.SelectRequest(budget=3, strategy="random", params={}, seed=1,
                                      where={"site": "a"}).SerializeToString(),
    "SubmitLabels": agent_pb2.SubmitLabelsRequest(labels=[agent_pb2.LabelAssignment(id="base25", label="dog")],
                                                  annotator="ann").SerializeToString(),
    "PriorLabels": agent_pb2.PriorLabelsRequest(method="knn", ids=["base20"]).SerializeToString(),
    "ListSamples": agent_pb2.ListSamplesRequest(labeled_only=True).SerializeToString(),
    "ListLabels": agent_pb2.ListLabelsRequest(history=True).SerializeToString(),
    "GetStatus": b"",
    "ReloadModel": b"",
    "GetMap": agent_pb2.GetMapRequest(offset=1, limit=5, chunk=2).SerializeToString(),
    "GetImages": agent_pb2.GetImagesRequest(ids=["base0"], max_side=32, format="webp").SerializeToString(),
    "RetractLabels": agent_pb2.RetractLabelsRequest(ids=["base25"], annotator="ann").SerializeToString(),
    "GetQueue": agent_pb2.GetQueueRequest(name="web").SerializeToString(),
    "UpdateQueue": agent_pb2.UpdateQueueRequest(name="web", queue=agent_pb2.Queue(ids=["base1"], source="map"),
                                                marks=[agent_pb2.QueueMark(id="base1", mark="skip")]
                                                ).SerializeToString(),
    # a class the served agent lacks (refused cleanly): a rename that succeeded would retire a class the other
    # examples label with (tests/agent/test_rename_class.py covers renames that succeed)
    "RenameClass": agent_pb2.RenameClassRequest(from_class="zebra", to_class="okapi",
                                                annotator="ann").SerializeToString(),
    # an id the served agent lacks (rejected per item): a deletion that succeeded would take samples the other
    # examples use (tests/agent/test_delete.py covers deletions)
    "DeleteSamples": agent_pb2.DeleteSamplesRequest(ids=["zz-not-stored"], annotator="ann",
                                                    reason="fuzz").SerializeToString(),
}
INVALID_UTF8 = b"\xff\xfe\xc0\x80"


def test_every_rpc_has_a_valid_example() -> None:
    """The raw-bytes fuzz mutates a valid request of each RPC of the service: a new RPC needs one here (until
    then it is fuzzed with random bytes and mutations of an empty message, not a KeyError)."""
    missing = sorted(set(METHODS) - set(VALID))
    assert not missing, (f"RPC(s) {', '.join(missing)} of shortlist.v1.Agent have no entry in VALID in "
                         "tests/agent/scenarios/test_fuzz.py: add a valid serialised request of each")
    assert not set(VALID) - set(METHODS), f"VALID names RPCs the service lacks: {sorted(set(VALID) - set(METHODS))}"


@st.composite
def raw_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(METHODS)))
    kind = draw(st.sampled_from(["random", "mutated", "utf8"]))
    if kind == "random":
        return name, draw(st.binary(max_size=512))
    data = bytearray(VALID.get(name, b""))  # (a new RPC without an example: test_every_rpc_has_a_valid_example)
    if kind == "utf8":  # a string field whose bytes are not UTF-8: field 2 (strategy / label / ...) as bytes
        return name, bytes(data) + b"\x12" + bytes([len(INVALID_UTF8)]) + INVALID_UTF8
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = draw(st.integers(0, max(0, len(data))))
        if op == "flip" and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return name, bytes(data)


@given(req=raw_requests())
@example(req=("Select", b"\xff"))
@example(req=("Ingest", b"\x0a\x05\x0a\x03\xff\xff\xff"))  # a sample whose id is not UTF-8
@example(req=("SubmitLabels", b"\x12\x02\xc3\x28"))  # annotator not UTF-8
def test_raw_bytes_as_request(served: Running, req: tuple[str, bytes]) -> None:
    name, data = req
    m = METHODS[name]
    path = f"/{SERVICE_NAME}/{name}"
    ident: Callable[[Any], Any] | None = None
    before = counts(served)
    ch = served.channel
    if m.client_streaming:
        fn: Callable[[], Any] = lambda: ch.stream_unary(path, ident, ident)(iter([data]), timeout=TIMEOUT)  # noqa: E731
    elif m.server_streaming:
        fn = lambda: list(ch.unary_stream(path, ident, ident)(data, timeout=TIMEOUT))  # noqa: E731
    else:
        fn = lambda: ch.unary_unary(path, ident, ident)(data, timeout=TIMEOUT)  # noqa: E731
    reply, code, details = call(fn)
    assert_clean(code, details, req)
    after = counts(served)
    assert after[2] == after[0]
    if code is not None:
        assert after == before, "a refused request changes nothing"
    elif name == "Ingest":
        assert isinstance(reply, bytes) and after[0] == before[0] + agent_pb2.IngestReply.FromString(reply).accepted
    elif name in ("Select", "PriorLabels", "ListSamples", "ListLabels", "GetStatus", "ReloadModel", "GetMap",
                  "GetImages", "GetQueue", "UpdateQueue", "RenameClass"):  # a rename moves labels, counts stay
        assert after == before
    elif name == "RetractLabels":
        assert isinstance(reply, bytes)
        assert after[1] == before[1] - agent_pb2.RetractLabelsReply.FromString(reply).accepted
