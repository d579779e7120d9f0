"""Every declared parameter of every strategy and prior method, over the whole registries: values at
the ends of the range answer (on a small pool, under a generous cancellation deadline, so a runaway
fails instead of hanging), values beyond them, huge ones, NaN and inf are InvalidArgument naming the
parameter and its range. A new strategy or prior method is covered by registering it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from agent import cancel
from agent.errors import FailedPrecondition, InvalidArgument
from agent.params import Param, PriorEntry, StrategyEntry, params_table
from agent.priors import PRIOR_METHODS
from agent.strategies import STRATEGIES
from tests.agent.strategies.pools import blobs, make_pool

X, Y = blobs(clusters=4, per_cluster=30, dim=8, spread=0.2, seed=1)
LOSS = np.random.default_rng(0).random(len(X)).astype(np.float32)
LABELED = np.array([0, 1, 30, 31, 60, 90])
DOCS = Path(__file__).resolve().parents[2] / "docs" / "strategies.md"
# Far beyond any reasonable run on a 120-row pool; a runaway parameter hits it and fails the test.
DEADLINE_S = 60.0

ENTRIES: list[StrategyEntry | PriorEntry] = [*STRATEGIES.values(), *PRIOR_METHODS.values()]
NUMERIC = [(e, p) for e in ENTRIES for p in e.params if p.kind != "choice"]


def _id(item: tuple[StrategyEntry | PriorEntry, Param]) -> str:
    return f"{item[0].kind_name.split()[0]}-{item[0].name}-{item[1].name}"


def run(entry: StrategyEntry | PriorEntry, params: dict[str, str], budget: int = 5) -> None:
    pool = make_pool(X, Y, LABELED, pretext_loss=LOSS)
    with cancel.scope(cancel.CancelToken.within(DEADLINE_S)):
        if isinstance(entry, StrategyEntry):
            sel = entry(pool, budget, np.random.default_rng(0), params)
            assert len(sel.rows) == min(budget, len(pool.candidates))
        else:
            pri = entry(pool, pool.candidates[:20], np.random.default_rng(0), params)
            assert pri.probs.shape == (20, pool.num_classes)


def value(p: Param, x: float) -> str:
    return str(int(x)) if p.kind == "int" else repr(float(x))


@pytest.mark.parametrize("item", NUMERIC, ids=[_id(i) for i in NUMERIC])
def test_ends_of_the_range_answer(item: tuple[StrategyEntry | PriorEntry, Param]) -> None:
    entry, p = item
    assert p.lo is not None and p.hi is not None
    ends = [p.hi] if p.lo_open else [p.lo, p.hi]
    for x in ends:
        try:
            run(entry, {p.name: value(p, x)})
        except FailedPrecondition:  # e.g. das's lambda is fine, the pool just lacks nothing here
            pytest.fail(f"{entry.name} {p.name}={x} failed a precondition on a pool that has everything")


@pytest.mark.parametrize("item", NUMERIC, ids=[_id(i) for i in NUMERIC])
def test_beyond_the_range_is_invalid_argument_naming_it(item: tuple[StrategyEntry | PriorEntry, Param]) -> None:
    entry, p = item
    assert p.lo is not None and p.hi is not None
    bad = ["1e9" if p.kind == "float" else "1000000000", "1e308", "-1e308", "nan", "inf", "-inf", "2147483648",
           "x", value(p, p.hi + (1 if p.kind == "int" else max(abs(p.hi), 1.0)))]
    bad.append(value(p, p.lo) if p.lo_open else value(p, p.lo - (1 if p.kind == "int" else max(abs(p.lo), 1.0))))
    for raw in bad:
        with pytest.raises(InvalidArgument) as err:
            run(entry, {p.name: raw})
        assert p.name in str(err.value) and p.range_text() in str(err.value), str(err.value)


ALL_PARAMS = [(e, p) for e in ENTRIES for p in e.params]


@pytest.mark.parametrize("item", ALL_PARAMS, ids=[_id(i) for i in ALL_PARAMS])
def test_an_empty_value_is_invalid_argument_not_the_default(item: tuple[StrategyEntry | PriorEntry, Param]) -> None:
    # "" used to be read as the default, silently (Select alpha="", PriorLabels calibrate="").
    entry, p = item
    for raw in ("", " "):
        with pytest.raises(InvalidArgument) as err:
            run(entry, {p.name: raw})
        assert str(err.value) == (f"param {p.name} is empty: leave it out for its default ({p.default_text()}) or "
                                  f"give {p.range_text()}")


@pytest.mark.parametrize("entry", [e for e in ENTRIES if any(p.kind == "choice" for p in e.params)],
                         ids=lambda e: e.name)
def test_every_choice_answers_and_others_are_refused(entry: StrategyEntry | PriorEntry) -> None:
    for p in entry.params:
        if p.kind != "choice":
            continue
        for c in p.choices:
            run(entry, {p.name: c})
        with pytest.raises(InvalidArgument, match=p.name):
            run(entry, {p.name: "no-such-choice"})


@pytest.mark.parametrize("entry", list(STRATEGIES.values()), ids=lambda e: e.name)
def test_huge_budget_is_capped_by_the_candidates(entry: StrategyEntry) -> None:
    run(entry, {}, budget=2_147_483_647)


def test_declared_defaults_are_in_range_and_documented() -> None:
    for e in ENTRIES:
        for p in e.params:
            if p.default is not None:
                p.parse(str(p.default))  # the declared default is itself valid
        assert e.__doc__ and "Params" in e.__doc__
        for p in e.params:
            assert p.range_text() in e.__doc__
        assert e.describe()["name"] == e.name
    assert all(name == e.name for name, e in STRATEGIES.items())
    assert all(name == e.name for name, e in PRIOR_METHODS.items())


def test_docs_table_is_the_registry() -> None:
    text = DOCS.read_text()
    for table in (params_table(list(STRATEGIES.values())), params_table(list(PRIOR_METHODS.values()))):
        assert table in text, f"docs/strategies.md is out of date; paste this table:\n{table}"


def test_docs_strategy_rows_are_the_registry() -> None:
    """docs/strategies.md's Strategies table has one row per registered strategy, none else, and each
    row's "needs" column starts with what its decorator declares (free text may follow: qbc, das)."""
    section = DOCS.read_text().split("## Strategies", 1)[1].split("\n## ", 1)[0]
    rows = {m[1]: m[2] for m in re.finditer(r"^\| `([a-z_0-9]+)` \| ([^|]+) \|", section, re.M)}
    assert sorted(rows) == sorted(STRATEGIES), "docs/strategies.md's Strategies table is not the registry"
    for name, entry in STRATEGIES.items():
        assert rows[name].strip().startswith(entry.needs), (name, rows[name], entry.needs)


