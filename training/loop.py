"""Pieces every training loop here shares: device and precision, DDP, the lr schedule, the time/epoch
budget, checkpoints (every N minutes and on SIGTERM, written atomically), metrics.jsonl, progress bars.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import signal
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from shortlist.atomic import atomic_file, write_atomic

CHECKPOINT = "checkpoint.pt"
ENCODER = "encoder.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
SUMMARY = "summary.json"


# ------------------------------------------------------------------------------------------ device / DDP


@dataclass
class Runtime:
    """Where and how this process trains: device, rank / world size under torchrun, autocast dtype."""

    device: torch.device
    rank: int = 0
    world: int = 1
    amp_dtype: torch.dtype | None = None  # bf16 on CPU, fp16/bf16 on CUDA; None = fp32
    channels_last: bool = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


DEVICES = ("auto", "cpu", "cuda")


def check_device(device: str) -> None:
    """ValueError, saying what to give, for a ``--device`` this machine cannot train on (torch's own errors
    for them are tracebacks: "Expected one of cpu, cuda, ipu, ..." or "Found no NVIDIA driver")."""
    kind, sep, index = device.partition(":")
    if kind not in DEVICES or (sep and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"--device {device!r}: give auto, cpu or cuda (cuda:N for the N-th GPU)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch sees no CUDA GPU on this machine; give --device cpu (or auto)")


def setup_runtime(device: str = "auto", amp: bool = True, channels_last: bool = True,
                  threads: int | None = None) -> Runtime:
    """Device (``auto``: CUDA when present), torchrun's process group when WORLD_SIZE > 1, precision.
    ValueError for a device this machine does not have (``check_device``).

    On CUDA, autocast uses bf16 where supported (no loss scaler needed), else fp16 is avoided (fp32).
    On CPU, bf16 autocast (oneDNN uses AVX512-BF16 / AMX when the CPU has them).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    check_device(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif threads:
        torch.set_num_threads(threads)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    amp_dtype: torch.dtype | None = None
    if amp:
        amp_dtype = torch.bfloat16 if dev.type == "cpu" or torch.cuda.is_bf16_supported() else None
    return Runtime(dev, rank, world, amp_dtype, channels_last)


def close_process_group() -> None:
    """Leave torchrun's process group, if this process joined one (``setup_runtime``); a no-op otherwise.

    Call it where a rank's work ends, before the process exits. Left to the interpreter's exit, gloo's
    worker threads can still hold work objects when Python is torn down, and the rank then aborts
    ("terminate called without an active exception", SIGABRT) after a run that finished: torchrun reports
    the whole run failed (seen once in `.ci/run` under load; pytorch/pytorch#190489). No barrier: nothing
    after training is collective (rank 0's final kNN and summary are its own)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.detach().clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def sync_max(values: list[float], device: torch.device) -> list[float]:
    """Element-wise max over DDP ranks (identity alone): ranks agree on elapsed time and on stopping,
    so a time budget or a SIGTERM ends every rank at the same step instead of deadlocking one."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [float(v) for v in t.tolist()]


# ------------------------------------------------------------------------------------------- schedule


def cosine_lr(base: float, progress: float, warmup: float = 0.0) -> float:
    """Linear warm-up over the first ``warmup`` fraction, then half-cosine to 0 (Loshchilov & Hutter 2017).

    ``progress`` in [0, 1] is steps/total steps, or elapsed/budget seconds for time-budgeted runs.
    """
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return base * progress / warmup
    frac = (progress - warmup) / max(1e-8, 1 - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * frac))


@dataclass
class Budget:
    """Either ``epochs`` (progress = step / total steps) or ``minutes`` (progress = training seconds /
    budget; evaluation time is not counted, so periodic kNN does not shorten training)."""

    steps_per_epoch: int
    epochs: int | None = None
    minutes: float | None = None

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.minutes is None):
            raise ValueError("give exactly one of --epochs N or --minutes M")
        if self.steps_per_epoch <= 0:
            raise ValueError("fewer samples than one batch: lower --batch-size or use more data")

    def progress(self, step: int, seconds: float) -> float:
        if self.epochs is not None:
            return step / (self.epochs * self.steps_per_epoch)
        assert self.minutes is not None
        return seconds / (self.minutes * 60)

    def done(self, step: int, seconds: float) -> bool:
        return self.progress(step, seconds) >= 1.0


# ------------------------------------------------------------------------------------------ checkpoints


