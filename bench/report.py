"""Tables and plots for ``shortlist bench cifar10`` results: ``results.md`` and PNG plots, rendered from
``results.json`` (so ``shortlist bench report DIR...`` can redo them, and put several runs side by side).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import typer

from bench.checks import class_counts_said, is_imbalanced
from bench.references import REFERENCE_COLUMNS, reference_value
from shortlist.atomic import NotWholeJson, read_json_value


def other_bench_result(value: object) -> tuple[str, str] | None:
    """The bench command whose results.json ``value`` is (``bench strategies``: an array of its cells;
    ``bench recipe``, ``bench as3l``: an object of their own) and the plot it draws beside results.md; None for
    anything else (a ``bench cifar10`` run, or a file that is none of them)."""
    if isinstance(value, list) and value and all(isinstance(r, dict) and "strategy" in r and "budget" in r
                                                  for r in value):
        return "bench strategies", "results.png"
    if isinstance(value, dict) and "records" not in value:
        if "recipe" in value and "cells" in value:
            return "bench recipe", "accuracy_vs_labels.png"
        if "arms" in value and "results" in value:
            return "bench as3l", "accuracy_vs_steps.png"
    return None


def load_run(path: Path) -> dict[str, Any]:
    """A benchmark run's results.json (``path`` is the folder or the file itself). Another bench command's
    results.json (``other_bench_result``) is a ValueError naming that command and the report it wrote."""
    f = path / "results.json" if path.is_dir() else path
    if not f.is_file():
        raise FileNotFoundError(f"{f} does not exist: is {path} a `shortlist bench cifar10` output folder?")
    # not whole JSON (torn by a crash of an older version, or edited by hand): NotWholeJson naming it; the
    # report command says it in one error: line (a report silently without a run it was given would mislead)
    fix = "rerun the `shortlist bench cifar10` command that wrote it (its runs are run again), or leave that run " \
          "out of the report"
    run = read_json_value(f, fix)
    other = other_bench_result(run)
    if other is not None:  # bench strategies / recipe / as3l render their own reports, in other tables
        command, plot = other
        raise ValueError(f"{f} is a `shortlist {command}` result, not a `shortlist bench cifar10` one: `bench "
                         f"report` renders `bench cifar10` runs; {f.parent / 'results.md'} and {f.parent / plot} "
                         f"are that run's report (the same `shortlist {command}` command, run again, redraws them)")
    if not isinstance(run, dict):
        kind = "an array" if isinstance(run, list) else "a string" if isinstance(run, str) else json.dumps(run)
        raise NotWholeJson(f"{f} holds {kind}, not a JSON object (edited by hand?); {fix}")
    if "records" not in run:
        raise ValueError(f"{f} is not a `shortlist bench cifar10` result (no \"records\"): `bench report` renders "
                         "`bench cifar10` runs; bench strategies, bench recipe and bench as3l write their results.md "
                         "and plots themselves (rerun those commands to redraw them)")
    run.setdefault("label", f.parent.name)
    return run


def short_name(run: dict[str, Any]) -> str:
    """The data set's folder name (e.g. ``cifar10``, ``digits``): what tells runs of different data sets apart
    in one report (a full path would tell one data set at two paths apart)."""
    return Path(str(run.get("data", "")).rstrip("/")).name or "unknown data"


def mixed_datasets_note(runs: list[dict[str, Any]]) -> str:
    """The warning for a report over runs of more than one data set ("" for one): their figures do not compare."""
    names = list(dict.fromkeys(short_name(r) for r in runs))
    if len(names) < 2:
        return ""
    return (f"warning: these runs measure {len(names)} data sets ({', '.join(names)}): a figure of one does not "
            "compare with another's; each table groups its rows by data set (the \"data set\" column), compare "
            "strategies within a group")


def dataset_name(run: dict[str, Any]) -> str:
    """The data set a run was given, as its folder's name (e.g. ``cifar10``, ``digits``) with the path."""
    data = str(run.get("data", "")) or "unknown data"
    name = Path(data.rstrip("/")).name or data
    return name if name == data else f"{name} ({data})"


CIFAR10_CLASSES = frozenset({"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"})


def is_cifar10(run: dict[str, Any]) -> bool:
    """Whether a run measured CIFAR-10: its classes are CIFAR-10's (a results.json written before runs recorded
    their classes: its data folder is named cifar10 or cifar-10). Only then do the published CIFAR-10 figures
    (bench/references.py) go beside its own: beside another data set's they compare nothing."""
    classes = run.get("classes")
    if classes:
        return set(classes) == CIFAR10_CLASSES
    name = Path(str(run.get("data", "")).rstrip("/")).name.lower().replace("-", "").replace("_", "")
    return name.startswith("cifar10") and not name.startswith("cifar100")


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=0))


