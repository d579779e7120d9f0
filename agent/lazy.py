"""Imports the agent defers past its start: scikit-learn (k-means, logistic regression) and scipy.stats
(the audit's binomial interval) cost ~4 s of the agent's ~4.5 s import time on the 2-core machine
(``python -X importtime -c "import agent.service"``), yet no call needs them before the first heavy
Select or audit. They are imported where used, and ``warm_in_background`` imports them in a daemon
thread once the server listens, so the port answers (health, GetStatus, Ingest) seconds sooner and the
first heavy call does not usually pay for the import either."""

from __future__ import annotations

import importlib
import logging
import threading

log = logging.getLogger(__name__)

DEFERRED = ("sklearn.cluster", "sklearn.linear_model", "scipy.stats")


def _warm() -> None:
    for name in DEFERRED:
        try:
            importlib.import_module(name)
        except Exception:  # the call that needs it will raise with the real error
            log.exception("importing %s in the background failed", name)


def warm_in_background() -> threading.Thread:
    thread = threading.Thread(target=_warm, name="warm-imports", daemon=True)
    thread.start()
    return thread
