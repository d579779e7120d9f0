"""agent/progress.py: the Progress page's aggregation of the label history and its SVG charts."""

from __future__ import annotations

from agent.progress import audit_svg, class_balance_svg, class_timeline_svg, collect, timeline_svg, timeline_text
from shortlist.v1 import agent_pb2


def rec(i: str, label: str, who: str, t: float, current: bool = True, source: str = "manual",
        audit: bool = False) -> agent_pb2.LabelRecord:
    return agent_pb2.LabelRecord(id=i, label=label, annotator=who, time=t, source=source, current=current,
                                 audit=audit)


HISTORY = [rec("a", "cat", "ingest", 100.0, source="ingest"), rec("b", "dog", "alice", 200.0, current=False),
           rec("c", "cat", "alice", 250.0, audit=True), rec("b", "cat", "bob", 300.0, source="prior:knn"),
           rec("d", "dog", "bob", 400.0)]


def test_collect_counts_samples_labels_classes_and_annotators() -> None:
    p = collect(HISTORY, classes=["cat", "dog", "frog"])
    assert (p.events, p.labelled, p.tally.total.changed, p.audit_labelled) == (5, 4, 1, 1)
    assert p.timeline == [(100.0, 1), (200.0, 2), (250.0, 3), (400.0, 4)]  # b's relabel adds no sample
    assert dict(p.per_class) == {"cat": 3, "dog": 1, "frog": 0}  # current labels only
    assert dict(p.per_source) == {"ingest": 1, "manual": 2, "prior:knn": 1}
    bob = p.annotators["bob"]
    assert (bob.labels, bob.samples, bob.first, bob.last) == (2, {"b", "d"}, 300.0, 400.0)
    assert p.annotator_timeline["alice"] == [(200.0, 1), (250.0, 2)]
    assert p.class_timeline == {"cat": [(100.0, 1), (250.0, 2), (300.0, 3)], "dog": [(400.0, 1)]}


def test_retractions_unlabel_and_are_not_labels_given() -> None:
    gone = agent_pb2.LabelRecord(id="c", annotator="alice", time=260.0, source="manual", retracted=True)
    history = [*HISTORY[:2], rec("c", "cat", "alice", 250.0, current=False), gone, *HISTORY[3:]]
    p = collect(history, classes=["cat", "dog"])
    assert (p.events, p.retractions, p.labelled, p.tally.total.changed) == (5, 1, 3, 1)
    assert p.timeline == [(100.0, 1), (200.0, 2), (250.0, 3), (260.0, 2), (400.0, 3)]
    assert dict(p.per_class) == {"cat": 2, "dog": 1} and p.annotators["alice"].labels == 2


def test_charts_are_inline_svg() -> None:
    p = collect(HISTORY, classes=["cat", "dog", "frog"])
    for svg in (timeline_svg(p), class_timeline_svg(p), class_balance_svg(p), timeline_svg(collect([])),
                class_timeline_svg(collect([]))):
        assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    audit = agent_pb2.PriorAudit(drawn=10, labelled=10, confidence_level=0.95, interval_method="wilson", methods=[
        agent_pb2.PriorAccuracy(method="knn", overall=agent_pb2.Accuracy(correct=8, total=10, accuracy=0.8,
                                                                         low=0.49, high=0.94), mean_confidence=0.7)])
    svg = audit_svg(audit)
    assert svg.startswith("<svg") and "knn" in svg
    assert audit_svg(agent_pb2.PriorAudit()) == ""


def test_names_are_drawn_as_plain_text_never_mathtext() -> None:
    """A ``$...$`` in an annotator or class name (user-chosen) is text: parsed as mathtext, one that does not
    parse failed savefig, and the Progress page answered 500 for everyone."""
    bad = [r"eve $\undefinedcmd$", "cost $x^$", "a $b$ c"]
    history = [rec(f"s{i}", name, name, 100.0 + i) for i, name in enumerate(bad)]
    p = collect(history, classes=bad)
    for svg in (timeline_svg(p), class_timeline_svg(p), class_balance_svg(p)):
        assert "$x^$" in svg or "$b$" in svg  # the names as written
    audit = agent_pb2.PriorAudit(confidence_level=0.95, interval_method="wilson", methods=[
        agent_pb2.PriorAccuracy(method="knn $x^$", overall=agent_pb2.Accuracy(correct=8, total=10, accuracy=0.8,
                                                                               low=0.49, high=0.94))])
    assert "knn $x^$" in audit_svg(audit)


