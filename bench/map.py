"""``shortlist bench map``: what the agent's pool map (agent/pool_map.py, GetMap) costs at a given pool size:
the fit (PCA + openTSNE on up to ``--max-fit`` rows), the placement of the other rows, a restart's load
of the saved map, and the placement of newly ingested rows. Runs the same ``PoolMap`` the agent runs, on
clustered random unit vectors, in this process (no agent), at the thread priority given."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import typer

from agent.index import IndexView
from agent.pool_map import MapConfig, PoolMap
from bench.checks import MAX_DIM, MAX_ROWS, require_fits


def clustered(n: int, dim: int, clusters: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors around ``clusters`` random centres (noise 0.5 per dimension), and their cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    which = rng.integers(0, clusters, n)
    x = centres[which] + 0.5 * rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), which


def nearest_centre_agreement(xy: np.ndarray, which: np.ndarray) -> float:
    """Fraction in [0, 1] of points nearer (on the map) to their own cluster's centroid than to any other's.
    ``xy``: Nx2 map coordinates, ``which``: N cluster ids."""
    labels = np.unique(which)
    centres = np.stack([xy[which == c].mean(axis=0) for c in labels])
    d = ((xy[:, None, :] - centres[None]) ** 2).sum(axis=2)
    return float((labels[d.argmin(axis=1)] == which).mean())


def cpu_with_children() -> float:
    """CPU seconds of this process and its ended children (the fit runs in a child: agent/map_fit.py)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("map")
    def map_cmd(
        n: int = typer.Option(50_000, min=1, max=MAX_ROWS, help="embedded pool rows"),
        dim: int = typer.Option(256, min=2, max=MAX_DIM, help="embedding dimension (a map needs 2)"),
        clusters: int = typer.Option(10, min=1, max=MAX_ROWS, help="clusters in the random pool"),
        max_fit: int = typer.Option(MapConfig().max_fit, min=2, max=MAX_ROWS, help="rows the t-SNE is fitted on "
                                    "(MapConfig.max_fit)"),
        new: int = typer.Option(1000, min=0, max=MAX_ROWS, help="rows added after the map is made, then placed"),
        # (a negative niceness needs privileges: os.nice would raise PermissionError)
        nice: int = typer.Option(0, min=0, max=19, help="niceness of this process (the agent's map thread runs "
                                 "at +19)"),
    ) -> None:
        """Time the pool map's fit, placement, reload and new-row placement on n clustered vectors."""
        require_fits(n + new, dim, "--n (plus --new)")
        if nice:
            os.nice(nice)
        x, which = clustered(n + new, dim, clusters)
        state = {"n": n}

        def current() -> tuple[str, IndexView]:
            k = state["n"]
            return "v0001", IndexView(k, np.arange(1, k + 1, dtype=np.int64), x[:k], None, None)

        with tempfile.TemporaryDirectory() as tmp:
            cfg = MapConfig(max_fit=max_fit, save_every_s=0.0)
            pm = PoolMap(cfg, Path(tmp) / "map", current)
            t0, c0 = time.perf_counter(), cpu_with_children()
            pm.step()
            fit_s, fit_cpu = time.perf_counter() - t0, cpu_with_children() - c0
            m = pm.snapshot("v0001")
            assert m is not None
            typer.echo(f"fit + place: {n:,} x {dim} ({int(m.fitted.sum()):,} fitted, {m.method}): "
                       f"{fit_s:.1f} s wall, {fit_cpu:.1f} s CPU; map/cluster agreement "
                       f"{nearest_centre_agreement(m.xy, which[:n]):.3f}")
            t0 = time.perf_counter()
            again = PoolMap(cfg, Path(tmp) / "map", current)
            again.step()
            typer.echo(f"restart: saved map loaded in {time.perf_counter() - t0:.2f} s "
                       f"({(Path(tmp) / 'map' / 'v0001.npz').stat().st_size / 2**20:.1f} MiB file)")
            state["n"] = n + new
            t0 = time.perf_counter()
            again.step()
            m2 = again.snapshot("v0001")
            assert m2 is not None and m2.n == n + new
            typer.echo(f"{new:,} new rows placed in {time.perf_counter() - t0:.2f} s (includes building the "
                       f"neighbour index of the fitted rows once)")
        typer.echo(f"load average (1, 5, 15 min): {os.getloadavg()}")
