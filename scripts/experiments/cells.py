"""What the calibration experiments share (calibration_floor, shift_weights, distance_temperature,
temperature_bias, atypical_picks): the command line of embeddings, classes, strategies, budgets, methods and
seeds; the embeddings loaded with their exact-kNN cache; the simulated labelled sets of ``bench strategies``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.pool import Pool
from bench.strategies import CachedKnn, hnsw_index, normalise, simulated_pools


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