def test_a_class_rename_is_no_label_given_and_keeps_when_and_how_the_labels_were_given() -> None:
    """RenameClass adds a history row per moved label (source rename, the lead as annotator): Progress counts
    no label given nor relabelled for it, and the new class's line starts when the labels were given (was: the
    lead's line jumped by one label per sample, every sample counted relabelled, the class began at the rename)."""
    history = [rec("a", "deer", "alice", 100.0, current=False), rec("b", "deer", "bob", 200.0, current=False,
                                                                    source="prior:knn"),
               rec("c", "fox", "bob", 300.0), rec("a", "roe_deer", "lead", 900.0, source="rename"),
               rec("b", "roe_deer", "lead", 900.0, source="rename")]
    p = collect(history, classes=["roe_deer", "fox"])
    t = p.tally
    assert (p.events, p.labelled, t.total.repeated, t.total.changed, t.renames) == (3, 3, 0, 0, 2)
    assert "lead" not in p.annotators and p.annotators["alice"].labels == 1
    # a renamed label is still held by whoever gave it, not by the lead who renamed the class
    assert {n: c.current for n, c in t.annotators.items()} == {"alice": 1, "bob": 2}
    assert dict(p.per_class) == {"roe_deer": 2, "fox": 1}
    assert dict(p.per_source) == {"manual": 2, "prior:knn": 1}
    assert p.class_timeline == {"fox": [(300.0, 1)], "roe_deer": [(100.0, 1), (200.0, 2)]}


def test_labels_given_are_told_apart_new_the_same_class_again_or_changed() -> None:
    """Every label given is new (to an unlabelled sample), the same class again (a teammate agreeing, or a
    resend) or a change to another class; retractions and renames are no label given. Was: one "relabelled"
    count of samples labelled more than once, which a team of three agreeing filled with repeats, read as
    corrections (docs/app.md, Progress)."""
    from agent.progress import LabelTally

    def gone(i: str, who: str, t: float) -> agent_pb2.LabelRecord:
        return agent_pb2.LabelRecord(id=i, annotator=who, time=t, retracted=True)

    history = [rec("a", "cat", "ana", 1, current=False), rec("a", "cat", "ben", 2, current=False),  # agreeing
               rec("a", "dog", "cy", 3),  # cy changes it
               rec("b", "cat", "ana", 4, current=False), rec("b", "cat", "ana", 5, current=False),  # ana resends
               gone("b", "ben", 6), rec("b", "dog", "ben", 7),  # taken back, then new again
               rec("c", "cat", "ben", 8, current=False), rec("c", "kitty", "lead", 9, source="rename")]
    tally = LabelTally()
    kinds = [tally.add(r) for r in history]
    assert kinds == ["new", "repeated", "changed", "new", "repeated", "retraction", "new", "new", "rename"]
    t = tally.total
    assert (t.given, t.new, t.repeated, t.changed, t.agreeing, t.retracted, t.current, tally.renames) == \
        (7, 4, 2, 1, 1, 1, 3, 1)
    assert t.given == t.new + t.repeated + t.changed
    per = {n: (c.given, c.new, c.repeated, c.changed, c.agreeing, c.retracted, c.current)
           for n, c in tally.annotators.items()}
    assert per == {"ana": (3, 2, 1, 0, 0, 0, 0), "ben": (3, 2, 1, 0, 1, 1, 2), "cy": (1, 0, 0, 1, 0, 0, 1)}
    p = collect(history)
    assert p.events == t.given and p.retractions == t.retracted
    assert {a.name: a.agreeing for a in p.annotators.values()} == {"ana": 0, "ben": 1, "cy": 0}


