"""``shortlist bench strategies`` and ``shortlist bench select-scale``: the selection strategies and
prior-label methods evaluated on fixed embeddings with a simulated annotator, and Select's time on a
1M-row pool. Commands that print figures, not tests. Torch-free: the agent's functions are called
directly on a Pool built from the arrays, with an hnswlib index for its kNN.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import typer

from agent.errors import quoted
from agent.pool import FailedPrecondition, InvalidArgument, KnnFn, Pool, state_rng
from agent.priors import PRIOR_METHODS
from agent.strategies import LABEL_FREE, STRATEGIES
from agent.strategies.audit import AUDIT
from bench.checks import (
    MAX_DIM,
    MAX_ROWS,
    OutLock,
    class_counts_said,
    is_imbalanced,
    require_fits,
    require_two_classes,
)
from bench.metrics import class_coverage, expected_calibration_error, linear_probe_scores, prior_scores, write_json
from bench.report import md_table, seed_blind_note
from shortlist.atomic import NotWholeJson, read_json
from shortlist.options import finite

# Neighbours precomputed per row for the benchmark's kNN (covers the prior methods' k).
CACHED_K = 64


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32), as the agent stores embeddings."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def hnsw_index(x: np.ndarray, threads: int = 2) -> Any:
    """An hnswlib cosine index over x (NxD unit rows), ids = row numbers, built as the agent builds its
    own (agent/index.py: M=16, ef_construction=100; queries at ef=max(128, k))."""
    import hnswlib

    index = hnswlib.Index(space="cosine", dim=x.shape[1])
    index.init_index(max_elements=len(x), ef_construction=100, M=16, random_seed=0)
    index.set_num_threads(threads)
    index.add_items(x, np.arange(len(x)))
    return index


def hnsw_knn(index: Any, n: int) -> KnnFn:
    """The Pool.knn contract over an hnswlib index of n rows."""

    def knn(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, n)
        index.set_ef(max(128, k))
        rows, dist = index.knn_query(np.asarray(queries, np.float32), k=k)
        return rows.astype(np.int64), dist.astype(np.float32)

    return knn


@dataclass
class CachedKnn:
    """Pool.knn for the benchmark: every row's CACHED_K neighbours are computed once, and a query that
    is a pool row (found by its bytes) is answered from that table; anything else asks the index.
    The strategies and priors are called hundreds of times on the same pool, so this saves most of
    the benchmark's time without changing any answer."""

    x: np.ndarray
    index: Any

    def __post_init__(self) -> None:
        self._query = hnsw_knn(self.index, len(self.x))
        self.rows, self.dist = self._query(self.x, min(CACHED_K, len(self.x)))
        self._row_of = {self.x[i].tobytes(): i for i in range(len(self.x))}

    def __call__(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k <= self.rows.shape[1]:
            found = [self._row_of.get(np.asarray(q, np.float32).tobytes(), -1) for q in queries]
            at = np.asarray(found, np.int64)
            if len(at) == 0 or at.min() >= 0:
                return self.rows[at, :k], self.dist[at, :k]
        return self._query(queries, k)


@dataclass(frozen=True)
class Variant:
    """One strategy as the benchmark runs it: the registry ``name`` and the Select ``params`` it gets
    (none: the paper's defaults). ``label`` names it in results.json, the tables and the plot."""

    name: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return " ".join([self.name] + [f"{k}={v}" for k, v in sorted(self.params.items())])


def parse_variant(raw: str) -> Variant:
    """``NAME:key=value,key=value`` (e.g. ``probcover:delta=0.4``) -> Variant; the name must be a strategy."""
    name, _, rest = raw.partition(":")
    name = name.strip()
    if name not in STRATEGIES:
        raise typer.BadParameter(f"--variant {quoted(raw)}: unknown strategy {quoted(name)}; "
                                 f"valid: {', '.join(sorted(STRATEGIES))}")
    params: dict[str, str] = {}
    for item in (i.strip() for i in rest.split(",") if i.strip()):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise typer.BadParameter(f"--variant {quoted(raw)}: write params as key=value, e.g. probcover:delta=0.4")
        params[key.strip()] = value.strip()
    if not params:
        raise typer.BadParameter(f"--variant {quoted(raw)}: give at least one key=value after the colon "
                                 "(a strategy with its defaults goes in --strategies)")
    return Variant(name, params)


def make_pool(x: np.ndarray, labels: np.ndarray, picked: np.ndarray, knn: KnnFn, num_classes: int,
              pretext_loss: np.ndarray | None, drawn: np.ndarray | None = None) -> Pool:
    """The pool the agent would build after the annotator labelled ``picked`` (true labels revealed), of
    which ``drawn`` a uniform strategy drew (``Pool.audit``, as the agent records them: ``Simulated.drawn``)."""
    picked = np.asarray(picked, np.int64)
    return Pool(embeddings=x, labeled=picked, labels=labels[picked],
                classes=[str(c) for c in range(num_classes)],
                candidates=np.setdiff1d(np.arange(len(x)), picked), knn=knn, pretext_loss=pretext_loss,
                audit=np.zeros(0, np.int64) if drawn is None else np.sort(np.asarray(drawn, np.int64)))


class Simulated(NamedTuple):
    """``simulate``'s labelled set: ``rows`` in pick order, a ``note`` on how they were picked, the strategy's
    Selection.details, and ``drawn``: the rows a uniform strategy (random) drew, which the calibration fits
    on like audit labels (``make_pool``'s ``drawn``)."""

    rows: np.ndarray
    note: str
    details: dict[str, str]
    drawn: np.ndarray


def row_ids(rows: np.ndarray) -> list[str]:
    """The benchmark's sample ids: pool row numbers as text (what ``state_rng`` hashes)."""
    return [str(int(r)) for r in rows]


@dataclass(frozen=True, eq=False)
class SimPool:
    """What ``simulate`` picks from: the pool's unit rows ``x``, the annotator's true ``labels``, the kNN over
    the rows, the class count and the per-row pretext losses (das; None: none)."""

    x: np.ndarray
    labels: np.ndarray
    knn: KnnFn
    num_classes: int
    pretext_loss: np.ndarray | None = None

    def pool(self, picked: np.ndarray, drawn: np.ndarray | None = None) -> Pool:
        """``make_pool`` over these rows."""
        return make_pool(self.x, self.labels, picked, self.knn, self.num_classes, self.pretext_loss, drawn)


def simulate(variant: Variant, budget: int, seed: int, sim: SimPool) -> Simulated:
    """Rows an annotator would have labelled with ``variant`` at ``budget``: one cold-start shot
    for the strategies that need no labels; for the others a random first half (the usual warm start
    of uncertainty sampling), then the strategy for the second half. Each Select gets the generator the
    agent would give it (agent.pool.state_rng: the seed and the labelled set)."""
    name, params = variant.name, variant.params
    empty = np.zeros(0, np.int64)
    cold = sim.pool(empty)
    if name in LABEL_FREE:
        entry = STRATEGIES[name]
        sel = entry(cold, budget, state_rng(seed, []), params)
        return Simulated(sel.rows, "", sel.details, sel.rows if entry.uniform else empty)
    first = STRATEGIES["random"](cold, max(budget // 2, 1), state_rng(seed, []), {}).rows
    pool = sim.pool(first, drawn=first)
    rng = state_rng(seed, row_ids(first))
    try:
        sel = STRATEGIES[name](pool, budget - len(first), rng, params)
        return Simulated(np.concatenate([first, sel.rows]), "random first half", sel.details, first)
    except FailedPrecondition:  # e.g. the random half held one class: fill at random and say so
        rest = STRATEGIES["random"](pool, budget - len(first), rng, {}).rows
        both = np.concatenate([first, rest])
        return Simulated(both, "random (strategy refused: one class in first half)", {}, both)


def simulated_pools(x: np.ndarray, labels: np.ndarray, knn: KnnFn, num_classes: int, strategies: Sequence[str],
                    budgets: Sequence[int], seeds: int) -> Iterator[tuple[str, int, int, np.ndarray, Pool]]:
    """(strategy, budget, seed, picked rows, pool) for every strategy, budget and seed, in that order: the
    labelled set ``simulate`` picks (the strategy's default params, no pretext loss) and the pool
    ``make_pool`` builds on it, as ``bench strategies`` evaluates them (the calibration experiments in
    scripts/experiments loop over these)."""
    for strategy in strategies:
        for budget in budgets:
            for seed in range(seeds):
                picked, _, _, drawn = simulate(Variant(strategy), budget, seed, SimPool(x, labels, knn, num_classes))
                yield strategy, budget, seed, picked, make_pool(x, labels, picked, knn, num_classes, None, drawn)


@dataclass(frozen=True, eq=False)
class BenchRows:
    """``bench strategies``' arrays: the pool's unit rows and true classes, the linear probe's test split (None:
    the probe scores the unlabelled rest) and the per-row pretext losses (das; None: none)."""

    x: np.ndarray
    labels: np.ndarray
    test_x: np.ndarray | None = None
    test_y: np.ndarray | None = None
    pretext_loss: np.ndarray | None = None


@dataclass(frozen=True)
class StrategiesConfig:
    """``bench strategies``' settings: the budgets, the seeds per budget, the strategies (with their params)
    and the prior methods, with ``prior_params`` for every prior call (e.g. {"calibrate": "false"})."""

    budgets: list[int]
    seeds: int
    strategies: list[Variant]
    priors: list[str]
    prior_params: dict[str, str] | None = None


CELLS = "cells.json"
CellKey = tuple[str, int, int, str]


def cell_key(record: dict[str, Any]) -> CellKey:
    """A record's cell: (strategy label, budget, seed, prior method)."""
    return str(record["strategy"]), int(record["budget"]), int(record["seed"]), str(record["prior_method"])


@dataclass
class Cells:
    """``bench strategies``' finished cells, kept in ``path`` (out/cells.json) as each finishes, so an interrupted
    run loses at most the cell it was in and a rerun into the same --out skips the rest. ``settings`` are what
    the cells' figures depend on (the inputs' contents, calibration, the code); the strategies, budgets, seeds and
    prior methods name the cells, so a rerun may ask for others. ``path`` None: kept in memory only."""

    path: Path | None
    settings: dict[str, Any]
    done: dict[CellKey, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, out: Path, settings: dict[str, Any], fresh: bool = False) -> Cells:
        """The cells ``out`` holds, or none (always none with ``fresh``: the first finished cell then replaces
        the file); raises typer.BadParameter when they were made with other ``settings`` (mixing them would
        give a table of two experiments)."""
        path = out / CELLS
        if fresh:
            return cls(path, settings)
        try:
            # not whole JSON (torn by a crash of an older version, or edited by hand): NotWholeJson, the
            # command's one error: line; its cells are the user's to give up (--fresh), not silently replaced
            saved = read_json(path, "it holds the cells an earlier run finished: pass --fresh to start over (every "
                              "cell runs again), or another --out")
        except FileNotFoundError:
            return cls(path, settings)
        except OSError as e:
            raise typer.BadParameter(f"cannot read {path} ({e}): pass --fresh to start over") from None
        was = saved.get("settings", {})
        was = was if isinstance(was, dict) else {}
        if diff := settings_diff(was, settings):
            raise typer.BadParameter(f"{out} holds results made with other settings ({'; '.join(diff)}): pass "
                                     f"another --out, or --fresh to replace them", param_hint="'--out'")
        records = saved.get("records", [])
        named = {"strategy", "budget", "seed", "prior_method"}
        # a record edited into something that names no cell is left out: that cell runs again
        return cls(path, settings, {cell_key(r): r for r in (records if isinstance(records, list) else [])
                                    if isinstance(r, dict) and named <= r.keys()})

    def add(self, record: dict[str, Any]) -> None:
        """Keep ``record``'s cell, written at once (atomically: an interruption leaves the previous file)."""
        self.done[cell_key(record)] = record
        if self.path is not None:
            write_json(self.path, {"settings": self.settings, "records": list(self.done.values())})


def settings_diff(was: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between the ``was`` settings (cells.json's) and ``now``, one phrase each: an input by its
    argument (``inputs_sha256`` holds one fingerprint per input file, so the user reads which file changed, not
    that one combined hash did); strings quoted as the agent's messages quote them (agent.errors.quoted)."""
    diff = []
    for key, value in now.items():
        old = was.get(key)
        if old == value:
            continue
        if key == "inputs_sha256" and isinstance(value, dict) and isinstance(old, dict):
            diff += [f"the contents of {arg} ({_fingerprint_said(old.get(arg), arg in old)} there, "
                     f"{_fingerprint_said(digest, True)} now)" for arg, digest in value.items()
                     if arg not in old or old[arg] != digest]
        elif key == "inputs_sha256" and isinstance(value, dict):  # an earlier version's one combined hash
            diff.append("the inputs' fingerprint (one sha256 of all the input files there, written by an earlier "
                        "version, so which file differs is not known; one per file now)")
        else:
            diff.append(f"{key} {_setting_said(old)} there, {_setting_said(value)} now")
    return diff


def _fingerprint_said(digest: str | None, recorded: bool) -> str:
    """A fingerprint in a message: its first 12 hex digits (enough to tell two apart), or why there is none."""
    return "not recorded" if not recorded else "not given" if digest is None else f"sha256 {quoted(digest[:12])}..."


def _setting_said(value: Any) -> str:
    return quoted(value) if isinstance(value, str) else repr(value)


def reuse_note(reused: int, total: int, path: Path) -> str:
    """What a run says of the ``reused`` of its ``total`` cells that ``path`` (OUT/cells.json) already held
    ("" when none): a rerun of a finished run computes nothing, which the user must not take for a new run."""
    if not reused:
        return ""
    cells = "(strategy, budget, seed, prior method)"
    if reused == total:
        return (f"nothing to compute: all {total} cell(s) {cells} are read back from {path}, "
                "written by an earlier run with the same inputs and code; the figures below are that run's. A "
                "cell's draws are fixed by its seed: for other draws ask for more --seeds (only the new cells are "
                "computed); --fresh computes every cell again")
    return (f"resuming: {reused} of {total} cell(s) {cells} reused from {path}, {total - reused} left to compute "
            "(--fresh computes them all again)")


def inputs_digest(*arrays: np.ndarray | None) -> str:
    """sha256 over the arrays' dtypes, shapes and bytes (None counts too): a cell's inputs, whatever their paths."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(b"none" if a is None else f"{a.dtype}{a.shape}".encode() + np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def run_benchmark(rows: BenchRows, cfg: StrategiesConfig, progress: Any = None,
                  cells: Cells | None = None) -> list[dict[str, Any]]:
    """Every (strategy, budget, seed): pick, reveal labels, run each prior method on the unlabelled rest
    (with ``cfg.prior_params``). Returns flat records (one per strategy, budget, seed and prior method), in
    that order. Each record goes into ``cells`` as it is made; one ``cells`` already holds is reused."""
    x, labels = rows.x, rows.labels
    num_classes = int(labels.max()) + 1
    cells = cells if cells is not None else Cells(None, {})
    sim: SimPool | None = None  # the index is built only when a cell is left to run
    records: list[dict[str, Any]] = []
    budgets, seeds = cfg.budgets, cfg.seeds
    task = progress.add_task("strategies", total=len(cfg.strategies) * len(budgets) * seeds) if progress else None
    for variant in cfg.strategies:
        for budget in budgets:
            for seed in range(seeds):
                todo = [m for m in cfg.priors if (variant.label, budget, seed, m) not in cells.done]
                if todo:
                    if sim is None:
                        sim = SimPool(x, labels, CachedKnn(x, hnsw_index(x)), num_classes, rows.pretext_loss)
                    _run_cell(variant, budget, seed, todo, rows, cfg, sim, cells)
                records += [cells.done[(variant.label, budget, seed, m)] for m in cfg.priors]
                if progress is not None:
                    progress.update(task, advance=1, description=f"{variant.label} @ {budget}")
    return records


def _run_cell(variant: Variant, budget: int, seed: int, methods: list[str], rows: BenchRows, cfg: StrategiesConfig,
              sim: SimPool, cells: Cells) -> None:
    """One (strategy, budget, seed): pick, score the linear probe, then each of ``methods``, each record
    added to ``cells`` as it is made."""
    x, labels, test_x, test_y = rows.x, rows.labels, rows.test_x, rows.test_y
    t0 = time.perf_counter()
    picked, note, details, drawn = simulate(variant, budget, seed, sim)
    select_s = time.perf_counter() - t0
    if test_x is not None and test_y is not None:
        lin = linear_probe_scores(x[picked], labels[picked], test_x, test_y, seed)
    else:  # no test split: score the probe on the unlabelled rest
        rest = np.setdiff1d(np.arange(len(x)), picked)
        lin = linear_probe_scores(x[picked], labels[picked], x[rest], labels[rest], seed)
    pool = sim.pool(picked, drawn)
    candidates = pool.candidates
    for method in methods:
        t1 = time.perf_counter()
        pr = PRIOR_METHODS[method](pool, candidates, state_rng(0, row_ids(picked)), dict(cfg.prior_params or {}))
        truth = labels[candidates]
        cells.add({
            "strategy": variant.label, "params": variant.params, "budget": budget, "seed": seed,
            "prior_method": method,
            "coverage": class_coverage(labels[picked], sim.num_classes),
            # balanced: mean per-class recall (on an imbalanced pool plain accuracy hides rare classes)
            **prior_scores(pr.probs, truth),
            "ece_confidence": expected_calibration_error(pr.probs, truth, confidence=pr.confidence),
            "linear_accuracy": lin.accuracy, "linear_balanced_accuracy": lin.balanced_accuracy,
            "select_seconds": round(select_s, 3),
            "prior_seconds": round(time.perf_counter() - t1, 3), "note": note, "details": details,
        })


def units(seeds: int) -> str:
    """results.md's key: what each column's figures are (over ``seeds`` seeds: one has no spread to show)."""
    several = seeds > 1
    return (f"Accuracies are in %{' (mean ± std over seeds)' if several else ''}; balanced accuracy is the mean "
            "per-class recall. \"classes covered\" is how many classes the labelled set holds. ECE is a fraction "
            "(0 to 1): the expected calibration error of the prior labels' top-class confidence on the unlabelled "
            f"pool. results.png plots {'the means over seeds' if several else 'the figures'}.")
# results.md's line, and the probe columns' and panel's note, when no test split was given: the probe is then
# scored on the rows the strategy did not pick, which a reader of "linear probe acc" would take for a test set.
PROBE_ON_POOL = ("No test split (--test-embeddings / --test-labels not given): the linear probe is scored on the "
                 "unlabelled pool (the rows the strategy did not pick, as the priors are), not on held-out test rows.")
POOL_NOTE = " (on the unlabelled pool)"


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (strategy, budget, prior_method)."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["strategy"], r["budget"], r["prior_method"]), []).append(r)
    out = []
    for (s, b, m), rs in groups.items():
        row: dict[str, Any] = {"strategy": s, "budget": b, "prior_method": m, "seeds": len(rs)}
        for key in ("coverage", "prior_accuracy", "prior_balanced_accuracy", "ece", "linear_accuracy",
                    "linear_balanced_accuracy"):
            # a key a record lacks (written before it was measured) or null (nothing to score) reads as NaN
            vals = np.array([np.nan if r.get(key) is None else r[key] for r in rs], np.float64)
            row[key], row[key + "_std"] = float(np.mean(vals)), float(np.std(vals))
        out.append(row)
    return out


def markdown_table(summary: list[dict[str, Any]], priors: list[str], probe_on_pool: bool = False) -> str:
    """One Markdown table per budget: strategy | coverage | linear acc | linear balanced acc | prior acc /
    balanced acc / ECE per method (accuracies in %, mean ± std over seeds). ``probe_on_pool``: no test split,
    the probe columns say they are scored on the unlabelled pool."""
    where = POOL_NOTE if probe_on_pool else ""
    lines: list[str] = []
    for budget in sorted({r["budget"] for r in summary}):
        lines += [f"### budget {budget}", ""]
        head = ["strategy", "classes covered", f"linear probe acc{where}", f"linear probe balanced acc{where}",
                *(f"{m} prior acc / balanced acc / ECE" for m in priors)]
        rows = []
        by_strategy: dict[str, dict[str, dict[str, Any]]] = {}
        for r in summary:
            if r["budget"] == budget:
                by_strategy.setdefault(r["strategy"], {})[r["prior_method"]] = r
        for s, per in by_strategy.items():
            any_r = next(iter(per.values()))
            cells = [s, f"{any_r['coverage']:.1f}" + _spread(any_r, "coverage", 1.0),
                     _percent(any_r, "linear_accuracy"), _percent(any_r, "linear_balanced_accuracy")]
            for m in priors:
                got = per.get(m)
                cells.append("-" if got is None else
                             f"{_percent(got, 'prior_accuracy')} / {_percent(got, 'prior_balanced_accuracy')} / "
                             + ("-" if not np.isfinite(got["ece"]) else f"{got['ece']:.3f}"))
            rows.append(cells)
        lines += [*md_table(head, rows), ""]
    return "\n".join(lines)


def _percent(row: dict[str, Any], key: str) -> str:
    """``row[key]`` ± ``row[key + "_std"]`` in % (the mean alone for one seed), or "-" when there was nothing
    to score (NaN: e.g. a budget that labels the whole pool leaves no prior to score)."""
    if not np.isfinite(row[key]):
        return "-"
    return f"{100 * row[key]:.1f}" + _spread(row, key, 100.0)


def _spread(row: dict[str, Any], key: str, scale: float) -> str:
    """" ± std" of ``row[key]`` (times ``scale``), or "" for a row of one seed: its std is 0 by definition, not
    a measured spread."""
    return f" ± {scale * row[key + '_std']:.1f}" if row.get("seeds", 2) > 1 else ""


def plot_panels(priors: list[str], balanced: bool, probe_on_pool: bool = False) -> list[tuple[str, str | None, str]]:
    """results.png's panels, (summary key, prior method or None, title): coverage, then the linear probe's
    and each prior method's accuracy in %, balanced (mean per-class recall) when ``balanced`` (an imbalanced
    pool, ``bench.checks.is_imbalanced``: there plain accuracy is mostly the largest class's recall and can
    rank strategies backwards); the probe's says it is scored on the unlabelled pool when ``probe_on_pool``."""
    acc = "balanced accuracy (%, mean per-class recall)" if balanced else "accuracy (%)"
    pre = "_balanced" if balanced else ""
    where = POOL_NOTE if probe_on_pool else ""
    return [("coverage", None, "classes covered"), (f"linear{pre}_accuracy", None, f"linear probe {acc}{where}"),
            *((f"prior{pre}_accuracy", m, f"{m} prior {acc}") for m in priors)]


def plot(summary: list[dict[str, Any]], priors: list[str], path: Path, title: str = "",
         balanced: bool = False, probe_on_pool: bool = False) -> None:
    """Coverage and (``plot_panels``) accuracies against budget, one line per strategy, mean over seeds
    (matplotlib, Agg backend: no display needed); ``title`` above the panels (the data set and encoder,
    ``embeddings_source``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = plot_panels(priors, balanced, probe_on_pool)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    strategies = sorted({r["strategy"] for r in summary})
    colours = plt.get_cmap("tab20")
    for ax, (key, method, panel) in zip(axes[0], panels, strict=True):
        for i, s in enumerate(strategies):
            rs = sorted((r for r in summary if r["strategy"] == s and (method is None or r["prior_method"] == method)
                         and (method is not None or r["prior_method"] == priors[0])), key=lambda r: r["budget"])
            if rs:
                # tab20 pairs a dark and a light shade of each hue: the dark ones first, so neighbours differ
                # in hue; hollow markers of 8 shapes and 4 line styles keep lines that coincide (audit's
                # draws are random's) both visible
                scale = 1.0 if key == "coverage" else 100.0  # accuracies in %, as in results.md
                ax.plot([r["budget"] for r in rs], [scale * r[key] for r in rs], marker="os^vDP<>"[i % 8], label=s,
                        color=colours((2 * i) % 20 + (i // 10) % 2), linestyle=("-", "--", "-.", ":")[i % 4],
                        markerfacecolor="none")
        ax.set_xscale("log")
        budgets = sorted({int(r["budget"]) for r in summary})
        ax.set_xticks(budgets, [str(b) for b in budgets])  # the measured budgets, not "2x10^1" minor labels
        ax.minorticks_off()
        ax.set_xlabel("budget (labels)")
        ax.set_title(panel)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="center right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.86, 0.95 if title else 1))  # room for the legend at the right
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check_variants(variants: list[Variant], x: np.ndarray, labels: np.ndarray, pretext_loss: np.ndarray | None) -> None:
    """Each variant with params called once on the first 64 rows (two of them labelled), so a bad
    param fails before the benchmark's minutes of work, with the strategy's own message."""
    rows = min(len(x), 64)
    small = make_pool(x[:rows], labels[:rows], np.arange(min(2, rows)), hnsw_knn(hnsw_index(x[:rows], threads=1), rows),
                      int(labels.max()) + 1, None if pretext_loss is None else pretext_loss[:rows])
    for v in variants:
        if v.params:
            try:
                STRATEGIES[v.name](small, 1, np.random.default_rng(0), v.params)
            except InvalidArgument as e:
                raise typer.BadParameter(f"--variant {v.label}: {e}") from None
            except FailedPrecondition:
                pass  # the params were accepted; the small pool just cannot answer (e.g. one class)


def selected_variants(strategies: str, variant: list[str]) -> list[Variant]:
    """What --strategies (comma-separated names; when empty, unless --variant is given, every strategy but
    the audit, whose draw is random's: its rows would repeat random's) and the --variant options
    (NAME:key=value,...) ask for, in that order."""
    names = registry_names(strategies, STRATEGIES, "strategy") if strategies or not variant else []
    if not strategies:
        names = [n for n in names if n != AUDIT]
    return [Variant(n) for n in names] + [parse_variant(v) for v in variant]


def without_pretext_loss(variants: list[Variant], by_name: bool, console: Any) -> list[Variant]:
    """``variants`` less the strategies that declare they need pretext-task losses (``needs_pretext_loss``:
    das), saying so, when no --pretext-loss is given; a usage error when they were asked for by name
    (``by_name``: --strategies or --variant)."""
    needy = list(dict.fromkeys(v.name for v in variants if STRATEGIES[v.name].needs_pretext_loss))
    if not needy:
        return variants
    names = ", ".join(needy)
    if by_name:
        raise typer.BadParameter(f"{names} need{'s' if len(needy) == 1 else ''} --pretext-loss "
                                 "(per-sample rotation losses)")
    console.print(f"[yellow]skipping {names}: no --pretext-loss given[/]")
    return [v for v in variants if v.name not in needy]


def registry_names(raw: str, valid: dict[str, Any], what: str) -> list[str]:
    """The comma-separated names in ``raw`` (every one of ``valid`` when empty); a usage error naming the
    valid ones when one is not in ``valid``."""
    names = [n.strip() for n in raw.split(",") if n.strip()] if raw else sorted(valid)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise typer.BadParameter(f"unknown {what} {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    return names


def scale_pool(n: int, dim: int, seed: int) -> np.ndarray:
    """n random unit vectors in dim dimensions (float32), generated in blocks to bound memory."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        block = rng.standard_normal((min(100_000, n - start), dim), dtype=np.float32)
        x[start:start + len(block)] = normalise(block)
    return x


def synthetic_blobs(n: int, clusters: int, dim: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs on the unit sphere with sizes falling 6:1 from the largest to the smallest class,
    so random picks miss the small ones: (x NxD float32 unit rows, y N int64)."""
    rng = np.random.default_rng(seed)
    centres = normalise(rng.normal(size=(clusters, dim)))
    weight = np.linspace(6.0, 1.0, clusters)
    y = rng.choice(clusters, size=n, p=weight / weight.sum())
    return normalise(centres[y] + spread * rng.normal(size=(n, dim)).astype(np.float32)), y.astype(np.int64)


def load_array(path: Path, option: str, dtype: type, ndim: int) -> np.ndarray:
    """``path``'s array as ``dtype`` with ``ndim`` dimensions, or a usage error saying what is wrong."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise typer.BadParameter(f"cannot read {path} as a .npy array ({e})", param_hint=f"'{option}'") from None
    if arr.ndim != ndim:
        shape = "N x D" if ndim == 2 else "N"
        raise typer.BadParameter(f"{path} has shape {arr.shape}; it must be {shape}", param_hint=f"'{option}'")
    if dtype is np.int64:
        if not np.issubdtype(arr.dtype, np.integer):
            raise typer.BadParameter(f"{path} holds {arr.dtype}, not integer class indices 0..C-1 (map names "
                                     "to indices, e.g. np.unique(names, return_inverse=True)[1])",
                                     param_hint=f"'{option}'")
    elif not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise typer.BadParameter(f"{path} must hold finite numbers (found {arr.dtype}"
                                 + (", NaN or infinite values)" if np.issubdtype(arr.dtype, np.number) else ")"),
                                 param_hint=f"'{option}'")
    return np.asarray(arr, dtype)

def load_rows(embeddings: Path, labels: Path, dim: int | None = None,
              options: tuple[str, str] = ("--embeddings", "--labels")) -> tuple[np.ndarray, np.ndarray]:
    """Normalised N x D embeddings and their N class indices, checked: same row count, labels 0..C-1 with
    every class present (a gap or an offset would make classes that do not exist, and change ECE), and
    ``dim`` columns when given (the pool's, for the test set)."""
    x = load_array(embeddings, options[0], np.float32, 2)
    y = load_array(labels, options[1], np.int64, 1)
    if len(x) != len(y):
        raise typer.BadParameter(f"{embeddings} has {len(x)} rows but {labels} has {len(y)} labels")
    if dim is not None and x.shape[1] != dim:
        raise typer.BadParameter(f"{embeddings} has {x.shape[1]} dimensions but the pool's embeddings have {dim}")
    present = np.unique(y)
    if len(y) and (present[0] < 0 or present[-1] != len(present) - 1) and dim is None:
        shown = f"{present[:12].tolist()}{' ...' if len(present) > 12 else ''}"
        raise typer.BadParameter(f"{labels} holds classes {shown}: they must be 0..C-1 with every class "
                                 "present (remap them, e.g. "
                                 "np.unique(y, return_inverse=True)[1])", param_hint="'--labels'")
    if dim is not None and len(y) and present[0] < 0:
        raise typer.BadParameter(f"{labels} holds negative class indices", param_hint="'--test-labels'")
    return normalise(x), y


def embeddings_meta(embeddings: Path, rows: int) -> dict[str, Any]:
    """The meta.json that ``bench embeddings`` (and ``bench cifar10``, in its ``embeddings/`` folder) writes
    beside ``embeddings``; {} when there is none, it cannot be read, or it describes another number of pool
    rows (the .npy was replaced since)."""
    try:
        meta = json.loads((embeddings.parent / "meta.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(meta, dict) or meta.get("pool_size") not in (None, rows):
        return {}
    return meta


def embeddings_class_names(embeddings: Path, rows: int, classes: int) -> list[str] | None:
    """The class names of label indices 0..classes-1, from ``embeddings``' meta.json (its ``classes``, in the
    order the labels index them); None when it has none or another number of them (the labels then say
    indices only)."""
    names = embeddings_meta(embeddings, rows).get("classes")
    if isinstance(names, list) and len(names) == classes and all(isinstance(n, str) for n in names):
        return names
    return None


def embeddings_source(embeddings: Path, rows: int) -> str:
    """What ``embeddings`` are, from their meta.json (``embeddings_meta``): "digits, encoder reg1/v0001 (model
    version folder)"; "" when there is none."""
    meta = embeddings_meta(embeddings, rows)
    if not meta:
        return ""
    data = str(meta.get("data") or "")
    encoder = meta.get("encoder")
    said = ""
    if isinstance(encoder, dict) and encoder.get("encoder"):
        kind = f" ({encoder['kind']})" if encoder.get("kind") else ""
        said = f"encoder {encoder['encoder']}{kind}"
    elif isinstance(encoder, str) and encoder:
        said = f"encoder {encoder}"
    name = Path(data.rstrip("/")).name or data
    return ", ".join(p for p in (name, said) if p)


def write_results(out: Path, records: list[dict[str, Any]], settings: dict[str, Any], methods: list[str],
                  head: str, title: str = "", balanced: bool = False) -> str:
    """`bench strategies`' files: results.json (the flat records), settings.json, results.md (``head`` and
    the summary table) and results.png (``title`` above it). Returns the table. With no test split
    (``settings["test_rows"]`` None) the probe's columns and panel say it is scored on the unlabelled pool."""
    summary = summarise(records)
    probe_on_pool = settings.get("test_rows") is None
    write_json(out / "results.json", records)  # NaN (nothing to score) -> null: strict JSON
    write_json(out / "settings.json", settings)  # results.json stays the flat records
    table = markdown_table(summary, methods, probe_on_pool)
    blind = seed_blind_note(records)  # e.g. probcover: its ± 0.0 is no spread
    (out / "results.md").write_text(head + (blind + "\n" if blind else "") + table + "\n")
    plot(summary, methods, out / "results.png", title, balanced, probe_on_pool)
    return table


def _strategies_help() -> type:
    """``--help`` that lists the strategies next to ``--strategies`` and the prior methods next to
    ``--priors``, as `shortlist select --help` and `shortlist prior --help` do."""
    from agent.cli import RegistryHelp

    class StrategiesHelp(RegistryHelp):
        lists = (("strategies", "agent.strategies:STRATEGIES"), ("priors", "agent.priors:PRIOR_METHODS"))

    return StrategiesHelp


def blobs_cmd(
    out: Path = typer.Option(..., help="folder for x.npy, y.npy, test_x.npy, test_y.npy"),
    n: int = typer.Option(6000, min=6, max=MAX_ROWS, help="rows in all (5/6 pool, 1/6 test)"),
    clusters: int = typer.Option(10, min=2, max=MAX_DIM, help="classes (a benchmark needs 2)"),
    dim: int = typer.Option(32, min=1, max=MAX_DIM, help="dimensions"),
    spread: float = typer.Option(0.25, callback=finite, min=0.0, help="per-dimension noise around each unit centre"),
    seed: int = typer.Option(0, min=0),
) -> None:
    """Write a synthetic embeddings set for `bench strategies` (imbalanced blobs on the unit sphere)."""
    if n * 5 // 6 < clusters:  # the pool (5/6 of the rows) cannot hold every class: 5 pool rows of 7 were written
        least = next(m for m in range(n, 6 * clusters + 1) if m * 5 // 6 >= clusters)
        typer.echo(f"error: --n {n} is too few rows for {clusters} classes: give --n {least} or more (5/6 of the rows "
                   "are the pool, which needs a row of each class), or fewer --clusters", err=True)
        raise typer.Exit(2)
    require_fits(n, dim)
    with OutLock(out, "bench blobs"):  # (and a file as --out: exit 2)
        x, y = synthetic_blobs(n, clusters, dim, spread, seed)
        cut = n * 5 // 6
        for name, arr in (("x", x[:cut]), ("y", y[:cut]), ("test_x", x[cut:]), ("test_y", y[cut:])):
            np.save(out / f"{name}.npy", arr)
    typer.echo(f"wrote {cut} pool rows and {n - cut} test rows ({clusters} classes, {dim}-d) to {out}")


def strategies_cmd(
    embeddings: Path = typer.Option(..., help="N x D float32 .npy of training-pool embeddings"),
    labels: Path = typer.Option(..., help="N int .npy of their true classes (the simulated annotator)"),
    out: Path = typer.Option(..., help="folder for results.json, results.md and results.png"),
    test_embeddings: Path | None = typer.Option(None, help="M x D .npy for the linear probe's test set"),
    test_labels: Path | None = typer.Option(None, help="M int .npy of the test classes"),
    budgets: str = typer.Option("10,20,40,100", help="comma-separated label budgets"),
    seeds: int = typer.Option(3, min=1, help="seeds per (strategy, budget)"),
    strategies: str = typer.Option("", help="comma-separated strategies with their default params "
                                   "(default: all but audit, whose draw is random's; none with --variant)"),
    variant: list[str] = typer.Option([], help="a strategy with params, NAME:key=value[,key=value] "
                                      "(e.g. probcover:delta=0.4); repeat for a sweep"),
    priors: str = typer.Option("", help="comma-separated prior methods (default: all)"),
    pretext_loss: Path | None = typer.Option(None, help="N float .npy rotation losses (enables das)"),
    uncalibrated: bool = typer.Option(False, "--uncalibrated", help="the prior methods' raw probabilities "
                                      "(calibrate=false), to compare with the calibrated default"),
    fresh: bool = typer.Option(False, "--fresh", help="compute every cell again instead of reusing those "
                               "OUT/cells.json holds; the file is replaced with this run's cells"),
) -> None:
    """Every strategy at every budget and seed: class coverage, prior-label accuracy and ECE per prior
    method, linear-probe accuracy. Writes results.json (flat records), results.md, results.png.

    Resumable: each finished cell is kept in OUT/cells.json, and a rerun into the same --out reuses those it
    asks for (same inputs, calibration and code) and says how many; --fresh computes them all again."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console()
    if (test_embeddings is None) != (test_labels is None):
        raise typer.BadParameter("give both --test-embeddings and --test-labels, or neither")
    x, y = load_rows(embeddings, labels)
    require_two_classes(int(y.max(initial=-1)) + 1, str(labels))
    tx, ty = load_rows(test_embeddings, test_labels, x.shape[1], ("--test-embeddings", "--test-labels")) \
        if test_embeddings and test_labels else (None, None)
    if ty is not None and ty.max(initial=0) > y.max():
        raise typer.BadParameter(f"{test_labels} holds class {int(ty.max())}, which no pool label has")
    loss = load_array(pretext_loss, "--pretext-loss", np.float32, 1) if pretext_loss else None
    if loss is not None and len(loss) != len(x):
        raise typer.BadParameter(f"{pretext_loss} has {len(loss)} losses but the pool has {len(x)} rows")
    variants = selected_variants(strategies, variant)
    if loss is None:
        variants = without_pretext_loss(variants, bool(strategies or variant), console)
    check_variants(variants, x, y, loss)
    methods = registry_names(priors, PRIOR_METHODS, "prior method")
    try:
        budget_list = [int(b) for b in budgets.split(",") if b.strip()]
    except ValueError:
        raise typer.BadParameter(f"--budgets {quoted(budgets)}: give integers, e.g. 10,20,40,100") from None
    if not budget_list or min(budget_list) < 1 or max(budget_list) > len(x):
        raise typer.BadParameter(f"--budgets must be between 1 and the {len(x)} pool rows")
    prior_params = {"calibrate": "false"} if uncalibrated else None
    # Two runs into one --out would each rewrite cells.json with only their own cells: the second is refused.
    with OutLock(out, "bench strategies"):
        # What every cell's figures depend on; a rerun into the same --out with other values is refused.
        # (Strategies, budgets, seeds and prior methods name the cells: a rerun may ask for others.) ``code``, as
        # `bench cifar10` keeps it: a changed strategy or prior must not be mixed with cells of the old one.
        from bench.cifar10.encoder import code_fingerprint

        # One fingerprint per input file, so a refusal names the file that differs.
        inputs = {"--embeddings": x, "--labels": y, "--test-embeddings": tx, "--test-labels": ty,
                  "--pretext-loss": loss}
        digests = {arg: None if a is None else inputs_digest(a) for arg, a in inputs.items()}
        try:
            cells = Cells.open(out, {"inputs_sha256": digests, "calibrated": not uncalibrated,
                                     "code": code_fingerprint()}, fresh)
        except NotWholeJson as e:  # cells.json torn or edited: one line naming it and what to do
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        total = len(variants) * len(budget_list) * seeds * len(methods)
        reused = sum(1 for v in variants for b in budget_list for s in range(seeds) for m in methods
                     if (v.label, b, s, m) in cells.done)
        if note := reuse_note(reused, total, out / CELLS):
            console.print(note, markup=False, highlight=False)
        if reused < total:
            console.print(f"{len(x)} rows x {x.shape[1]} dims, {int(y.max()) + 1} classes; building the index...")
        try:
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=console) as progress:
                records = run_benchmark(BenchRows(x, y, tx, ty, loss),
                                        StrategiesConfig(budget_list, seeds, variants, methods, prior_params),
                                        progress, cells)
        except KeyboardInterrupt:  # Ctrl-C: every finished cell is in cells.json already; say so, exit 130
            n = len(cells.done)
            typer.echo(f"interrupted: {out / CELLS} keeps {n} finished cell{'s' * (n != 1)} (strategy, budget, seed, "
                       "prior method); run the same `shortlist bench strategies` command again to resume (finished "
                       "cells are reused, the unfinished one starts over)", err=True)
            raise typer.Exit(130) from None
        test = "none" if tx is None else f"{len(tx)} rows"
        calibration = "uncalibrated (--uncalibrated)" if uncalibrated else "calibrated"
        classes = int(y.max()) + 1
        counts = np.bincount(y, minlength=classes).tolist()
        # Named as the data set names them where meta.json beside the embeddings says (bench embeddings, bench
        # cifar10); by index otherwise (a bare .npy of labels carries no names).
        class_names = embeddings_class_names(embeddings, len(x), classes)
        counts_said = class_counts_said(counts, class_names)
        source = embeddings_source(embeddings, len(x))
        head = (f"`bench strategies` on {source + ': ' if source else ''}{embeddings.name} ({len(x)} rows x "
                f"{x.shape[1]} dims, "
                f"{classes} classes; test {test}), "
                + ("1 seed" if seeds == 1 else f"{seeds} seeds (mean ± std over them)")
                + f", priors {calibration}; every setting in settings.json\n\n"
                f"{counts_said}.\n\n{units(seeds)}\n\n" + ("" if tx is not None else f"{PROBE_ON_POOL}\n\n"))
        settings = {"embeddings": str(embeddings.resolve()), "labels": str(labels.resolve()), "rows": len(x),
                    "dims": int(x.shape[1]), "classes": classes, "class_names": class_names, "class_counts": counts,
                    "test_embeddings": str(test_embeddings.resolve()) if test_embeddings else None,
                    "test_rows": None if tx is None else len(tx),
                    "probe_scored_on": "unlabelled pool" if tx is None else "test split", "budgets": budget_list,
                    "seeds": seeds,
                    "strategies": [v.label for v in variants], "priors": methods,
                    "calibrated": not uncalibrated,
                    "pretext_loss": str(pretext_loss.resolve()) if pretext_loss else None, "source": source}
        console.print(write_results(out, records, settings, methods, head, source or embeddings.name,
                                    is_imbalanced(counts)))
        console.print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'}")


def select_scale_cmd(
    n: int = typer.Option(1_000_000, min=2, max=MAX_ROWS, help="pool rows (random unit vectors)"),
    dim: int = typer.Option(128, min=1, max=MAX_DIM, help="embedding dimension"),
    budget: int = typer.Option(100, min=1, max=MAX_ROWS, help="Select budget"),
    labelled: int = typer.Option(20, min=1, max=MAX_ROWS, help="rows labelled beforehand (random classes), so "
                                 "every strategy runs; fewer than --n"),
    classes: int = typer.Option(10, min=1, max=MAX_ROWS, help="class count of those labels"),
    strategies: str = typer.Option("", help="comma-separated strategies with their default params "
                                   "(default: all but audit, whose draw is random's; none with --variant)"),
    variant: list[str] = typer.Option([], help="a strategy with params, NAME:key=value[,key=value] "
                                      "(e.g. probcover:delta=0.4); repeat for a sweep"),
    threads: int = typer.Option(2, min=1, max=1024, help="hnswlib build threads"),
) -> None:
    """Time Select for each strategy on n random dim-d vectors (index build timed separately)."""
    from rich.console import Console
    from rich.table import Table

    require_fits(n, dim)
    if labelled >= n:  # the labelled rows are drawn without replacement, and Select needs unlabelled ones
        raise typer.BadParameter(f"{labelled} labelled rows leave none of the {n} to select: give --labelled "
                                 f"{n - 1} or less, or a larger --n", param_hint="--labelled")
    console = Console()
    variants = selected_variants(strategies, variant)
    t0 = time.perf_counter()
    x = scale_pool(n, dim, seed=0)
    console.print(f"generated {n} x {dim} in {time.perf_counter() - t0:.1f} s; building hnswlib index...")
    t0 = time.perf_counter()
    index = hnsw_index(x, threads)
    build_s = time.perf_counter() - t0
    console.print(f"index build: {build_s:.1f} s (hnswlib M=16, ef_construction=100, {threads} threads); "
                  f"load average {os.getloadavg()}")
    rng = np.random.default_rng(1)
    picked = rng.choice(n, size=labelled, replace=False)
    y = np.full(n, -1, np.int64)
    y[picked] = np.arange(labelled) % classes
    pool = make_pool(x, y, picked, hnsw_knn(index, n), classes, rng.random(n).astype(np.float32))
    table = Table(title=f"Select, budget {budget}, {n} x {dim} random unit vectors, {labelled} labelled")
    table.add_column("strategy")
    table.add_column("wall s", justify="right")
    table.add_column("CPU s", justify="right")
    table.add_column("picked", justify="right")
    for v in variants:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            sel = STRATEGIES[v.name](pool, budget, np.random.default_rng(0), v.params)
        except InvalidArgument as e:
            raise typer.BadParameter(f"--variant {v.label}: {e}") from None
        # CPU seconds (all threads) do not grow when other processes share the cores; on two
        # dedicated cores the wall time is at most this.
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        table.add_row(v.label, f"{seconds:.2f}", f"{cpu:.2f}", str(len(sel.rows)))
        console.print(f"{v.label}: {seconds:.2f} s wall, {cpu:.2f} s CPU ({len(sel.rows)} picked)")
    console.print(table)
    console.print(f"load average while running (1, 5, 15 min): {os.getloadavg()}")


def register(bench_app: typer.Typer) -> None:
    bench_app.command("blobs")(blobs_cmd)
    bench_app.command("strategies", cls=_strategies_help())(strategies_cmd)
    bench_app.command("select-scale", cls=_strategies_help())(select_scale_cmd)
