"""``WebModule``: what one route module of agent/web/ gives the app (agent/web/app.py ``MODULES``).

Each page or API module ends with ``MODULE = WebModule(router, ...)``; ``create_app`` includes the
modules in the order of ``MODULES`` and reads only these typed fields, so a misspelt or mistyped hook is a
mypy error rather than a hook silently left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from fastapi import APIRouter, FastAPI


class Nav(NamedTuple):
    """A page's entry in the nav (templates/base.html): its ``label``, ``path``, and ``order`` (smaller first)."""

    label: str
    path: str
    order: int


@dataclass(frozen=True)
class WebModule:
    """One route module: its ``router``; ``nav``, its page's entry in the nav (None: not in the nav);
    ``setup(app)``, called once per app for per-app state (e.g. the priors cache); ``max_body_bytes``, a
    request body limit in bytes for its routes smaller than the app's ``--web-max-body-mb`` (None: the app's),
    with ``body_limit_advice``, what the 413 tells the sender to send instead (agent/web/errors.py)."""

    router: APIRouter
    nav: Nav | None = None
    setup: Callable[[FastAPI], None] | None = None
    max_body_bytes: int | None = None
    body_limit_advice: str = ""
