"""What the app's Progress page shows, computed from the agent's answers (ListLabels with history,
GetStatus): labels over time (overall and per annotator), per class (class balance), per annotator and
per source, the audit's prior-accuracy estimates, and the model version served and re-embedding state.
Charts are server-rendered SVG from matplotlib's object API (no pyplot state), drawn one at a time (rc
settings are process-wide) with every text as plain text (a ``$`` in a name is not mathtext); nothing is
fetched by the browser from elsewhere.
"""

from __future__ import annotations

import functools
import io
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec

from agent.state import RENAME_SOURCE, RESTORE_SOURCE
from shortlist.v1 import agent_pb2

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Chart size in inches (the SVG is shown at its natural size, 72 pt an inch, shrunk to fit narrower panels).
WIDTH, HEIGHT = 12.0, 2.8
NARROW = 6.0  # the class balance chart (half a page wide)
MAX_SERIES = 8  # annotators drawn as their own line; the rest are summed as "others"
# Each series (a class, an annotator) is told apart by its marker and its line style as well as its colour, so
# a reader who cannot tell the colours apart (red from green, say) can still match a line to the legend. The
# colours are Okabe and Ito's colour-blind-safe set (without black: the total's line is black), then a grey;
# the markers never repeat within MAX_SERIES, and each line style is paired with two markers.
SERIES_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#666666")
SERIES_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
SERIES_LINESTYLES = ("-", "--", "-.", ":", "-", "--", "-.", ":")
MARK_EVERY = 0.12  # a series' markers about this far apart (a fraction of the axes' diagonal), not one a label

P = ParamSpec("P")
# matplotlib's rc settings are one process-wide dict, and rc_context changes it for every thread: charts are
# drawn one at a time, so one chart's settings (plain text, SVG text as text) cannot end while another draws.
_DRAWING = threading.Lock()


@dataclass
class LabelCounts:
    """Label history rows counted by what they did (one annotator's, or everyone's). Every label given is
    exactly one of ``new``, ``repeated`` or ``changed``; ``label_events`` (GetStatus) counts the given ones,
    the retractions and the class renames alike, and also the rows of deleted samples (plus one per
    deletion), which the history read here no longer holds."""

    given: int = 0  # labels given (not retractions, not class renames)
    new: int = 0  # given to a sample unlabelled then (never labelled, or its label taken back)
    repeated: int = 0  # given with the class the sample had already (a teammate agreeing, or a resend)
    changed: int = 0  # given with another class than the sample had: a correction or a disagreement
    agreeing: int = 0  # of ``repeated``: the class another annotator had given (two people did the work)
    retracted: int = 0  # labels taken back (RetractLabels) by this annotator
    current: int = 0  # current labels held (the sample's label now is one this annotator gave)

    def as_dict(self) -> dict[str, int]:
        """The counts under the names ``/api/progress`` and ``shortlist status --by-annotator --json`` use."""
        return {"labels_given": self.given, "labels_new": self.new, "labels_repeated": self.repeated,
                "labels_changed": self.changed, "agreeing": self.agreeing, "retracted": self.retracted,
                "current": self.current}


class LabelTally:
    """Counts ListLabels(history=True) one record at a time (oldest first), for the Progress page and
    ``shortlist status --by-annotator``: one rule for both. Holds one (label, annotator) per labelled
    sample, not the rows."""

    def __init__(self) -> None:
        self.total = LabelCounts()
        self.annotators: dict[str, LabelCounts] = {}
        self.renames = 0  # class-rename rows (RenameClass): no label given
        # rows RetractLabels put back (restore_previous, after its retraction): no label given either; the
        # label held is again its giver's (the row's annotator)
        self.restores = 0
        self.previous: dict[str, tuple[str, str]] = {}  # id -> (label, annotator) of its label now

    def _of(self, name: str) -> LabelCounts:
        c = self.annotators.get(name)
        if c is None:
            c = self.annotators[name] = LabelCounts()
        return c

    def add(self, r: agent_pb2.LabelRecord) -> str:
        """Count ``r``; returns what it was: "rename", "restore", "retraction", "new", "repeated" or
        "changed"."""
        before = self.previous.get(r.id)
        if r.source == RESTORE_SOURCE and not r.retracted:
            # An undo put back the label before the one it took back: the row names who gave that label, who
            # was counted when they gave it; the undoer's retraction (the row before) was counted as theirs.
            self.previous[r.id] = (r.label, r.annotator)
            self.restores += 1
            if r.current:
                self.total.current += 1
                self._of(r.annotator).current += 1
            return "restore"
        if r.source == RENAME_SOURCE and before is not None:  # the class changes; who judged the sample does not
            self.previous[r.id] = (r.label, before[1])
            self.renames += 1
            if r.current:
                self.total.current += 1
                self._of(before[1]).current += 1
            return "rename"
        a = self._of(r.annotator)
        if r.retracted:
            self.total.retracted += 1
            a.retracted += 1
            self.previous.pop(r.id, None)
            return "retraction"
        kind = "new" if before is None else "repeated" if before[0] == r.label else "changed"
        for c in (self.total, a):
            c.given += 1
            setattr(c, kind, getattr(c, kind) + 1)
            c.current += int(r.current)
            if kind == "repeated" and before is not None and before[1] != r.annotator:
                c.agreeing += 1
        self.previous[r.id] = (r.label, r.annotator)
        return kind


