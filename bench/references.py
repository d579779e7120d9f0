"""Published CIFAR-10 numbers printed beside ours in results.md, each with its paper, table and setting.

Only numbers read from the papers themselves are listed; a cell without one shows "—". Settings differ
from ours (full-resolution CIFAR-10, long GPU pretraining, semi-supervised training on top), so they show
the direction to expect rather than a target for the quick or cpu profiles.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    column: str  # the results.md column it goes in
    paper: str  # authors, year, arXiv id and version
    table: str
    setting: str  # training regime the number comes from
    strategy: str  # our strategy name it corresponds to
    labels: int  # total labelled samples
    accuracy: float  # percent


REFERENCES: tuple[Reference, ...] = ()

REFERENCE_COLUMNS: tuple[str, ...] = tuple(dict.fromkeys(r.column for r in REFERENCES))


def reference_value(column: str, strategy: str, labels: int) -> str:
    """The published accuracy (%) for ``strategy`` at ``labels`` in ``column``, or "—"."""
    for r in REFERENCES:
        if r.column == column and r.strategy == strategy and r.labels == labels:
            return f"{r.accuracy:.1f}"
    return "—"