def _fmt(mean: float, std: float, n: int, scale: float = 100.0, digits: int = 1) -> str:
    if not np.isfinite(mean):
        return "—"
    if n > 1:
        return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f}"


Summary = dict[str, dict[tuple[str, int], tuple[float, float, int]]]  # what ``summarize`` gives


def summarize(run: dict[str, Any]) -> Summary:
    """metric -> (strategy, budget) -> (mean, std, seeds) over seeds. Metrics: linear_accuracy, coverage,
    and prior_accuracy/<method>, ece/<method>; linear_balanced_accuracy and prior_balanced_accuracy/<method>
    for records that have them (a results.json written before they were measured has none)."""
    groups: dict[str, dict[tuple[str, int], list[float]]] = defaultdict(lambda: defaultdict(list))
    seen: set[tuple[str, int, int]] = set()
    for r in run["records"]:
        key = (r["strategy"], int(r["budget"]))
        groups[f"prior_accuracy/{r['prior_method']}"][key].append(r["prior_accuracy"])
        groups[f"ece/{r['prior_method']}"][key].append(r["ece"])
        if r.get("prior_balanced_accuracy") is not None:
            groups[f"prior_balanced_accuracy/{r['prior_method']}"][key].append(r["prior_balanced_accuracy"])
        if (r["strategy"], int(r["budget"]), int(r["seed"])) not in seen:  # repeated per prior method
            seen.add((r["strategy"], int(r["budget"]), int(r["seed"])))
            groups["linear_accuracy"][key].append(r["linear_accuracy"])
            groups["coverage"][key].append(float(r["coverage"]))
            if r.get("linear_balanced_accuracy") is not None:
                groups["linear_balanced_accuracy"][key].append(r["linear_balanced_accuracy"])
            if r.get("semi_supervised_accuracy") is not None:
                groups["semi_supervised_accuracy"][key].append(r["semi_supervised_accuracy"])
    return {m: {k: (*_mean_std(v), len(v)) for k, v in d.items()} for m, d in groups.items()}


# What the balanced-accuracy tables measure, in their titles.
# What the published figures beside this run's are (bench/references.py): none is a frozen-encoder probe.
PUBLISHED = "semi-supervised training"
BALANCED = "the mean of the per-class recalls; below the plain accuracy when the rare classes are missed"


def _same_nan(x: Any) -> Any:
    """NaN (nothing to score, in memory) as None (as results.json has it): NaN != NaN made a set of equal
    records hold several, so a strategy whose every record was alike at a whole-pool budget went unnoticed."""
    return None if isinstance(x, float) and math.isnan(x) else x


def seed_blind(records: list[dict[str, Any]]) -> list[str]:
    """The strategies whose records are the same at every seed, at every budget and prior method, with two
    seeds or more: the seeds changed nothing (probcover's greedy pick often does not depend on the seed), so
    their "± 0.0" is no spread. Compared: coverage, linear-probe and prior accuracy (records of ``bench
    cifar10`` or ``bench strategies``)."""
    seen: dict[str, dict[tuple[int, str], set[tuple[Any, ...]]]] = defaultdict(lambda: defaultdict(set))
    seeds: dict[str, set[int]] = defaultdict(set)
    for r in records:
        seeds[r["strategy"]].add(int(r["seed"]))
        seen[r["strategy"]][(int(r["budget"]), str(r["prior_method"]))].add(
            tuple(_same_nan(r.get(k)) for k in ("coverage", "linear_accuracy", "prior_accuracy")))
    return [s for s, cells in seen.items() if len(seeds[s]) > 1 and all(len(v) == 1 for v in cells.values())]


