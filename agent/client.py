"""A small typed client for the agent: used by the CLI, training's ``cycle`` and the benchmarks.

    stub = connect("127.0.0.1:50051")            # waits until the agent answers (or times out)
    reply = ingest(stub, samples, batch=256)      # one client stream, requests of <= 256 samples and
                                                  # <= REQUEST_BYTES each
    ids = [s.id for s in stub.Select(agent_pb2.SelectRequest(budget=10, strategy="random")).selected]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import grpc
import numpy as np

from shortlist.v1 import agent_pb2, agent_pb2_grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Ingest packs samples into requests of at most this many bytes (besides at most ``batch`` samples): a
# quarter of both sides' default 64 MiB message limit, so a folder of phone photos (3-5 MB each) goes
# in requests of a few photos. A sample above it travels alone; one above MAX_MESSAGE_BYTES minus
# REQUEST_MARGIN can never be sent and is rejected here, and the rest still go.
REQUEST_BYTES = 16 * 1024 * 1024
REQUEST_MARGIN = 64 * 1024  # room for the request's own framing and gRPC's
LABELS_PER_REQUEST = 10_000  # well below the agent's default --max-ids-per-request (100,000)
# Transient failures worth retrying for unary calls (the agent restarting, a brief network blip).
RETRY_POLICY = ('{"methodConfig": [{"name": [{"service": "shortlist.v1.Agent"}], '
                '"retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "2s", '
                '"backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}')


class AgentUnavailable(ConnectionError):
    """The agent did not answer in time."""


class IngestInterrupted(RuntimeError):
    """Reading the samples failed in the middle of an Ingest stream. The stream was closed cleanly, so
    ``reply`` says what the agent stored of the samples read before the failure; ``cause`` is the
    reader's exception (also ``__cause__``)."""

    def __init__(self, cause: Exception, reply: agent_pb2.IngestReply, sent: int) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause
        self.reply = reply
        self.sent = sent


