"""What an outside pipeline sees of a running agent in a few failure cases (docs/agent.md, "Resuming a broken
Ingest", "Retrying writes", "Keepalive", "Replies that list items are bounded"; the pipeline review's
phaseA.py, dl.py, bigsubmit.py, keepalive.py and ka_stream.py, which used a prepared folder of images: here
the images are generated, random 32x32 PNGs). Against an agent started, e.g., with

    shortlist serve --data-dir D --models M --port 53560

run from the repository root one of (``--token T`` where the agent has ``--tokens``, ``--label L`` where its
class list is closed and lacks ``owl``; each ingests its own samples under a fresh id prefix):

    .venv/bin/python scripts/experiments/dos/pipeline_client.py --port 53560 cancelled-ingest
        an Ingest of 200 samples in messages of 20, 0.2 s apart, cancelled by the client after 1 s; then the
        same 200 resent: prints the resend's ``accepted`` and ``duplicates`` (duplicates: stored by the
        cancelled stream)
    .venv/bin/python scripts/experiments/dos/pipeline_client.py --port 53560 deadline-writes
        400 samples ingested, then 20 SubmitLabels of 20 labels each with a 4 ms deadline: prints how many
        ended DEADLINE_EXCEEDED and how many of those had been applied
    .venv/bin/python scripts/experiments/dos/pipeline_client.py --port 53560 big-submit
        300 samples ingested, then one SubmitLabels of their 300 ids and 40,000 unknown ids through a channel
        with gRPC's default limits: prints the answer (before the replies were bounded, RESOURCE_EXHAUSTED
        with the reply's size) and the labelled count before and after
    .venv/bin/python scripts/experiments/dos/pipeline_client.py --port 53560 keepalive-idle
        a channel pinging every 10 s also without calls, idle, a GetStatus every 45 s for 180 s: prints each
        answer and the channel's connectivity states (gRPC logs a GOAWAY "too_many_pings" when refused)
    .venv/bin/python scripts/experiments/dos/pipeline_client.py --port 53560 keepalive-stream
        an Ingest stream without client keepalive sending one sample every 40 s, 4 in all (120 s): prints
        ``ok`` with the count or the error
"""

from __future__ import annotations

import argparse
import io
import time
import uuid
from collections.abc import Iterator

import grpc
import numpy as np
from PIL import Image

from shortlist.v1 import agent_pb2, agent_pb2_grpc

KEEPALIVE = [("grpc.keepalive_time_ms", 10000), ("grpc.keepalive_timeout_ms", 5000),
             ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]


def samples(n: int, prefix: str) -> list[agent_pb2.Sample]:
    rng = np.random.default_rng()
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(agent_pb2.Sample(id=f"{prefix}/{i:05d}.png", encoded_image=buf.getvalue()))
    return out


def messages(items: list[agent_pb2.Sample], size: int, gap: float = 0.0) -> Iterator[agent_pb2.IngestRequest]:
    for i in range(0, len(items), size):
        if gap and i:
            time.sleep(gap)
        yield agent_pb2.IngestRequest(samples=items[i:i + size])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--token", default="")
    ap.add_argument("--label", default="owl", help="the label deadline-writes and big-submit give (a class of the "
                    "agent's, where its class list is closed)")
    ap.add_argument("case", choices=["cancelled-ingest", "deadline-writes", "big-submit", "keepalive-idle",
                                     "keepalive-stream"])
    args = ap.parse_args()
    address = f"127.0.0.1:{args.port}"
    md = (("authorization", "Bearer " + args.token),) if args.token else ()
    big = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    stub = agent_pb2_grpc.AgentStub(grpc.insecure_channel(address, options=big))
    prefix = f"{args.case}-{uuid.uuid4().hex[:8]}"

    if args.case == "cancelled-ingest":
        items = samples(200, prefix)
        call = stub.Ingest.future(messages(items, 20, gap=0.2), metadata=md, timeout=60)
        time.sleep(1.0)
        call.cancel()
        reply = stub.Ingest(messages(items, 50), metadata=md, timeout=60)
        print(f"resend after the cancel: accepted {reply.accepted}, duplicates {reply.duplicates}")
    elif args.case == "deadline-writes":
        items = samples(400, prefix)
        stub.Ingest(messages(items, 50), metadata=md, timeout=120)
        failed = applied = 0
        for k in range(0, 400, 20):
            ids = [s.id for s in items[k:k + 20]]
            req = agent_pb2.SubmitLabelsRequest(labels=[agent_pb2.LabelAssignment(id=i, label=args.label) for i in ids],
                                                annotator="hank")
            try:
                stub.SubmitLabels(req, metadata=md, timeout=0.004)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    failed += 1
                    time.sleep(0.2)
                    now = {r.id for r in stub.ListLabels(agent_pb2.ListLabelsRequest(), metadata=md, timeout=30)}
                    applied += all(i in now for i in ids)
        print(f"{failed} SubmitLabels calls ended DEADLINE_EXCEEDED; {applied} of them had been applied")
    elif args.case == "big-submit":
        items = samples(300, prefix)
        stub.Ingest(messages(items, 50), metadata=md, timeout=120)
        before = stub.GetStatus(agent_pb2.GetStatusRequest(), metadata=md, timeout=5).labeled
        labels = [agent_pb2.LabelAssignment(id=s.id, label=args.label) for s in items] + [
            agent_pb2.LabelAssignment(id=f"site-south/camera-{k % 12:02d}/2024-06-{k % 28 + 1:02d}/IMG_{k:06d}.JPG",
                                      label=args.label) for k in range(40_000)]
        default = agent_pb2_grpc.AgentStub(grpc.insecure_channel(address))
        try:
            reply = default.SubmitLabels(agent_pb2.SubmitLabelsRequest(labels=labels, annotator="importer"),
                                         metadata=md, timeout=60)
            print(f"ok: accepted {reply.accepted}, reply {reply.ByteSize()} bytes")
        except grpc.RpcError as e:
            print(f"SubmitLabels (default channel): {e.code().name}: {e.details()}")
        after = stub.GetStatus(agent_pb2.GetStatusRequest(), metadata=md, timeout=5).labeled
        print(f"labelled before {before}, after {after}")
    elif args.case == "keepalive-idle":
        ch = grpc.insecure_channel(address, options=KEEPALIVE)
        states: list[tuple[int, str]] = []
        ch.subscribe(lambda s: states.append((round(time.time()), s.name)), try_to_connect=True)
        idle = agent_pb2_grpc.AgentStub(ch)
        for k in range(5):
            if k:
                time.sleep(45)
            try:
                idle.GetStatus(agent_pb2.GetStatusRequest(), metadata=md, timeout=5)
                print(f"after {45 * k} s: GetStatus ok", flush=True)
            except grpc.RpcError as e:
                print(f"after {45 * k} s: {e.code().name} {e.details()}", flush=True)
        print("connectivity:", states)
    else:
        plain = agent_pb2_grpc.AgentStub(grpc.insecure_channel(address))
        t0 = time.time()
        try:
            reply = plain.Ingest(messages(samples(4, prefix), 1, gap=40.0), metadata=md, timeout=300)
            print(f"ok: accepted {reply.accepted} in {time.time() - t0:.0f} s")
        except grpc.RpcError as e:
            print(f"{e.code().name} {e.details()} after {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
