"""The pool map (agent/pool_map.py) and GetMap: fit, placement of new samples, refit, durability, swap."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from agent import client, pool_map
from agent.index import IndexView
from agent.map_fit import ChildFailed, FitStopped, Projection, fit_in_child, project
from agent.pool_map import COMPUTING, FAILED, READY, FitCancelled, MapConfig, MapStatus, PoolMap, PoolMapData
from agent.testing import publish_linear
from shortlist.v1 import agent_pb2
from tests.agent.conftest import CLASSES, SIZE, Running, make_samples, start


def blobs(n: int, dim: int = 16, clusters: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors in ``clusters`` tight clusters, and each row's cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    which = np.arange(n) % clusters
    vecs = centres[which] + 0.05 * rng.normal(size=(n, dim))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs.astype(np.float32), which


class FakeServing:
    """What PoolMap reads: the serving version and a view of its index rows (growable, swappable)."""

    def __init__(self, vecs: np.ndarray, version: str = "v0001") -> None:
        self.version = version
        self.vecs = vecs
        self.n = len(vecs)

    def __call__(self) -> tuple[str, IndexView] | None:
        n = self.n
        return self.version, IndexView(n, np.arange(1, n + 1, dtype=np.int64), self.vecs[:n], None, None)


def separated(xy: np.ndarray, which: np.ndarray) -> bool:
    """Every point is nearer its own cluster's centre on the map than any other cluster's."""
    centres = np.stack([xy[which == c].mean(axis=0) for c in np.unique(which)])
    d = np.linalg.norm(xy[:, None, :] - centres[None], axis=2)
    return bool((d.argmin(axis=1) == which).all())


def test_fit_place_refit_and_reload(tmp_path: Path) -> None:
    vecs, which = blobs(200)
    serving = FakeServing(vecs)
    serving.n = 60
    cfg = MapConfig(max_fit=100, early_iterations=50, iterations=100, save_every_s=0.0, child_process=False)
    pm = PoolMap(cfg, tmp_path / "map", serving)
    assert pm.status().state == COMPUTING and pm.status().pending == 60
    pm.step()
    st = pm.status()
    assert (st.state, st.total, st.fitted, st.pending, st.method) == (READY, 60, 60, 0, "pca16+opentsne")
    m = pm.snapshot("v0001")
    assert m is not None and np.isfinite(m.xy).all() and separated(m.xy, which[:60])
    # Samples ingested after the fit are placed next to their neighbours, without a refit (below 2x).
    serving.n = 110
    pm.step()
    m = pm.snapshot("v0001")
    assert m is not None and (m.n, int(m.fitted.sum())) == (110, 60)
    assert separated(m.xy, which[:110])
    assert (tmp_path / "map" / "v0001.npz").is_file()
    # A restart loads the saved map (same coordinates) instead of fitting again.
    again = PoolMap(cfg, tmp_path / "map", serving)
    again.step()
    m2 = again.snapshot("v0001")
    assert m2 is not None and np.array_equal(m2.xy, m.xy) and int(m2.fitted.sum()) == 60
    # The pool doubled since the fit, and the fit is below max_fit: a refit, on a uniform subsample of max_fit.
    serving.n = 200
    again.step()
    m3 = again.snapshot("v0001")
    assert m3 is not None and (m3.n, int(m3.fitted.sum())) == (200, 100) and separated(m3.xy, which)


def test_a_damaged_saved_map_is_computed_again(tmp_path: Path) -> None:
    vecs, _ = blobs(30)
    serving = FakeServing(vecs)
    folder = tmp_path / "map"
    folder.mkdir()
    (folder / "v0001.npz").write_bytes(b"not a zip file")
    pm = PoolMap(MapConfig(early_iterations=20, iterations=20, child_process=False), folder, serving)
    pm.step()
    m = pm.snapshot("v0001")
    assert m is not None and m.n == 30
    with np.load(folder / "v0001.npz") as z:
        assert z["xy"].shape == (30, 2)


def test_a_new_version_cancels_the_fit_and_replaces_the_map(tmp_path: Path) -> None:
    vecs, _ = blobs(300)
    serving = FakeServing(vecs)
    pm = PoolMap(MapConfig(save_every_s=0.0, child_process=False), tmp_path / "map", serving)
    real_current = pm.current
    calls = 0

    def swapping() -> tuple[str, IndexView] | None:  # the version changes while the fit runs
        nonlocal calls
        calls += 1
        if calls == 6:
            serving.version = "v0002"
        return real_current()

    pm.current = swapping
    with pytest.raises(FitCancelled):
        pm.step()
    assert pm.snapshot("v0001") is None and not (tmp_path / "map" / "v0001.npz").exists()
    pm.current = real_current
    (tmp_path / "map").mkdir(exist_ok=True)
    (tmp_path / "map" / "v0000.npz").write_bytes(b"old")  # a retired version's map is removed
    pm.step()
    st = pm.status()
    assert (st.version, st.state, st.total) == ("v0002", READY, 300)
    assert sorted(p.name for p in (tmp_path / "map").iterdir()) == ["v0002.npz"]


def test_the_previous_versions_map_is_shown_while_the_new_one_computes(tmp_path: Path) -> None:
    vecs, _ = blobs(60)
    serving = FakeServing(vecs)
    cfg = MapConfig(early_iterations=20, iterations=20, save_every_s=0.0, child_process=False)
    pm = PoolMap(cfg, tmp_path / "map", serving)
    pm.step()
    old = pm.snapshot("v0001")
    assert old is not None and pm.status().shown == "v0001"
    shutil.copytree(tmp_path / "map", tmp_path / "restarted")
    serving.version, serving.n = "v0002", 50
    seen: list[tuple[MapStatus, PoolMapData | None]] = []
    # The same process, and one restarted after the swap (the old map read back from its file).
    for p in (pm, PoolMap(cfg, tmp_path / "restarted", serving)):
        real = p._fit

        def fit(version: str, view: IndexView, p: PoolMap = p, real: Callable[..., PoolMapData] = real) -> PoolMapData:
            seen.append((p.status(), p.snapshot("v0001")))
            return real(version, view)

        p._fit = fit  # type: ignore[method-assign]
        p.step()
        st = p.status()
        assert (st.version, st.state, st.shown, st.total) == ("v0002", READY, "v0002", 50)
        assert p.snapshot("v0001") is None and not (p.folder / "v0001.npz").exists()
    assert len(seen) == 2
    for st, m in seen:
        assert (st.version, st.state, st.shown, st.total, st.pending) == ("v0002", COMPUTING, "v0001", 60, 50)
        assert m is not None and np.array_equal(m.xy, old.xy)


def test_the_fit_runs_in_a_child_process_that_is_killed_when_stopped(tmp_path: Path) -> None:
    vecs, which = blobs(120)
    p = Projection(pca_dims=8, perplexity=30.0, early_iterations=50, iterations=100, seed=0)
    seen: list[float] = []

    def progress(fraction: float) -> bool:
        seen.append(fraction)
        return False

    xy, method = fit_in_child(vecs, p, progress, poll_s=0.05)
    assert method == "pca8+opentsne" and xy.shape == (120, 2) and xy.dtype == np.float32
    assert separated(xy, which) and seen
    # Stopped (a new version is served): the child is killed at once, however long its fit would take.
    import subprocess

    started: list[subprocess.Popen[str]] = []
    real = subprocess.Popen

    def recording(*a: object, **kw: object) -> subprocess.Popen[str]:
        proc = real(*a, **kw)  # type: ignore[call-overload]
        started.append(proc)
        return proc  # type: ignore[no-any-return]

    long = Projection(pca_dims=8, perplexity=30.0, early_iterations=100_000, iterations=100_000, seed=0)
    t0 = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess, "Popen", recording)
        with pytest.raises(FitStopped):
            fit_in_child(vecs, long, lambda f: time.monotonic() - t0 > 0.3, poll_s=0.05)
    assert time.monotonic() - t0 < 5 and started and started[0].poll() is not None
    # A child stopped by SIGTERM sent to the agent's process group (systemd, Ctrl-C) is a stop, not a failure.
    import signal

    def terminate(fraction: float) -> bool:
        if started and started[-1].poll() is None:
            started[-1].send_signal(signal.SIGTERM)  # what the group signal does to the child
        return False

    started.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess, "Popen", recording)
        with pytest.raises(FitStopped):
            fit_in_child(vecs, long, terminate, poll_s=0.05)
    # A child that fails says why.
    with pytest.raises(RuntimeError, match="exited with"):
        fit_in_child(np.full((20, 4), np.nan, np.float32), p, lambda f: False)


def test_tiny_pools(tmp_path: Path) -> None:
    for n, method in ((1, "trivial"), (5, "pca")):
        vecs, _ = blobs(n)
        pm = PoolMap(MapConfig(), tmp_path / f"m{n}", FakeServing(vecs))
        pm.step()
        st = pm.status()
        assert (st.state, st.total, st.method) == (READY, n, method)


def fetch_map(r: Running, **kw: int) -> list[agent_pb2.MapChunk]:
    return list(r.stub.GetMap(agent_pb2.GetMapRequest(**kw), timeout=10))


def wait_ready(r: Running, total: int, version: str = "v0001", timeout: float = 90.0) -> list[agent_pb2.MapChunk]:
    end = time.monotonic() + timeout
    while True:
        chunks = fetch_map(r)
        h = chunks[0]
        if h.state == READY and h.total == total and h.model_version == version:
            return chunks
        assert time.monotonic() < end, f"map not ready: {h}"
        time.sleep(0.2)


def test_get_map_over_grpc(tmp_path: Path, registry: Path) -> None:
    r = start(tmp_path / "data", registry)
    try:
        client.ingest(r.stub, make_samples(30, labels=6))
        chunks = wait_ready(r, 30)
        points = [p for c in chunks for p in c.points]
        assert sorted(p.id for p in points) == sorted(f"s{i}" for i in range(30))
        assert {p.id: p.label for p in points if p.label} == {f"s{i}": CLASSES[i % 3] for i in range(6)}
        xy = np.array([(p.x, p.y) for p in points])
        assert np.isfinite(xy).all() and chunks[0].fitted == 30 and chunks[0].progress == 1.0
        # Pages: offset / limit / chunk give the same points in the same order.
        paged = fetch_map(r, offset=10, limit=15, chunk=4)
        assert [len(c.points) for c in paged] == [4, 4, 4, 3]
        assert [p.id for c in paged for p in c.points] == [p.id for p in points[10:25]]
        assert [p.id for c in fetch_map(r, offset=29, limit=0) for p in c.points] == [points[29].id]
        assert list(fetch_map(r, offset=100)[0].points) == []
        for bad in ({"chunk": -1}, {"chunk": 70_000}, {"offset": -1}, {"limit": -5}):
            with pytest.raises(grpc.RpcError) as e:
                fetch_map(r, **bad)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # A label given now shows at once; samples ingested now are placed within seconds (no refit).
        client.submit_labels(r.stub, [("s10", "dog")], annotator="ann")
        client.ingest(r.stub, make_samples(40, prefix="s", seed=0)[30:])
        chunks = wait_ready(r, 40)
        assert chunks[0].fitted == 30
        assert {p.id: p.label for c in chunks for p in c.points}["s10"] == "dog"
    finally:
        r.stop()
    # After a restart the saved map is served at once.
    assert (tmp_path / "data" / "map" / "v0001.npz").is_file()
    r = start(tmp_path / "data", registry)
    try:
        again = wait_ready(r, 40, timeout=10)
        assert [(p.id, p.x, p.y) for c in again for p in c.points] == [(p.id, p.x, p.y) for c in chunks
                                                                       for p in c.points]
        # A new model version gets its own map; the old one's file goes.
        publish_linear(registry, size=SIZE, dim=16, classes=CLASSES, rotation=True, seed=1)
        r.stub.ReloadModel(agent_pb2.ReloadModelRequest())
        h = fetch_map(r)[0]  # the old map is sent until the new one is ready (too fast to see, often)
        if h.state == "computing" and h.model_version == "v0002":
            assert h.shown_version == "v0001" and h.total == 40
        wait_ready(r, 40, version="v0002")
        end = time.monotonic() + 10
        while (tmp_path / "data" / "map" / "v0001.npz").exists() and time.monotonic() < end:
            time.sleep(0.1)
        assert sorted(p.name for p in (tmp_path / "data" / "map").iterdir()) == ["v0002.npz"]
    finally:
        r.stop()


def test_get_map_before_any_model(tmp_path: Path) -> None:
    r = start(tmp_path / "data", tmp_path / "empty-registry")
    try:
        [h] = fetch_map(r)
        assert (h.state, h.model_version, h.total) == ("none", "", 0)
    finally:
        r.stop()


def test_stop_does_not_wait_for_a_starved_map_thread_and_saves_the_newest_map(tmp_path: Path) -> None:
    """At nice 19 on a saturated machine the map thread may not run for seconds: stop() waits stop_wait_s
    for it, then saves the newest map itself; a save the late thread makes afterwards never replaces it."""
    import threading

    vecs, _ = blobs(80)
    serving = FakeServing(vecs)
    cfg = MapConfig(max_fit=100, early_iterations=50, iterations=100, save_every_s=1e9, child_process=False,
                    stop_wait_s=0.2)
    pm = PoolMap(cfg, tmp_path / "map", serving)
    pm.step()  # fitted on 80 rows and saved
    serving.vecs = np.concatenate([vecs, blobs(20, seed=1)[0]])
    serving.n = 100
    pm.step()  # 20 more placed in memory, not yet saved (save_every_s)
    assert pm.snapshot("v0001") is not None and pm.snapshot("v0001").n == 100  # type: ignore[union-attr]
    stale = PoolMapData("v0001", np.arange(1, 81), np.zeros((80, 2), np.float32), np.ones(80, bool), "old")
    release = threading.Event()

    def starved() -> None:  # the thread, in a step that does not reach a stop check for a long time
        release.wait(30)
        pm._save_quietly(stale)  # and then it saves what it held: older than what stop() saved

    pm._thread = threading.Thread(target=starved, daemon=True)
    pm._thread.start()
    t0 = time.monotonic()
    pm.stop()
    assert time.monotonic() - t0 < 2
    release.set()
    pm._thread.join(5)
    again = PoolMap(cfg, tmp_path / "map", serving)
    again.step()
    m = again.snapshot("v0001")
    assert m is not None and m.n == 100 and m.method != "old"


def test_the_map_thread_writes_nothing_after_stop(tmp_path: Path) -> None:
    """stop() gives up waiting for a starved thread and the agent then releases its data folder (another agent
    may open it; bench agent removes its temporary one: "Directory not empty" once): whatever the late thread
    then saves (a larger map, another version's) is not written."""
    import threading

    vecs, _ = blobs(40)
    cfg = MapConfig(max_fit=100, early_iterations=50, iterations=100, save_every_s=1e9, child_process=False,
                    stop_wait_s=0.2)
    pm = PoolMap(cfg, tmp_path / "map", FakeServing(vecs))
    later = [PoolMapData(v, np.arange(1, 51), np.zeros((50, 2), np.float32), np.ones(50, bool), "late")
             for v in ("v0001", "v0002")]
    release = threading.Event()

    def starved() -> None:  # the loop's own sequence after a fit: save, then remove the other versions' maps
        release.wait(30)
        for m in later:
            pm._save_quietly(m)
            pm._remove_others(m.version)

    pm._thread = threading.Thread(target=starved, daemon=True)
    pm._thread.start()
    pm.stop()
    (tmp_path / "map").mkdir()
    (tmp_path / "map" / "v0009.npz").write_bytes(b"another agent's map, in the folder released since")
    release.set()
    pm._thread.join(5)
    assert [p.name for p in (tmp_path / "map").iterdir()] == ["v0009.npz"]


def test_the_fit_child_does_not_import_from_the_agents_working_folder(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A file in the agent's working folder named like a module the child imports (queue.py: joblib's
    loky; json.py: agent.map_fit itself) is neither run nor imported by the child: the fit succeeds."""
    cwd = tmp_path / "served-from"
    cwd.mkdir()
    for name in ("queue", "json"):
        (cwd / f"{name}.py").write_text(f"open({str(cwd / ('RAN-' + name))!r}, 'w').write('ran')\n"
                                        "raise SystemExit(3)\n")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["", "."]))  # empty and relative entries name the cwd too
    vecs, _ = blobs(40)
    p = Projection(pca_dims=8, perplexity=10.0, early_iterations=20, iterations=20, seed=0)
    xy, method = fit_in_child(vecs, p, lambda f: False, poll_s=0.05)
    assert method == "pca8+opentsne" and xy.shape == (40, 2)
    assert sorted(x.name for x in cwd.iterdir()) == ["json.py", "queue.py"]  # no RAN-* marker


class FailingFit:
    """A fit that fails (ChildFailed, as a broken child would) ``fails`` times, then works."""

    def __init__(self, fails: int) -> None:
        self.fails = fails
        self.calls = 0

    def __call__(self, vecs: np.ndarray, p: Projection, progress: Callable[[float], bool],
                 poll_s: float = 0.5) -> tuple[np.ndarray, str]:
        self.calls += 1
        if self.calls <= self.fails:
            raise ChildFailed(1, "Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                                 "ModuleNotFoundError: No module named 'openTSNE'\n")
        return project(vecs, p, progress)


def test_a_failed_fit_is_a_status_warning_with_one_line_and_is_retried(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fit = FailingFit(fails=2)
    monkeypatch.setattr(pool_map, "fit_in_child", fit)
    vecs, _ = blobs(30)
    cfg = MapConfig(early_iterations=20, iterations=20, retry_s=0.2, retry_max_s=0.3)
    pm = PoolMap(cfg, tmp_path / "map", FakeServing(vecs))
    assert pm.warnings() == []
    pm.step()
    st = pm.status()
    assert st.state == FAILED and "\n" not in st.message and "Traceback" not in st.message
    assert "ModuleNotFoundError: No module named 'openTSNE'" in st.message and "tried again in" in st.message
    assert pm.warnings() == [st.message]
    pm.step()  # within the back-off: not tried again
    assert fit.calls == 1
    time.sleep(0.25)
    pm.step()  # tried again, fails again: the back-off doubles (capped at retry_max_s)
    assert fit.calls == 2 and "2 times in a row" in pm.warnings()[0]
    time.sleep(0.35)
    pm.step()
    assert fit.calls == 3 and pm.status().state == READY and pm.warnings() == []


def test_a_failed_map_is_a_getstatus_warning(tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(a map that failed left GetStatus at "warnings: none")"""
    monkeypatch.setattr(pool_map, "fit_in_child", FailingFit(fails=100))
    r = start(tmp_path / "data", registry)
    try:
        client.ingest(r.stub, make_samples(30, labels=6))
        end = time.monotonic() + 20
        warnings: list[str] = []
        while time.monotonic() < end:
            warnings = [w for w in r.stub.GetStatus(agent_pb2.GetStatusRequest()).warnings if "map" in w]
            if warnings:
                break
            time.sleep(0.2)
        assert len(warnings) == 1 and "No module named 'openTSNE'" in warnings[0] and "\n" not in warnings[0]
    finally:
        r.stop()


def test_a_full_disk_is_retried_every_save_every_s_and_warned_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A save that fails (ENOSPC) waits save_every_s like one that worked (it was retried, and warned about, at
    every placement step: every poll_s, 2 s); the warning is logged once, not at every try."""
    vecs, _ = blobs(60)
    serving = FakeServing(vecs)
    serving.n = 30
    pm = PoolMap(MapConfig(early_iterations=20, iterations=20, save_every_s=30.0, child_process=False),
                 tmp_path / "map", serving)
    tries: list[int] = []

    def full(m: PoolMapData) -> None:
        tries.append(m.n)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pm, "_save_unlocked", full)
    with caplog.at_level(logging.WARNING, logger="agent.pool_map"):
        pm.step()  # the fit: its save fails
        for n in range(31, 41):  # new samples placed, step after step
            serving.n = n
            pm.step()
    m = pm.snapshot("v0001")
    assert m is not None and m.n == 40  # served from memory
    assert tries == [30]
    assert [r.getMessage() for r in caplog.records] == [
        "could not save the pool map of v0001: [Errno 28] No space left on device"]


def test_the_saved_map_is_owner_only_and_a_failed_save_leaves_no_temp_file(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """D/map/<version>.npz is written by shortlist.atomic.atomic_file with mode 0600 (whatever the umask); a save
    that fails mid-write leaves the saved map as it was and no temporary file."""
    vecs, _ = blobs(40)
    folder = tmp_path / "map"
    pm = PoolMap(MapConfig(early_iterations=20, iterations=20, save_every_s=0.0, child_process=False), folder,
                 FakeServing(vecs))
    old = os.umask(0)
    try:
        pm.step()
    finally:
        os.umask(old)
    saved = folder / "v0001.npz"
    assert saved.stat().st_mode & 0o777 == 0o600
    before = saved.read_bytes()
    m = pm.snapshot("v0001")
    assert m is not None

    def torn(*args: object, **kw: object) -> None:
        f = args[0]
        assert hasattr(f, "write")
        f.write(b"PK half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pool_map.np, "savez", torn)
    with pytest.raises(OSError):
        pm._save_unlocked(m)
    assert saved.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["v0001.npz"]
