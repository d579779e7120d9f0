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


_AS3L = "Wen et al. 2022, AS3L, arXiv 2203.04560v1"
_TYPICLUST = "Hacohen et al. 2022, TypiClust, arXiv 2202.02794v4"
_PROBCOVER = "Yehuda et al. 2022, ProbCover, arXiv 2205.11320"
_SEMI = "semi-supervised training on top of the selected labels (the framework is not checked here)"

# Read from the papers' abstracts and the authors' result figures (AS3L v3's tables and Bengar et al.
# 2021 could not be read here; no number is listed for them rather than a guessed one).
REFERENCES: tuple[Reference, ...] = (
    Reference("AS3L (SSL)", _AS3L, "abstract", "prior pseudo-labels + semi-supervised training", "as3l", 10, 84.10),
    Reference("TypiClust/ProbCover (SSL)", _TYPICLUST, "abstract", _SEMI, "typiclust", 10, 93.2),
    Reference("TypiClust/ProbCover (SSL)", _PROBCOVER, "authors' figure probcover_semi.png (a); budget not printed, "
              "its Random/TypiClust values equal TypiClust's 10-label ones", _SEMI, "probcover", 10, 94.10),
    Reference("TypiClust/ProbCover (SSL)", _PROBCOVER, "same figure", _SEMI, "coreset", 10, 56.57),
    Reference("TypiClust/ProbCover (SSL)", _PROBCOVER, "same figure", _SEMI, "random", 10, 53.80),
)

REFERENCE_COLUMNS: tuple[str, ...] = tuple(dict.fromkeys(r.column for r in REFERENCES))


def reference_value(column: str, strategy: str, labels: int) -> str:
    """The published accuracy (%) for ``strategy`` at ``labels`` in ``column``, or "—"."""
    for r in REFERENCES:
        if r.column == column and r.strategy == strategy and r.labels == labels:
            return f"{r.accuracy:.1f}"
    return "—"
