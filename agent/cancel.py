"""Cancellation of heavy work (strategies, prior methods): a token per request, checked in their loops.

The service makes a ``CancelToken`` per Select / PriorLabels call: it is cancelled when the client
cancels or leaves (``context.add_callback``), when the call's deadline passes (``context.time_remaining``),
or when the agent shuts down. The token is made current with ``scope`` for the code running the work, and
the algorithms call ``checkpoint()`` in their loops (greedy picks, k-means restarts and Lloyd steps, runs,
blocked products): it raises ``Cancelled`` / ``DeadlineExceeded`` / ``ShuttingDown`` (agent/errors.py:
CANCELLED, DEADLINE_EXCEEDED, UNAVAILABLE) so the work stops
within one loop step. Each step between checkpoints is bounded by the parameter ranges (agent/params.py).
Without a current token ``checkpoint()`` does nothing, so the algorithms stay plain functions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from agent.errors import AgentError, Cancelled, DeadlineExceeded, Unavailable

__all__ = ["CancelToken", "Cancelled", "DeadlineExceeded", "ShuttingDown", "checkpoint", "current", "scope"]


class ShuttingDown(Unavailable):
    """The agent is shutting down (UNAVAILABLE: retry against the restarted agent)."""

    def __init__(self, message: str = "the agent is shutting down; retry when it is back",
                 retry_after_s: float | None = 5.0) -> None:
        super().__init__(message, retry_after_s)


class CancelToken:
    """Cancelled by ``cancel`` (any thread) or by the clock passing ``deadline`` (time.monotonic())."""

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = deadline
        self._event = threading.Event()
        self._reason: type[AgentError] = Cancelled
        self._message = ""

    @classmethod
    def within(cls, seconds: float | None) -> CancelToken:
        """A token whose deadline is ``seconds`` from now (None: no deadline)."""
        return cls(None if seconds is None else time.monotonic() + max(0.0, seconds))

    def cancel(self, message: str = "the client cancelled the call", reason: type[AgentError] = Cancelled) -> None:
        if not self._event.is_set():
            self._reason, self._message = reason, message
            self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set() or (self.deadline is not None and time.monotonic() > self.deadline)

    def remaining(self) -> float | None:
        """Seconds to the deadline (None without one)."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self) -> None:
        """Raise when cancelled (Cancelled, or ShuttingDown) or past the deadline (DeadlineExceeded)."""
        if self._event.is_set() and self._reason is not Cancelled:
            raise self._reason(self._message)
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineExceeded("the call's deadline passed before the work finished; the work was stopped. "
                                   "Retry with a longer deadline, a smaller budget or cheaper params")
        if self._event.is_set():
            raise self._reason(self._message)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` or until cancelled; True when cancelled."""
        rem = self.remaining()
        return self._event.wait(seconds if rem is None else max(0.0, min(seconds, rem))) or self.cancelled


_current: ContextVar[CancelToken | None] = ContextVar("shortlist_cancel_token", default=None)


def current() -> CancelToken | None:
    return _current.get()


def checkpoint() -> None:
    """Raise if the current work's token is cancelled or past its deadline (no-op without a token)."""
    token = _current.get()
    if token is not None:
        token.check()


@contextmanager
def scope(token: CancelToken | None) -> Iterator[None]:
    """Make ``token`` the current one for the code in the ``with`` block (this thread / context)."""
    reset = _current.set(token)
    try:
        yield
    finally:
        _current.reset(reset)
