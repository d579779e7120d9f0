"""``run_benchmark``: one whole ``bench cifar10`` run (data, encoder, ingest once, every strategy and seed on a
fresh copy of the agent's data folder, report)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import grpc
import typer

from agent import client
from bench.cifar10.data import images_at_model_size, load_pool_and_test
from bench.cifar10.encoder import _git_commit, code_fingerprint, embed_images, prepare_encoder
from bench.cifar10.evaluation import (
    Run,
    SemiSupervised,
    _save,
    finished_runs,
    inputs_fingerprint,
    run_strategy,
    save_embeddings,
)
from bench.cifar10.ingest import ingest_pool
from bench.cifar10.process import agent_process
from bench.cifar10.profiles import Profile, resolve_budgets


def run_benchmark(data: Path, profile: Profile, out: Path, encoder: Path | None = None,
                  strategies: Sequence[str] | None = None, seeds: int | None = None,
                  budgets: Sequence[str] | None = None, prior_methods: Sequence[str] | None = None,
                  console: Any = None, semi_supervised_at: Sequence[int] | None = None,
                  semi_supervised_steps: int | None = None, audit: int | None = None) -> Run:
    """Run the whole benchmark; writes results.json, results.md and plots into ``out``."""
    from rich.console import Console
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
    profile = replace(profile, strategies=tuple(strategies or profile.strategies),
                      seeds=seeds or profile.seeds, budgets=tuple(budgets or profile.budgets),
                      prior_methods=tuple(prior_methods or profile.prior_methods),
                      semi_supervised_at=tuple(profile.semi_supervised_at if semi_supervised_at is None
                                               else semi_supervised_at),
                      audit=profile.audit if audit is None else audit)
    out.mkdir(parents=True, exist_ok=True)
    walls: dict[str, float] = {}
    t_all = time.perf_counter()

    t = time.perf_counter()
    # The evaluation rows, taken once: pretraining's kNN check, embedding and scoring all use them.
    train, pool_idx, test_set, test_idx = load_pool_and_test(data, profile.pool_size, profile.test_size)
    test_y = test_set.labels
    walls["load_data"] = time.perf_counter() - t
    if resolve_budgets(profile.budgets, len(pool_idx))[-1] >= len(pool_idx):  # before pretraining
        raise typer.BadParameter(f"budgets {', '.join(profile.budgets)} reach the pool's {len(pool_idx)} images; "
                                 "they must stay below it (the priors are scored on the unlabelled rest)",
                                 param_hint="'--budgets'")
    console.print(f"[bold]data[/] {data}: pool {len(pool_idx)} of {len(train.ids)} train images, "
                  f"test {len(test_idx)}, classes {', '.join(train.classes)}")

    t = time.perf_counter()
    version, provenance = prepare_encoder(encoder, profile, data, pool_idx, out, console, train, test_set)
    walls["encoder"] = time.perf_counter() - t
    registry = out / "models"
    version_dir = registry / version

    t = time.perf_counter()
    pool_ids = [train.ids[i] for i in pool_idx]
    pool_images, test_images = images_at_model_size(data, version_dir, train, test_set, pool_idx, test_idx)
    pool_emb_arr, test_emb = embed_images(version_dir, pool_images), embed_images(version_dir, test_images)
    walls["embed_eval_sets"] = time.perf_counter() - t
    # Kept so `shortlist bench strategies` can compare every strategy on exactly these embeddings.
    save_embeddings(out / "embeddings", pool_emb_arr, train.labels[pool_idx], test_emb, test_y)
    pool_emb = dict(zip(pool_ids, pool_emb_arr, strict=True))
    truth = {i: int(train.labels[r]) for i, r in zip(pool_ids, pool_idx, strict=True)}

    ssl = None
    if profile.semi_supervised_at:
        init = Path(provenance["encoder"]) if (Path(provenance["encoder"]) / "encoder.pt").is_file() else None
        if init is None:
            console.print("[yellow]semi-supervised stage starts from a random init:[/] --encoder is not a training "
                          "run folder with encoder.pt")
        ssl = SemiSupervised(at=profile.semi_supervised_at, minutes=profile.semi_supervised_minutes,
                             steps=semi_supervised_steps, init=init, prior_method="as3l", out=out / "semi-supervised")

    base = out / "agent-base"
    budget_list = resolve_budgets(profile.budgets, len(pool_ids))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("left"), TimeRemainingColumn())
    run = Run(profile=profile.name, data=str(data), seeds=list(range(profile.seeds)), budgets=budget_list,
              strategies=list(profile.strategies), prior_methods=list(profile.prior_methods),
              pool_size=len(pool_ids), test_size=len(test_idx), model_version=version, encoder=provenance,
              audit=profile.audit,
              git_commit=_git_commit(), code=code_fingerprint(),
              fingerprint=inputs_fingerprint(pool_ids, train.labels[pool_idx], pool_emb_arr, test_emb, test_y, ssl))
    done, note = finished_runs(out, run)  # a rerun into the same --out resumes where the last one stopped
    if note:
        console.print(note)
    with Progress(*columns, console=console, transient=False) as progress:
        t = time.perf_counter()
        ingest_pool(data, pool_ids, version, registry, base, out / "agent.log", console, progress,
                    classes=train.classes)
        walls["ingest"] = time.perf_counter() - t

        loop = progress.add_task("strategies", total=len(profile.strategies) * profile.seeds * len(budget_list))
        t = time.perf_counter()
        # Seeds outside strategies: an interrupted run still has every strategy at the first seeds, and
        # results.json is rewritten after each (strategy, seed) so nothing finished is lost.
        for seed in range(profile.seeds):
            for strategy in profile.strategies:
                if (strategy, seed) in done:
                    run.records += done[(strategy, seed)]
                    progress.advance(loop, len(budget_list))
                    continue
                work = out / "agent-work"
                if work.exists():
                    shutil.rmtree(work)
                shutil.copytree(base, work)  # every strategy starts from the same pool and zero labels
                t_s = time.perf_counter()
                try:
                    with agent_process(work, registry, out / "agent.log") as address:
                        points = run_strategy(client.connect(address), strategy, seed, budget_list,
                                              profile.prior_methods, truth, train.classes, pool_emb, test_emb,
                                              test_y, progress, loop, ssl, address, test_images,
                                              audit=profile.audit)
                except grpc.RpcError as e:
                    msg = f"{e.code().name}: {e.details()}"
                    console.print(f"[yellow]skipped[/] {strategy} seed {seed}: {msg}")
                    run.skipped.append({"strategy": strategy, "seed": seed, "error": msg})
                    progress.advance(loop, len(budget_list))
                    continue
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                run.records += [asdict(p) for p in points]
                walls[f"strategy/{strategy}/seed{seed}"] = time.perf_counter() - t_s
                walls["total"] = time.perf_counter() - t_all
                run.wall_seconds = walls
                _save(run, out)
        walls["strategies"] = time.perf_counter() - t
    walls["total"] = time.perf_counter() - t_all
    run.wall_seconds = walls
    run.complete = True
    _save(run, out)
    write_report([out], out, console)
    return run
