"""``run_benchmark``: one whole ``bench cifar10`` run (data, encoder, ingest once, every strategy and seed on a
fresh copy of the agent's data folder, report)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import typer

from agent import client
from bench.cifar10.data import images_at_model_size, load_pool_and_test
from bench.cifar10.encoder import PoolSplits, _git_commit, code_fingerprint, embed_images, prepare_encoder
from bench.cifar10.evaluation import (
    EvalData,
    Finished,
    LoopSettings,
    Point,
    Run,
    SemiSupervised,
    _save,
    earlier_walls,
    finished_runs,
    inputs_fingerprint,
    run_strategy,
    save_embeddings,
)
from bench.cifar10.ingest import ingest_pool
from bench.cifar10.process import agent_process
from bench.cifar10.profiles import Profile, check_budgets, resolve_budgets
from bench.metrics import write_json
from shortlist.datasets import ImageArray

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID


@dataclass(frozen=True)
class Overrides:
    """``bench cifar10``'s options over its profile's settings; None (or empty) keeps the profile's."""

    strategies: Sequence[str] | None = None
    seeds: int | None = None
    budgets: Sequence[str] | None = None
    prior_methods: Sequence[str] | None = None
    semi_supervised_at: Sequence[int] | None = None
    semi_supervised_steps: int | None = None  # None: the profile's minutes per semi-supervised point
    audit: int | None = None

    def apply(self, profile: Profile) -> Profile:
        """``profile`` with these overrides (``semi_supervised_steps`` is no profile field: see ``SemiSupervised``)."""
        return replace(profile, strategies=tuple(self.strategies or profile.strategies),
                       seeds=self.seeds or profile.seeds, budgets=tuple(self.budgets or profile.budgets),
                       prior_methods=tuple(self.prior_methods or profile.prior_methods),
                       semi_supervised_at=tuple(profile.semi_supervised_at if self.semi_supervised_at is None
                                                else self.semi_supervised_at),
                       audit=profile.audit if self.audit is None else self.audit)


@dataclass(frozen=True)
class Folders:
    """Where one run writes, all under ``out``."""

    out: Path

    @property
    def registry(self) -> Path:  # the served model versions
        return self.out / "models"

    @property
    def base(self) -> Path:  # the agent's data folder with the pool ingested, copied for each run
        return self.out / "agent-base"

    @property
    def work(self) -> Path:  # the copy one (strategy, seed) run's agent works in
        return self.out / "agent-work"

    @property
    def log(self) -> Path:
        return self.out / "agent.log"


