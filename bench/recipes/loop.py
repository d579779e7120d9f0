"""The one loop every recipe runs (``run_recipe``), through a real agent process the way a user's pipeline
runs Shortlist.

Once per run: decode the pool and test rows (``--data``: CIFAR-10 or any ImageFolder with train/ and
test/; ``--imbalance`` cuts named classes of the pool), pretrain the recipe's pretext encoder on the pool
(or publish ``--encoder``), export it into ``out/models`` and ingest the pool into a base agent data
folder (both reused by a rerun). Then one *cell* per (arm, seed), on its own copy of that data folder and
its own registry, round by round over the schedule of cumulative budgets::

    Select(budget_r - labelled, strategy (random in round 0), seed)   -> the agent, over gRPC
    SubmitLabels(true labels)                                         -> the simulated annotator
    run_cycle: ListSamples -> fine-tune the arm's head -> export -> publish into the cell's registry
               -> ReloadModel                                         -> the agent hot-swaps once embedded
    test accuracy of the published version's classifier (onnxruntime, the agent's Embedder)

Each round is recorded in the cell's rounds.json as it finishes, with the model version Select answered
with (the previous round's publication: the hot swap is checked, not assumed); a finished cell writes
cell.json and is skipped by a rerun, an interrupted one resumes at its first unfinished round (the labels
it had are in its agent's data folder). results.json, results.md and the plots are rewritten after
every cell.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import typer

from bench import cifar10
from bench.recipes.spec import Arm, Recipe, Scale, apply_imbalance
from shortlist.atomic import NotWholeJson, read_json, read_json_value, write_atomic

CELL = "cell.json"
ROUNDS = "rounds.json"


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(obj, indent=1))  # cell.json / rounds.json are resume markers: never torn


@dataclass(frozen=True)
class Context:
    """What every cell of one run shares."""

    recipe: Recipe
    scale: Scale
    out: Path
    registry: Path  # out/models: the pretext encoder's version
    version: str
    pretext_run: Path | None  # the training run behind it (encoder.pt), for heads that start from it
    base: Path  # the agent data folder holding the ingested pool
    pool_ids: list[str]
    truth: dict[str, int]
    classes: list[str]
    budgets: list[int]
    test_images: np.ndarray
    test_y: np.ndarray


def overrides(recipe: Recipe, scale: Scale, encoder: Path | None) -> dict[str, Any]:
    """What this run changed from the registered profile (a reduced run says so in its report)."""
    base = recipe.profiles.get(scale.name)
    out: dict[str, Any] = {} if base is None else {
        f: getattr(scale, f) for f in ("pool_size", "test_size", "pretrain_minutes", "steps", "epochs", "seeds",
                                       "budgets") if getattr(scale, f) != getattr(base, f)}
    if encoder is not None:
        out["encoder"] = str(encoder)
    return out


def pretext_profile(recipe: Recipe, scale: Scale) -> cifar10.Profile:
    """The bench cifar10 profile whose pretraining makes this recipe's pretext encoder."""
    return cifar10.Profile(name=f"recipe-{recipe.name}-{scale.name}", pool_size=scale.pool_size,
                           test_size=scale.test_size, pretrain_minutes=scale.pretrain_minutes, arch=scale.arch,
                           method=recipe.pretext, seeds=1, budgets=(), strategies=(), prior_methods=(),
                           pretrain_options={"preprocess": scale.preprocess, **scale.pretrain_options})


def check_settings(cells: Path, settings: dict[str, Any]) -> None:
    """Refuse a rerun into the same --out with other settings (its finished cells would be mixed with new
    ones); seeds and arms may change, they name the cells."""
    path = cells / "settings.json"
    if path.is_file():
        # not whole JSON: which settings the cells were made with is unknown, so whether they may be mixed
        # with this run's is too; the user decides (NotWholeJson: the command's one error: line, exit 2)
        saved = read_json(path, f"it records the settings the cells in {cells} were made with: restore it, or "
                          f"delete {cells} to run every cell again, or pass another --out")
        diff = [f"{k} {saved.get(k)!r} there, {v!r} now" for k, v in settings.items() if saved.get(k) != v]
        if diff:
            raise typer.BadParameter(f"{cells.parent} holds results made with other settings ({'; '.join(diff)}): "
                                     "pass another --out, or remove that folder to start over")
    _write_json(path, settings)


