"""A small typed client for the agent: used by the CLI, training's ``cycle`` and the benchmarks.

    stub = connect("127.0.0.1:50051")            # waits until the agent answers (or times out)
    reply = ingest(stub, samples, batch=256)      # one client stream, batches of ``batch`` samples
    ids = [s.id for s in stub.Select(agent_pb2.SelectRequest(budget=10, strategy="random")).selected]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import grpc
import numpy as np

from shortlist.v1 import agent_pb2, agent_pb2_grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
LABELS_PER_REQUEST = 10_000  # well below the agent's default --max-ids-per-request (100,000)
# Transient failures worth retrying for unary calls (the agent restarting, a brief network blip).
RETRY_POLICY = ('{"methodConfig": [{"name": [{"service": "shortlist.v1.Agent"}], '
                '"retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "2s", '
                '"backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}')


class AgentUnavailable(ConnectionError):
    """The agent did not answer in time."""


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


def batches(samples: Iterable[agent_pb2.Sample], batch: int,
            on_batch: Callable[[int], None] | None = None) -> Iterator[agent_pb2.IngestRequest]:
    """Group samples into IngestRequests of ``batch``; ``on_batch(n)`` after each is handed over."""
    buf: list[agent_pb2.Sample] = []
    for s in samples:
        buf.append(s)
        if len(buf) >= batch:
            yield agent_pb2.IngestRequest(samples=buf)
            if on_batch is not None:
                on_batch(len(buf))
            buf = []
    if buf:
        yield agent_pb2.IngestRequest(samples=buf)
        if on_batch is not None:
            on_batch(len(buf))


def ingest(stub: agent_pb2_grpc.AgentStub, samples: Iterable[agent_pb2.Sample], batch: int = 256,
           on_batch: Callable[[int], None] | None = None, timeout: float | None = None) -> agent_pb2.IngestReply:
    """Stream ``samples`` in one Ingest call; the reply comes once all are durable."""
    reply: agent_pb2.IngestReply = stub.Ingest(batches(samples, batch, on_batch), timeout=timeout)
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
