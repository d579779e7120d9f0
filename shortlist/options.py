"""Checks shared by command-line options (training and bench commands).

click's ``min=`` / ``max=`` let nan through (every comparison with nan is false) and inf past a ``min=``:
``finetune --lr nan`` trained and reported success, ``bench blobs --spread nan`` wrote a set of nans."""

from __future__ import annotations

import math

import typer


def finite(value: float | None) -> float | None:
    """Typer callback for a float option (``callback=finite``): nan and inf are a usage error (exit 2); None (an
    option left out) passes."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a number this option can use: give a finite one")
    return value