def _labelled_ids(stub: Any) -> list[str]:
    from agent import client

    return [s.id for s in client.list_samples(stub, labeled_only=True)]


@dataclass(frozen=True)
class CellAgent:
    """Where one cell runs: its folder (rounds, training runs) and the address of its agent, which serves
    the cell's own registry (``folder``/models)."""

    folder: Path
    address: str

    @property
    def registry(self) -> Path:
        return self.folder / "models"


def _labels_up_to(ctx: Context, arm: Arm, seed: int, r: int, stub: Any) -> tuple[list[str], str, str]:
    """Select and label up to round ``r``'s budget (a resumed round may already have its labels): the
    labelled ids, the strategy that picked and the model version Select answered with ("" when none)."""
    from agent import client
    from shortlist.v1 import agent_pb2

    target = ctx.budgets[r]
    strategy = "random" if r == 0 else arm.strategy
    labelled = _labelled_ids(stub)
    want = target - len(labelled)
    select_version = ""
    if want > 0:
        reply = stub.Select(agent_pb2.SelectRequest(budget=want, strategy=strategy, seed=seed * 1000 + r,
                                                    params=dict(arm.params) if r else {}), timeout=3600)
        picked = [s.id for s in reply.selected]
        if len(set(picked)) != want or set(picked) & set(labelled):
            raise RuntimeError(f"{arm.name}: asked {want} new samples, got {len(set(picked) - set(labelled))}")
        lab = client.submit_labels(stub, [(i, ctx.classes[ctx.truth[i]]) for i in picked], annotator="simulated")
        if lab.rejected:
            raise RuntimeError(f"labels rejected: {lab.rejected[0].id}: {lab.rejected[0].reason}")
        labelled += picked
        select_version = reply.model_version
    return labelled, strategy, select_version


def _round_init(ctx: Context, arm: Arm, r: int, folder: Path) -> tuple[str | None, bool]:
    """Where round ``r``'s head starts (a training run folder, None: fresh) and whether it is warm-started
    from the previous round."""
    head = arm.head
    previous = folder / f"round{r - 1}"
    warm = head.warm_start and r > 0 and (previous / "encoder.pt").is_file()
    if warm:
        return str(previous), warm
    if head.init == "pretext":
        if ctx.pretext_run is None:
            raise typer.BadParameter(f"arm {arm.name} fine-tunes the pretext encoder, whose training run "
                                     "(encoder.pt) is not available: pass --encoder RUN_FOLDER")
        return str(ctx.pretext_run), warm
    return None, warm


class RoundFailed(RuntimeError):
    """The agent refused or failed a call during a round (Select, labels, the cycle's calls, the swap); the
    message names the cell and round and gives the agent's status code and message."""


def run_round(ctx: Context, arm: Arm, seed: int, r: int, cell: CellAgent, console: Any) -> dict[str, Any]:
    """One round of one cell against its running agent (``_round``); a gRPC error from the agent becomes a
    ``RoundFailed`` naming the cell and round."""
    import grpc

    from agent import client

    try:
        return _round(ctx, arm, seed, r, cell, console)
    except grpc.RpcError as e:
        code = e.code().name if isinstance(e, grpc.Call) else type(e).__name__
        raise RoundFailed(f"{arm.name} seed {seed} round {r}: the agent answered {code}: {client.detail(e)}") \
            from None
    except client.AgentUnavailable as e:
        raise RoundFailed(f"{arm.name} seed {seed} round {r}: the agent is unavailable: {e}") from None


