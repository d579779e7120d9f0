"""The agent's commands: ``shortlist serve | ingest | select | label | prior | status`` and
``shortlist bench agent``. No torch: these run with onnxruntime alone."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from agent import client
from agent.limits import MIB, Limits
from shortlist.v1 import agent_pb2

LIMITS = Limits()  # the defaults, shown by `shortlist serve --help`

DEFAULT_AGENT = os.environ.get("SHORTLIST_AGENT", "127.0.0.1:50051")
AgentOpt = typer.Option(DEFAULT_AGENT, "--agent", help="HOST:PORT of a running agent (env SHORTLIST_AGENT)")
JsonOpt = typer.Option(False, "--json", help="machine-readable output on stdout")

console = Console(stderr=True)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for it in items:
        key, sep, value = it.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{what} {it!r} must look like key=value")
        out[key] = value
    return out


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True)


def _rpc(fn: Any) -> Any:
    """Run an RPC; print the agent's message and exit 1 on a gRPC error instead of a traceback."""
    try:
        return fn()
    except grpc.RpcError as e:
        code = e.code()
        detail = e.details()
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (detail or ""):
            # gRPC's own message-size check (the agent's limits say in their message what to do)
            detail = (f"{detail} (send fewer samples per message: lower --batch; the agent's limit is "
                      "`shortlist serve --max-message-mb`)")
        console.print(f"[red]{code.name}[/red]: {detail}")
        raise typer.Exit(1) from None
    except client.AgentUnavailable as e:
        console.print(f"[red]UNAVAILABLE[/red]: {e}")
        raise typer.Exit(1) from None


def _status_dict(s: agent_pb2.Status) -> dict[str, Any]:
    return {"samples": s.samples, "labeled": s.labeled, "embedded": s.embedded, "model_version": s.model_version,
            "pending_model_version": s.pending_model_version, "pending_embedded": s.pending_embedded,
            "classes": list(s.classes), "strategies": list(s.strategies), "prior_methods": list(s.prior_methods),
            "warnings": list(s.warnings)}


