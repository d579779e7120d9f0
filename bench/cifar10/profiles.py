"""Benchmark profiles (``Profile``, ``PROFILES``), label budgets and class-balanced subsets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import typer


@dataclass(frozen=True)
class Profile:
    """One benchmark configuration. Budgets are label counts; strings like "1%" are fractions of the pool."""

    name: str
    pool_size: int | None  # None: the whole training split
    test_size: int | None  # None: the whole test split
    pretrain_minutes: float
    arch: str
    method: str
    seeds: int
    budgets: tuple[str, ...]
    strategies: tuple[str, ...]
    prior_methods: tuple[str, ...]
    semi_supervised_at: tuple[int, ...] = ()  # label counts at which the AS3L semi-supervised stage runs
    semi_supervised_minutes: float = 60.0  # training time per semi-supervised point
    # PretrainConfig fields for the profile's own pretraining (e.g. view resolution, batch size)
    pretrain_options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    # Audit labels (Select strategy "audit": a uniform random sample of the unlabelled pool) drawn and labelled
    # once, right after the first budget's picks, and kept: what the agent's calibration warning asks a team
    # to do when confidences rest on few labels. 0: none (the strategies' labels only).
    audit: int = 0


LOW_BUDGET_STRATEGIES = ("random", "entropy", "coreset", "kmedoids", "typiclust", "probcover", "as3l")
PAPER_BUDGETS = ("10", "20", "40", "1%", "2%", "10%")

# The CPU profiles pretrain with MoBY: on this project's 2-core machine it learns faster early on than
# SimSiam (with the paper's heads and with the current 256 / 64 ones), and the 45-minute runs end level
# (docs/training.md, "CPU defaults and why" and "45-minute CPU runs"). The quick profile's budget is minutes,
# where the early lead is what counts.
CPU_PRETRAIN = {"batch_size": 128}

PROFILES: dict[str, Profile] = {
    "quick": Profile(
        name="quick", pool_size=5000, test_size=2000, pretrain_minutes=3.0, arch="resnet18_w32", method="moby",
        seeds=1, budgets=("10", "20", "40", "2%"), strategies=LOW_BUDGET_STRATEGIES,
        prior_methods=("knn", "as3l", "llgc"), pretrain_options=CPU_PRETRAIN,
        description="5,000-image pool, 3-minute MoBY pretraining, 1 seed, budgets 10/20/40 and 2% of the pool "
                    "(100 of CIFAR-10's 5,000): the README's smoke run"),
    "cpu": Profile(
        name="cpu", pool_size=None, test_size=None, pretrain_minutes=45.0, arch="resnet18_w32", method="moby",
        seeds=3, budgets=PAPER_BUDGETS, strategies=LOW_BUDGET_STRATEGIES, prior_methods=("knn", "as3l", "llgc"),
        pretrain_options=CPU_PRETRAIN,
        description="full 50,000-image pool, 45-minute MoBY pretraining on the CPU, 3 seeds"),
    "gpu": Profile(
        name="gpu", pool_size=None, test_size=None, pretrain_minutes=0.0, arch="resnet18", method="simsiam",
        seeds=3, budgets=PAPER_BUDGETS, strategies=LOW_BUDGET_STRATEGIES, prior_methods=("knn", "as3l", "llgc"),
        semi_supervised_at=(10, 40),
        description="the papers' recipe: SimSiam 800 epochs (pass --encoder), AS3L semi-supervised stage at 10 and 40"),
}


def check_budgets(budgets: Sequence[str]) -> None:
    """A usage error (``--budgets``) for an entry that is neither a positive label count nor a percentage above
    0 and below 100, said before any data is loaded (whether the counts stay below the pool, and whether a
    small percentage of it still gives a label, is known only once the pool is: ``resolve_budgets``)."""
    for b in budgets:
        b = b.strip()
        try:
            value = float(b[:-1]) if b.endswith("%") else int(b)
        except ValueError:
            raise typer.BadParameter(f"budget {b!r} is neither a count nor a percentage like 1%",
                                     param_hint="'--budgets'") from None
        if b.endswith("%") and not 0 < value < 100:  # nan and inf fail this too
            raise typer.BadParameter(f"budget {b!r}: a percentage of the pool must be above 0 and below 100%",
                                     param_hint="'--budgets'")
        if value <= 0:
            raise typer.BadParameter(f"budget {b!r} gives {int(value)} labels; budgets must be positive",
                                     param_hint="'--budgets'")


def resolve_budgets(budgets: Sequence[str], pool: int) -> list[int]:
    """Label counts, ascending and unique, from "10" / "1%" style entries (percentages of ``pool``)."""
    check_budgets(budgets)
    out: set[int] = set()
    for b in budgets:
        b = b.strip()
        n = round(pool * float(b[:-1]) / 100) if b.endswith("%") else int(b)
        if n <= 0:
            raise typer.BadParameter(f"budget {b!r} gives {n} labels of the pool's {pool} images; budgets must be "
                                     "positive", param_hint="'--budgets'")
        out.add(min(n, pool))
    return sorted(out)


def hash_ids(ids: Sequence[str]) -> str:
    """A short digest of a list of sample ids (identifies a pool)."""
    import hashlib

    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def stratified_subset(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Row indices of a class-balanced random subset of ``size`` rows (all rows when None), sorted."""
    if size is None or size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per = size // len(classes)
    picks = [rng.choice(np.flatnonzero(labels == c), size=min(per, int(np.sum(labels == c))), replace=False)
             for c in classes]
    chosen = np.concatenate(picks)
    if len(chosen) < size:  # remainder from the rest, uniformly
        rest = np.setdiff1d(np.arange(len(labels)), chosen)
        chosen = np.concatenate([chosen, rng.choice(rest, size=size - len(chosen), replace=False)])
    return np.sort(chosen)
