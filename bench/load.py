"""``shortlist bench load``: many concurrent clients against one agent, as a team would use it.

N client threads, each with its own gRPC channel, pick RPCs at random by ``--mix`` weight and call
them back to back: Ingest (a small batch of fresh synthetic PNGs), Select (a strategy picked from
``--strategies``), SubmitLabels (a few pool ids with a label), PriorLabels (a few pool ids) and
GetStatus. It stops by itself after ``--seconds`` or ``--max-requests`` calls (each call has a
``--timeout`` deadline, so the run is bounded by seconds + timeout), then prints requests, errors by
status code and p50/p99 latency per RPC (and per strategy for Select), the time of every strategy
and prior method called alone (before the load), and the agent's RSS before and after the load
(/proc/PID/status VmRSS of the local agent process). The figures also go to ``OUT/results.json``.

Loopback only: it refuses a non-loopback ``--agent`` (this is a load generator, not a tool to point
at a service on the network). Without ``--agent`` it starts ``shortlist serve`` itself, as a separate
process, on a free loopback port, over ``DATA_DIR/agent`` with the registry ``DATA_DIR/models``
(``--models`` to use another). The pool (``--pool N`` samples: synthetic 32x32 images, or the first N
images of ``--data``) is ingested before the load and kept: a second run with the same ``--data-dir``
ingests only what is missing.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import grpc
import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from agent import client
from agent.map_fit import isolated_env, isolated_module
from bench.metrics import strict_json, write_json
from shortlist.console import make_console
from shortlist.datasets import sources_said
from shortlist.options import finite
from shortlist.v1 import agent_pb2, agent_pb2_grpc

RPCS = ("Ingest", "Select", "SubmitLabels", "PriorLabels", "GetStatus")
MIX_KEYS = {"ingest": "Ingest", "select": "Select", "labels": "SubmitLabels", "prior": "PriorLabels",
            "status": "GetStatus"}
DEFAULT_MIX = "status=3,select=3,labels=2,ingest=1,prior=1"
DEFAULT_STRATEGIES = "random,margin,coreset,typiclust,as3l"
SYNTHETIC_CLASSES = ("c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9")
IMAGE_SIZE = (32, 32)
POOL_PREFIX = "pool/"
# The goals of issue 13 for this benchmark (checked and printed; informative, never an exit status).
FAST_RPCS = ("GetStatus", "SubmitLabels", "Select random", "Select margin", "Select coreset")
FAST_P99_S = 1.0
SOLO_LIMIT_S = 10.0
RSS_GROWTH = 0.10
# An "idle" RSS reading waits until the agent has used under QUIET_CPU CPU seconds per second for QUIET_S
# seconds in a row: the calls the clients gave up on, its own background work and the malloc trim it does
# after a burst of calls (agent/memory.py IdleTrim, 2 s after the last call) are then over, so the reading
# is what the agent keeps, not the working arrays of the calls running at that instant (at a 50,000-sample
# pool those swung the RSS by +-70 MB from one reading to the next: docs/reliability.md, Load).
# A thread in state R (running, or runnable and waiting for a CPU) or D (uninterruptible I/O) in more than
# BUSY_SHARE of the readings over those QUIET_S seconds also means "not idle": on a busy machine a heavy call
# in its lane's threads (niceness +10 over the agent's) can get under QUIET_CPU of a core while it still holds
# its working arrays (50-110 MB at 50,000 samples: docs/reliability.md, "What a fresh agent's first load fills").
QUIET_S = 3.0
QUIET_CPU = 0.05
BUSY_SHARE = 0.5


class LoadError(Exception):
    """A setting or a target the benchmark cannot work with (message says what to change)."""


@dataclass(frozen=True)
class LoadConfig:
    """Everything ``bench load`` runs with (one frozen record, written into results.json)."""

    agent: str = ""  # HOST:PORT of a running agent; "" = start one here
    data_dir: Path = Path("runs/load")
    out: Path | None = None  # folder for results.json (default: data_dir)
    pool: int = 0  # samples the pool should hold (topped up with synthetic images or --data)
    data: str = ""  # image source for the pool (any shortlist.datasets source)
    split: str = "train"
    models: Path | None = None  # registry for an agent started here (default: data_dir/models, built once)
    dim: int = 128  # embedding size of the model built here
    clients: int = 16
    seconds: float = 60.0
    warmup: float | None = None  # seconds of the same load before the measured one (not counted; RSS "before"
    # after it); None: as long as the load (``seconds``), so that the agent has reached its working set first
    max_requests: int = 200_000
    timeout: float = 30.0  # deadline of every call
    mix: dict[str, float] = field(default_factory=lambda: parse_mix(DEFAULT_MIX))
    strategies: tuple[str, ...] = tuple(DEFAULT_STRATEGIES.split(","))
    priors: tuple[str, ...] = ("knn",)
    solo: tuple[str, ...] = ("all",)  # strategies timed alone before the load ("all", or none: ())
    budget: int = 10
    ingest_batch: int = 8
    label_batch: int = 5
    prior_ids: int = 16
    seed_labels: int = 50  # labelled samples the pool should have before the load (for priors, uncertainty)
    seed: int = 0
    agent_pid: int = 0  # pid of a running agent (default: found from its listening port)
    idle_wait: float = 60.0  # longest wait for the agent to be idle before an idle RSS reading (0: none)
    connection: client.ClientConfig = field(default_factory=client.ClientConfig)  # TLS and token for --agent


def parse_mix(text: str) -> dict[str, float]:
    """``status=3,select=3,...`` -> {RPC name: weight}; every key one of MIX_KEYS, weights >= 0."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in MIX_KEYS:
            raise LoadError(f"--mix item {part!r} must be NAME=WEIGHT with NAME one of {', '.join(MIX_KEYS)}")
        try:
            weight = float(value)
        except ValueError:
            raise LoadError(f"--mix weight {value!r} of {key} is not a number") from None
        if not weight >= 0:
            raise LoadError(f"--mix weight of {key} must be >= 0 (got {value})")
        out[MIX_KEYS[key]] = weight
    if not any(out.values()):
        raise LoadError("--mix gives every RPC weight 0; give at least one a positive weight")
    return out


# ---- the target ------------------------------------------------------------------------------------
def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LoadError(f"--agent {address!r} must be HOST:PORT (e.g. 127.0.0.1:50051)")
    return host, int(port)