def seed_blind_note(records: list[dict[str, Any]]) -> str:
    """A results.md line naming the ``seed_blind`` strategies ("" when none)."""
    blind = seed_blind(records)
    if not blind:
        return ""
    one = len(blind) == 1
    return (f"{', '.join(blind)} gave the same figures at every seed and budget: {'its' if one else 'their'} "
            "± 0.0 says the seeds changed nothing (a strategy that picks the same labels whatever the seed, as "
            "probcover often does), not that the figure is that precise.\n")


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines: the ``head`` row, its separator, then ``rows`` (cells as given)."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(runs: list[dict[str, Any]]) -> str:
    """results.md text: per run (side by side when several), mean ± std over seeds."""
    scope = _TableScope.of(runs)
    lines = _header(runs)
    lines += _metric_table(scope, "Linear-probe test accuracy (%) on the frozen encoder", "linear_accuracy",
                           ours="linear probe on the frozen encoder")
    balanced = any(k.startswith(("linear_balanced", "prior_balanced")) for summ in scope.sums for k in summ)
    if balanced:
        lines += _metric_table(scope, f"Linear-probe balanced test accuracy (%: {BALANCED})",
                               "linear_balanced_accuracy")
    if any("semi_supervised_accuracy" in summ for summ in scope.sums):
        lines += _metric_table(scope, "AS3L semi-supervised stage (prior-guided FlexMatch): test accuracy (%)",
                               "semi_supervised_accuracy", ours="semi-supervised stage (prior-guided FlexMatch)")
    lines += _metric_table(scope, "Classes covered by the labelled set", "coverage", scale=1.0, digits=1)
    for m in dict.fromkeys(m for r in runs for m in r["prior_methods"]):
        lines += _metric_table(scope, f"Prior-label accuracy (%) on the unlabelled pool, method `{m}`",
                               f"prior_accuracy/{m}")
        if balanced:
            lines += _metric_table(scope, f"Prior-label balanced accuracy (%: {BALANCED}) on the unlabelled pool, "
                                   f"method `{m}`", f"prior_balanced_accuracy/{m}")
        lines += _metric_table(scope, f"Prior-label ECE (a fraction, as in AS3L's Table 6 and bench strategies), "
                               f"method `{m}`", f"ece/{m}", scale=1.0, digits=3)
    lines.append(_references_note(runs, scope.cifar10))
    lines += _wall_times(runs)
    return "\n".join(lines)


def _header(runs: list[dict[str, Any]]) -> list[str]:
    """results.md's title, the warning on mixed data sets, a summary line per run (with its class counts and
    skipped cells under it) and the notes on seed-blind strategies."""
    names = list(dict.fromkeys(dataset_name(r) for r in runs))
    lines = [f"# Low-budget benchmark through the agent: {', '.join(names)}\n"]
    if mixed := mixed_datasets_note(runs):
        lines.append(f"**{mixed[0].upper()}{mixed[1:]}.**\n")
    for r in runs:
        lines.append(_run_summary_line(r))
        if counts_said := class_counts_said(r.get("class_counts", []), r.get("classes")):
            lines.append(f"  - {counts_said}")
        lines += [f"  - skipped {s['strategy']} seed {s['seed']}: {s['error']}" for s in r.get("skipped", [])]
    lines.append("")
    for r in runs:
        if blind := seed_blind_note(r["records"]):
            lines.append((f"{r['label']}: " if len(runs) > 1 else "") + blind)
    return lines


def _run_summary_line(run: dict[str, Any]) -> str:
    """A run's bullet: data set, run folder, profile, sizes, seeds, model and encoder, commit, wall time (in
    minutes, and the minutes of runs reused), audit labels, and whether it is incomplete."""
    walls = run.get("wall_seconds", {})
    encoder = run["encoder"]
    return (f"- **{short_name(run)}**, run folder `{run['label']}`: profile `{run['profile']}`, "
            f"pool {run['pool_size']}, test {run['test_size']}, "
            f"seeds {len(run['seeds'])}, model {run['model_version']} ({encoder.get('kind', '')}: "
            f"{encoder.get('encoder', '')}), commit {run['git_commit'][:10]}, "
            f"wall time {walls.get('total', float('nan')) / 60:.1f} min"
            + (f" (and {walls['reused_runs'] / 60:.1f} min of runs reused from an earlier run into this "
               "folder)" if walls.get("reused_runs") else "")
            + (f", {run['audit']} audit labels drawn after the first budget's picks (not in the budgets)"
               if run.get("audit") else "")
            + ("" if run.get("complete", True) else " (INCOMPLETE: still running or interrupted)"))


@dataclass(frozen=True)
class _TableScope:
    """What every table of one results.md shares: the runs and their ``summarize``, and, over all of them, the
    data sets (short names), strategies and budgets in order, and whether every run is CIFAR-10."""

    runs: list[dict[str, Any]]
    sums: list[Summary]
    datasets: list[str]
    strategies: list[str]
    budgets: list[int]
    cifar10: bool

    @classmethod
    def of(cls, runs: list[dict[str, Any]]) -> _TableScope:
        return cls(runs=runs, sums=[summarize(r) for r in runs],
                   datasets=list(dict.fromkeys(short_name(r) for r in runs)),
                   strategies=list(dict.fromkeys(s for r in runs for s in r["strategies"])),
                   budgets=sorted({int(b) for r in runs for b in r["budgets"]}),
                   cifar10=all(is_cifar10(r) for r in runs))