@dataclass
class TrainState:
    """Where a run is: enough to continue exactly (with the model/optimizer state saved beside it)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    seconds: float = 0.0  # training seconds so far (excludes evaluation)
    images: int = 0  # images (not views) consumed on this rank
    extra: dict[str, Any] = field(default_factory=dict)


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temp file, fsync, rename, fsync the folder: a crash leaves the old file or the new one,
    never half."""
    with atomic_file(path) as f:
        torch.save(obj, f)


def save_checkpoint(run_dir: Path, state: TrainState, modules: dict[str, Any], generator: torch.Generator,
                    config: dict[str, Any]) -> None:
    payload = {"state": state.__dict__, "config": config, "generator": generator.get_state(),
               "cpu_rng": torch.get_rng_state()}
    payload.update({k: v.state_dict() for k, v in modules.items()})
    save_atomic(payload, run_dir / CHECKPOINT)


def load_checkpoint(run_dir: Path, modules: dict[str, Any], generator: torch.Generator) -> TrainState:
    """Restore modules / optimizer / generator in place from run_dir/checkpoint.pt; the saved TrainState."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"--resume: {path} does not exist (start without --resume)")
    try:  # tensors, optimizer state and plain data: what save_checkpoint writes; nothing that could run code
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        named = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise ValueError(f"--resume: {path} holds more than tensors and plain data"
                         f"{f' (it names {named.group(1)})' if named else ''}, so it is not a checkpoint Shortlist "
                         "wrote, and it is not loaded (unpickling it could run code)") from None
    for k, v in modules.items():
        v.load_state_dict(payload[k])
    generator.set_state(payload["generator"])
    torch.set_rng_state(payload["cpu_rng"])
    return TrainState(**payload["state"])


def discard_result(run_dir: Path) -> None:
    """Remove ``run_dir``'s encoder.pt and summary.json: the folder then holds an unfinished run (its
    checkpoint.pt), which ``unfinished_run`` names and export refuses. Called when a run is stopped by a signal
    and when a fine-tuning run starts over in a used folder, so that a result of an earlier, other state of
    the run is never published as this one's."""
    for name in (ENCODER, SUMMARY):
        (run_dir / name).unlink(missing_ok=True)


def unfinished_run(run_dir: Path) -> str | None:
    """Why ``run_dir`` is not a result to use (a sentence saying how to finish it), or None.

    Unfinished: checkpoint.pt without summary.json. A run writes summary.json (and encoder.pt) only when its
    budget ran out; one stopped by a signal keeps checkpoint.pt alone (folders of older versions also kept an
    encoder.pt of the stopped state, which is not a result either)."""
    if not (run_dir / CHECKPOINT).is_file() or read_summary(run_dir) is not None:
        return None
    try:
        config = json.loads((run_dir / CONFIG).read_text())
    except (OSError, ValueError):
        config = {}
    if str(config.get("data") or "").startswith("agent:"):  # a `shortlist cycle` run: cycles start anew
        how = "run `shortlist cycle` again (with another --out)"
    elif "mode" in config:  # FinetuneConfig
        how = "run the `shortlist finetune` command again to train it to the end"
    else:
        how = (f"continue it with `shortlist pretrain --resume --out {run_dir}` (the settings are its config.json's), "
               "then export it")
    return (f"{run_dir} holds an unfinished training run (stopped before its budget ran out: {CHECKPOINT}, no "
            f"complete {SUMMARY}), nothing to publish or start from; {how}")


class Interrupted(RuntimeError):
    """Training stopped by a signal (SIGINT, SIGTERM) before its budget ran out, after a checkpoint: the run is
    unfinished, so nothing may treat it as a result (``shortlist cycle`` publishes nothing); the CLI exits 130."""

    def __init__(self, signal_name: str, step: int, run_dir: Path, resume_hint: str) -> None:
        super().__init__(f"{signal_name}: training stopped at step {step}, checkpointed in {run_dir}; {resume_hint}")
        self.signal_name = signal_name
        self.step = step
        self.run_dir = run_dir