@dataclass
class AnnotatorStats:
    name: str
    labels: int = 0  # labels given (relabels count)
    samples: set[str] = field(default_factory=set)
    first: float = 0.0
    last: float = 0.0
    sources: Counter[str] = field(default_factory=Counter)
    # labels that repeated the sample's label just given by another annotator (the same class): counted in
    # ``labels`` but no new information (two annotators on one sample)
    agreeing: int = 0

    @property
    def per_hour(self) -> float | None:
        """Labels given per hour over the annotator's active span (first to last label); None for a span under
        a minute (one label, or a burst: a rate would mean nothing)."""
        span = self.last - self.first
        return self.labels * 3600.0 / span if span >= 60 else None


@dataclass
class Progress:
    """Label history aggregated for the page."""

    events: int = 0  # labels given (not retractions, not class renames): LabelCounts.given
    retractions: int = 0  # labels taken back (RetractLabels)
    labelled: int = 0  # samples with a current label
    # (time, samples labelled then) at each label that labelled an unlabelled sample and each retraction; the
    # rows of one moment (an undo: its retraction and the label put back) make one point, after all of them
    timeline: list[tuple[float, int]] = field(default_factory=list)
    # annotator -> [(time, labels given so far)]
    annotator_timeline: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    # class -> [(time, current labels of that class given by then)]
    class_timeline: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    annotators: dict[str, AnnotatorStats] = field(default_factory=dict)
    per_class: Counter[str] = field(default_factory=Counter)  # current labels per class
    per_source: Counter[str] = field(default_factory=Counter)  # current labels per source
    audit_labelled: int = 0
    # the labels given by kind (new / the same class again / changed to another class), overall and per annotator
    tally: LabelTally = field(default_factory=LabelTally)


def collect(history: Iterable[agent_pb2.LabelRecord], classes: Iterable[str] = ()) -> Progress:
    """Aggregate ListLabels(history=True) (oldest first) into a Progress; ``classes`` (GetStatus) makes
    classes without labels show with 0."""
    p = Progress()
    labelled: set[str] = set()
    given: dict[str, tuple[float, str]] = {}  # id -> (time, source) of the label given that a rename kept
    # id -> the ``given`` entry its latest label given replaced: what an undo (a "restore" row) puts back
    given_before: dict[str, tuple[float, str]] = {}
    class_times: dict[str, list[float]] = {}  # class -> when each of its current labels was given

    def count(t: float) -> None:
        # Rows of one moment are one change: an undo's retraction and the label it puts back (RetractLabels with
        # restore_previous) share a time, and a point after each drew a dip that never was (4 -> 3 -> 4).
        if p.timeline and p.timeline[-1][0] == t:
            p.timeline[-1] = (t, len(labelled))
        else:
            p.timeline.append((t, len(labelled)))

    for name in classes:
        p.per_class[name] += 0
    for r in history:
        kind = p.tally.add(r)
        if kind in ("rename", "restore"):  # a class rename (RenameClass), an undo's label put back: none given
            if kind == "restore":  # labelled again, with the label given before (its time and source)
                given[r.id] = given_before.get(r.id, (r.time, r.source))
                if r.id not in labelled:
                    labelled.add(r.id)
                    count(r.time)
            if r.current:
                t, source = given[r.id]
                p.per_class[r.label] += 1
                class_times.setdefault(r.label, []).append(t)
                p.per_source[source] += 1
                p.audit_labelled += int(r.audit)
            continue
        if kind == "retraction":  # the sample is unlabelled from here on; not a label given
            p.retractions += 1
            if r.id in labelled:
                labelled.discard(r.id)
                count(r.time)
            continue
        p.events += 1
        if r.id not in labelled:
            labelled.add(r.id)
            count(r.time)
        a = p.annotators.get(r.annotator)
        if a is None:
            a = p.annotators[r.annotator] = AnnotatorStats(r.annotator, first=r.time)
        a.labels += 1
        a.samples.add(r.id)
        a.last = r.time
        a.sources[r.source] += 1
        a.agreeing = p.tally.annotators[r.annotator].agreeing
        if r.id in given:
            given_before[r.id] = given[r.id]
        given[r.id] = (r.time, r.source)
        p.annotator_timeline.setdefault(r.annotator, []).append((r.time, a.labels))
        if r.current:
            p.per_class[r.label] += 1
            class_times.setdefault(r.label, []).append(r.time)
            p.per_source[r.source] += 1
            p.audit_labelled += int(r.audit)
    # a renamed label counts from when it was given, not from the rename
    p.class_timeline = {c: [(t, n) for n, t in enumerate(sorted(times), 1)] for c, times in class_times.items()}
    p.labelled = len(labelled)
    return p