def _metric_table(scope: _TableScope, title: str, metric: str, scale: float = 100.0, digits: int = 1,
                  ours: str = "") -> list[str]:
    """A section of results.md: ``title``, then a table of ``metric`` (times ``scale``, ``digits`` decimals).
    Rows: strategy (and run, when several); columns: label budgets, then, when ``ours`` says what this
    run's figures are, the published references, each column saying which is which."""
    lines = [f"## {title}\n"]
    ref_heads = [(col, b) for col in REFERENCE_COLUMNS for b in scope.budgets if any(
        reference_value(col, s, b) != "—" for s in scope.strategies)] if ours and scope.cifar10 else []
    # beside published figures, every column says whose figure it is and how it was measured
    mine = " (this run)" if ref_heads else ""
    # Runs of several data sets: rows grouped by data set first, each saying its own (its figures compare
    # only with its group's).
    by_set = len(scope.datasets) > 1
    several = len(scope.runs) > 1
    head = (["data set"] if by_set else []) + ["strategy"] + (["run"] if several else []) + [
        f"{b} labels{mine}" for b in scope.budgets] + [
        f"{col}, {b} labels (published, CIFAR-10: {PUBLISHED})" for col, b in ref_heads]
    rows = []
    for dataset in scope.datasets:
        for s in scope.strategies:
            for r, summ in zip(scope.runs, scope.sums, strict=True):
                if short_name(r) != dataset:
                    continue
                cells = [_fmt(*summ.get(metric, {}).get((s, b), (float("nan"), float("nan"), 0)), scale, digits)
                         for b in scope.budgets]
                if all(c == "—" for c in cells):
                    continue
                ref_cells = [reference_value(col, s, b) for col, b in ref_heads]
                rows.append([*([dataset] if by_set else []), s, *([r["label"]] if several else []), *cells,
                             *ref_cells])
    lines.extend(md_table(head, rows))
    if ref_heads:
        same = ("another measurement: the published ones show the direction to expect, not the same figure"
                if "probe" in ours else "the same kind of figure, after far shorter training at a lower resolution")
        lines.append(f"\nThe published columns are test accuracy after {PUBLISHED} of the whole network on "
                     f"those labels and the unlabelled images (bench/references.py); this run's columns are its "
                     f"{ours}, {same}.")
    lines.append("")
    return lines


def _references_note(runs: list[dict[str, Any]], cifar10: bool) -> str:
    """The paragraph on the published references: where they are from, or why there are none."""
    if cifar10:
        return ("Published references are from the papers named in the column headers (see bench/references.py "
                "for table numbers and settings); they use full-resolution CIFAR-10 and much longer training, so "
                "they are the direction to expect, not a target for the quick or cpu profiles.\n")
    return (f"No published references: they are CIFAR-10 figures (bench/references.py), and "
            f"{', '.join(dataset_name(r) for r in runs if not is_cifar10(r))} is another data set.\n")


def _wall_times(runs: list[dict[str, Any]]) -> list[str]:
    """The wall-times section (seconds per step of the first run, a column per run); none without them."""
    first = runs[0].get("wall_seconds")
    if not first:
        return []
    steps = [k for k in first if "/" not in k]
    return ["## Wall times (s)\n", *md_table(["step", *(r["label"] for r in runs)], [
        [k, *(f"{r.get('wall_seconds', {}).get(k, float('nan')):.0f}" for r in runs)] for k in steps]), ""]


Curve = list[tuple[int, float, float]]  # (labels, mean, std) points of one line