def channel(address: str, timeout: float = 10.0) -> grpc.Channel:
    """An insecure channel to ``address`` (HOST:PORT), ready (or AgentUnavailable after ``timeout`` s)."""
    ch = grpc.insecure_channel(address, options=[
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", RETRY_POLICY)])
    try:
        grpc.channel_ready_future(ch).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        ch.close()
        raise AgentUnavailable(f"no agent answers at {address} after {timeout:.0f}s; start one with "
                               f"`shortlist serve --data-dir D --models M --port PORT`") from None
    return ch


def connect(address: str, timeout: float = 10.0) -> agent_pb2_grpc.AgentStub:
    """A stub for the agent at ``address``, once its channel is ready (retries UNAVAILABLE)."""
    return agent_pb2_grpc.AgentStub(channel(address, timeout))


def image_sample(sample_id: str, encoded: bytes, label: str = "", uri: str = "",
                 metadata: dict[str, str] | None = None) -> agent_pb2.Sample:
    return agent_pb2.Sample(id=sample_id, encoded_image=encoded, label=label, uri=uri, metadata=metadata or {})


def tensor_sample(sample_id: str, pixels: np.ndarray, label: str = "", uri: str = "",
                  metadata: dict[str, str] | None = None) -> agent_pb2.Sample:
    """HxWx3 uint8 or 3xHxW float32 pixels -> a Sample with a raw Tensor payload."""
    t = agent_pb2.Tensor(dtype=str(pixels.dtype), shape=list(pixels.shape),
                         data=np.ascontiguousarray(pixels).tobytes())
    return agent_pb2.Sample(id=sample_id, tensor=t, label=label, uri=uri, metadata=metadata or {})


def _framed_size(sample: agent_pb2.Sample) -> int:
    """Bytes ``sample`` adds to an IngestRequest: its own size, the field tag and the length prefix."""
    n = sample.ByteSize()
    return n + 1 + (n.bit_length() + 6) // 7


def batches(samples: Iterable[agent_pb2.Sample], batch: int,
            on_batch: Callable[[int], None] | None = None, max_bytes: int | None = None,
            rejected: list[agent_pb2.Rejection] | None = None) -> Iterator[agent_pb2.IngestRequest]:
    """Group samples into IngestRequests of at most ``batch`` samples and ``max_bytes`` bytes (default
    REQUEST_BYTES; a larger sample goes alone); ``on_batch(n)`` after each is handed over. A sample too
    large for any message (MAX_MESSAGE_BYTES - REQUEST_MARGIN) is skipped with a Rejection appended to
    ``rejected`` (counted by ``on_batch`` too)."""
    limit = REQUEST_BYTES if max_bytes is None else max_bytes
    largest = MAX_MESSAGE_BYTES - REQUEST_MARGIN
    buf: list[agent_pb2.Sample] = []
    size = 0
    for s in samples:
        n = _framed_size(s)
        if n > largest:
            if rejected is not None:
                rejected.append(agent_pb2.Rejection(id=s.id, reason=(
                    f"sample of {n / 2**20:.1f} MiB is larger than the largest gRPC message "
                    f"({largest / 2**20:.1f} MiB); not sent (shrink or re-encode the image)")))
            if on_batch is not None:
                on_batch(1)
            continue
        if buf and size + n > limit:
            yield agent_pb2.IngestRequest(samples=buf)
            if on_batch is not None:
                on_batch(len(buf))
            buf, size = [], 0
        buf.append(s)
        size += n
        if len(buf) >= batch:
            yield agent_pb2.IngestRequest(samples=buf)
            if on_batch is not None:
                on_batch(len(buf))
            buf, size = [], 0
    if buf:
        yield agent_pb2.IngestRequest(samples=buf)
        if on_batch is not None:
            on_batch(len(buf))


def ingest(stub: agent_pb2_grpc.AgentStub, samples: Iterable[agent_pb2.Sample], batch: int = 256,
           on_batch: Callable[[int], None] | None = None, timeout: float | None = None,
           max_bytes: int | None = None) -> agent_pb2.IngestReply:
    """Stream ``samples`` in one Ingest call, in requests of at most ``batch`` samples and ``max_bytes``
    bytes (see ``batches``); the reply comes once all are durable. Samples too large to send are in the
    reply's ``rejected`` like the agent's own rejections. When iterating ``samples`` raises, the stream
    is closed after the samples read so far and IngestInterrupted carries the agent's reply for them."""
    failed: list[Exception] = []
    sent = 0

    def guarded() -> Iterator[agent_pb2.Sample]:
        nonlocal sent
        try:
            for s in samples:
                sent += 1
                yield s
        except Exception as e:  # gRPC would turn it into UNKNOWN "Exception iterating requests!"
            failed.append(e)

    too_large: list[agent_pb2.Rejection] = []
    reply: agent_pb2.IngestReply = stub.Ingest(batches(guarded(), batch, on_batch, max_bytes, too_large),
                                               timeout=timeout)
    reply.rejected.extend(too_large)
    if failed:
        raise IngestInterrupted(failed[0], reply, sent) from failed[0]
    return reply


def list_samples(stub: agent_pb2_grpc.AgentStub, labeled_only: bool = False,
                 include_payload: bool = False) -> Iterator[agent_pb2.Sample]:
    yield from stub.ListSamples(agent_pb2.ListSamplesRequest(labeled_only=labeled_only,
                                                             include_payload=include_payload))


def submit_labels(stub: agent_pb2_grpc.AgentStub, labels: Iterable[tuple[str, str]],
                  annotator: str = "", chunk: int = LABELS_PER_REQUEST) -> agent_pb2.SubmitLabelsReply:
    """Submit (id, label) pairs, ``chunk`` per request (the agent takes at most ``--max-ids-per-request``
    in one); the replies are summed. Each request is durable on its own."""
    total = agent_pb2.SubmitLabelsReply()
    pairs = list(labels)
    for start in range(0, max(len(pairs), 1), chunk):
        req = agent_pb2.SubmitLabelsRequest(
            labels=[agent_pb2.LabelAssignment(id=i, label=lab) for i, lab in pairs[start:start + chunk]],
            annotator=annotator)
        reply: agent_pb2.SubmitLabelsReply = stub.SubmitLabels(req)
        total.accepted += reply.accepted
        total.rejected.extend(reply.rejected)
    return total
