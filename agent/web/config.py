"""The web app's settings: one frozen ``WebConfig``, built by ``shortlist serve --web-port`` or
``shortlist web`` (or a test). Defaults live here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WebConfig:
    """Where the app listens and how it behaves.

    ``default_token`` is sent to the agent for a browser that brings no token of its own (``shortlist web
    --token``: a one-person setup); with it, anyone who reaches the app acts with that token, so a
    non-loopback ``host`` then counts as unauthenticated (agent/web/server.py). ``https_cert`` /
    ``https_key`` serve HTTPS (then cookies are marked Secure)."""

    host: str = "127.0.0.1"
    port: int = 8080  # 0 = any free port (tests)
    agent: str = "127.0.0.1:50051"  # shown on the pages; the app reaches it through client_factory
    default_token: str = ""
    https_cert: Path | None = None
    https_key: Path | None = None
    insecure: bool = False
    title: str = "Shortlist"
    page_size: int = 48  # queue items per page
    thumb_side: int = 192  # thumbnail size of the grids (pixels, longer side)
    max_ask: int = 500  # largest "ask for the next N"
    refresh_s: float = 5.0  # pages re-read their items' labels (given elsewhere) this often
    rpc_timeout_s: float = 30.0  # light calls
    select_timeout_s: float = 600.0  # Select / PriorLabels (heavy work may queue)

    @property
    def https(self) -> bool:
        return self.https_cert is not None

    def __post_init__(self) -> None:
        if (self.https_cert is None) != (self.https_key is None):
            raise ValueError("HTTPS needs both a certificate and its key")
        if self.page_size < 1 or self.max_ask < 1 or not 16 <= self.thumb_side <= 1024 or self.refresh_s <= 0:
            raise ValueError("web: page_size and max_ask must be >= 1, thumb_side 16..1024, refresh_s > 0")
