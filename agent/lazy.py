"""Imports the agent defers past its start: scikit-learn (k-means, logistic regression) and scipy.stats
(the audit's binomial interval) are most of the agent's import time on the 2-core machine (``python -X
importtime -c "import agent.service"``; docs/reliability.md, "Measured", Start-up), yet no call needs them
before the first heavy
Select or audit. They are imported where used, and ``warm_in_background`` imports them in a daemon
thread once the server listens, so the port answers (health, GetStatus, Ingest) seconds sooner and the
first heavy call does not usually pay for the import either."""

from __future__ import annotations

import importlib
import logging
import threading
from types import ModuleType

log = logging.getLogger(__name__)

DEFERRED = ("sklearn.cluster", "sklearn.linear_model", "scipy.stats")

# Two threads importing scikit-learn for the first time at once can fail ("cannot import name 'clone'
# from partially initialized module 'sklearn.base'": importlib breaks the cycle between the package and
# its submodules by handing one thread a half-initialised module); seen between this warm-up and the
# pool map's first fit. ``deferred`` imports under the same lock as the warm-up.
_IMPORT_LOCK = threading.Lock()


def deferred(name: str) -> ModuleType:
    """``importlib.import_module(name)``, never at the same time as the background warm-up's imports."""
    with _IMPORT_LOCK:
        return importlib.import_module(name)


def _warm() -> None:
    for name in DEFERRED:
        try:
            deferred(name)
        except Exception:  # the call that needs it will raise with the real error
            log.exception("importing %s in the background failed", name)


def warm_in_background() -> threading.Thread:
    thread = threading.Thread(target=_warm, name="warm-imports", daemon=True)
    thread.start()
    return thread
