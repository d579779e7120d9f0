"""Declared parameters of the selection strategies and prior-label methods, and their registries' entries.

Every parameter a strategy or prior method takes is a ``Param`` with its kind, default and valid range,
declared once beside the function (``@strategy(...)`` / ``@prior_method(...)``). The entry the decorator
returns is what the registries hold: calling it checks the request's params (unknown names, malformed
values, values out of range: InvalidArgument naming the parameter and its range) before any work
starts, then runs the function. The ranges keep every request bounded in time and memory on a
50,000-row pool (docs/strategies.md, "Parameters"); the entries are introspectable (``describe``) so a
client can list the strategies and their params.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar, get_args

import numpy as np

from agent.errors import InvalidArgument, quoted
from agent.pool import Pool, PriorMethod, Priors, Selection, Strategy

ParamValue = int | float | str


def _num(x: float) -> str:
    """A bound as people write it: 100, 0.9999, 1e+06 -> 1e6."""
    if float(x).is_integer() and abs(x) < 1e5:
        return str(int(x))
    return f"{x:g}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


@dataclass(frozen=True)
class Param:
    """One parameter: ``kind`` "int" or "float" with the closed range [lo, hi] (``lo_open``: lo itself
    excluded), or "choice" with ``choices``. ``default`` None means it is derived from the pool or the
    request, as ``default_doc`` says."""

    name: str
    kind: Literal["int", "float", "choice"]
    default: ParamValue | None
    doc: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    choices: tuple[str, ...] = ()
    default_doc: str = ""

    def __post_init__(self) -> None:
        if self.kind == "choice":
            if not self.choices:
                raise ValueError(f"param {self.name}: a choice needs choices")
        elif self.lo is None or self.hi is None or not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            raise ValueError(f"param {self.name}: a number needs a finite range lo..hi")
        if self.default is None and not self.default_doc:
            raise ValueError(f"param {self.name}: say how a derived default is derived (default_doc)")

    def range_text(self) -> str:
        """The valid range as the error messages and the docs say it."""
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        assert self.lo is not None and self.hi is not None
        if self.kind == "int":
            return f"an integer {_num(self.lo)}..{_num(self.hi)}"
        return f"a number in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}]"

    def default_text(self) -> str:
        return self.default_doc if self.default is None else (
            _num(self.default) if isinstance(self.default, (int, float)) else str(self.default))

    def parse(self, raw: str) -> ParamValue:
        """``raw`` as this parameter's value; InvalidArgument naming the parameter and its range."""
        if raw.strip() == "":
            # Not the default: a client that sent "" (an unset form field, a template with nothing filled in)
            # would get an answer computed with a value it never chose, without being told.
            raise InvalidArgument(f"param {self.name} is empty: leave it out for its default ({self.default_text()}) "
                                  f"or give {self.range_text()}")
        bad = InvalidArgument(f"param {self.name}={quoted(raw)} is out of range: must be {self.range_text()}")
        if self.kind == "choice":
            word = raw.strip().lower()
            if word not in self.choices:
                raise bad
            return word
        assert self.lo is not None and self.hi is not None
        value: int | float
        try:
            value = int(raw) if self.kind == "int" else float(raw)
        except ValueError:
            raise bad from None
        if self.kind == "float" and not math.isfinite(value):
            raise bad
        if value < self.lo or value > self.hi or (self.lo_open and value == self.lo):
            raise bad
        return value

    def _raw(self, params: Mapping[str, str]) -> str | None:
        return params.get(self.name)  # "" too: parse refuses it (check_declared, before any work)

    def get_int(self, params: Mapping[str, str], default: int | None = None) -> int:
        """This (int) parameter from a request's params, else ``default`` (for a derived default), else
        the declared default."""
        raw = self._raw(params)
        if raw is not None:
            return int(self.parse(raw))
        value = self.default if default is None else default
        assert isinstance(value, int)
        return value

    def get_float(self, params: Mapping[str, str], default: float | None = None) -> float:
        raw = self._raw(params)
        if raw is not None:
            return float(self.parse(raw))
        value = self.default if default is None else default
        assert isinstance(value, (int, float))
        return float(value)

    def get_float_or_none(self, params: Mapping[str, str]) -> float | None:
        """This (float) parameter, or None when the request does not set it (a derived default)."""
        raw = self._raw(params)
        return None if raw is None else float(self.parse(raw))

    def get_choice(self, params: Mapping[str, str]) -> str:
        raw = self._raw(params)
        if raw is None:
            assert isinstance(self.default, str)
            return self.default
        return str(self.parse(raw))

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "default": self.default_text(), "range": self.range_text(),
                "lo": self.lo, "hi": self.hi, "choices": list(self.choices), "doc": self.doc}


