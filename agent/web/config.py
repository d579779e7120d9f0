"""The web app's settings: one frozen ``WebConfig``, built by ``shortlist serve --web-port`` or
``shortlist web`` (or a test). Defaults live here and nowhere else."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from agent.limits import MIB


def host_pattern(name: str) -> str:
    """A name for --web-allowed-hosts as Starlette's TrustedHostMiddleware compares it to the ``Host``
    header: lower case, without a port, an IPv6 address in brackets; ``*`` (any) or ``*.DOMAIN``. ValueError
    says what is wrong with anything else."""
    text = name.strip().lower()
    host = text
    if text.startswith("["):  # [v6] or [v6]:port
        host = text[:text.find("]") + 1] if "]" in text else text
    elif text.count(":") == 1:  # name:port
        host = text.partition(":")[0]
    elif text.count(":") > 1:  # a bare IPv6 address
        host = f"[{text}]"
    bad = not host or "/" in host or " " in host or (host.endswith("]") and not host.startswith("["))
    if bad or ("*" in host[1:]) or (host.startswith("*") and host != "*" and not host.startswith("*.")):
        raise ValueError(f"--web-allowed-hosts {name!r}: expected a host name or address as browsers write it in "
                         "the URL (e.g. labelling.example.com, 10.0.0.5, [fd00::5]; a port is ignored), "
                         "*.example.com for a domain's names, or * for any name")
    return host


@dataclass(frozen=True)
class MatchRule:
    """How a Label Studio task finds its sample: ``kind`` is ``url``, ``field`` or ``regex``."""

    kind: str = "url"
    arg: str = ""

    @staticmethod
    def parse(text: str) -> MatchRule:
        text = text.strip()
        kind, sep, arg = text.partition(":")
        if text == "url":
            return MatchRule()
        if sep and kind == "field" and arg:
            return MatchRule("field", arg)
        if sep and kind == "regex" and arg:
            try:
                re.compile(arg)
            except re.error as e:
                raise ValueError(f"--labelstudio-match regex:{arg}: not a regular expression ({e})") from None
            return MatchRule("regex", arg)
        raise ValueError(f"--labelstudio-match {text!r}: expected `url`, `field:NAME` (the task data field holding "
                         "the sample id) or `regex:PATTERN` (applied to the image URL; group `id`, else group 1, "
                         "else the whole match is the sample id)")

    def __str__(self) -> str:
        return self.kind if self.kind == "url" else f"{self.kind}:{self.arg}"


@dataclass(frozen=True)
class LabelStudioConfig:
    """The Label Studio backend's settings (``serve``/``web`` flags ``--labelstudio-*``, env
    ``SHORTLIST_LABELSTUDIO_*``): how tasks match samples, the selection that orders them (strategy,
    budget, seed) and the prior method of the pre-annotations."""

    match: MatchRule = field(default_factory=MatchRule)
    strategy: str = "typiclust"
    budget: int = 100
    seed: int = 0
    prior: str = "knn"

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ValueError(f"--labelstudio-budget must be >= 1 (got {self.budget})")
        if not self.strategy or not self.prior:
            raise ValueError("--labelstudio-strategy and --labelstudio-prior must name a strategy and a prior method")

    def problem(self, strategies: Collection[str], priors: Collection[str]) -> str:
        """Why an agent with these strategies and prior methods cannot serve these settings ("" if it can)."""
        if self.strategy not in strategies:
            return f"--labelstudio-strategy {self.strategy!r} is not a strategy of the agent; valid: " \
                   f"{', '.join(sorted(strategies))}"
        if self.prior not in priors:
            return f"--labelstudio-prior {self.prior!r} is not a prior method of the agent; valid: " \
                   f"{', '.join(sorted(priors))}"
        return ""


@dataclass(frozen=True)
class WebConfig:
    """Where the app listens and how it behaves.

    ``default_token`` is sent to the agent for a browser that brings no token of its own (``shortlist web
    --token``: a one-person setup); with it, anyone who reaches the app acts with that token, so a
    non-loopback ``host`` then counts as unauthenticated (agent/web/server.py). ``https_cert`` /
    ``https_key`` serve HTTPS (then cookies are marked Secure).

    ``allowed_hosts``: names (``Host`` headers) the app answers to besides its defaults (agent/web/guards.py:
    loopback names on loopback; else also its address, the machine's names and the certificate's); ``*``
    answers to any, ``*.example.com`` to a domain's names. ``max_body_bytes``: the largest request body,
    refused with 413 before it is read."""

    host: str = "127.0.0.1"
    port: int = 8080  # 0 = any free port (tests)
    agent: str = "127.0.0.1:50051"  # shown on the pages; the app reaches it through client_factory
    default_token: str = ""
    https_cert: Path | None = None
    https_key: Path | None = None
    insecure: bool = False
    title: str = "Shortlist"
    queue: str = "web"  # the agent's queue (GetQueue / UpdateQueue) the Queue page shows
    page_size: int = 48  # queue items per page
    thumb_side: int = 192  # thumbnail size of the grids (pixels, longer side)
    max_ask: int = 500  # largest "ask for the next N"
    refresh_s: float = 5.0  # pages re-read their items' labels (given elsewhere) this often
    rpc_timeout_s: float = 30.0  # light calls
    select_timeout_s: float = 600.0  # Select / PriorLabels (heavy work may queue)
    labelstudio: LabelStudioConfig = field(default_factory=LabelStudioConfig)  # the /labelstudio backend
    allowed_hosts: tuple[str, ...] = ()  # --web-allowed-hosts
    # The agent requires tokens (serve: --tokens; web: it answered UNAUTHENTICATED without one): a request
    # without a token is answered 401 by the app (pages: the sign-in page), not sent to be refused and logged.
    tokens_required: bool = False
    # The largest request body (--web-max-body-mb): the largest legitimate ones, a labels batch (at most 1,000
    # labels) or a Label Studio webhook / predict batch, stay far below it; bodies are read before the agent
    # checks the token.
    max_body_bytes: int = 16 * MIB

    @property
    def https(self) -> bool:
        return self.https_cert is not None

    def __post_init__(self) -> None:
        if (self.https_cert is None) != (self.https_key is None):
            raise ValueError("HTTPS needs both a certificate and its key")
        object.__setattr__(self, "allowed_hosts", tuple(host_pattern(h) for h in self.allowed_hosts))
        if self.page_size < 1 or self.max_ask < 1 or not 16 <= self.thumb_side <= 1024 or self.refresh_s <= 0:
            raise ValueError("web: page_size and max_ask must be >= 1, thumb_side 16..1024, refresh_s > 0")
        if self.max_body_bytes < 1024:
            raise ValueError(f"--web-max-body-mb must allow at least 1 KiB (got {self.max_body_bytes} bytes)")