def serve(data_dir: Path = typer.Option(..., "--data-dir", help="agent state folder (created if missing)"),
          models: Path = typer.Option(..., "--models", help="model registry folder (vNNNN/ versions)"),
          host: str = typer.Option("127.0.0.1", "--host"),
          port: int = typer.Option(50051, "--port"),
          classes: str = typer.Option("", "--classes", help="closed class list a,b,c (default: open)"),
          no_blobs: bool = typer.Option(False, "--no-blobs", help="do not keep payloads (no re-embedding, "
                                        "no ListSamples payloads)"),
          poll: float = typer.Option(5.0, "--poll", help="seconds between registry checks"),
          batch_size: int = typer.Option(256, "--batch-size", help="images per onnxruntime call"),
          max_message_mb: int = typer.Option(64, "--max-message-mb", min=1, help="largest gRPC message accepted"),
          max_samples_per_request: int = typer.Option(
              LIMITS.max_samples_per_request, "--max-samples-per-request", min=1,
              help="samples in one IngestRequest message"),
          max_image_mb: float = typer.Option(LIMITS.max_image_bytes / MIB, "--max-image-mb", min=0.001,
                                             help="encoded image (or raw tensor) size of one sample"),
          max_pixels: int = typer.Option(LIMITS.max_pixels, "--max-pixels", min=1,
                                         help="decoded pixels (H x W) of one image, checked from its header"),
          max_id_chars: int = typer.Option(LIMITS.max_id_chars, "--max-id-chars", min=1, help="sample id length"),
          max_label_chars: int = typer.Option(LIMITS.max_label_chars, "--max-label-chars", min=1,
                                              help="label and annotator name length"),
          max_uri_chars: int = typer.Option(LIMITS.max_uri_chars, "--max-uri-chars", min=1, help="uri length"),
          max_metadata_entries: int = typer.Option(LIMITS.max_metadata_entries, "--max-metadata-entries", min=1,
                                                   help="metadata entries of one sample (and --where filters)"),
          max_metadata_chars: int = typer.Option(LIMITS.max_metadata_chars, "--max-metadata-chars", min=1,
                                                 help="length of each metadata key and value"),
          max_ids_per_request: int = typer.Option(LIMITS.max_ids_per_request, "--max-ids-per-request", min=1,
                                                  help="labels in one SubmitLabels, ids in one PriorLabels"),
          max_budget: int = typer.Option(LIMITS.max_select_budget, "--max-budget", min=1,
                                         help="largest Select budget"),
          max_ingest_streams: int = typer.Option(LIMITS.max_ingest_streams, "--max-ingest-streams", min=1,
                                                 help="Ingest streams served at once (more: RESOURCE_EXHAUSTED)"),
          cpu: bool = typer.Option(False, "--cpu", help="never try CUDAExecutionProvider")) -> None:
    """Run the agent until SIGTERM/SIGINT (then finish in-flight calls, snapshot the index, exit)."""
    from agent.config import AgentConfig
    from agent.service import create_server, stop_server
    from agent.state import ClassListError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    class_list = tuple(c.strip() for c in classes.split(",") if c.strip()) or None
    try:
        limits = Limits(max_message_bytes=max_message_mb * MIB, max_samples_per_request=max_samples_per_request,
                        max_image_bytes=round(max_image_mb * MIB), max_pixels=max_pixels, max_id_chars=max_id_chars,
                        max_label_chars=max_label_chars, max_uri_chars=max_uri_chars,
                        max_metadata_entries=max_metadata_entries, max_metadata_chars=max_metadata_chars,
                        max_ids_per_request=max_ids_per_request, max_select_budget=max_budget,
                        max_ingest_streams=max_ingest_streams)
        config = AgentConfig(data_dir, models, host=host, port=port, classes=class_list, blobs=not no_blobs,
                             poll_s=poll, batch_size=batch_size, use_cuda=not cpu, limits=limits)
        server, bound, agent = create_server(config)
    except (ClassListError, OSError, ValueError) as e:
        console.print(f"[red]cannot start[/red]: {e}")
        raise typer.Exit(2) from None
    st = agent.status()
    provider = agent.manager.current.embedder.provider if agent.manager.current else "none"
    console.print(f"agent on {host}:{bound}: {st.samples} samples, model {st.model_version or '(none yet)'} "
                  f"({provider}), registry {models}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    console.print("stopping: finishing in-flight calls")
    stop_server(server, agent)


def _source_samples(source: str, split: str, limit: int | None, with_labels: bool,
                    metadata: dict[str, str]) -> Iterator[agent_pb2.Sample]:
    from shortlist.datasets import iter_images

    for item in iter_images(source, split=split, limit=limit):
        label = item.label or "" if with_labels else ""
        if item.encoded is not None:
            yield client.image_sample(item.id, item.encoded, label=label, uri=item.uri, metadata=metadata)
        elif item.pixels is not None:
            yield client.tensor_sample(item.id, item.pixels, label=label, uri=item.uri, metadata=metadata)


def ingest(source: str = typer.Argument(..., help="folder of images, ImageFolder tree, tar, CIFAR folder"),
           agent: str = AgentOpt,
           with_labels: bool = typer.Option(False, "--with-labels", help="class folders become labels"),
           split: str = typer.Option("train", "--split"),
           batch: int = typer.Option(256, "--batch", min=1),
           limit: int | None = typer.Option(None, "--limit", min=1),
           meta: list[str] = typer.Option([], "--meta", help="metadata k=v on every sample (repeatable; "
                                          "select --where k=v filters on it)"),
           as_json: bool = JsonOpt) -> None:
    """Stream a source's images into the agent (acknowledged once durable)."""
    metadata = _pairs(meta, "--meta")
    stub = _rpc(lambda: client.connect(agent))
    with _progress() as progress:
        task = progress.add_task("ingest", total=limit)
        reply = _rpc(lambda: client.ingest(stub, _source_samples(source, split, limit, with_labels, metadata), batch,
                                           on_batch=lambda n: progress.advance(task, n)))
    out = {"accepted": reply.accepted, "duplicates": reply.duplicates,
           "rejected": [{"id": r.id, "reason": r.reason} for r in reply.rejected]}
    if as_json:
        print(json.dumps(out))
        return
    console.print(f"accepted {reply.accepted}, duplicates {reply.duplicates}, rejected {len(reply.rejected)}")
    for r in reply.rejected[:10]:
        console.print(f"  {r.id}: {r.reason}")


def select(agent: str = AgentOpt,
           budget: int = typer.Option(..., "--budget"),
           strategy: str = typer.Option("random", "--strategy"),
           param: list[str] = typer.Option([], "--param", help="strategy parameter k=v (repeatable)"),
           where: list[str] = typer.Option([], "--where", help="metadata filter k=v (repeatable)"),
           seed: int = typer.Option(0, "--seed", min=0),
           as_json: bool = JsonOpt) -> None:
    """Which samples to label next."""
    stub = _rpc(lambda: client.connect(agent))
    req = agent_pb2.SelectRequest(budget=budget, strategy=strategy, params=_pairs(param, "--param"), seed=seed,
                                  where=_pairs(where, "--where"))
    reply = _rpc(lambda: stub.Select(req))
    if as_json:
        print(json.dumps({"selection_id": reply.selection_id, "model_version": reply.model_version,
                          "strategy": reply.strategy, "details": dict(reply.details),
                          "selected": [{"id": s.id, "score": s.score} for s in reply.selected]}))
        return
    table = Table(title=f"{reply.strategy} @ {reply.model_version or 'no model'}",
                  caption=f"selection {reply.selection_id}")
    table.add_column("id")
    table.add_column("score", justify="right")
    for s in reply.selected:
        table.add_row(s.id, f"{s.score:.4g}")
    console = Console()
    console.print(table)
    for key, value in sorted(reply.details.items()):
        console.print(f"{key}: {value}", style="yellow" if key == "warning" else None)


def label(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV with columns id,label"),
          agent: str = AgentOpt,
          annotator: str = typer.Option(os.environ.get("USER", "cli"), "--annotator"),
          as_json: bool = JsonOpt) -> None:
    """Submit labels from a CSV file (header id,label)."""
    with open(file, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"id", "label"} <= set(rows[0]):
        raise typer.BadParameter(f"{file} needs a header with columns id,label (has {list(rows[0])})")
    stub = _rpc(lambda: client.connect(agent))
    reply = _rpc(lambda: client.submit_labels(stub, [(r["id"], r["label"]) for r in rows], annotator))
    if as_json:
        print(json.dumps({"accepted": reply.accepted,
                          "rejected": [{"id": r.id, "reason": r.reason} for r in reply.rejected]}))
        return
    console.print(f"accepted {reply.accepted}, rejected {len(reply.rejected)}")
    for r in reply.rejected[:10]:
        console.print(f"  {r.id}: {r.reason}")


def prior(agent: str = AgentOpt,
          method: str = typer.Option("knn", "--method"),
          ids: list[str] = typer.Option([], "--id", help="sample id (repeatable; default: every unlabelled)"),
          param: list[str] = typer.Option([], "--param", help="method parameter k=v (repeatable)"),
          as_json: bool = JsonOpt) -> None:
    """Prior pseudo-labels (class probabilities) for unlabelled samples."""
    stub = _rpc(lambda: client.connect(agent))
    req = agent_pb2.PriorLabelsRequest(method=method, ids=ids, params=_pairs(param, "--param"))
    rows = _rpc(lambda: list(stub.PriorLabels(req)))
    if as_json:
        for p in rows:
            print(json.dumps({"id": p.id, "label": p.label, "confidence": p.confidence, "probs": dict(p.probs),
                              "model_version": p.model_version}))
        return
    table = Table(title=f"{method} priors ({rows[0].model_version if rows else 'none'})")
    for col in ("id", "label", "confidence"):
        table.add_column(col)
    for p in rows:
        table.add_row(p.id, p.label, f"{p.confidence:.3f}")
    Console().print(table)


def status(agent: str = AgentOpt, as_json: bool = JsonOpt) -> None:
    """The agent's pool, labels, serving model and available strategies."""
    stub = _rpc(lambda: client.connect(agent))
    s = _rpc(lambda: stub.GetStatus(agent_pb2.GetStatusRequest()))
    d = _status_dict(s)
    if as_json:
        print(json.dumps(d))
        return
    for k, v in d.items():
        Console().print(f"{k}: {', '.join(v) if isinstance(v, list) else v}")


# ---- shortlist bench agent ---------------------------------------------------------------------------
def bench_agent(models: Path | None = typer.Option(None, "--models", help="registry to take the newest "
                                                   "version from (default: a ~0.2 GMAC CNN built here)"),
                n: int = typer.Option(3072, "--n", help="images to ingest, over all rounds"),
                batch: int = typer.Option(256, "--batch", help="images per IngestRequest and per onnxruntime call"),
                rounds: int = typer.Option(3, "--rounds", min=1, help="alternating raw/ingest rounds"),
                source: str | None = typer.Option(None, "--source", help="image source (default: synthetic JPEGs)"),
                cpu: bool = typer.Option(False, "--cpu", help="never try CUDAExecutionProvider"),
                as_json: bool = JsonOpt) -> None:
    """Images/s of (a) raw onnxruntime on preprocessed batches and (b) the same model through gRPC
    Ingest end to end (JPEG decode, blobs flushed, SQLite commit, index add), and their ratio."""
    from agent.bench import bench_ingest

    try:
        r = bench_ingest(models, n=n, batch=batch, rounds=rounds, source=source, use_cuda=not cpu)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if as_json:
        print(json.dumps(r))
        return
    out = Console()
    out.print(f"model {r['model']} on {r['provider']}, input {r['input'][0]}x{r['input'][1]}, "
              f"{r['rounds']} rounds of {r['images_per_round']} images, batch {r['batch']}")
    fmt = ", ".join
    out.print(f"(a) raw onnxruntime:         {r['raw_median']:9.1f} images/s  "
              f"(rounds: {fmt(f'{v:.1f}' for v in r['raw_images_per_s'])})")
    out.print(f"(b) gRPC Ingest end to end:  {r['ingest_median']:9.1f} images/s  "
              f"(rounds: {fmt(f'{v:.1f}' for v in r['ingest_images_per_s'])})")
    out.print(f"ratio (b)/(a), median:       {r['ratio_median']:9.3f}  "
              f"(rounds: {fmt(f'{v:.3f}' for v in r['ratios'])}; goal >= 0.9)")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("ingest")(ingest)
    app.command("select")(select)
    app.command("label")(label)
    app.command("prior")(prior)
    app.command("status")(status)
    bench_app.command("agent")(bench_agent)