def check_declared(params: Mapping[str, str], declared: Sequence[Param], what: str) -> None:
    """InvalidArgument for a param ``what`` does not take (naming the valid ones) or a value out of range."""
    by_name = {p.name: p for p in declared}
    unknown = sorted(set(params) - set(by_name))
    if unknown:
        valid = ", ".join(f"{p.name} ({p.range_text()})" for p in declared) or "none"
        raise InvalidArgument(f"{what} does not take param(s) {', '.join(unknown)}; valid: {valid}")
    for name, raw in params.items():
        by_name[name].parse(raw)


def params_doc(declared: Sequence[Param]) -> str:
    if not declared:
        return "\n\nParams: none."
    lines = [f"    {p.name}: {p.doc} Default {p.default_text()}; {p.range_text()}." for p in declared]
    return "\n\nParams (checked before any work starts; INVALID_ARGUMENT outside the range):\n" + "\n".join(lines)


@dataclass(frozen=True)
class _Entry:
    name: str
    params: tuple[Param, ...]
    summary: str

    def check(self, params: Mapping[str, str]) -> None:
        """Unknown params and values out of range: InvalidArgument, before any work starts."""
        check_declared(params, self.params, self.kind_name + " " + quoted(self.name))

    @property
    def kind_name(self) -> str:
        return "strategy"

    def describe(self) -> dict[str, object]:
        """Name, one-line summary and params (name, kind, default, range, doc): what a UI lists."""
        return {"name": self.name, "summary": self.summary, "params": [p.describe() for p in self.params]}

    def is_light(self, budget: int) -> bool:
        """Whether a call with this (capped) budget is light work (prior methods never are)."""
        return False


def _summary(doc: str | None) -> str:
    first = (doc or "").strip().split("\n\n")[0]
    return " ".join(first.split())


@dataclass(frozen=True)
class KMeansWork:
    """The k-means fits a strategy's call makes, for its work size (``StrategyEntry.work_size``): ``k``, the
    clusters, exactly as the strategy's function computes them from the request's params, the labelled count
    and the (capped) budget (before k-means clips k to the pool's rows); ``fits``, how many k-means fits the
    call makes relative to the strategy's default params (as3l with ``runs=3``: 0.5), the params a declared
    ``cpu_per_unit`` was measured at."""

    k: int
    fits: float = 1.0


# A strategy's k-means for a call: (the request's params, already checked; labelled rows; capped budget) ->
# its KMeansWork. Declared beside the strategy and used by its function too, so the two cannot disagree.
KMeansPlan = Callable[[Mapping[str, str], int, int], KMeansWork]

# A strategy's work size for a call when its cost is not a k-means' rows x k (``@strategy(work=...)``): (the
# request's params, already checked; pool rows; labelled rows; capped budget; classes) -> a number the call's
# CPU cost grows in proportion to, at most, in a unit of the strategy's own (its docstring says which).
StrategyWork = Callable[[Mapping[str, str], int, int, int, int], float]


# What a strategy needs before it can answer, declared in its decorator (``@strategy(name, needs=...)``);
# agent/strategies/__init__.py derives MODEL_FREE and LABEL_FREE from it. "nothing": no model and no labels
# (the agent answers it before the first model is published: random, audit); "model": the model's
# embeddings, and works from zero labels (coreset, the cluster strategies); "classifier": class
# probabilities over at least 2 classes, from the model's logits head or a head fitted on at least 2
# labelled classes (the uncertainty strategies; refused with the label-free ones named otherwise).
Needs = Literal["nothing", "model", "classifier"]
NEEDS: tuple[Needs, ...] = get_args(Needs)