def test_docs_prior_method_rows_are_the_registry() -> None:
    """docs/strategies.md's "Prior-label methods" table has one row per registered prior method, none else, and
    each param its "params" column names is one the method declares (only the params table was checked: a new
    method's row could be missing)."""
    section = DOCS.read_text().split("## Prior-label methods", 1)[1].split("\n## ", 1)[0]
    rows = {m[1]: m[2] for m in re.finditer(r"^\| `([a-z_0-9]+)` \| [^|]+ \| ([^|]+) \|", section, re.M)}
    assert list(rows) == list(PRIOR_METHODS), \
        f"docs/strategies.md's Prior-label methods table should have a row for each of: {', '.join(PRIOR_METHODS)}"
    for name, entry in PRIOR_METHODS.items():
        named = set(re.findall(r"`([a-z_0-9]+)`", rows[name]))
        assert named <= {p.name for p in entry.params}, (name, named)


def test_param_spec_rejects_half_declared_numbers() -> None:
    with pytest.raises(ValueError, match="finite range"):
        Param("k", "int", 1, "x", 1, None)
    with pytest.raises(ValueError, match="default_doc"):
        Param("k", "int", None, "x", 1, 5)


def test_select_help_shows_a_long_strategy_name_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """`select --help` at 80 columns listed the names in the option's help column and cut a long one with an
    ellipsis (`farthest_from_labelled_…`): every name must be shown whole (a strategy registered for the test)."""
    from typer.testing import CliRunner

    from shortlist.cli import app

    long_name = "farthest_from_labelled_in_embedding_space"
    monkeypatch.setitem(STRATEGIES, long_name, STRATEGIES["random"])
    out = CliRunner().invoke(app, ["select", "--help"], env={"COLUMNS": "80"}, terminal_width=80).output
    words = set(re.split(r"[\s,│:()]+", out))
    assert set(STRATEGIES) <= words, (sorted(set(STRATEGIES) - words), out)


def test_the_docs_adding_a_strategy_example_runs_with_and_without_its_param() -> None:
    """docs/strategies.md's "Adding a strategy" example, as written (imports included), registers and picks:
    with the request's k and without it (params hold only what the request gave: reading ``params["k"]``
    was a KeyError then; the example reads its Param with ``get_int``, which falls back to the default), and
    a k outside its declared range is InvalidArgument before the function runs."""
    from agent.params import registry

    section = DOCS.read_text().split("### Adding a strategy", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code, "docs/strategies.md's Adding a strategy section has no python example"
    namespace: dict[str, object] = {}
    exec(compile(code[1], str(DOCS), "exec"), namespace)
    entries = [v for v in namespace.values() if isinstance(v, StrategyEntry)]
    assert len(entries) == 1, entries
    entry = registry(*entries)[entries[0].name]
    pool = make_pool(X, Y, LABELED)
    for params in ({}, {"k": "3"}):
        with cancel.scope(cancel.CancelToken.within(DEADLINE_S)):
            sel = entry(pool, 7, np.random.default_rng(0), params)
        rows = sel.rows.tolist()
        assert len(rows) == 7 == len(set(rows)) == len(sel.scores) and sel.rows.dtype == np.int64, params
        assert set(rows) <= set(pool.candidates.tolist()), params
    with pytest.raises(InvalidArgument, match="k"):
        entry(pool, 7, np.random.default_rng(0), {"k": "0"})


def test_docs_label_free_list_is_the_registrys() -> None:
    """docs/strategies.md names the strategies that work from zero labels in prose ("`LABEL_FREE`: random,
    audit, ..."); they are agent.strategies.LABEL_FREE (which follows each entry's ``needs``), none more or
    less, so a new strategy that needs no labels is named there too."""
    from agent.strategies import LABEL_FREE

    listed = re.search(r"\(`LABEL_FREE`: ([a-z_0-9, ]+);", " ".join(DOCS.read_text().split()))
    assert listed, "docs/strategies.md no longer lists LABEL_FREE as \"(`LABEL_FREE`: a, b, ...;\""
    names = [n.strip() for n in listed[1].split(",")]
    assert sorted(names) == sorted(LABEL_FREE), f"docs/strategies.md's LABEL_FREE list should be: {sorted(LABEL_FREE)}"