def plot(runs: list[dict[str, Any]], metric: str, ylabel: str, path: Path) -> None:
    """Metric vs number of labels (log x), one line per strategy (and linestyle per run)."""
    strategies = list(dict.fromkeys(s for r in runs for s in r["strategies"]))
    mixed = len({short_name(r) for r in runs}) > 1  # then each line names its data set
    lines: list[tuple[str, int, Curve, bool]] = []
    for ri, run in enumerate(runs):
        summ = summarize(run).get(metric, {})
        for s in strategies:
            pts = sorted((b, m, sd) for (st, b), (m, sd, _) in summ.items() if st == s and np.isfinite(m))
            if pts:
                label = s if len(runs) == 1 else f"{s} ({run['label']})" if not mixed else \
                    f"{s} ({short_name(run)}: {run['label']})"
                lines.append((label, ri, [(int(b), m * 100, sd * 100) for b, m, sd in pts], len(run["seeds"]) > 1))
    names = ", ".join(dict.fromkeys(Path(str(r.get("data", "")).rstrip("/")).name or "?" for r in runs))
    # The x values are budgets, the strategy's picks; a run with audit labels has that many more labels.
    audits = sorted({int(r.get("audit", 0)) for r in runs} - {0})
    xlabel = "labelled samples" if not audits else (
        f"labels picked by the strategy (+ {' or '.join(map(str, audits))} audit labels"
        + (")" if len(audits) == len(runs) else " in some runs)"))
    folders = ", ".join(r["label"] for r in runs)
    band = "; shaded: ± std over seeds" if any(b for *_, b in lines) else ""
    plot_curves(lines, ylabel, f"data {names} (run folder{'s' if len(runs) > 1 else ''} {folders}){band}", path,
                color_keys=[s for r in runs for s in r["strategies"]], xlabel=xlabel)


def plot_curves(lines: list[tuple[str, int, Curve, bool]], ylabel: str, title: str, path: Path,
                color_keys: list[str] | None = None, log_x: bool = True, xlabel: str = "labelled samples") -> None:
    """Accuracy-vs-labels style plot: each line (label, style index, [(x, mean, std)...], band) drawn with
    its error band (mean +- std over seeds) when ``band``; the measured x values are ticked. A line's
    colour follows its label's first word (so one strategy keeps its colour across runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    styles = ["-", "--", ":", "-."]
    keys = list(dict.fromkeys([*(color_keys or []), *(label.split(" ")[0] for label, *_ in lines)]))
    colors = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(keys)}
    xs: set[int] = set()
    for label, style, pts, band in lines:
        x = np.asarray([p[0] for p in pts])
        xs.update(int(v) for v in x)
        y = np.asarray([p[1] for p in pts])
        e = np.asarray([p[2] for p in pts])
        color = colors[label.split(" ")[0]]
        ax.plot(x, y, styles[style % len(styles)], marker="o", ms=3, color=color, label=label)
        if band:
            ax.fill_between(x, y - e, y + e, color=color, alpha=0.12)
    if log_x:
        ax.set_xscale("log")
    if xs:  # tick the measured label counts (a log axis alone marks only 10, 100, ...)
        ax.set_xticks(sorted(xs), [str(b) for b in sorted(xs)])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plotted_metric(runs: list[dict[str, Any]], kind: str, what: str) -> tuple[str, str]:
    """The metric ("linear" or "prior" ``kind``) the plots show and their y label: balanced accuracy when a
    run's pool is imbalanced (``bench.checks.is_imbalanced``) and its records have it (plain accuracy there is
    mostly the largest class's recall, and can rank strategies backwards), else plain accuracy."""
    if any(is_imbalanced(r.get("class_counts", [])) and any(rec.get(f"{kind}_balanced_accuracy") is not None
                                                             for rec in r["records"]) for r in runs):
        return (f"{kind}_balanced_accuracy",
                f"{what} balanced accuracy (%, mean per-class recall; imbalanced pool)")
    return f"{kind}_accuracy", f"{what} accuracy (%)"


def write_report(run_dirs: list[Path], out: Path, console: Any = None) -> list[Path]:
    """Write results.md and the plots for ``run_dirs`` into ``out``; print the table and the paths."""
    from rich.console import Console
    from rich.markdown import Markdown
    from rich.markup import escape

    console = console or Console()
    runs = [load_run(d) for d in run_dirs]
    if mixed := mixed_datasets_note(runs):  # said where it is run, not only inside results.md
        typer.echo(mixed, err=True)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(runs)
    (out / "results.md").write_text(md)
    paths = [out / "results.md", out / "accuracy_vs_labels.png"]
    metric, ylabel = plotted_metric(runs, "linear", "linear-probe test")
    plot(runs, metric, ylabel, paths[1])
    for m in dict.fromkeys(m for r in runs for m in r["prior_methods"]):
        p = out / f"prior_accuracy_{m}_vs_labels.png"
        metric, ylabel = plotted_metric(runs, "prior", f"prior-label ({m})")
        plot(runs, f"{metric}/{m}", ylabel, p)
        paths.append(p)
    for old in set(out.glob("prior_accuracy_*_vs_labels.png")) - set(paths):  # a rerun with fewer methods
        old.unlink()
    console.print(Markdown(md.split("## Classes covered")[0]))
    console.print("[bold]report:[/] " + escape(", ".join(str(p) for p in paths)))  # ("[x]" in a path: no tag)
    return paths