@dataclass(frozen=True)
class StrategyEntry(_Entry):
    """A registered strategy: call it like the function; the request's params are checked first and the
    budget is capped by the candidate count (so a huge budget costs nothing). A call whose (capped) budget
    is at most ``light_budget`` is light work: it takes well under a second on a 50,000-row pool, and the
    agent runs it in a lane of its own so it never queues behind k-means (agent/admission.py). ``work_size``
    and ``prior_cpu_s`` tell admission how large a call is and what it is expected to cost before any call
    of the strategy has been measured."""

    fn: Strategy
    # What it needs before it can answer (see Needs): the agent's model-free and label-free lists follow it.
    needs: Needs
    # It needs, besides, the per-sample pretext-task losses (Pool.pretext_loss: das's rotation losses, which
    # the agent has only from a model with a rotation head); `bench strategies` runs it only when given them.
    needs_pretext_loss: bool = False
    light_budget: int = 0
    # The strategy's cost grows with the k-means it fits: its k and number of fits for a call's params,
    # labelled count and budget (see work_size); None: no k-means whose size the params or labels set.
    kmeans: KMeansPlan | None = None
    # > 0: a conservative prior of the strategy's CPU seconds per unit of work_size on one core, at its
    # default params (see prior_cpu_s); 0: none declared.
    cpu_per_unit: float = 0.0
    # The strategy's cost follows its params in another way than a k-means' rows x k (probcover's radius
    # rule and clusters, qbc's members): its work size for a call (see work_size); None: the pool's rows.
    work: StrategyWork | None = None
    # The picks are a uniform random sample of the candidates (random, audit): without a where filter, a
    # uniform draw of the unlabelled pool, whose labels the calibration fits its temperature on like audit
    # labels (agent/priors/calibration.py; the agent records such draws, agent/core.py ``uniform_seqs``).
    uniform: bool = False

    def is_light(self, budget: int) -> bool:
        return budget <= self.light_budget

    def work_size(self, rows: int, labelled: int, budget: int, params: Mapping[str, str], classes: int = 0) -> float:
        """What a call's CPU cost grows in proportion to (at most), for admission's estimates
        (agent/admission.py, ``size``): the pool's rows, times, for a strategy that declares its ``kmeans``,
        the k-means clusters the call fits (k from the params when they set it, else following the labelled
        set: a load's labels take typiclust's k towards its cap within seconds of the load's start, and its
        CPU seconds with it, docs/reliability.md, Load; clipped to the rows, as k-means does) and the number of fits
        relative to the default params (as3l's ``runs``); for a strategy that declares its ``work``, that
        (probcover's, in dot products; qbc's, rows x members over the default members). ``params``: the
        request's, checked already (``check``); ``budget``: capped by the candidates, as the function gets
        it; ``classes``: the agent's class count (Pool.num_classes; probcover's default clusters follow it)."""
        if self.work is not None:
            return float(max(1.0, self.work(params, rows, labelled, budget, classes)))
        if self.kmeans is None:
            return float(max(1, rows))
        plan = self.kmeans(params, labelled, budget)
        k = max(1, min(plan.k, rows))
        return float(max(1, rows) * k * max(plan.fits, 0.0))

    def prior_cpu_s(self, rows: int, labelled: int, budget: int, params: Mapping[str, str],
                    classes: int = 0) -> float | None:
        """CPU seconds (one core) a call is expected to take at most before admission has measured any call
        of this strategy: ``cpu_per_unit`` x ``work_size`` (agent/admission.py, ``prior_cpu_s``, "Size-aware
        estimates"); None when the strategy declares no cost (then the lane's mean stands in, as before)."""
        if self.cpu_per_unit <= 0:
            return None
        return self.cpu_per_unit * self.work_size(rows, labelled, budget, params, classes)

    def __call__(self, pool: Pool, budget: int, rng: np.random.Generator, params: Mapping[str, str]) -> Selection:
        self.check(params)
        return self.fn(pool, max(0, min(budget, len(pool.candidates))), rng, params)


# A prior method's work size for a call: (the request's params, already checked; pool rows; labelled rows;
# classes; requested rows) -> a number the call's CPU cost grows in proportion to, at most.
PriorWork = Callable[[Mapping[str, str], int, int, int, int], float]


@dataclass(frozen=True)
class FitSettings:
    """How one prior method's temperature is fitted (agent/priors/calibration.py; one per registry line,
    ``calibration.calibrated``). ``default_temperature``: the MAP prior's centre, and the temperature when no
    held-out sample counts. ``top_label_from``: the held-out count from which T maximises the top-label
    likelihood rather than the multiclass one (``calibration.log_likelihoods``); None: the calibration's
    TOP_LABEL_MIN_HELD_OUT."""

    default_temperature: float = 1.0
    top_label_from: int | None = None