class StopFlag:
    """Set by SIGTERM / SIGINT so the loop can checkpoint at the next step boundary and exit cleanly."""

    def __init__(self) -> None:
        self.stop = False
        self.signal_name = ""
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            # not the main thread (e.g. a test harness): no handler, no problem
            with contextlib.suppress(ValueError):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.stop = True
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def epoch_order(n: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's sample order for ``epoch``: a permutation seeded by (seed, epoch), strided over ranks."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)[rank::world]


def batches(order: torch.Tensor, batch: int, start: int = 0,
            count: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """(batch index, rows) for full batches of ``order`` from batch ``start`` on (the ragged tail dropped,
    as BN-based SSL methods need equal-size batches); at most ``count`` batches in all (the same on every
    rank, whose strides may differ in length by one)."""
    n = len(order) // batch if count is None else min(count, len(order) // batch)
    for b in range(start, n):
        yield b, order[b * batch:(b + 1) * batch]


# --------------------------------------------------------------------------------------------- logging


class MetricsLog:
    """Appends one JSON object per line to run_dir/metrics.jsonl (main rank only), flushed each time."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.path = run_dir / METRICS
        self.enabled = enabled

    def write(self, **record: Any) -> None:
        if not self.enabled:
            return
        record.setdefault("time", time.time())
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def make_progress(console: Console | None = None, enabled: bool = True) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    console=console, disable=not enabled, transient=False)


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON, crash-safely (shortlist.atomic: temp file, fsync, rename, fsync the folder)."""
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """``run_dir``'s summary.json (the "run finished" marker), or None when the run has not finished: no
    summary.json, or one that is not a whole JSON object (torn by a crash of a version that wrote it without
    fsync, or emptied by hand); such a run is unfinished, never a traceback."""
    try:
        summary = json.loads((run_dir / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable, torn (UnicodeDecodeError is a ValueError)
        return None
    return summary if isinstance(summary, dict) else None


class ThreadTuner:
    """Picks the CPU thread count (1 or all cores) by measured images/s, re-checked every ``period_s``.

    Why: on a CPU shared with other jobs, an OpenMP team of 2 threads waits at every barrier for the thread
    whose core is busy elsewhere, which we measured several times *slower* than 1 thread; alone, 2 threads are
    faster (docs/training.md, "CPU defaults and why"). Neither choice is right all the time, so measure: every
    ``period_s`` (first after ``first_probe_s``) run ``probe_steps`` steps with the other count (the first step
    discarded: kernels re-plan for the new count) and keep it if its images/s beats the recent rate of the
    current count.
    """

    def __init__(self, choices: list[int], period_s: float = 60.0, probe_steps: int = 3,
                 first_probe_s: float = 20.0, max_period_s: float = 600.0) -> None:
        self.choices = sorted(set(choices))
        # start with the fewest threads: the choice that is never catastrophic on a busy machine
        self.current = self.choices[0]
        torch.set_num_threads(self.current)
        self.base_period_s, self.period_s, self.max_period_s = period_s, period_s, max_period_s
        self.probe_steps = probe_steps
        self.rate: float | None = None  # images/s of ``current``, exponential moving average
        self.probe: int | None = None  # thread count being probed
        self.probe_seen = 0
        self.probe_imgs, self.probe_time = 0, 0.0
        self.last_probe = time.perf_counter() - period_s + first_probe_s

    def observe(self, images: int, seconds: float) -> str | None:
        """Record one step; returns a message when the thread count changes."""
        if len(self.choices) < 2 or seconds <= 0:
            return None
        if self.probe is None:
            r = images / seconds
            self.rate = r if self.rate is None else 0.8 * self.rate + 0.2 * r
            if time.perf_counter() - self.last_probe >= self.period_s:
                self.probe = next(c for c in self.choices if c != self.current)
                self.probe_seen, self.probe_imgs, self.probe_time = 0, 0, 0.0
                torch.set_num_threads(self.probe)
            return None
        self.probe_seen += 1
        if self.probe_seen > 1:  # the first step after a switch pays for re-planning
            self.probe_imgs += images
            self.probe_time += seconds
        probe_rate = self.probe_imgs / max(self.probe_time, 1e-9)
        # a clearly slower probe is abandoned after one measured step (a slow probe is expensive)
        clearly_slower = self.probe_seen >= 2 and self.rate is not None and probe_rate < 0.7 * self.rate
        if self.probe_seen < self.probe_steps + 1 and not clearly_slower:
            return None
        old, probed = self.current, self.probe
        self.probe, self.last_probe = None, time.perf_counter()
        if self.rate is not None and probe_rate > 1.1 * self.rate:
            msg = f"threads {old} -> {probed} ({probe_rate:.0f} vs {self.rate:.0f} img/s)"
            self.current, self.rate, self.period_s = probed, probe_rate, self.base_period_s
            return msg
        torch.set_num_threads(old)
        self.period_s = min(self.period_s * 2, self.max_period_s)  # back off while the answer holds
        return None