def test_every_chart_has_a_text_alternative_with_its_figures() -> None:
    """The charts are SVG images a screen reader cannot read: each has its figures in words."""
    from agent.progress import audit_text, class_balance_text, class_timeline_text, timeline_text

    p = collect(HISTORY, classes=["cat", "dog", "frog"])
    assert timeline_text(p) == ("Labels over time: samples labelled went from 0 at 1970-01-01 00:01 UTC to 4 at "
                                "1970-01-01 00:06 UTC. Labels given per annotator: alice 2, bob 2, ingest 1.")
    assert class_balance_text(p) == "Class balance, current labels per class: cat 3 (75%), dog 1 (25%), frog 0 (0%)."
    assert class_timeline_text(p).startswith("Labels per class over time (current labels, by when each was given): "
                                             "cat 3 (from 1970-01-01 00:01 UTC to 1970-01-01 00:05 UTC), dog 1")
    assert timeline_text(collect([])) == "Labels over time: no labels yet."
    audit = agent_pb2.PriorAudit(drawn=10, labelled=10, confidence_level=0.95, interval_method="wilson", methods=[
        agent_pb2.PriorAccuracy(method="knn", overall=agent_pb2.Accuracy(correct=8, total=10, accuracy=0.8,
                                                                         low=0.49, high=0.94), mean_confidence=0.7)])
    assert audit_text(audit) == ("Accuracy of each prior method on the audit labels, with its 95% wilson interval: "
                                 "knn 80% (49% to 94%, 8 of 10 right), mean confidence 70%.")
    assert audit_text(agent_pb2.PriorAudit()) == ""


def test_a_label_an_undo_put_back_is_no_label_given_and_keeps_when_and_how_it_was_given() -> None:
    """RetractLabels with restore_previous: alice's retraction, then bob's label put back in his name (source
    restored). No label given: bob counts one label, alice none held; the class's line and the source are
    bob's label's (time 100, prior:knn), the sample is labelled again."""
    gone = agent_pb2.LabelRecord(id="a", annotator="alice", time=300.0, source="manual", retracted=True)
    history = [rec("a", "deer", "bob", 100.0, current=False, source="prior:knn"),
               rec("a", "fox", "alice", 200.0, current=False), gone,
               rec("a", "deer", "bob", 300.0, source="restored")]
    p = collect(history, classes=["deer", "fox"])
    t = p.tally
    assert (p.events, p.retractions, p.labelled, t.restores, t.total.given, t.total.current) == (2, 1, 1, 1, 2, 1)
    assert {n: (c.given, c.current) for n, c in t.annotators.items()} == {"bob": (1, 1), "alice": (1, 0)}
    assert p.annotators["bob"].labels == 1 and p.annotators["alice"].labels == 1
    assert dict(p.per_class) == {"deer": 1, "fox": 0} and dict(p.per_source) == {"prior:knn": 1}
    assert p.class_timeline == {"deer": [(100.0, 1)]}
    assert p.timeline == [(100.0, 1), (300.0, 1)]  # the retraction and the label put back: one moment


def _drawn_lines(svg: str) -> list[tuple[float, int]]:
    """The data lines of a chart's SVG (the axes' own line2d groups: not ticks, grid or legend), each as (its
    path's width in pt, its markers)."""
    import re
    import xml.etree.ElementTree as ET

    ns = {"s": "http://www.w3.org/2000/svg"}
    axes = ET.fromstring(svg).find(".//s:g[@id='axes_1']", ns)
    assert axes is not None
    lines = []
    for g in axes.findall("s:g", ns):
        if not g.get("id", "").startswith("line2d_"):
            continue
        path = g.find("s:path", ns)
        xs = [float(x) for x in re.findall(r"[ML] ([-\d.]+) ", path.get("d", ""))] if path is not None else [0.0]
        lines.append((max(xs) - min(xs), len(g.findall(".//s:use", ns))))
    return lines


def test_a_series_of_one_point_is_drawn() -> None:
    """A class (or annotator) with one label was in the legend but not on the chart: a step line of one point
    draws nothing. Each line is now held level to the chart's end, and a one-point series has a marker (all
    there is when the whole chart is one moment)."""
    history = [rec("a", "cat", "ana", 100.0), rec("b", "cat", "ana", 200.0), rec("c", "deer", "ben", 150.0),
               rec("d", "frog", "ana", 300.0)]
    p = collect(history, classes=["cat", "deer", "frog"])
    (cat, cat_marks), (deer, deer_marks), (frog, frog_marks) = _drawn_lines(class_timeline_svg(p))
    assert cat > 0 and cat_marks >= 1  # every series has its own markers along it (see the next test)
    assert deer > 0 and deer_marks == 1  # held from its one label (t=150) to the chart's end (t=300)
    assert frog == 0 and frog_marks == 1  # its one label is the chart's last moment: a marker
    lines = _drawn_lines(timeline_svg(p))  # samples labelled, ana, ben (one label)
    assert len(lines) == 3 and all(width > 0 for width, _ in lines)
    one = collect([rec("a", "deer", "ana", 100.0)])  # one moment: no width, but its marker
    assert [markers for _, markers in _drawn_lines(class_timeline_svg(one))] == [1]