def _round(ctx: Context, arm: Arm, seed: int, r: int, cell: CellAgent, console: Any) -> dict[str, Any]:
    """One round of one cell against its running agent: labels up to the round's budget, retrain + publish
    + reload, wait for the swap, evaluate. Returns the round's record."""
    from agent import client
    from bench.metrics import class_coverage
    from training.cycle import CycleConfig, CycleRefused, run_cycle

    address, folder, registry = cell.address, cell.folder, cell.registry
    stub = client.connect(address)
    target = ctx.budgets[r]
    t0 = time.perf_counter()
    labelled, strategy, select_version = _labels_up_to(ctx, arm, seed, r, stub)
    select_s = time.perf_counter() - t0

    head, scale = arm.head, ctx.scale
    t1 = time.perf_counter()
    run_dir = folder / f"round{r}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    previous = folder / f"round{r - 1}"
    init, warm = _round_init(ctx, arm, r, folder)
    options = {"seed": seed * 1000 + r, "progress": False, "checkpoint_minutes": 1e9, "keep_head": warm,
               **scale.head_options, **head.options}
    trained = head.trains_network
    cycle = CycleConfig(models=registry, out=run_dir, mode=head.mode, init=init,
                        steps=(scale.steps if trained else 1) if (scale.epochs is None or not trained) else None,
                        epochs=scale.epochs if trained else None, preprocess=scale.preprocess, arch=scale.arch,
                        batch_size=scale.batch_size, threads=scale.threads, device=scale.device, options=options)
    try:
        result = run_cycle(address, cycle, console=console)
    except CycleRefused as e:  # labels of one class: say which cell and round, for the command's message
        raise CycleRefused(f"{arm.name} seed {seed} round {r} ({len(labelled)} labels): {e}") from None
    train_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    cifar10.wait_embedded(stub, len(ctx.pool_ids), result.published)  # the agent hot-swapped
    swap_s = time.perf_counter() - t2
    t3 = time.perf_counter()
    acc = cifar10.classifier_accuracy(registry / result.published, ctx.test_images, ctx.test_y, ctx.classes)
    eval_s = time.perf_counter() - t3
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)
    if r > 0:  # only the newest round's weights are needed (warm start, resume)
        (previous / "encoder.pt").unlink(missing_ok=True)
    lab_y = np.asarray([ctx.truth[i] for i in labelled])
    return {"round": r, "budget": target, "labeled": len(labelled), "strategy": strategy,
            "coverage": class_coverage(lab_y, len(ctx.classes)), "test_accuracy": acc,
            "select_model_version": select_version, "published": result.published,
            "train_steps": result.summary.get("steps"), "select_seconds": select_s, "train_seconds": train_s,
            "swap_seconds": swap_s, "eval_seconds": eval_s}


def _warn(console: Any, e: Exception) -> None:
    from rich.markup import escape

    console.print(f"[yellow]warning:[/] {escape(str(e))}", highlight=False)


def _saved_rounds(path: Path, console: Any) -> list[dict[str, Any]] | None:
    """The rounds an interrupted cell recorded in ``path`` (rounds.json), or None: none recorded, or a file
    that is not a whole list of round records (torn by a crash of an older version, or edited by hand; said
    in a warning), so the cell starts over from round 0 (its agent's labels cannot be matched to rounds)."""
    if not path.is_file():
        return None
    try:
        rounds = read_json_value(path, "that cell starts over from its first round")
    except NotWholeJson as e:
        _warn(console, e)
        return None
    if not (isinstance(rounds, list) and rounds and all(isinstance(r, dict) for r in rounds)):
        _warn(console, NotWholeJson(f"{path} does not hold a list of round records (edited by hand?); that cell "
                                    "starts over from its first round"))
        return None
    return rounds


def run_cell(ctx: Context, arm: Arm, seed: int, log: Path, console: Any) -> dict[str, Any]:
    """All rounds of (arm, seed); a finished cell is read back, an unfinished one resumes."""
    folder = ctx.out / "cells" / f"{arm.name}-seed{seed}"
    work, registry = folder / "agent", folder / "models"  # CellAgent.registry
    if (folder / CELL).is_file():
        try:
            return read_json(folder / CELL, "that cell runs again")
        except NotWholeJson as e:  # torn by a crash of an older version, or edited: the cell is not done
            _warn(console, e)
    rounds = _saved_rounds(folder / ROUNDS, console) if work.is_dir() else None
    if rounds is not None:
        console.print(f"[bold]resuming[/] {arm.name} seed {seed} after round {len(rounds) - 1}")
    else:
        rounds = []
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        shutil.copytree(ctx.base, work)  # the ingested pool, zero labels
        shutil.copytree(ctx.registry / ctx.version, registry / ctx.version)  # the pretext encoder
    t0 = time.perf_counter()
    with cifar10.agent_process(work, registry, log) as address:
        for r in range(len(rounds), len(ctx.budgets)):
            rec = run_round(ctx, arm, seed, r, CellAgent(folder, address), console)
            rounds.append(rec)
            _write_json(folder / ROUNDS, rounds)
            console.print(f"{ctx.recipe.name} {arm.name:>16} seed {seed} round {r}: {rec['labeled']:>6} labels "
                          f"({rec['strategy']}), test {rec['test_accuracy']:.3f} [select {rec['select_seconds']:.0f} "
                          f"s, train {rec['train_seconds']:.0f} s, swap {rec['swap_seconds']:.0f} s]")
    last = folder / f"round{len(ctx.budgets) - 1}"
    (last / "encoder.pt").unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)  # the cell is done: keep what it reports, not its agent and models
    shutil.rmtree(registry, ignore_errors=True)
    cell = {"arm": arm.name, "seed": seed, "strategy": arm.strategy, "head": asdict(arm.head) | {
        "options": dict(arm.head.options)}, "rounds": rounds, "seconds": time.perf_counter() - t0}
    _write_json(folder / CELL, cell)
    return cell


