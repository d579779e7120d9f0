"""What a recipe is: a small frozen, declarative description of a published active-learning system, run by
the one shared loop (``bench.recipes.loop``).

- ``Head``: how the classifier is retrained each round (a ``training.finetune`` mode: linear, svm, full,
  moby_al; from the pretext encoder or from scratch; continued from the previous round or not).
- ``Arm``: one line of the paper's figure: a name, the Select strategy that picks each round's labels
  (and its params), and the head.
- ``Scale``: one profile (``smoke``, ``cpu``, ``gpu``): pool, test set, network, resolution, pretraining,
  the schedule of cumulative label budgets (the first round's labels are drawn at random, as in every
  one of the papers), training length per round, seeds.
- ``Recipe``: the paper, its claim, the pretext method, its arms and its profiles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import typer

from training.modes import METHOD_CLASSES, METHOD_NAMES, MODES


def head_modes() -> tuple[str, ...]:
    """The training.modes.MODES a recipe's loop runs: those that need no class priors (its rounds ask the agent
    for none); read live, so a mode registered there is a head here with no other change."""
    return tuple(name for name, mode in MODES.items() if not mode.priors)


HEAD_MODES = head_modes()
HEAD_INITS = ("pretext", "scratch")
PRETEXTS = METHOD_NAMES  # training.methods.METHODS' names, torch-free (training.modes.METHOD_CLASSES)


@dataclass(frozen=True)
class Head:
    """How each round retrains the classifier the agent then serves."""

    mode: str  # a training.finetune mode: linear / svm (frozen features), full, moby_al (joint CE + MoBY)
    init: str = "pretext"  # "pretext": the recipe's pretext encoder; "scratch": a random init of the arch
    warm_start: bool = False  # from the second round on, continue from the previous round's model
    options: Mapping[str, Any] = field(default_factory=dict)  # more FinetuneConfig fields

    def __post_init__(self) -> None:
        if self.mode not in head_modes():
            raise ValueError(f"unknown head mode {self.mode!r}; valid: {', '.join(head_modes())}")
        if self.init not in HEAD_INITS:
            raise ValueError(f"unknown head init {self.init!r}; valid: {', '.join(HEAD_INITS)}")

    @property
    def trains_network(self) -> bool:
        """Whether a round trains the network (full, moby_al) rather than a head on frozen features."""
        return not MODES[self.mode].frozen


@dataclass(frozen=True)
class Arm:
    """One line of the paper's figure."""

    name: str
    strategy: str  # the agent's Select strategy for every round after the first (the first is random)
    head: Head
    params: Mapping[str, str] = field(default_factory=dict)  # Select params
    note: str = ""  # what it stands for in the paper


@dataclass(frozen=True)
class Scale:
    """One profile of a recipe. Budgets are cumulative label counts per round; "20%" = of the pool."""

    name: str
    pool_size: int | None  # class-balanced subset of the training split (None: all of it)
    test_size: int | None
    arch: str
    preprocess: str  # the model's input ("cifar10" = 32 px; "cifar10@16" = 16 px)
    budgets: tuple[str, ...]
    seeds: int
    pretrain_minutes: float = 0.0
    pretrain_options: Mapping[str, Any] = field(default_factory=dict)  # PretrainConfig fields (epochs, ...)
    steps: int | None = None  # training steps per round of a head that trains the network
    epochs: int | None = None  # or epochs per round (the papers' settings)
    batch_size: int = 64
    threads: int | None = None
    device: str = "auto"
    head_options: Mapping[str, Any] = field(default_factory=dict)  # FinetuneConfig fields for every head
    description: str = ""


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    paper: str  # citation and the file in ../shared/papers
    claims: tuple[str, ...]
    pretext: str  # a training.methods name (training.modes.METHOD_NAMES; `shortlist pretrain --help` lists them)
    arms: tuple[Arm, ...]
    profiles: Mapping[str, Scale]
    reference: str = ""  # the paper's figures, for results.md beside ours
    imbalance: Mapping[str, str] = field(default_factory=dict)  # default --imbalance (class -> count)

    def __post_init__(self) -> None:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"recipe {self.name}: arm names repeat: {names}")
        problems = recipe_problems(self)
        if problems:
            raise ValueError(f"recipe {self.name}: {'; '.join(problems)}")

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise typer.BadParameter(f"recipe {self.name} has no arm {name!r}; valid: "
                                 f"{', '.join(a.name for a in self.arms)}")


def recipe_problems(recipe: Recipe) -> list[str]:
    """What the agent or the training would refuse in ``recipe``, found at registration instead of after
    its pretraining and first round: a pretext that is not a training method, an arm whose strategy the
    agent does not have or whose params it does not take. Each says the valid names. (A head's mode and
    init are checked by ``Head``.)"""
    from agent.pool import InvalidArgument
    from agent.strategies import STRATEGIES  # torch-free; its scikit-learn imports are lazy

    problems = []
    if recipe.pretext not in METHOD_CLASSES:  # (the registry, live: PRETEXTS are its names at import)
        problems.append(f"unknown pretext {recipe.pretext!r}; valid: {', '.join(METHOD_CLASSES)}")
    for arm in recipe.arms:
        entry = STRATEGIES.get(arm.strategy)
        if entry is None:
            problems.append(f"arm {arm.name}: unknown strategy {arm.strategy!r}; valid: "
                            f"{', '.join(sorted(STRATEGIES))}")
            continue
        try:
            entry.check(arm.params)
        except InvalidArgument as e:
            problems.append(f"arm {arm.name}: {e}")
    return problems


def parse_imbalance(text: str) -> dict[str, str]:
    """``--imbalance CLASS=COUNT,...`` -> {class: count}; COUNT is a number of pool images or a percentage
    of that class's pool images ("10%"). BadParameter on malformed entries."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, count = part.partition("=")
        count = count.strip()
        ok = (count.endswith("%") and _is_number(count[:-1])) or count.isdigit()
        if not sep or not name.strip() or not ok:
            raise typer.BadParameter(f"--imbalance entry {part!r}: give CLASS=COUNT or CLASS=PERCENT%, e.g. "
                                     "cat=500,dog=10%")
        out[name.strip()] = count
    return out


def _is_number(s: str) -> bool:
    try:
        return float(s) >= 0
    except ValueError:
        return False


def apply_imbalance(labels: np.ndarray, pool_idx: np.ndarray, imbalance: Mapping[str, str],
                    classes: list[str], seed: int = 0) -> np.ndarray:
    """The pool rows after cutting each named class (a class name or index) to its count (or percentage of
    its pool rows), keeping a seeded random subset of that class; sorted. Classes not named are untouched.
    BadParameter naming the valid classes when a class is unknown."""
    rng = np.random.default_rng(seed)
    keep = np.ones(len(pool_idx), bool)
    for name, count in imbalance.items():
        if name in classes:
            c = classes.index(name)
        elif name.isdigit() and int(name) < len(classes):
            c = int(name)
        else:
            raise typer.BadParameter(f"--imbalance: unknown class {name!r}; valid: {', '.join(classes)} "
                                     "(or their indices)")
        rows = np.flatnonzero(labels[pool_idx] == c)
        n = round(len(rows) * float(count[:-1]) / 100) if count.endswith("%") else int(count)
        if n < len(rows):
            keep[rng.choice(rows, size=len(rows) - n, replace=False)] = False
    return np.sort(pool_idx[keep])