class Walls:
    """Wall seconds per step (``Run.wall_seconds``), in the order the steps end."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.seconds[key] = time.perf_counter() - t

    def total(self) -> None:
        self.seconds["total"] = time.perf_counter() - self.start


def _check_budgets(profile: Profile, pool: int) -> None:
    """A usage error for budgets that reach the pool (checked before pretraining)."""
    if resolve_budgets(profile.budgets, pool)[-1] >= pool:
        raise typer.BadParameter(f"budgets {', '.join(profile.budgets)} reach the pool's {pool} images; "
                                 "they must stay below it (the priors are scored on the unlabelled rest)",
                                 param_hint="'--budgets'")


def _semi_supervised(profile: Profile, provenance: dict[str, Any], steps: int | None, out: Path,
                     console: Console) -> SemiSupervised | None:
    """Where and how the AS3L semi-supervised stage runs (None: the profile has no points for it); it starts
    from ``--encoder`` when that is a training run folder with encoder.pt."""
    if not profile.semi_supervised_at:
        return None
    init = Path(provenance["encoder"]) if (Path(provenance["encoder"]) / "encoder.pt").is_file() else None
    if init is None:
        console.print("[yellow]semi-supervised stage starts from a random init:[/] --encoder is not a training "
                      "run folder with encoder.pt")
    return SemiSupervised(at=profile.semi_supervised_at, minutes=profile.semi_supervised_minutes,
                          steps=steps, init=init, prior_method="as3l", out=out / "semi-supervised")


def _run_one(strategy: str, seed: int, settings: LoopSettings, data: EvalData, folders: Folders,
             progress: Progress, task: TaskID) -> list[Point]:
    """One (strategy, seed) run, by an agent on a fresh copy of the base folder (every strategy starts from
    the same pool and zero labels), removed afterwards."""
    work = folders.work
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(folders.base, work)
    try:
        with agent_process(work, folders.registry, folders.log) as address:
            return run_strategy(client.connect(address), strategy, seed, settings, data, address, progress, task)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_strategies(run: Run, asked: tuple[list[str], list[int]], done: Finished, settings: LoopSettings,
                    data: EvalData, folders: Folders, progress: Progress, walls: Walls) -> None:
    """Every (strategy, seed) ``asked`` (strategies, seeds), reusing the ``done`` ones, into ``run``;
    results.json is rewritten after each. An agent error skips that run (recorded in ``run.skipped``,
    retried by a rerun)."""
    from rich.markup import escape  # (an agent's error message may hold a path with "[")

    strategies, seeds = asked
    n_budgets = len(settings.budgets)
    loop = progress.add_task("strategies", total=len(strategies) * len(seeds) * n_budgets)
    # Seeds outside strategies: an interrupted run still has every strategy at the first seeds, and
    # results.json is rewritten after each (strategy, seed) so nothing finished is lost.
    for seed in seeds:
        for strategy in strategies:
            if (strategy, seed) in done:
                run.records += done[(strategy, seed)]
                progress.advance(loop, n_budgets)
                continue
            t_s = time.perf_counter()
            try:
                points = _run_one(strategy, seed, settings, data, folders, progress, loop)
            except grpc.RpcError as e:
                msg = f"{e.code().name}: {e.details()}"
                progress.console.print(f"[yellow]skipped[/] {strategy} seed {seed}: {escape(msg)}")
                run.skipped.append({"strategy": strategy, "seed": seed, "error": msg})
                progress.advance(loop, n_budgets)
                continue
            run.records += [asdict(p) for p in points]
            walls.seconds[f"strategy/{strategy}/seed{seed}"] = time.perf_counter() - t_s
            walls.total()
            run.wall_seconds = walls.seconds
            _save(run, folders.out)


def interrupted_note(out: Path, command: str = "bench cifar10") -> str:
    """The line ``command`` prints when Ctrl-C stops it: what ``out`` keeps (the finished (strategy, seed) runs in
    results.json, which is rewritten after each; or the pretraining checkpoint) and that the same command
    resumes from there."""
    try:
        records = json.loads((out / "results.json").read_text()).get("records", [])
        finished = len({(r["strategy"], r["seed"]) for r in records})
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        finished = 0
    if finished:
        kept = f"{out / 'results.json'} keeps the {finished} finished (strategy, seed) run{'s' * (finished != 1)}"
    elif (out / "pretrain").is_dir():
        kept = f"no (strategy, seed) run had finished; {out / 'pretrain'} keeps the pretraining's last checkpoint"
    else:
        kept = "no (strategy, seed) run had finished"
    return (f"interrupted: {kept}; run the same `shortlist {command}` command again to resume (finished runs are "
            "reused, the unfinished one starts over)")


def _eval_data(data: Path, version_dir: Path, train: ImageArray, pool_idx: np.ndarray, test_set: ImageArray,
               test_idx: np.ndarray) -> tuple[EvalData, np.ndarray]:
    """The served model's view of the evaluation rows: the ``EvalData`` and the pool's NxD embeddings."""
    pool_ids = [train.ids[i] for i in pool_idx]
    pool_images, test_images = images_at_model_size(data, version_dir, train, test_set, pool_idx, test_idx)
    pool_emb_arr, test_emb = embed_images(version_dir, pool_images), embed_images(version_dir, test_images)
    truth = {i: int(train.labels[r]) for i, r in zip(pool_ids, pool_idx, strict=True)}
    return EvalData(truth=truth, classes=train.classes, pool_emb=dict(zip(pool_ids, pool_emb_arr, strict=True)),
                    test_emb=test_emb, test_y=test_set.labels, test_images=test_images), pool_emb_arr


def resumed_runs(out: Path, run: Run, console: Console) -> tuple[Finished, Finished]:
    """``finished_runs``'s reused and kept runs; its note (what is reused, or why nothing is) printed with its
    rich markup escaped: the note names ``out``'s results.json, and a path holding ``[x]`` lost it (read as a
    style tag) or, holding ``[/]``, stopped the run with a MarkupError."""
    from rich.markup import escape

    done, kept, note = finished_runs(out, run)
    if note:
        console.print(escape(note))
    return done, kept


def run_benchmark(data: Path, profile: Profile, out: Path, encoder: Path | None = None,
                  overrides: Overrides | None = None, console: Console | None = None) -> Run:
    """Run the whole benchmark (``profile`` with the command's ``overrides``); writes results.json,
    results.md and plots into ``out``."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from bench.report import write_report

    console = console or Console()
    overrides = overrides or Overrides()
    profile = overrides.apply(profile)
    check_budgets(profile.budgets)  # before the data is loaded: a bad entry is said at once
    folders = Folders(out)
    out.mkdir(parents=True, exist_ok=True)
    walls = Walls()

    with walls.timed("load_data"):
        # The evaluation rows, taken once: pretraining's kNN check, embedding and scoring all use them.
        train, pool_idx, test_set, test_idx = load_pool_and_test(data, profile.pool_size, profile.test_size)
    _check_budgets(profile, len(pool_idx))
    console.print(f"[bold]data[/] {escape(str(data))}: pool {len(pool_idx)} of {len(train.ids)} train images, "
                  f"test {len(test_idx)}, classes {escape(', '.join(train.classes))}")
    with walls.timed("encoder"):
        version, provenance = prepare_encoder(encoder, profile, PoolSplits(data, pool_idx, train, test_set), out,
                                              console)
    with walls.timed("embed_eval_sets"):
        ev, pool_emb_arr = _eval_data(data, folders.registry / version, train, pool_idx, test_set, test_idx)
    # Kept so `shortlist bench strategies` can compare every strategy on exactly these embeddings.
    save_embeddings(out / "embeddings", pool_emb_arr, train.labels[pool_idx], ev.test_emb, ev.test_y)
    write_json(out / "embeddings" / "meta.json",  # what they are, as `bench embeddings` says it
               {"data": str(data), "encoder": provenance, "model_version": version, "classes": train.classes,
                "pool_size": len(pool_idx), "test_size": len(ev.test_y), "dim": int(pool_emb_arr.shape[1])})
    pool_ids = [train.ids[i] for i in pool_idx]
    ssl = _semi_supervised(profile, provenance, overrides.semi_supervised_steps, out, console)
    budget_list = resolve_budgets(profile.budgets, len(pool_ids))
    settings = LoopSettings(budgets=tuple(budget_list), prior_methods=profile.prior_methods, audit=profile.audit,
                            ssl=ssl)
    run = Run(profile=profile.name, data=str(data), seeds=list(range(profile.seeds)), budgets=budget_list,
              strategies=list(profile.strategies), prior_methods=list(profile.prior_methods),
              pool_size=len(pool_ids), test_size=len(test_idx), model_version=version, encoder=provenance,
              audit=profile.audit, classes=list(train.classes),
              class_counts=np.bincount(train.labels[pool_idx], minlength=len(train.classes)).tolist(),
              git_commit=_git_commit(), code=code_fingerprint(),
              fingerprint=inputs_fingerprint(pool_ids, train.labels[pool_idx], pool_emb_arr, ev.test_emb, ev.test_y,
                                             ssl))
    # a rerun into the same --out resumes where the last one stopped, and keeps what it does not ask for
    done, kept = resumed_runs(out, run, console)
    asked = (list(run.strategies), list(run.seeds))
    reused = earlier_walls(out, {**done, **kept})
    if reused:  # what the reused runs took when they ran: the report says it beside this run's wall time
        walls.seconds.update(reused)
        walls.seconds["reused_runs"] = sum(reused.values())
    for (strategy, seed), records in kept.items():
        run.records += records
        run.strategies += [strategy] if strategy not in run.strategies else []
        run.seeds = sorted({*run.seeds, seed})
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("left"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        with walls.timed("ingest"):
            ingest_pool(data, pool_ids, version, folders.registry, folders.base, folders.log, console, progress,
                        classes=train.classes)
        with walls.timed("strategies"):
            _run_strategies(run, asked, done, settings, ev, folders, progress, walls)
    walls.total()
    run.wall_seconds = walls.seconds
    run.complete = True
    _save(run, out)
    write_report([out], out, console)
    return run