@dataclass(frozen=True)
class Options:
    """``bench recipe``'s options over the registered profile (a ``Scale``); None keeps the profile's, or
    the recipe's (``imbalance``, ``arms``: all of them)."""

    encoder: Path | None = None  # a pretext training run folder instead of pretraining one
    seeds: int | None = None
    arms: list[str] | None = None
    imbalance: dict[str, str] | None = None  # class -> count or "N%"
    budgets: list[str] | None = None
    pool: int | None = None
    test: int | None = None
    pretrain_minutes: float | None = None
    steps: int | None = None

    def apply(self, scale: Scale) -> Scale:
        """``scale`` with these overrides; --pretrain-minutes replaces a gpu profile's pretraining epochs and
        --steps the profile's training epochs."""
        pretrain_options = dict(scale.pretrain_options)
        if self.pretrain_minutes is not None:
            pretrain_options.pop("epochs", None)
        return replace(scale, pool_size=self.pool or scale.pool_size, test_size=self.test or scale.test_size,
                       pretrain_minutes=scale.pretrain_minutes if self.pretrain_minutes is None
                       else self.pretrain_minutes, pretrain_options=pretrain_options,
                       steps=self.steps or scale.steps, epochs=None if self.steps else scale.epochs,
                       seeds=self.seeds or scale.seeds, budgets=tuple(self.budgets or scale.budgets))


@dataclass(frozen=True)
class Plan:
    """One run's settings, resolved: the recipe at its scale (the profile with the command's options), the
    data, the output folder, the pretext encoder to publish (None: pretrain one), the pool's imbalance and
    the arms to run."""

    recipe: Recipe
    scale: Scale
    data: Path
    out: Path
    encoder: Path | None
    imbalance: dict[str, str]
    arms: list[Arm]


def _context(plan: Plan, walls: dict[str, float], console: Any) -> tuple[Context, dict[str, Any]]:
    """Everything before the cells: the pool and test rows, the settings check, the pretext encoder, the
    ingested pool. Returns the cells' shared ``Context`` and the facts of results.json."""
    recipe, scale, data, out, encoder, imbalance = (plan.recipe, plan.scale, plan.data, plan.out, plan.encoder,
                                                    plan.imbalance)
    train, pool_idx, test_set, test_idx = cifar10.load_pool_and_test(data, scale.pool_size, scale.test_size)
    pool_idx = apply_imbalance(train.labels, pool_idx, imbalance, train.classes)
    pool_ids = [train.ids[i] for i in pool_idx]
    budget_list = cifar10.resolve_budgets(scale.budgets, len(pool_ids))
    out.mkdir(parents=True, exist_ok=True)  # after the checks of the arguments: bad input writes nothing
    counts = np.bincount(train.labels[pool_idx], minlength=len(train.classes)).tolist()
    per_class = ", ".join(f"{c} {n}" for c, n in zip(train.classes, counts, strict=True))
    console.print(f"[bold]{recipe.name}[/] ({scale.name}) on {data}: pool {len(pool_ids)} ({per_class}), "
                  f"test {len(test_idx)}, budgets {budget_list}, arms {', '.join(a.name for a in plan.arms)}")
    check_settings(out / "cells", {"recipe": recipe.name, "profile": scale.name, "data": str(data),
                                   "pool": cifar10.hash_ids(pool_ids), "test_size": len(test_idx),
                                   "budgets": budget_list, "steps": scale.steps, "epochs": scale.epochs,
                                   "arch": scale.arch, "preprocess": scale.preprocess, "imbalance": imbalance,
                                   "encoder": str(encoder) if encoder else None})
    t = time.perf_counter()
    version, provenance = cifar10.prepare_encoder(encoder, pretext_profile(recipe, scale),
                                                  cifar10.PoolSplits(data, pool_idx, train, test_set), out, console)
    walls["encoder"] = time.perf_counter() - t
    registry = out / "models"
    _, test_images = cifar10.images_at_model_size(data, registry / version, train, test_set, pool_idx[:1], test_idx)
    t = time.perf_counter()
    base = out / "agent-base"
    cifar10.ingest_pool(data, pool_ids, version, registry, base, out / "agent.log", console)
    walls["ingest"] = time.perf_counter() - t
    ctx = Context(recipe=recipe, scale=scale, out=out, registry=registry, version=version,
                  pretext_run=cifar10.torch_run_of(provenance, registry / version), base=base, pool_ids=pool_ids,
                  truth={i: int(train.labels[r]) for i, r in zip(pool_ids, pool_idx, strict=True)},
                  classes=list(train.classes), budgets=budget_list, test_images=test_images, test_y=test_set.labels)
    facts = {"data": str(data), "imbalance": imbalance, "pool_size": len(pool_ids), "pool_class_counts": counts,
             "classes": list(train.classes), "test_size": len(test_idx), "budgets": budget_list,
             "model_version": version, "encoder": provenance}
    return ctx, facts


