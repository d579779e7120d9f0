"""The agent process's file descriptors (``shortlist serve``): its soft limit raised to the hard one at start,
and the log lines of failed accepts throttled.

Every connection to the gRPC port or the web port is a descriptor, and so is every open file. With the usual
soft limit of 1024 (systemd's default), 1,100 idle connections took them all in the security review: the
agent could open no file, and asyncio's accept loop (the web app's) logged "socket.accept() out of system
resource" with a traceback 104,347 times in about 40 s (45 MB, 115 MB later). The gRPC port caps its
connections itself (``--max-connections``, agent/service.py ``connection_options``; gRPC's own line for a
failed accept comes once a second at most).
"""

from __future__ import annotations

import logging
import resource

from agent.security import RefusalLog

log = logging.getLogger(__name__)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (an unprivileged process may); returns (before, now)
    and logs them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:  # e.g. a hard limit above the kernel's nr_open
            log.warning("open files: could not raise the soft limit %d to %d (%s)", soft, target, e)
            return soft, soft
        log.info("open files: soft limit raised from %d to %d (the hard limit)", soft, target)
        return soft, target
    log.info("open files: limit %s", "unlimited" if soft == resource.RLIM_INFINITY else soft)
    return soft, soft


# asyncio's line for an accept that failed for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM)
ACCEPT_FAILED = "socket.accept() out of system resource"
# ... and for one of the retries each such failure schedules (Python 3.11 schedules one per failed accept of a
# backlog's worth), when it runs after the listening socket closed (at a stop: "Invalid file descriptor: -1")
RETRY_FAILED = "Exception in callback BaseSelectorEventLoop._start_serving("


class AcceptFailureThrottle(logging.Filter):
    """Lets one ``ACCEPT_FAILED`` record through every ``interval_s`` seconds (``RefusalLog``'s throttle), the
    next one saying how many were left out; other records pass. asyncio logs one per failed accept, and its
    retries multiply while descriptors lack."""

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.throttle = RefusalLog(interval_s)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: not ours to judge
            return True
        kind = next((k for k in (ACCEPT_FAILED, RETRY_FAILED) if message.startswith(k)), None)
        if kind is None:
            return True
        more = self.throttle.admit(kind, "")
        if more is None:
            return False
        if more:
            record.msg, record.args = message + more, ()
        record.exc_info = None  # the traceback says nothing the message does not
        return True


def throttle_accept_failures(logger: logging.Logger | None = None) -> AcceptFailureThrottle:
    """Install ``AcceptFailureThrottle`` on asyncio's logger (or ``logger``) unless one is there (``serve``
    and the web app's server both ask); returns it."""
    target = logger or logging.getLogger("asyncio")
    installed = next((f for f in target.filters if isinstance(f, AcceptFailureThrottle)), None)
    if installed is not None:
        return installed
    f = AcceptFailureThrottle()
    target.addFilter(f)
    return f
