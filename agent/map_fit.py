"""The pool map's projection (PCA, then openTSNE), in this process or in a child process of its own.

``project`` computes the 2-D coordinates of the fitted rows (agent/pool_map.py explains the method).
``fit_in_child`` runs it in a separate Python process (``python -m agent.map_fit IN OUT CONFIG``) at
the lowest CPU priority, with one BLAS / OpenMP thread, and waits for it, so that:

- its memory (PCA, the t-SNE affinities and gradients; its peak for 10,000 rows: docs/agent.md, "The
  pool map (GetMap)") is the child's and returns to the system when it exits, instead of raising the
  agent's resident set (the agent's allocator keeps part of what a long fit touched, and a load measured
  while the map was fitted in the agent's process grew more);
- cancelling a fit (a new model version, shutdown) is a kill, not a wait for openTSNE's next callback;
- the agent never imports openTSNE.

The parent sends the rows in a .npy file and reads the coordinates back from one, in a private
temporary folder (0700); the child prints its progress (a fraction, one line per openTSNE callback).
The child dies with the agent (Linux: PR_SET_PDEATHSIG), so a killed agent leaves no orphan computing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from agent.lazy import deferred
from agent.threads import THREAD_ENV

CALLBACK_EVERY = 10  # openTSNE iterations between progress / cancellation callbacks
MIN_TSNE = 10  # fewer fitted samples than this: PCA to 2-D alone (t-SNE needs a few neighbours per point)


@dataclass(frozen=True)
class Projection:
    """What ``project`` needs of MapConfig (sent to the child as JSON)."""

    pca_dims: int
    perplexity: float
    early_iterations: int
    iterations: int
    seed: int
    nice: int = 19


class FitStopped(Exception):
    """``progress`` asked the projection to stop (or the child was killed for it, or stopped by a signal
    sent to the agent's whole process group)."""


# A child ended by one of these was stopped with the agent (systemd's default KillMode, timeout(1) and a
# terminal's Ctrl-C signal the whole process group): a stop, not a failed fit, so it is not logged as one.
STOP_SIGNALS = frozenset({-signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP})


def project(vecs: np.ndarray, p: Projection, progress: Callable[[float], bool]) -> tuple[np.ndarray, str]:
    """Nx2 float32 coordinates of ``vecs`` (NxD) and the method's name. ``progress(fraction)`` is called
    as the fit advances; when it returns True the fit stops (FitStopped)."""
    PCA = deferred("sklearn.decomposition").PCA  # imported here: the agent starts without paying for it

    n, dim = vecs.shape
    if n < 3:
        return np.stack([np.arange(n, dtype=np.float32), np.zeros(n, np.float32)], axis=1), "trivial"
    dims = min(p.pca_dims, n - 1, dim)
    reduced = PCA(n_components=dims, random_state=p.seed).fit_transform(vecs).astype(np.float32)
    if progress(0.1):
        raise FitStopped()
    if n < MIN_TSNE:
        return np.ascontiguousarray(reduced[:, :2]), "pca"
    TSNE = deferred("openTSNE").TSNE

    total_calls = max(1, (p.early_iterations + p.iterations) // CALLBACK_EVERY)
    calls = 0
    stopped = False

    def callback(iteration: int, error: float, embedding: np.ndarray) -> bool:
        nonlocal calls, stopped
        calls += 1
        stopped = progress(min(0.99, 0.2 + 0.8 * calls / total_calls))
        return stopped  # True stops openTSNE (it then returns the partial embedding)

    tsne = TSNE(n_components=2, perplexity=min(p.perplexity, (n - 1) / 3), n_jobs=1, random_state=p.seed,
                early_exaggeration_iter=p.early_iterations, n_iter=p.iterations, callbacks=callback,
                callbacks_every_iters=CALLBACK_EVERY, verbose=False)
    emb = tsne.fit(reduced)
    if stopped:
        raise FitStopped()
    return np.ascontiguousarray(np.asarray(emb, np.float32)), f"pca{dims}+opentsne"


class ChildFailed(RuntimeError):
    """The fit's child process exited with an error: ``reason`` is its last words in one line (for
    GetMap and GetStatus), ``detail`` its last lines of stderr (for the agent's log)."""

    def __init__(self, code: int, stderr: str) -> None:
        lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
        self.code = code
        self.reason = f"exit {code}: {lines[-1][:300]}" if lines else f"exit {code}, nothing on stderr"
        self.detail = stderr.strip()[-2000:]
        super().__init__(f"the map's fit process exited with {code}: {self.reason}")


def isolated_module(module: str, *args: str) -> list[str]:
    """The command line that runs ``python -m module args`` in a child of this interpreter with ``-P`` (Python
    3.11): the working folder is not put first on the child's sys.path, so a file there named like a module
    the child imports (queue.py, json.py, ...) is not run (with ``-m`` alone it would be, as our user). Give
    the child ``package_pythonpath()`` as its PYTHONPATH (``isolated_env``)."""
    return [sys.executable, "-P", "-m", module, *args]


def child_command(src: Path, out: Path, p: Projection) -> list[str]:
    """The fit child's command line (``isolated_module``)."""
    return isolated_module("agent.map_fit", str(src), str(out), json.dumps(asdict(p)), str(os.getpid()))


def package_pythonpath() -> str:
    """PYTHONPATH for a Python child started with ``-P`` (this one; the benchmarks' ``shortlist serve``):
    the folder this package is imported from first, so the child imports the same code whatever its
    working folder (an editable install may point elsewhere), then the inherited PYTHONPATH's absolute
    entries only (an empty or relative entry would name the working folder again)."""
    here = str(Path(__file__).resolve().parent.parent)
    inherited = [x for x in os.environ.get("PYTHONPATH", "").split(os.pathsep) if x and os.path.isabs(x)]
    return os.pathsep.join([here, *inherited])


def isolated_env(**extra: str) -> dict[str, str]:
    """An ``isolated_module`` child's environment: this one's, with ``extra`` and PYTHONPATH
    ``package_pythonpath()``."""
    return {**os.environ, **extra, "PYTHONPATH": package_pythonpath()}


def child_env() -> dict[str, str]:
    """The fit child's environment: one BLAS / OpenMP thread (``isolated_env``)."""
    return isolated_env(**{name: "1" for name in THREAD_ENV})


def fit_in_child(vecs: np.ndarray, p: Projection, progress: Callable[[float], bool],
                 poll_s: float = 0.5) -> tuple[np.ndarray, str]:
    """``project`` in a child process (see the module's docstring); ``progress`` is called from this
    thread at least every ``poll_s`` seconds (with the last fraction the child reported) and a True
    answer kills the child (FitStopped). A child that fails raises ChildFailed with its last words. The
    child runs in the private temporary folder, with ``-P``: nothing in the agent's working folder is
    imported by it."""
    with tempfile.TemporaryDirectory(prefix="shortlist-map-") as tmp:  # 0700
        src, out = Path(tmp) / "in.npy", Path(tmp) / "out.npy"
        np.save(src, np.ascontiguousarray(vecs, np.float32))
        proc = subprocess.Popen(child_command(src, out, p), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=child_env(), cwd=tmp, text=True)
        fraction = [0.0]
        err: list[str] = []

        def read_progress() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                with contextlib.suppress(ValueError):
                    fraction[0] = float(line)

        def read_errors() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                err.append(line)
                del err[:-20]  # the last words are enough

        readers = [threading.Thread(target=f, daemon=True) for f in (read_progress, read_errors)]
        for r in readers:
            r.start()
        try:
            while True:
                try:
                    code = proc.wait(timeout=poll_s)
                    break
                except subprocess.TimeoutExpired:
                    if progress(fraction[0]):
                        raise FitStopped() from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for r in readers:
                r.join(timeout=5)
        if code in STOP_SIGNALS:
            raise FitStopped()
        if code != 0:
            raise ChildFailed(code, "".join(err))
        with open(out, "rb") as f:
            xy = np.load(f, allow_pickle=False)
        meta = json.loads(out.with_suffix(".json").read_text())
        if xy.shape != (len(vecs), 2):
            raise RuntimeError(f"the map's fit process returned shape {xy.shape}, not ({len(vecs)}, 2)")
        return np.ascontiguousarray(xy, np.float32), str(meta["method"])


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this process when the agent that started it dies; exit if it is already gone."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        sys.exit(1)


def main(argv: list[str]) -> int:
    src, out, config, parent = Path(argv[0]), Path(argv[1]), Projection(**json.loads(argv[2])), int(argv[3])
    _die_with_parent(parent)
    with contextlib.suppress(OSError):
        os.nice(max(0, config.nice - os.nice(0)))
    vecs = np.load(src, allow_pickle=False)

    def report(fraction: float) -> bool:
        print(f"{fraction:.3f}", flush=True)
        return False

    xy, method = project(vecs, config, report)
    tmp = out.with_name(".tmp-" + out.name)
    with open(tmp, "wb") as f:
        np.save(f, xy)
    out.with_suffix(".json").write_text(json.dumps({"method": method}))
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