def run_recipe(recipe: Recipe, scale: Scale, data: Path, out: Path, options: Options | None = None,
               console: Any = None) -> dict[str, Any]:
    """Run (or resume) ``recipe`` at ``scale`` (with the command's ``options``) into ``out``; returns
    results.json's content."""
    from rich.console import Console

    from bench.recipes.report import write_report

    console = console or Console()
    options = options or Options()
    chosen = [recipe.arm(a) for a in options.arms] if options.arms else list(recipe.arms)
    scale = options.apply(scale)
    imbalance = dict(recipe.imbalance) if options.imbalance is None else options.imbalance
    walls: dict[str, float] = {}
    t_all = time.perf_counter()
    # the code at the start: the encoder's pretraining can take most of the run, and an editable install
    # picks up a checkout that moves meanwhile (recorded again at the end when it did)
    commit = cifar10._git_commit()
    plan = Plan(recipe=recipe, scale=scale, data=data, out=out, encoder=options.encoder, imbalance=imbalance,
                arms=chosen)
    ctx, facts = _context(plan, walls, console)
    results: dict[str, Any] = {
        "recipe": recipe.name, "title": recipe.title, "paper": recipe.paper, "claims": list(recipe.claims),
        "reference": recipe.reference, "profile": scale.name, "profile_description": scale.description,
        "overrides": overrides(recipe, scale, options.encoder),
        "data": facts["data"], "imbalance": facts["imbalance"], "pool_size": facts["pool_size"],
        "pool_class_counts": facts["pool_class_counts"], "classes": facts["classes"],
        "test_size": facts["test_size"], "budgets": facts["budgets"],
        "seeds": list(range(scale.seeds)), "arms": [{"name": a.name, "strategy": a.strategy, "mode": a.head.mode,
                                                      "init": a.head.init, "note": a.note} for a in chosen],
        "scale": {"arch": scale.arch, "preprocess": scale.preprocess, "steps": scale.steps, "epochs": scale.epochs,
                  "batch_size": scale.batch_size, "pretrain_minutes": scale.pretrain_minutes,
                  "pretrain_options": dict(scale.pretrain_options)},
        "model_version": facts["model_version"], "encoder": facts["encoder"], "git_commit": commit, "cells": [],
        "wall_seconds": walls, "complete": False}
    # Seeds outermost: an interrupted run has every arm at the first seeds.
    for seed in range(scale.seeds):
        for arm in chosen:
            t = time.perf_counter()
            results["cells"].append(run_cell(ctx, arm, seed, out / "agent.log", console))
            walls[f"cell/{arm.name}/seed{seed}"] = time.perf_counter() - t
            walls["total"] = time.perf_counter() - t_all
            _write_json(out / "results.json", results)
            write_report(out)
    walls["total"] = time.perf_counter() - t_all
    results["complete"] = True
    if (end := cifar10._git_commit()) != commit:
        results["git_commit_end"] = end
    _write_json(out / "results.json", results)
    paths = write_report(out)
    console.print(f"[bold]report:[/] {', '.join(str(p) for p in paths)}")
    return results