def _accuracy_dict(a: agent_pb2.Accuracy) -> dict[str, Any]:
    return {"correct": a.correct, "total": a.total, "accuracy": a.accuracy, "low": a.low, "high": a.high}


def audit_dict(a: agent_pb2.PriorAudit) -> dict[str, Any]:
    """GetStatus's audit as plain data (``shortlist status --json``, the app's /api/progress)."""
    return {"drawn": a.drawn, "labelled": a.labelled, "left_out": a.left_out, "current": a.current,
            "model_version": a.model_version, "confidence_level": a.confidence_level,
            "interval_method": a.interval_method, "computed_at": a.computed_at, "error": a.error,
            "methods": [{"method": m.method, "error": m.error, "mean_confidence": m.mean_confidence,
                         "overall": _accuracy_dict(m.overall) if m.HasField("overall") else None,
                         "per_class": {c.class_name: _accuracy_dict(c.accuracy) for c in m.per_class}}
                        for m in a.methods]}


def _when(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _listed(items: Iterable[str]) -> str:
    return ", ".join(items) or "none"


def timeline_text(p: Progress) -> str:
    """What ``timeline_svg`` draws, in words (its text alternative for a screen reader)."""
    if not p.timeline:
        return "Labels over time: no labels yet."
    (t0, _), (t1, n1) = p.timeline[0], p.timeline[-1]
    most = max(n for _, n in p.timeline)
    busiest = sorted(p.annotators.values(), key=lambda a: (-a.labels, a.name))
    return (f"Labels over time: samples labelled went from 0 at {_when(t0)} to {n1:,} at {_when(t1)}"
            + (f" (at most {most:,})" if most != n1 else "") + ". Labels given per annotator: "
            + _listed(f"{a.name} {a.labels:,}" for a in busiest) + ".")


def class_timeline_text(p: Progress) -> str:
    """What ``class_timeline_svg`` draws, in words."""
    if not p.class_timeline:
        return "Labels per class over time: no labels yet."
    largest = sorted(p.class_timeline, key=lambda c: (-p.per_class[c], c))
    return "Labels per class over time (current labels, by when each was given): " + _listed(
        f"{c} {p.class_timeline[c][-1][1]:,} (from {_when(p.class_timeline[c][0][0])} to "
        f"{_when(p.class_timeline[c][-1][0])})" for c in largest) + "."


def class_balance_text(p: Progress) -> str:
    """What ``class_balance_svg`` draws, in words."""
    items = sorted(p.per_class.items(), key=lambda kv: (-kv[1], kv[0]))
    if not items:
        return "Class balance: no classes yet."
    total = max(1, sum(n for _, n in items))
    return "Class balance, current labels per class: " + _listed(f"{c} {n:,} ({n / total:.0%})" for c, n in items) + "."


def audit_text(audit: agent_pb2.PriorAudit) -> str:
    """What ``audit_svg`` draws, in words ("" when it draws nothing)."""
    rows = [m for m in audit.methods if m.HasField("overall") and m.overall.total]
    if not rows:
        return ""
    return (f"Accuracy of each prior method on the audit labels, with its {audit.confidence_level:.0%} "
            f"{audit.interval_method} interval: " + "; ".join(
                f"{m.method} {m.overall.accuracy:.0%} ({m.overall.low:.0%} to {m.overall.high:.0%}, "
                f"{m.overall.correct} of {m.overall.total} right), mean confidence {m.mean_confidence:.0%}"
                for m in rows) + ".")


def _plain_text(chart: Callable[P, str]) -> Callable[P, str]:
    """Draw ``chart`` with every text as plain text: no mathtext, no TeX.

    Names in the charts (annotators, classes) are chosen by users; drawn with the defaults, a ``$...$`` in one
    is parsed as mathtext, and one that does not parse fails ``savefig``, so the whole page answers 500. The
    rc setting has to hold while the figure is built (a Text reads it when created) and while it is saved
    (tick labels are made then), so it wraps the whole chart function (under ``_DRAWING``).
    """
    @functools.wraps(chart)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> str:
        import matplotlib

        with _DRAWING, matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
            return chart(*args, **kwargs)
    return wrapper


def _figure(height: float = HEIGHT, width: float = WIDTH) -> Figure:
    from matplotlib.figure import Figure  # imported on first use: slow, and only the web app draws

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def _empty(fig: Figure, ax: Axes, message: str) -> str:
    """The chart's SVG with only ``message`` in it (nothing to draw yet)."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return _svg(fig)


def _svg(fig: Figure) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "font.family": "sans-serif"}):  # text stays text
        fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: the SVG is inlined in HTML


def _dates(ts: list[float]) -> list[Any]:  # datetimes; Any: matplotlib's ArrayLike stub has no datetime
    from datetime import UTC, datetime

    return [datetime.fromtimestamp(t, UTC) for t in ts]


@_plain_text
def timeline_svg(p: Progress) -> str:
    """Samples labelled over time, and labels given per annotator (the busiest MAX_SERIES)."""
    fig = _figure()
    ax = fig.add_subplot()
    if not p.timeline:
        return _empty(fig, ax, "no labels yet")
    busiest = sorted(p.annotators.values(), key=lambda a: -a.labels)[:MAX_SERIES]
    times = [t for series in (p.timeline, *(p.annotator_timeline[a.name] for a in busiest)) for t, _ in series]
    end = max(times)
    _steps(ax, p.timeline, end, color="black", linewidth=2, label="samples labelled")
    for a, style in zip(busiest, _series_styles(), strict=False):
        _steps(ax, p.annotator_timeline[a.name], end, linewidth=1.2, label=f"{a.name} (labels given)", **style)
    _time_axis(ax, min(times), end)
    ax.set_ylabel("count")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    return _svg(fig)


@_plain_text
def class_timeline_svg(p: Progress) -> str:
    """Current labels per class by the time they were given (the MAX_SERIES largest classes)."""
    fig = _figure()
    ax = fig.add_subplot()
    if not p.class_timeline:
        return _empty(fig, ax, "no labels yet")
    largest = sorted(p.class_timeline, key=lambda c: (-p.per_class[c], c))[:MAX_SERIES]
    end = max(p.class_timeline[name][-1][0] for name in largest)
    for name, style in zip(largest, _series_styles(), strict=False):
        _steps(ax, p.class_timeline[name], end, linewidth=1.4, label=name, **style)
    _time_axis(ax, min(p.class_timeline[name][0][0] for name in largest), end)
    ax.set_ylabel("labels (current)")
    ax.legend(loc="upper left", fontsize=8, frameon=False, ncols=2)
    return _svg(fig)


def _series_styles() -> list[dict[str, Any]]:
    """The MAX_SERIES styles (colour, marker, line style) of a chart's series, in the order they are drawn: no
    two alike in marker, nor in colour, so none is told apart by its colour alone."""
    return [{"color": c, "marker": m, "linestyle": ls, "markersize": 5, "markevery": MARK_EVERY}
            for c, m, ls in zip(SERIES_COLOURS, SERIES_MARKERS, SERIES_LINESTYLES, strict=True)]


def _steps(ax: Axes, series: list[tuple[float, int]], end: float, **style: Any) -> None:
    """Draw ``series`` [(unix time s, count)] as a step line held level up to ``end`` (the chart's last time, s).

    A step line of one point draws nothing (a class with one label was in the legend but not on the chart):
    held to ``end`` it is a line, and its first point has a marker (its own, else "o"), which is all there is to
    see when ``end`` is that point's time (one moment on the whole chart).
    """
    ts, ns = [t for t, _ in series], [n for _, n in series]
    if ts[-1] < end:
        ts.append(end)
        ns.append(ns[-1])
    if len(series) == 1:
        style = {"marker": "o", "markersize": 4, **style, "markevery": [0]}
    ax.step(_dates(ts), ns, where="post", **style)


# ConciseDateFormatter's strftime formats by the finest field that differs between ticks (years, months, days,
# hours, minutes, seconds). Its defaults label seconds "51.00", "51.05" and days "03", "05": a number without
# its unit. Here a tick under a day is a clock time (hh:mm, hh:mm:ss, and fractions of a second when ticks are
# that close: the formatter strips the zeros they share), a tick of a day a date ("Dec 03"); the offset at the
# axis' right end gives what the ticks leave out (the year, or the date) and says the times are UTC.
TICK_FORMATS = ["%Y", "%b", "%b %d", "%H:%M", "%H:%M", "%H:%M:%S.%f"]
# a tick where the next coarser field turns over: the new year, month, the day at midnight
TICK_ZERO_FORMATS = ["", "%Y", "%b %d", "%b %d", "%H:%M", "%H:%M:%S.%f"]
TICK_OFFSET_FORMATS = ["", "%Y", "%Y (UTC)", "%Y-%m-%d (UTC)", "%Y-%m-%d (UTC)", "%Y-%m-%d (UTC)"]
ONE_MOMENT_S = 30.0  # every label at one moment: the axis shows this long before and after it (s)


def _time_axis(ax: Axes, start: float, end: float) -> None:
    """Date ticks for any span from ``start`` to ``end`` (unix time, s), from a fraction of a second to years
    (matplotlib's AutoDateLocator chooses them, ConciseDateFormatter writes them with TICK_FORMATS); whole
    counts on the y axis."""
    import matplotlib.dates as mdates
    from matplotlib.ticker import MaxNLocator

    if end <= start:  # one moment: matplotlib would widen the axis by two years each way
        ax.set_xlim(*_dates([start - ONE_MOMENT_S, end + ONE_MOMENT_S]))

    loc = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(
        loc, formats=TICK_FORMATS, zero_formats=TICK_ZERO_FORMATS, offset_formats=TICK_OFFSET_FORMATS))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


@_plain_text
def class_balance_svg(p: Progress) -> str:
    """Current labels per class, as horizontal bars (most labelled first)."""
    items = sorted(p.per_class.items(), key=lambda kv: (-kv[1], kv[0]))
    fig = _figure(max(1.2, 0.28 * len(items) + 0.6), NARROW)
    ax = fig.add_subplot()
    if not items:
        return _empty(fig, ax, "no classes yet")
    names = [k for k, _ in items][::-1]
    counts = [v for _, v in items][::-1]
    bars = ax.barh(names, counts, color="#4c78a8")
    total = max(1, sum(counts))
    ax.bar_label(bars, labels=[f"{c} ({c / total:.0%})" for c in counts], padding=3, fontsize=8)
    ax.set_xlabel("labelled samples")
    ax.set_xlim(0, max(counts) * 1.25 + 1)
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


@_plain_text
def audit_svg(audit: agent_pb2.PriorAudit) -> str:
    """Each prior method's measured accuracy with its interval (error bars); "" without estimates."""
    rows = [m for m in audit.methods if m.HasField("overall") and m.overall.total]
    if not rows:
        return ""
    fig = _figure(max(1.4, 0.45 * len(rows) + 0.9))
    ax = fig.add_subplot()
    names = [m.method for m in rows]
    acc = [m.overall.accuracy for m in rows]
    lo = [m.overall.accuracy - m.overall.low for m in rows]
    hi = [m.overall.high - m.overall.accuracy for m in rows]
    ax.errorbar(acc, names, xerr=[lo, hi], fmt="o", color="#e45756", ecolor="#555555", capsize=4)
    conf = [m.mean_confidence for m in rows]
    ax.scatter(conf, names, marker="|", s=200, color="#4c78a8")
    for y, m in enumerate(rows):
        o = m.overall
        ax.annotate(f"{o.accuracy:.0%} ({o.low:.0%}-{o.high:.0%}), {o.correct}/{o.total}", (1.02, y),
                    xycoords=("axes fraction", "data"), va="center", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(len(rows) - 0.4, -0.6)  # first method on top, as in the table
    ax.set_xlabel(f"red: accuracy on the audit labels with its {audit.confidence_level:.0%} "
                  f"{audit.interval_method} interval; blue tick: the method's mean confidence")
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)