def require_loopback(address: str) -> tuple[str, int]:
    """(host, port) of ``address`` when every address it resolves to is loopback; LoadError otherwise."""
    host, port = split_address(address)
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        raise LoadError(f"--agent {address!r}: cannot resolve {host!r} ({e})") from None
    addrs = {str(info[4][0]) for info in infos}
    outside = sorted(a for a in addrs if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if outside:
        raise LoadError(f"--agent {address!r} resolves to {', '.join(outside)}, not a loopback address: "
                        "bench load only drives an agent on this machine (127.0.0.1, ::1 or localhost)")
    return host, port


def listening_pid(port: int) -> int:
    """The pid of the local process listening on TCP ``port`` (from /proc), or 0 when not found
    (another user's process, or no /proc)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    if not inodes:
        return 0
    targets = {f"socket:[{i}]" for i in inodes}
    holders: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:  # another user's process, or gone
            continue
        if any(_link(fd) in targets for fd in fds):
            holders.add(int(proc.name))
    # A child forked by the listener holds the socket too until it execs (or for good, if it inherits it):
    # the listener is the holder whose parent is not a holder.
    roots = sorted(p for p in holders if _parent_pid(p) not in holders)
    return roots[0] if roots else (min(holders) if holders else 0)


def _link(fd: Path) -> str:
    """Where a /proc/PID/fd entry points; "" when it closed meanwhile (a busy process opens and closes
    files while it is scanned: one such fd must not hide the process's others)."""
    try:
        return os.readlink(fd)
    except OSError:
        return ""


def _proc_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as {field: value}; {} when unreadable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def _parent_pid(pid: int) -> int:
    ppid = _proc_status(pid).get("PPid", "0")
    return int(ppid) if ppid.isdigit() else 0


def rss_bytes(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid`` in bytes; {} when unreadable."""
    status = _proc_status(pid)
    return {key: int(status[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM") if key in status}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Target:
    address: str
    pid: int
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def ensure_registry(cfg: LoadConfig, classes: Sequence[str]) -> Path:
    """``--models``, or DATA_DIR/models with a linear 32x32 encoder (logits and rotation heads) built once."""
    if cfg.models is not None:
        if not cfg.models.is_dir():
            raise LoadError(f"--models {cfg.models} is not a folder")
        return cfg.models
    from agent.testing import linear_encoder, publish_model
    from shortlist.manifest import Preprocess, newest_complete

    registry = cfg.data_dir / "models"
    if newest_complete(registry) is None:
        model = linear_encoder(IMAGE_SIZE, cfg.dim, list(classes), rotation=True, seed=cfg.seed)
        publish_model(registry, model, Preprocess(size=IMAGE_SIZE), list(classes), method="bench-load")
    return registry


def start_agent(cfg: LoadConfig, registry: Path) -> Target:
    """``shortlist serve`` as a child process on a free loopback port; waits until it answers."""
    port = free_port()
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    log = cfg.data_dir / "agent.log"
    # isolated: a module-named file in the caller's working folder (queue.py, ...) is not imported by the agent
    cmd = isolated_module("shortlist.cli", "serve", "--data-dir", str(cfg.data_dir / "agent"), "--models",
                          str(registry), "--host", "127.0.0.1", "--port", str(port), "--cpu")
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=isolated_env())
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise LoadError(f"the agent exited at start (status {proc.returncode}); see {log}")
        try:  # a plain call, as bench.cifar10.process does: no ready future, no polling thread to race a close
            with grpc.insecure_channel(address) as ch:
                agent_pb2_grpc.AgentStub(ch).GetStatus(agent_pb2.GetStatusRequest(), timeout=2)
            break
        except grpc.RpcError:
            time.sleep(0.3)
            if time.monotonic() > deadline:
                proc.kill()
                raise LoadError(f"the agent did not answer within 120 s; see {log}") from None
    return Target(address, proc.pid, proc, log)


# ---- the pool --------------------------------------------------------------------------------------
def synthetic_image(i: int, seed: int, classes: int) -> np.ndarray:
    """32x32x3 uint8: smooth noise tinted by class ``i % classes`` (a colour per class), deterministic."""
    rng = np.random.default_rng([seed, i])
    small = rng.integers(0, 120, (8, 8, 3)).astype(np.float32)
    img = np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)
    c = i % classes
    tint = np.array([(c * 37) % 136, (c * 91) % 136, (c * 53) % 136], np.float32)
    return np.clip(img + tint, 0, 255).astype(np.uint8)


def pool_items(cfg: LoadConfig, have: set[str]) -> tuple[list[str], Iterator[agent_pb2.Sample]]:
    """(class names, the pool's samples not in ``have``): the first cfg.pool images of --data, or
    synthetic ones (ids ``pool/NNNNNN``, label = class)."""
    from shortlist.images import encode_png

    if cfg.data:
        from shortlist.datasets import iter_images

        items = list(iter_images(cfg.data, split=cfg.split, limit=cfg.pool))
        names = sorted({it.label for it in items if it.label})
        if len(items) < cfg.pool:
            raise LoadError(f"--data {cfg.data} has {len(items)} images in split {cfg.split!r}, fewer than "
                            f"--pool {cfg.pool}")

        def from_source() -> Iterator[agent_pb2.Sample]:
            for it in items:
                sid = POOL_PREFIX + it.id
                if sid in have:
                    continue
                data = it.encoded if it.encoded is not None else encode_png(np.asarray(it.pixels))
                yield client.image_sample(sid, data, label=it.label or "", uri=it.uri)

        return names or list(SYNTHETIC_CLASSES), from_source()
    names = list(SYNTHETIC_CLASSES)

    def synthetic() -> Iterator[agent_pb2.Sample]:
        for i in range(cfg.pool):
            sid = f"{POOL_PREFIX}{i:06d}"
            if sid not in have:
                yield client.image_sample(sid, encode_png(synthetic_image(i, cfg.seed, len(names))))

    return names, synthetic()


def pool_classes(cfg: LoadConfig) -> list[str]:
    if cfg.data:
        from shortlist.datasets import iter_images

        names = sorted({it.label for it in iter_images(cfg.data, split=cfg.split, limit=cfg.pool) if it.label})
        return names or list(SYNTHETIC_CLASSES)
    return list(SYNTHETIC_CLASSES)


def list_pool(stub: agent_pb2_grpc.AgentStub) -> tuple[list[str], dict[str, str]]:
    """(every id, {id: label} of the labelled ones) from ListSamples."""
    ids: list[str] = []
    labels: dict[str, str] = {}
    for s in stub.ListSamples(agent_pb2.ListSamplesRequest()):
        ids.append(s.id)
        if s.label:
            labels[s.id] = s.label
    return ids, labels


def fill_pool(cfg: LoadConfig, stub: agent_pb2_grpc.AgentStub, say: Callable[[str], None]) -> None:
    """Top the pool up to cfg.pool samples (resumable: samples already there are skipped)."""
    if cfg.pool <= 0:
        return
    ids, _ = list_pool(stub)
    have = {i for i in ids if i.startswith(POOL_PREFIX)}
    missing = cfg.pool - len(have)
    if missing <= 0:
        say(f"pool: {len(have)} samples already there (reused)")
        return
    _, todo = pool_items(cfg, have)
    say(f"pool: ingesting {missing} samples ({len(have)} already there)")
    t0 = time.monotonic()
    done = 0
    chunk: list[agent_pb2.Sample] = []
    for s in todo:  # streams of 4096, so an interrupted build keeps what was acknowledged
        chunk.append(s)
        if len(chunk) == 4096:
            done += _ingest_chunk(stub, chunk)
            chunk = []
            say(f"  {done}/{missing} ({done / (time.monotonic() - t0):.0f}/s)")
    if chunk:
        done += _ingest_chunk(stub, chunk)
    say(f"pool: ingested {done} in {time.monotonic() - t0:.0f} s")


def _ingest_chunk(stub: agent_pb2_grpc.AgentStub, chunk: list[agent_pb2.Sample]) -> int:
    reply = client.ingest(stub, chunk, batch=256)
    if reply.rejected:
        r = reply.rejected[0]
        raise LoadError(f"the agent rejected {client.rejected_count(reply)} pool samples, e.g. {r.id}: {r.reason}")
    return int(reply.accepted + reply.duplicates)


def seed_labels(cfg: LoadConfig, stub: agent_pb2_grpc.AgentStub, ids: list[str], labels: dict[str, str],
                classes: list[str]) -> None:
    """Label pool samples until cfg.seed_labels are labelled (every class at least once when possible)."""
    need = cfg.seed_labels - len(labels)
    if need <= 0 or not classes:
        return
    todo = [i for i in ids if i not in labels][:need]
    pairs = [(sid, true_label(sid, classes, cfg)) for sid in todo]
    reply = client.submit_labels(stub, pairs, annotator="bench-load")
    for sid, lab in pairs:
        labels[sid] = lab
    if reply.rejected:
        r = reply.rejected[0]
        raise LoadError(f"the agent rejected {client.rejected_count(reply)} seed labels, e.g. {r.id}: {r.reason}")


def true_label(sid: str, classes: Sequence[str], cfg: LoadConfig) -> str:
    """The synthetic pool's class of ``sid``; a class chosen by the id's hash for other samples."""
    tail = sid[len(POOL_PREFIX):] if sid.startswith(POOL_PREFIX) else ""
    if tail.isdigit() and not cfg.data:
        return classes[int(tail) % len(classes)]
    return classes[sum(sid.encode()) % len(classes)]


# ---- the load --------------------------------------------------------------------------------------
@dataclass
class Call:
    rpc: str
    variant: str  # the strategy / prior method, or ""
    code: str  # "OK", a grpc.StatusCode name, or "CLIENT:<exception>"
    seconds: float


def warmup_errors(calls: list[Call]) -> dict[str, dict[str, int]]:
    """The failed calls by "RPC variant" and status code (e.g. {"Select typiclust": {"RESOURCE_EXHAUSTED": 3}})."""
    out: dict[str, dict[str, int]] = {}
    for c in calls:
        if c.code != "OK":
            codes = out.setdefault(f"{c.rpc} {c.variant}".strip(), {})
            codes[c.code] = codes.get(c.code, 0) + 1
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


@dataclass
class World:
    """What the clients share: pool ids, classes, the stop signal and the calls recorded."""

    cfg: LoadConfig
    ids: list[str]
    classes: list[str]
    run_tag: str
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: list[Call] = field(default_factory=list)
    started: int = 0
    accepted: int = 0  # samples the agent accepted from this world's Ingest calls
    salt: int = 1  # seeds the clients' choices (the warm-up's differ from the load's)

    def claim(self) -> bool:
        """One more call allowed (the --max-requests bound)?"""
        with self.lock:
            if self.stop.is_set() or self.started >= self.cfg.max_requests:
                self.stop.set()
                return False
            self.started += 1
            return True

    def record(self, call: Call) -> None:
        with self.lock:
            self.calls.append(call)


def timed(fn: Callable[[], object], sink: list[object] | None = None) -> tuple[str, float]:
    """(status code name, seconds) of one call; its reply is appended to ``sink`` when given."""
    t0 = time.perf_counter()
    try:
        reply = fn()
        code = "OK"
        if sink is not None:
            sink.append(reply)
    except grpc.RpcError as e:
        code = e.code().name if isinstance(e, grpc.Call) else "UNKNOWN"
    except Exception as e:  # the client's own failure: recorded, never fatal to the run
        code = f"CLIENT:{type(e).__name__}"
    return code, time.perf_counter() - t0


def drain(call: Callable[..., Iterator[Any]], request: object, timeout: float) -> list[Any]:
    """A server-streaming call read to its end."""
    return list(call(request, timeout=timeout))


def load_channel(cfg: LoadConfig, timeout: float | None = None) -> grpc.Channel:
    """A channel to ``cfg.agent`` with ``cfg.connection``'s TLS and token but no busy retries: the load
    measures the agent's own answers, refusals included (each counted once)."""
    return client.channel(cfg.agent, timeout=timeout, config=replace(cfg.connection, busy_retry=client.BusyRetry.OFF))


def client_loop(world: World, k: int) -> None:
    cfg = world.cfg
    rng = np.random.default_rng([cfg.seed, k, world.salt])
    ch = load_channel(cfg)
    stub = agent_pb2_grpc.AgentStub(ch)
    names = [r for r in RPCS if cfg.mix.get(r, 0) > 0]
    weights = np.array([cfg.mix[r] for r in names], np.float64)
    weights /= weights.sum()
    from shortlist.images import encode_png

    made = 0
    try:
        while world.claim():
            rpc = names[int(rng.choice(len(names), p=weights))]
            variant = ""
            fn: Callable[[], object]
            if rpc == "Ingest":
                samples = []
                for _ in range(cfg.ingest_batch):
                    img = synthetic_image(made, cfg.seed + 1 + k, len(world.classes))
                    img[0, 0, :] = [made % 256, (made // 256) % 256, k % 256]  # fresh payloads, always
                    samples.append(client.image_sample(f"load/{world.run_tag}/{k}/{made}", encode_png(img)))
                    made += 1
                req = agent_pb2.IngestRequest(samples=samples)
                fn = partial(stub.Ingest, iter([req]), timeout=cfg.timeout)
            elif rpc == "Select":
                variant = cfg.strategies[int(rng.integers(len(cfg.strategies)))]
                sel = agent_pb2.SelectRequest(budget=cfg.budget, strategy=variant, seed=int(rng.integers(2**31)))
                fn = partial(stub.Select, sel, timeout=cfg.timeout)
            elif rpc == "SubmitLabels":
                pick = rng.choice(len(world.ids), size=min(cfg.label_batch, len(world.ids)), replace=False)
                lab = agent_pb2.SubmitLabelsRequest(
                    labels=[agent_pb2.LabelAssignment(id=world.ids[int(i)],
                                                      label=true_label(world.ids[int(i)], world.classes, cfg))
                            for i in pick], annotator=f"bench-load-{k}")
                fn = partial(stub.SubmitLabels, lab, timeout=cfg.timeout)
            elif rpc == "PriorLabels":
                variant = cfg.priors[int(rng.integers(len(cfg.priors)))]
                pick = rng.choice(len(world.ids), size=min(cfg.prior_ids, len(world.ids)), replace=False)
                pri = agent_pb2.PriorLabelsRequest(method=variant, ids=[world.ids[int(i)] for i in pick])
                fn = partial(drain, stub.PriorLabels, pri, cfg.timeout)
            else:
                fn = partial(stub.GetStatus, agent_pb2.GetStatusRequest(), timeout=cfg.timeout)
            replies: list[object] = []
            code, seconds = timed(fn, replies)
            world.record(Call(rpc, variant, code, seconds))
            for reply in replies:
                if isinstance(reply, agent_pb2.IngestReply):
                    with world.lock:
                        world.accepted += reply.accepted
    finally:
        ch.close()


def drive(world: World, seconds: float) -> tuple[World, float]:
    """Run cfg.clients client loops for ``seconds`` (or until max_requests calls); returns the world
    with its calls and the seconds until the last call ended."""
    threads = [threading.Thread(target=client_loop, args=(world, k), name=f"load-{k}", daemon=True)
               for k in range(world.cfg.clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    world.stop.wait(seconds)
    world.stop.set()
    for t in threads:
        t.join(world.cfg.timeout + 30)
    return world, time.monotonic() - t0


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q)) if values else float("nan")


def summarise(calls: Sequence[Call]) -> list[dict[str, Any]]:
    """One row per RPC and, for Select and PriorLabels, per strategy / method: requests, ok, errors by
    code, p50/p99/max latency of every call, p50/p99 of the answered (OK) calls alone and p99 per error code."""
    groups: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        groups[c.rpc].append(c)
        if c.variant:
            groups[f"{c.rpc} {c.variant}"].append(c)
    order = [r for r in RPCS if r in groups]
    rows = []
    for rpc in order:
        for name in [rpc, *sorted(g for g in groups if g.startswith(rpc + " "))]:
            group = groups[name]
            secs = [c.seconds for c in group]
            errors: dict[str, int] = defaultdict(int)
            for c in group:
                if c.code != "OK":
                    errors[c.code] += 1
            err_secs = [c.seconds for c in group if c.code != "OK"]
            ok_secs = [c.seconds for c in group if c.code == "OK"]
            rows.append({"name": name, "requests": len(group), "ok": len(group) - len(err_secs),
                         "errors": dict(sorted(errors.items())), "p50_s": percentile(secs, 50),
                         "p99_s": percentile(secs, 99), "max_s": max(secs),
                         "ok_p50_s": percentile(ok_secs, 50), "ok_p99_s": percentile(ok_secs, 99),
                         "errors_p99_s": {code: percentile([c.seconds for c in group if c.code == code], 99)
                                          for code in sorted(errors)}})
    return rows


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds ``pid`` has used, all its threads (/proc/PID/stat); None when unreadable."""
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)
    except (OSError, IndexError, ValueError):
        return None


def solo_timings(cfg: LoadConfig, stub: agent_pb2_grpc.AgentStub, strategies: Sequence[str],
                 ids: list[str], say: Callable[[str], None], pid: int | None = None) -> list[dict[str, Any]]:
    """Every strategy (and prior method) called once with nothing else running: wall seconds, and the CPU
    seconds the agent process used meanwhile (all its threads; ``pid`` known). On a machine shared with
    other work the wall time stretches and the CPU time does not: with the machine to itself the call
    would take at most its CPU time (less where it uses several cores)."""
    out = []
    calls: list[tuple[str, str, Callable[[], object]]] = [
        ("Select", name, partial(stub.Select, agent_pb2.SelectRequest(budget=cfg.budget, strategy=name,
                                                                      seed=cfg.seed), timeout=cfg.timeout))
        for name in strategies]
    calls += [("PriorLabels", method, partial(drain, stub.PriorLabels,
                                              agent_pb2.PriorLabelsRequest(method=method, ids=ids[: cfg.prior_ids]),
                                              cfg.timeout))
              for method in cfg.priors]
    for rpc, name, call in calls:
        cpu0 = cpu_seconds(pid)
        code, secs = timed(call)
        cpu1 = cpu_seconds(pid)
        cpu = None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 2)
        out.append({"rpc": rpc, "name": name, "code": code, "seconds": secs, "cpu_seconds": cpu})
        say(f"  alone: {rpc} {name}: {secs:.2f} s {code}" + ("" if cpu is None else f", agent CPU {cpu:.2f} s"))
    return out


def goals(rows: list[dict[str, Any]], solo: list[dict[str, Any]], rss: dict[str, int]) -> list[dict[str, Any]]:
    """Issue 13's goals, checked against the figures."""
    by_name = {r["name"]: r for r in rows}
    out: list[dict[str, Any]] = []
    bad = {f"{r['name']}: {code}": n for r in rows if " " not in r["name"]
           for code, n in r["errors"].items() if code != "RESOURCE_EXHAUSTED"}
    out.append({"goal": "no error but RESOURCE_EXHAUSTED", "ok": not bad, "value": bad or "none"})
    exhausted = [r["errors_p99_s"]["RESOURCE_EXHAUSTED"] for r in rows
                 if " " not in r["name"] and "RESOURCE_EXHAUSTED" in r["errors"]]
    if exhausted:
        worst = max(exhausted)
        out.append({"goal": f"RESOURCE_EXHAUSTED prompt (error p99 < {FAST_P99_S:g} s)", "ok": worst < FAST_P99_S,
                    "value": round(worst, 3)})
    for name in FAST_RPCS:  # over the calls answered: a refusal is fast, it must not hide slow answers
        if name in by_name:
            p99 = by_name[name]["ok_p99_s"]
            out.append({"goal": f"{name} p99 < {FAST_P99_S:g} s (answered calls)", "ok": p99 < FAST_P99_S,
                        "value": round(p99, 3) if p99 == p99 else "no call answered"})
    for s in solo:
        if s["rpc"] == "Select":
            out.append({"goal": f"Select {s['name']} alone < {SOLO_LIMIT_S:g} s",
                        "ok": s["code"] == "OK" and s["seconds"] < SOLO_LIMIT_S, "value": round(s["seconds"], 3)})
    if rss.get("idle_before") and rss.get("idle_after"):  # what the agent keeps, idle before and after the load
        growth = rss["idle_after"] / rss["idle_before"] - 1
        out.append({"goal": f"RSS growth < {RSS_GROWTH:.0%} (idle before -> idle after the load)",
                    "ok": growth < RSS_GROWTH, "value": round(growth, 4)})
    elif rss.get("before") and rss.get("after"):  # no idle readings (--idle-wait 0): right after the clients stop
        growth = rss["after"] / rss["before"] - 1
        out.append({"goal": f"RSS growth < {RSS_GROWTH:.0%}", "ok": growth < RSS_GROWTH, "value": round(growth, 4)})
    return out


def busy_threads(pid: int) -> frozenset[int]:
    """Ids of ``pid``'s threads in state R (running or waiting for a CPU) or D (uninterruptible, e.g. disk
    I/O), from /proc/PID/task/TID/stat, the calling thread left out; empty when unreadable (not Linux, or
    the process is gone)."""
    out: set[int] = set()
    me = threading.get_native_id() if pid == os.getpid() else None  # this thread is running: it reads them
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return frozenset()
    for tid in tids:
        try:
            state = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # the thread ended
        if state in ("R", "D") and int(tid) != me:
            out.add(int(tid))
    return frozenset(out)


def quiet(seen: Sequence[tuple[float, float, frozenset[int]]]) -> bool:
    """Whether readings (monotonic s, process CPU s, busy thread ids), oldest first, end with QUIET_S seconds
    of idleness: under QUIET_CPU CPU seconds per second since the newest reading at least QUIET_S old, and no
    thread busy (R or D) in more than BUSY_SHARE of the readings since then (a thread that only wakes up
    now and then is idle; a starved one that holds a call's working arrays is not)."""
    now, cpu, _ = seen[-1]
    past = [i for i, (t, _, _) in enumerate(seen) if now - t >= QUIET_S]
    if not past:
        return False
    t_ref, cpu_ref, _ = seen[past[-1]]
    if cpu - cpu_ref >= QUIET_CPU * (now - t_ref):
        return False
    window = seen[past[-1]:]
    counts: dict[int, int] = defaultdict(int)
    for _, _, busy in window:
        for tid in busy:
            counts[tid] += 1
    return all(n <= BUSY_SHARE * len(window) for n in counts.values())


def idle_rss(pid: int, limit: float) -> tuple[dict[str, int], float, bool]:
    """``pid``'s VmRSS / VmHWM (rss_bytes) once it is ``quiet`` (QUIET_S seconds under QUIET_CPU of a core,
    no thread kept busy), how many seconds that took, and whether it got that quiet within ``limit`` seconds
    (if not, the reading at ``limit``)."""
    t0 = time.monotonic()
    seen: list[tuple[float, float, frozenset[int]]] = []  # (monotonic s, agent CPU s, busy thread ids)
    while True:
        now, cpu = time.monotonic(), cpu_seconds(pid)
        if cpu is None:
            return {}, now - t0, False
        seen.append((now, cpu, busy_threads(pid)))
        if quiet(seen):
            return rss_bytes(pid), now - t0, True
        if now - t0 >= limit:
            return rss_bytes(pid), now - t0, False
        time.sleep(0.25)


def drained_status(stub: agent_pb2_grpc.AgentStub, timeout: float,
                   limit: float = 300.0) -> tuple[agent_pb2.Status | None, float]:
    """GetStatus once the agent answers again after the load (work the clients gave up on may still
    run), and how many seconds that took; (None, limit) when it never did within ``limit``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        try:
            return stub.GetStatus(agent_pb2.GetStatusRequest(), timeout=timeout), time.monotonic() - t0
        except grpc.RpcError as e:
            if isinstance(e, grpc.Call) and e.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED,
                                                             grpc.StatusCode.RESOURCE_EXHAUSTED,
                                                             grpc.StatusCode.UNAVAILABLE):
                raise
            time.sleep(1.0)
    return None, limit


def loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def run_load(cfg: LoadConfig, say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Set up (agent, pool, seed labels), time each strategy alone, run the load; returns the results."""
    if cfg.clients < 1 or cfg.seconds <= 0 or cfg.max_requests < 1 or cfg.timeout <= 0:
        raise LoadError("--clients, --seconds, --max-requests and --timeout must be positive")
    if not cfg.strategies and cfg.mix.get("Select", 0) > 0:
        raise LoadError("--strategies is empty but --mix gives Select a weight")
    if not cfg.priors and cfg.mix.get("PriorLabels", 0) > 0:
        raise LoadError("--priors is empty but --mix gives PriorLabels a weight")
    if cfg.warmup is None:  # as long as the load: the growth is then measured after the working set is reached
        cfg = replace(cfg, warmup=cfg.seconds)
    target: Target | None = None
    if cfg.agent:
        _, port = require_loopback(cfg.agent)
        target = Target(cfg.agent, cfg.agent_pid or listening_pid(port))
    else:
        if cfg.pool <= 0:
            raise LoadError("give --agent HOST:PORT of a running agent, or --pool N for an agent started here")
        classes = pool_classes(cfg)
        registry = ensure_registry(cfg, classes)
        say(f"starting an agent on {cfg.data_dir / 'agent'} with registry {registry}")
        target = start_agent(cfg, registry)
    cfg = replace(cfg, agent=target.address)
    try:
        return _run(cfg, target, say)
    finally:
        target.stop()


@dataclass(frozen=True)
class _Pool:
    """The agent's pool once filled and seeded: its status then, the ids, the labels and the classes, and
    the strategies to time alone."""

    status: agent_pb2.Status
    ids: list[str]
    labels: dict[str, str]
    classes: list[str]
    solo_names: list[str]


_NO_IDLE: tuple[dict[str, int], float, bool] = ({}, 0.0, False)


@dataclass(frozen=True)
class _Readings:
    """What the measured run saw: RSS and idle readings around each phase, the solo timings, the warm-up (None:
    none) and the load, and the agent's status once it answered again (None: it did not)."""

    rss_start: dict[str, int]
    quiet_start: tuple[dict[str, int], float, bool]
    solo: list[dict[str, Any]]
    warm: World | None
    warmup: float
    rss_before: dict[str, int]
    quiet_before: tuple[dict[str, int], float, bool]
    load_before: list[float]
    world: World
    elapsed: float
    rss_after: dict[str, int]
    after: agent_pb2.Status | None
    drain: float
    rss_drained: dict[str, int]
    quiet_after: tuple[dict[str, int], float, bool]


def _rss(target: Target) -> dict[str, int]:
    return rss_bytes(target.pid) if target.pid else {}


def _idle(cfg: LoadConfig, target: Target) -> tuple[dict[str, int], float, bool]:
    return idle_rss(target.pid, cfg.idle_wait) if target.pid and cfg.idle_wait > 0 else _NO_IDLE


def _prepare_pool(cfg: LoadConfig, stub: agent_pb2_grpc.AgentStub, say: Callable[[str], None]) -> _Pool:
    """Fill the pool, seed its labels and check the strategies and prior methods against the agent's."""
    fill_pool(cfg, stub, say)
    status = stub.GetStatus(agent_pb2.GetStatusRequest(), timeout=cfg.timeout)
    ids, labels = list_pool(stub)
    if not ids:
        raise LoadError(f"the agent at {cfg.agent} holds no samples; give --pool N to ingest a synthetic pool")
    classes = list(status.classes) or pool_classes(cfg)
    seed_labels(cfg, stub, ids, labels, classes)
    status = stub.GetStatus(agent_pb2.GetStatusRequest(), timeout=cfg.timeout)
    unknown = sorted(set(cfg.strategies) - set(status.strategies))
    if unknown:
        raise LoadError(f"unknown strategies {', '.join(unknown)}; the agent has {', '.join(status.strategies)}")
    bad_priors = sorted(set(cfg.priors) - set(status.prior_methods))
    if bad_priors:
        raise LoadError(f"unknown prior methods {', '.join(bad_priors)}; the agent has "
                        f"{', '.join(status.prior_methods)}")
    solo_names = list(status.strategies) if "all" in cfg.solo else [s for s in cfg.solo if s]
    say(f"pool {status.samples} samples, {len(labels)} labelled, model {status.model_version or '(none)'}")
    return _Pool(status=status, ids=ids, labels=labels, classes=classes, solo_names=solo_names)


def _measure(cfg: LoadConfig, stub: agent_pb2_grpc.AgentStub, target: Target, pool: _Pool,
             say: Callable[[str], None]) -> _Readings:
    """Each strategy alone, the warm-up (not counted), the load, and the readings around them."""
    ids, classes = pool.ids, pool.classes
    rss_start = _rss(target)
    quiet_start = _idle(cfg, target)
    solo = (solo_timings(cfg, stub, pool.solo_names, [i for i in ids if i not in pool.labels], say, target.pid)
            if pool.solo_names else [])
    tag = f"{int(time.time())}-{os.getpid()}"
    warm: World | None = None
    warmup = cfg.seconds if cfg.warmup is None else cfg.warmup  # run_load resolves None; callers of _run may not
    if warmup > 0:
        say(f"warm-up: {cfg.clients} clients for {warmup:g} s (not counted)")
        warm, _ = drive(World(cfg, ids, classes, run_tag=tag + "w", salt=0), warmup)
        if failed := warmup_errors(warm.calls):  # not counted, but a deadline missed there is still news
            say("warm-up errors: " + ", ".join(f"{name} {code} {n}" for name, codes in failed.items()
                                               for code, n in codes.items()))
    rss_before = _rss(target)
    quiet_before = _idle(cfg, target)
    load_before = loadavg()
    say(f"load: {cfg.clients} clients for {cfg.seconds:g} s")
    world, elapsed = drive(World(cfg, ids, classes, run_tag=tag), cfg.seconds)
    time.sleep(0.5)
    rss_after = _rss(target)
    after, drain = drained_status(stub, cfg.timeout)
    return _Readings(rss_start=rss_start, quiet_start=quiet_start, solo=solo, warm=warm, warmup=warmup,
                     rss_before=rss_before, quiet_before=quiet_before, load_before=load_before, world=world,
                     elapsed=elapsed, rss_after=rss_after, after=after, drain=drain, rss_drained=_rss(target),
                     quiet_after=_idle(cfg, target))


def _rss_summary(got: _Readings) -> dict[str, int]:
    """results.json's rss: VmRSS at each reading and the peak (empty without a local agent process)."""
    rss: dict[str, int] = {}
    if got.rss_before:
        rss = {"start": got.rss_start.get("VmRSS", 0), "before": got.rss_before["VmRSS"],
               "after": got.rss_after.get("VmRSS", 0), "drained": got.rss_drained.get("VmRSS", 0),
               "peak": got.rss_drained.get("VmHWM", 0)}
        if got.quiet_before[0] and got.quiet_after[0]:
            rss.update(idle_before=got.quiet_before[0]["VmRSS"], idle_after=got.quiet_after[0]["VmRSS"])
        if got.quiet_start[0]:  # before any load: what the solo runs and the warm-up brought is the working set
            rss["idle_start"] = got.quiet_start[0]["VmRSS"]
    return rss


def _results(cfg: LoadConfig, target: Target, status: agent_pb2.Status, got: _Readings) -> dict[str, Any]:
    """results.json's content: the settings (never the token), the agent, the machine and the readings."""
    world, warm, after, solo = got.world, got.warm, got.after, got.solo
    rows = summarise(world.calls)
    rss = _rss_summary(got)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k != "connection"}
    config["tls"] = cfg.connection.tls  # never the token itself
    config["token"] = bool(cfg.connection.token)
    return {
        "config": config,
        "agent": {"address": cfg.agent, "pid": target.pid, "started_here": target.process is not None,
                  "model_version": status.model_version, "samples_before": status.samples,
                  "samples_after": after.samples if after else None, "labeled_before": status.labeled,
                  "labeled_after": after.labeled if after else None, "answers_again_after_s": round(got.drain, 2)},
        "machine": {"cpus": os.cpu_count(), "loadavg_before": got.load_before, "loadavg_after": loadavg()},
        "solo": solo,
        "warmup": {"seconds": got.warmup, "requests": len(warm.calls) if warm else 0,
                   "errors": sum(c.code != "OK" for c in warm.calls) if warm else 0,
                   "errors_by_call": warmup_errors(warm.calls) if warm else {},
                   "ingested": warm.accepted if warm else 0},
        "load": {"seconds": round(got.elapsed, 2), "clients": cfg.clients, "requests": len(world.calls),
                 "ingested": world.accepted,
                 "requests_per_s": round(len(world.calls) / got.elapsed, 2), "rpcs": rows},
        "rss": rss,
        "idle": {"wait_start_s": round(got.quiet_start[1], 1), "quiet_start": got.quiet_start[2],
                 "wait_before_s": round(got.quiet_before[1], 1), "quiet_before": got.quiet_before[2],
                 "wait_after_s": round(got.quiet_after[1], 1), "quiet_after": got.quiet_after[2]},
        "goals": goals(rows, solo, rss),
    }


def _run(cfg: LoadConfig, target: Target, say: Callable[[str], None]) -> dict[str, Any]:
    """The run against ``target``: the pool, the measured phases (one channel for the setup and readings),
    then results.json's content."""
    ch = load_channel(cfg, timeout=30)
    stub = agent_pb2_grpc.AgentStub(ch)
    try:
        pool = _prepare_pool(cfg, stub, say)
        got = _measure(cfg, stub, target, pool, say)
    finally:
        ch.close()
    return _results(cfg, target, pool.status, got)


# ---- the command -----------------------------------------------------------------------------------
def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB"


def print_results(res: dict[str, Any], console: Console) -> None:
    load = res["load"]
    table = Table(title=f"bench load: {load['clients']} clients for {res['config']['seconds']:g} s (the last call "
                        f"ended after {load['seconds']:.0f} s), {load['requests']} requests "
                        f"({load['requests_per_s']:.1f}/s), pool {res['agent']['samples_before']}")
    for col, just in (("rpc", "left"), ("requests", "right"), ("ok", "right"), ("errors", "left"),
                      ("p50 s", "right"), ("p99 s", "right"), ("max s", "right"), ("answered p99 s", "right")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in load["rpcs"]:
        errors = ", ".join(f"{k} {v} (p99 {r['errors_p99_s'][k]:.3f} s)" for k, v in r["errors"].items()) or "-"
        name = r["name"] if " " not in r["name"] else "  " + r["name"]
        table.add_row(name, str(r["requests"]), str(r["ok"]), errors, f"{r['p50_s']:.3f}", f"{r['p99_s']:.3f}",
                      f"{r['max_s']:.3f}", f"{r['ok_p99_s']:.3f}" if r["ok"] else "-")
    console.print(table)
    if res["solo"]:
        solo = Table(title="each alone, before the load")
        for col in ("rpc", "name", "seconds", "agent CPU s", "status"):
            solo.add_column(col)
        for s in res["solo"]:
            cpu = s.get("cpu_seconds")
            solo.add_row(s["rpc"], s["name"], f"{s['seconds']:.2f}", "-" if cpu is None else f"{cpu:.2f}", s["code"])
        console.print(solo)
    rss = res["rss"]
    if rss:
        console.print(f"agent RSS: {_mb(rss['start'])} at start, {_mb(rss['before'])} before the load (after the "
                      f"warm-up), {_mb(rss['after'])} after ({rss['after'] / rss['before'] - 1:+.1%}), "
                      f"{_mb(rss['drained'])} once it answered again, peak {_mb(rss['peak'])}")
        idle = res.get("idle", {})
        if "idle_before" in rss:
            def note(key: str) -> str:
                waited = idle[f"wait_{key}_s"]
                return "" if idle.get(f"quiet_{key}") else f", [yellow]not idle within {waited:g} s[/yellow]"
            start = ""
            if rss.get("idle_start"):  # the working set a first load brings (informative, not a goal)
                start = (f"{_mb(rss['idle_start'])} at start ({idle['wait_start_s']:g} s{note('start')}), "
                         f"then the warm-up brought it to ")
            console.print(f"agent RSS idle: {start}{_mb(rss['idle_before'])} before the load "
                          f"({idle['wait_before_s']:g} s after the warm-up{note('before')}), "
                          f"{_mb(rss['idle_after'])} after it ({idle['wait_after_s']:g} s after{note('after')}; "
                          f"{rss['idle_after'] / rss['idle_before'] - 1:+.1%})")
    else:
        console.print("agent RSS: unknown (no local agent process found; pass --agent-pid)")
    again = res["agent"]["answers_again_after_s"]
    if res["agent"]["samples_after"] is None:
        console.print(f"[red]the agent did not answer GetStatus within {again:.0f} s after the load[/red]")
    elif again > 1:
        console.print(f"the agent answered GetStatus again {again:.1f} s after the load ended")
    m = res["machine"]
    console.print(f"machine: {m['cpus']} CPUs, load average {m['loadavg_before']} before, {m['loadavg_after']} after")
    for g in res["goals"]:
        mark = "[green]ok[/green]  " if g["ok"] else "[red]MISS[/red]"
        console.print(f"{mark} {g['goal']}: {g['value']}")


def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("load")
    def load_cmd(
        agent: str = typer.Option("", "--agent", help="HOST:PORT of a running agent on this machine "
                                  "(default: start one over --data-dir)"),
        pool: int = typer.Option(0, "--pool", min=0, max=10_000_000, help="samples the pool should hold: synthetic "
                                 "32x32 images (or the first N of --data) are ingested until it does (kept for reuse)"),
        data: str = typer.Option("", "--data", help=f"image source for the pool: {sources_said()}"),
        split: str = typer.Option("train", "--split", help="split of --data"),
        data_dir: Path = typer.Option(Path("runs/load"), "--data-dir", help="the started agent's folder "
                                      "(DATA_DIR/agent) and model registry (DATA_DIR/models); reused"),
        models: Path | None = typer.Option(None, "--models", help="registry for the started agent (default: "
                                           "a linear 32x32 encoder built into DATA_DIR/models)"),
        clients: int = typer.Option(16, "--clients", min=1, max=1024, help="concurrent clients, one channel each"),
        seconds: float = typer.Option(60.0, "--seconds", callback=finite, min=0.1, help="how long the load runs"),
        warmup: float | None = typer.Option(None, "--warmup", callback=finite, min=0.0,
                                            show_default="as long as --seconds",
                                            help="seconds of the same load before it, not counted (RSS 'before' "
                                            "is taken after it: the agent's working set is reached first)"),
        max_requests: int = typer.Option(200_000, "--max-requests", min=1, help="stop after this many calls"),
        timeout: float = typer.Option(30.0, "--timeout", callback=finite, min=0.1,
                                      help="deadline of every call, seconds"),
        mix: str = typer.Option(DEFAULT_MIX, "--mix", help="RPC weights (ingest, select, labels, prior, status)"),
        strategies: str = typer.Option(DEFAULT_STRATEGIES, "--strategies", help="Select strategies the clients "
                                       "pick from"),
        priors: str = typer.Option("knn", "--priors", help="PriorLabels methods the clients pick from"),
        solo: str = typer.Option("all", "--solo", help="strategies timed alone before the load: all, none, or "
                                 "a comma-separated list"),
        budget: int = typer.Option(10, "--budget", min=1, max=2**31 - 1, help="Select budget (SelectRequest's int32)"),
        agent_pid: int = typer.Option(0, "--agent-pid", min=0, help="pid of --agent for its RSS (default: found "
                                      "from the port)"),
        idle_wait: float = typer.Option(60.0, "--idle-wait", callback=finite, min=0.0,
                                        help="longest wait, seconds, for the agent to be idle (under 5% of a core "
                                        "for 3 s) after the warm-up and after the load, for the RSS growth goal (0: "
                                        "no idle readings)"),
        tls_ca: Path | None = typer.Option(None, "--tls-ca", envvar="SHORTLIST_TLS_CA", dir_okay=False,
                                           help="--agent uses TLS: trust certificates signed by this CA (PEM)"),
        tls_cert: Path | None = typer.Option(None, "--tls-cert", envvar="SHORTLIST_TLS_CERT", dir_okay=False,
                                             help="this client's certificate (PEM), for mutual TLS"),
        tls_key: Path | None = typer.Option(None, "--tls-key", envvar="SHORTLIST_TLS_KEY", dir_okay=False,
                                            help="the private key of --tls-cert (PEM)"),
        token: str = typer.Option("", "--token", envvar="SHORTLIST_TOKEN", show_default=False,
                                  help="bearer token (write role: the load ingests and labels) for --agent"),
        out: Path | None = typer.Option(None, "--out", help="folder for results.json (default: --data-dir)"),
        seed: int = typer.Option(0, "--seed", min=0, max=2**63 - 1),
        as_json: bool = typer.Option(False, "--json", help="print results.json on stdout"),
    ) -> None:
        """N concurrent clients mixing Ingest, Select, SubmitLabels, PriorLabels and GetStatus against one
        agent on this machine; requests, errors by status and p50/p99 latency per RPC, agent RSS."""
        console = make_console(stderr=True)
        try:
            cfg = LoadConfig(agent=agent, data_dir=data_dir, out=out, pool=pool, data=data, split=split,
                             models=models, clients=clients, seconds=seconds, warmup=warmup,
                             max_requests=max_requests,
                             timeout=timeout, mix=parse_mix(mix), strategies=_names(strategies),
                             priors=_names(priors), solo=() if solo.strip() == "none" else _names(solo),
                             budget=budget, seed=seed, agent_pid=agent_pid, idle_wait=idle_wait,
                             connection=client.ClientConfig(tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                                                            token=token))
        except LoadError as e:  # --mix: a usage error
            _exit(console, str(e), 2)
        res = _run_command(cfg, console)
        _write_results(res, out or data_dir, as_json, console)


def _exit(console: Console, message: str, code: int) -> NoReturn:
    console.print(f"[red]bench load[/red]: {message}")
    raise typer.Exit(code) from None


def _run_command(cfg: LoadConfig, console: Console) -> dict[str, Any]:
    """``run_load`` for the command: its errors as one line and an exit status (2: the options or the data,
    1: the agent)."""
    try:
        return run_load(cfg, say=console.print)
    except LoadError as e:  # the options or the data: a usage error
        _exit(console, str(e), 2)
    except client.AgentUnavailable as e:  # as every command that talks to an agent (docs/agent.md, Exit status)
        _exit(console, str(e), 1)
    except grpc.RpcError as e:
        code = e.code().name if isinstance(e, grpc.Call) else "UNKNOWN"
        details = e.details() if isinstance(e, grpc.Call) else str(e)
        _exit(console, f"the agent answered {code}: {details}", 1)


def _write_results(res: dict[str, Any], folder: Path, as_json: bool, console: Console) -> None:
    """results.json into ``folder``, the tables (on stderr with --json, which prints results.json on stdout)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "results.json", res, indent=2)  # NaN -> null: strict JSON
    print_results(res, console if as_json else Console(width=None if sys.stdout.isatty() else 140))
    console.print(f"results: {folder / 'results.json'}")
    if as_json:
        print(strict_json(res, indent=None))
