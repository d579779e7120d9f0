"""What the calibration experiments share (calibration_floor, shift_weights, distance_temperature,
temperature_bias, atypical_picks, audit_draws, bayes_temperature, few_held_out): the command line of
embeddings, classes, strategies, budgets, methods and seeds; the embeddings loaded with their exact-kNN cache;
the simulated labelled sets of ``bench strategies``; a method's uncalibrated answer scored at any
temperature; the calibration's own fold runs, each also predicting reference rows."""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.params import PriorEntry
from agent.pool import Pool, PriorMethod, Priors
from agent.priors import PRIOR_METHODS
from agent.priors import calibration as cal
from agent.priors._common import nearest_labelled_distance
from bench.metrics import expected_calibration_error
from bench.strategies import CachedKnn, hnsw_index, normalise, simulated_pools

GRID = np.exp(np.linspace(np.log(0.02), np.log(50.0), 241))  # temperatures tried (log-spaced over T_RANGE)


@dataclass(frozen=True)
class Embeddings:
    """x NxD (L2-normalised), y N classes, ``classes`` C, and ``knn`` the pool's kNN with its cache."""

    x: np.ndarray
    y: np.ndarray
    classes: int
    knn: CachedKnn


def cell_parser(doc: str | None, budgets: str = "40", strategies: str = "random,typiclust,coreset",
                methods: str = "knn,llgc,as3l", seeds: int = 2) -> argparse.ArgumentParser:
    """The experiments' shared arguments (x.npy, y.npy, --budgets, --strategies, --methods, --seeds), with
    these defaults; a script adds its own."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    ap.add_argument("x", type=Path, help="pool embeddings NxD (.npy)")
    ap.add_argument("y", type=Path, help="pool classes N (.npy)")
    ap.add_argument("--budgets", default=budgets)
    ap.add_argument("--strategies", default=strategies)
    ap.add_argument("--methods", default=methods)
    ap.add_argument("--seeds", type=int, default=seeds)
    return ap


def load(a: argparse.Namespace) -> Embeddings:
    x = normalise(np.load(a.x))
    y = np.asarray(np.load(a.y), np.int64)
    return Embeddings(x, y, int(y.max()) + 1, CachedKnn(x, hnsw_index(x)))


def simulated_cells(a: argparse.Namespace, e: Embeddings) -> Iterator[tuple[str, int, int, np.ndarray, Pool]]:
    """``simulated_pools`` over the command line's strategies, budgets and seeds."""
    yield from simulated_pools(e.x, e.y, e.knn, e.classes, a.strategies.split(","),
                               [int(b) for b in a.budgets.split(",")], a.seeds)


@dataclass(frozen=True)
class Uncalibrated:
    """A method's own answer (``calibrate=false``) for a pool's unlabelled rows (``pool.candidates``): probs
    RxC float64 and the rows' true classes R, scored as the calibration would serve it at any temperature."""

    pool: Pool
    probs: np.ndarray
    truth: np.ndarray

    def at(self, t: float) -> np.ndarray:
        """RxC: the probabilities the calibration serves at temperature ``t`` (``cal.apply_calibration``)."""
        pri = Priors(probs=self.probs, confidence=self.probs.max(axis=1))
        return np.asarray(cal.apply_calibration(self.pool, self.pool.candidates, pri, t).probs)

    def ece(self, t: float) -> float:
        """ECE over the rows at temperature ``t``."""
        return expected_calibration_error(self.at(t), self.truth)

    def best(self, grid: np.ndarray = GRID) -> tuple[float, float]:
        """(T, ECE) of the lowest ECE over ``grid`` (chosen on the truth: what temperature scaling could do)."""
        eces = [self.ece(float(t)) for t in grid]
        i = int(np.argmin(eces))
        return float(grid[i]), eces[i]


def uncalibrated(entry: PriorEntry, pool: Pool, rng: np.random.Generator, y: np.ndarray) -> Uncalibrated:
    """``entry``'s uncalibrated answer for every unlabelled row, from a copy of ``rng`` (the draws of the
    served call made from the same generator)."""
    rows = pool.candidates
    raw = entry.fn(pool, rows, copy.deepcopy(rng), {"calibrate": "false"}).probs
    return Uncalibrated(pool, np.asarray(raw, np.float64), y[rows])


def uncalibrated_method(entry: PriorEntry) -> PriorMethod:
    """``entry`` as a plain method that answers uncalibrated (what the ``calibrated`` wrapper fits on)."""
    def method(pool: Pool, rows: np.ndarray, rng: np.random.Generator, params: Mapping[str, str]) -> Priors:
        return entry.fn(pool, rows, rng, {**params, "calibrate": "false"})

    return method


def folds_with_reference(pool: Pool, name: str, rng: np.random.Generator, ref: np.ndarray,
                         audit: bool = False) -> list[dict[str, Any]]:
    """The calibration's own folds (``cal.held_out``'s, or ``cal.audit_held_out``'s when ``audit``: the served
    fit's, from the same generator), each fold run also predicting the ``ref`` rows: per fold the held-out
    probs, classes and covered classes, the ref rows' probs, and both sets' cosine distances to the fold's
    nearest seed. [] when the fit has no fold."""
    entry = PRIOR_METHODS[name]
    extra: list[dict[str, np.ndarray]] = []

    def with_reference(sub: Pool, rows: np.ndarray, child: np.random.Generator,
                       params: Mapping[str, str]) -> Priors:
        ask = np.concatenate([rows, ref])
        pr = entry.fn(sub, ask, child, {**params, "calibrate": "false"})
        dist = nearest_labelled_distance(sub, ask).astype(np.float64)
        k = len(rows)
        extra.append({"ref_probs": np.asarray(pr.probs[k:], np.float64), "dist": dist[:k], "ref_dist": dist[k:]})
        return Priors(probs=pr.probs[:k], confidence=pr.confidence[:k])

    held = (cal.audit_held_out if audit else cal.held_out)(pool, with_reference, {}, rng)
    if not held:  # (an audit fit with too few audit labels counting runs its folds, then discards them)
        return []
    return [{"probs": probs, "labels": labels, "covered": covered, **more}
            for (probs, labels, covered), more in zip(held, extra, strict=True)]