def _series_looks(svg: str, group: str) -> list[tuple[str, str, str]]:
    """Each data line in ``group`` of a chart's SVG ("axes_1": the lines drawn; "legend_1": the legend's
    samples) as (its colour, its line's dash pattern, its marker's outline or "none"), ticks and grid left out."""
    import xml.etree.ElementTree as ET

    ns = {"s": "http://www.w3.org/2000/svg"}
    root = ET.fromstring(svg)
    marker_paths = {p.get("id"): p.get("d", "") for p in root.iterfind(".//s:defs/s:path", ns)}
    parent = root.find(f".//s:g[@id='{group}']", ns)
    assert parent is not None
    looks = []
    for g in parent.findall("s:g", ns):
        path = g.find("s:path", ns)  # a line's own path (a tick or a legend text has none)
        if not g.get("id", "").startswith("line2d_") or path is None or "#b0b0b0" in path.get("style", ""):
            continue  # not a line, or a grid line
        style = dict(kv.strip().split(": ") for kv in path.get("style", "").split(";") if kv.strip())
        use = g.find(".//s:use", ns)
        href = "" if use is None else use.get("{http://www.w3.org/1999/xlink}href", "")
        looks.append((style["stroke"], style.get("stroke-dasharray", "solid"), marker_paths.get(href[1:], "none")))
    return looks


def test_class_lines_differ_by_more_than_colour() -> None:
    """A reader who cannot tell colours apart matches each class's line to the legend by its marker and its line
    style: three classes draw three lines, each with its own marker and dash pattern, and the legend shows them
    the same way. The colours are a colour-blind-safe set (no red and green pair)."""
    history = [rec("a", "cat", "ana", 100.0), rec("b", "dog", "ana", 200.0), rec("c", "fox", "ben", 300.0),
               rec("d", "cat", "ben", 400.0), rec("e", "dog", "ana", 500.0)]
    svg = class_timeline_svg(collect(history))
    lines = _series_looks(svg, "axes_1")
    assert len(lines) == 3 and all(marker != "none" for _, _, marker in lines)
    assert len({marker for _, _, marker in lines}) == 3  # three shapes
    assert len({dash for _, dash, _ in lines}) == 3  # three line styles
    assert {c for c, _, _ in lines} <= {"#0072b2", "#d55e00", "#009e73"}  # Okabe-Ito blue, vermillion, green
    assert _series_looks(svg, "legend_1") == lines  # the legend's samples show the same marker and line
    # the per-annotator lines of the other chart the same way (the samples labelled total: black, no marker)
    total, *annotators = _series_looks(timeline_svg(collect(history)), "axes_1")
    assert total == ("#000000", "solid", "none")
    assert len(annotators) == 2 and len({m for _, _, m in annotators} - {"none"}) == 2


def test_an_undo_at_one_moment_draws_no_dip() -> None:
    """Undoing a change writes the retraction and the label put back at the same time: the samples labelled
    went 2 -> 1 -> 2 at that moment, a dip that never was. Rows of one moment make one point."""
    gone = agent_pb2.LabelRecord(id="b", annotator="ana", time=300.0, source="manual", retracted=True)
    history = [rec("a", "cat", "ana", 100.0), rec("b", "cat", "ben", 200.0, current=False),
               rec("b", "dog", "ana", 250.0, current=False), gone, rec("b", "cat", "ben", 300.0, source="restored")]
    p = collect(history)
    assert p.timeline == [(100.0, 1), (200.0, 2), (300.0, 2)]
    assert timeline_text(p).startswith("Labels over time: samples labelled went from 0 at 1970-01-01 00:01 UTC to "
                                       "2 at 1970-01-01 00:05 UTC. ")  # no "(at most ...)"
    # RetractLabels of several samples at once: one step down, not one per sample
    many = [rec("a", "cat", "ana", 100.0), rec("b", "cat", "ana", 100.0), rec("c", "cat", "ana", 200.0),
            *(agent_pb2.LabelRecord(id=i, annotator="ana", time=300.0, retracted=True) for i in "ab")]
    assert collect(many).timeline == [(100.0, 2), (200.0, 3), (300.0, 1)]