@dataclass(frozen=True)
class PriorEntry(_Entry):
    """A registered prior-label method: call it like the function; params are checked first. A call for
    at most ``light_rows`` rows is light work (its own admission lane, as for StrategyEntry). ``work``: how
    large a call is, for admission's estimates (``work_size``); None: not declared. ``fit``: how its
    temperature is fitted (set by ``calibration.calibrated``)."""

    fn: PriorMethod
    light_rows: int = 0
    work: PriorWork | None = None
    fit: FitSettings = FitSettings()

    def is_light(self, budget: int) -> bool:
        return budget <= self.light_rows

    def work_size(self, rows: int, labelled: int, classes: int, requested: int,
                  params: Mapping[str, str]) -> float | None:
        """What a call's CPU cost grows in proportion to (at most), for admission (agent/admission.py ``size``:
        a kind's estimate is scaled up by a call's size over that of its last measured run): the method's
        declared ``work`` for the pool's ``rows``, ``labelled`` rows and ``classes``, the ``requested`` rows
        and the request's (checked) ``params``; None when the method declares none (its kind's estimate is
        then not scaled)."""
        return None if self.work is None else self.work(params, rows, labelled, classes, requested)

    @property
    def kind_name(self) -> str:
        return "prior method"

    def __call__(self, pool: Pool, rows: np.ndarray, rng: np.random.Generator, params: Mapping[str, str]) -> Priors:
        self.check(params)
        return self.fn(pool, rows, rng, params)


# light_budget of strategies whose cost does not grow with the budget (one pass over the candidates, no loop
# that needs a checkpoint: tests/agent/scenarios/test_work.py exempts these from its checkpoint test).
ALWAYS_LIGHT = 2**63 - 1


def strategy(name: str, *declared: Param, needs: Needs, light_budget: int = 0, kmeans: KMeansPlan | None = None,
             cpu_per_unit: float = 0.0, work: StrategyWork | None = None,
             uniform: bool = False, needs_pretext_loss: bool = False) -> Callable[[Strategy], StrategyEntry]:
    """Declare a strategy's name, params, what it needs (``needs``, see Needs: no default, so a new strategy
    says whether it works without a model or labels; ``needs_pretext_loss``: the pretext-task losses too),
    light budget, k-means plan or other work size, prior CPU seconds per unit of work size, and whether its
    picks are a uniform draw (see StrategyEntry); the entry's ``__doc__`` is the function's plus the params.
    ``light_budget=ALWAYS_LIGHT`` also says the strategy is one pass over the candidates with no loop to stop
    in (tests/agent/scenarios/test_work.py checks that every other strategy stops at an
    ``agent.cancel.checkpoint()``)."""
    if needs not in NEEDS:
        raise ValueError(f"strategy {name}: needs={needs!r}; valid: {', '.join(NEEDS)}")
    if not (math.isfinite(cpu_per_unit) and cpu_per_unit >= 0):
        raise ValueError(f"strategy {name}: cpu_per_unit must be a finite number >= 0")
    if kmeans is not None and work is not None:
        raise ValueError(f"strategy {name}: declare its work size by kmeans or by work, not both")

    def wrap(fn: Strategy) -> StrategyEntry:
        entry = StrategyEntry(name=name, params=tuple(declared), summary=_summary(fn.__doc__), fn=fn,
                              needs=needs, needs_pretext_loss=needs_pretext_loss, light_budget=light_budget,
                              kmeans=kmeans, cpu_per_unit=cpu_per_unit, work=work, uniform=uniform)
        object.__setattr__(entry, "__doc__", (fn.__doc__ or "") + params_doc(declared))
        return entry
    return wrap


def prior_method(name: str, *declared: Param, light_rows: int = 0,
                 work: PriorWork | None = None) -> Callable[[PriorMethod], PriorEntry]:
    """Declare a prior method's name, params, light rows and work size (see PriorEntry); the entry's
    ``__doc__`` is the function's plus the params."""
    def wrap(fn: PriorMethod) -> PriorEntry:
        entry = PriorEntry(name=name, params=tuple(declared), summary=_summary(fn.__doc__), fn=fn,
                           light_rows=light_rows, work=work)
        object.__setattr__(entry, "__doc__", (fn.__doc__ or "") + params_doc(declared))
        return entry
    return wrap


E = TypeVar("E", bound=_Entry)


def registry(*entries: E) -> dict[str, E]:
    """A registry (STRATEGIES, PRIOR_METHODS): each entry under the name its decorator declared, in the
    order given, so the key and the name cannot differ; ValueError when two entries share a name."""
    out: dict[str, E] = {}
    for e in entries:
        if e.name in out:
            raise ValueError(f"two {e.kind_name} entries are named {e.name!r}: give each its own name")
        out[e.name] = e
    return out


def params_table(entries: Sequence[_Entry]) -> str:
    """The markdown table of every entry's params (docs/strategies.md carries it; a test keeps it current)."""
    rows = ["| name | param | default | valid range | meaning |", "|---|---|---|---|---|"]
    for e in entries:
        if not e.params:
            rows.append(f"| `{e.name}` | - | | | no params |")
        for p in e.params:
            rows.append(f"| `{e.name}` | `{p.name}` | {p.default_text()} | {p.range_text()} | {p.doc} |")
    return "\n".join(rows)
