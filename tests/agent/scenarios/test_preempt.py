"""A version published while the agent re-embeds the pool for another one preempts it: the pending
version is abandoned (never served, its embeddings dropped, marked superseded), the previous version
answers until the newest is swapped in, and nothing an abandoned or retired version stored is kept.
GetStatus never shows the swap half done."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from agent.config import AgentConfig
from agent.core import Agent, SelectQuery
from agent.embedder import Embedder, EmbedOutput
from agent.errors import FailedPrecondition
from agent.ingest import Incoming
from agent.models import ModelManager
from agent.testing import publish_linear
from shortlist.manifest import Manifest, republish
from tests.agent.conftest import SIZE, make_images, png

N = 20
BATCH = 4  # so a re-embed of N samples takes several batches, with a look at the registry between them


def agent(tmp_path: Path, models: Path) -> Agent:
    return Agent(AgentConfig(tmp_path / "data", models, background=False, use_cuda=False, batch_size=BATCH,
                             poll_s=3600.0))  # the registry is looked at between batches only when woken


def fill(a: Agent, n: int = N) -> None:
    assert a.ingest.batch([Incoming(f"x{i}", "image", png(im), png(im))
                           for i, im in enumerate(make_images(n))]).accepted == n


def rows_by_version(data: Path) -> dict[str, int]:
    db = sqlite3.connect(data / "state.sqlite")
    try:
        return dict(db.execute("SELECT version, COUNT(*) FROM embeddings GROUP BY version").fetchall())
    finally:
        db.close()


def on_embed(monkeypatch: pytest.MonkeyPatch, version: str, hook: Callable[[int], None]) -> list[int]:
    """Call ``hook(k)`` before the k-th batch (from 1) that ``version``'s embedder embeds; returns the
    list of batch sizes it embedded."""
    sizes: list[int] = []
    real = ModelManager._embedder

    def embedder(self: ModelManager, name: str, manifest: Manifest) -> Embedder:
        emb = real(self, name, manifest)
        if name == version:
            inner = emb.embed

            def embed(images: np.ndarray) -> EmbedOutput:
                sizes.append(len(images))
                hook(len(sizes))
                return inner(images)

            emb.embed = embed  # type: ignore[method-assign]
        return emb

    monkeypatch.setattr(ModelManager, "_embedder", embedder)
    return sizes


def test_a_rollback_published_mid_reembed_preempts_the_pending_version(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)  # v0001: served
    a = agent(tmp_path, models)
    try:
        fill(a)
        bad = publish_linear(models, size=SIZE, dim=24, seed=1)  # v0002: the bad one
        a.state._db.executescript(  # every version recorded as served, whichever code path records it
            "CREATE TEMP TABLE served(name TEXT); CREATE TEMP TRIGGER served_log AFTER INSERT ON model_versions "
            "WHEN NEW.status = 'serving' BEGIN INSERT INTO served VALUES (NEW.name); END;")
        seen: list[tuple[str, str]] = []

        def rollback_during_second_batch(k: int) -> None:
            seen.append((a.status().model_version, a.status().pending_model_version))
            if k == 2:
                republish(models, "v0001")  # v0003, a copy of v0001
                a.manager.reload()  # what ReloadModel does

        sizes = on_embed(monkeypatch, bad, rollback_during_second_batch)
        a.manager.check()
        st = a.status()
        assert st.model_version == "v0003" and st.embedded == N and not st.pending_model_version
        served = {n for (n,) in a.state._db.execute("SELECT name FROM served")}
        assert served == {"v0003"}, "the abandoned version must never be served"
        assert len(sizes) == 2 < N // BATCH  # it stopped after the batch under way, not at the end
        assert seen == [("v0001", bad), ("v0001", bad)]  # the previous version answered meanwhile
        status, embedded, why = a.state.model_versions()[bad]
        assert (status, embedded) == ("superseded", 0) and "superseded by v0003" in why
        assert rows_by_version(tmp_path / "data") == {"v0003": N}
        assert not (tmp_path / "data" / "index" / bad).exists()
    finally:
        a.close()


def test_a_broken_newer_version_does_not_interrupt_the_pending_one(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    a = agent(tmp_path, models)
    try:
        fill(a)
        v2 = publish_linear(models, size=SIZE, dim=24, seed=1)

        def broken_newer(k: int) -> None:
            if k == 1:
                v3 = publish_linear(models, size=SIZE, dim=16, seed=2)
                (models / v3 / "encoder.onnx").write_bytes(b"half copied")
                a.manager.reload()

        sizes = on_embed(monkeypatch, v2, broken_newer)
        a.manager.check()
        st = a.status()
        assert st.model_version == v2 and st.embedded == N and len(sizes) == N // BATCH
        assert [w for w in st.warnings if w.startswith("v0003 refused")], st.warnings
        assert rows_by_version(tmp_path / "data") == {v2: N}
    finally:
        a.close()


def test_a_pending_version_left_by_a_restart_is_dropped_when_a_newer_one_is_embedded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped mid re-embed of v0002, restarted after v0003 was published: v0003 is embedded and served,
    and v0002's partial embeddings do not stay in state.sqlite for good."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    a = agent(tmp_path, models)
    try:
        fill(a)
        v2 = publish_linear(models, size=SIZE, dim=24, seed=1)

        def stop_after_two(k: int) -> None:
            if k == 3:
                a.manager._stop.set()  # shutting down: the pending version is kept, to be resumed

        on_embed(monkeypatch, v2, stop_after_two)
        a.manager.check()
        assert a.state.model_versions()[v2][0] == "pending"
    finally:
        a.close()
    assert rows_by_version(tmp_path / "data") == {"v0001": N, v2: 3 * BATCH}
    monkeypatch.undo()
    v3 = publish_linear(models, size=SIZE, dim=16, seed=2)
    a = agent(tmp_path, models)
    try:
        a.manager.check()
        assert a.status().model_version == v3
        assert a.state.model_versions()[v2][0] == "superseded"
    finally:
        a.close()
    assert rows_by_version(tmp_path / "data") == {v3: N}


def test_a_pending_version_older_than_the_served_one_is_dropped_at_start(tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    a = agent(tmp_path, models)
    try:
        fill(a)
        # What an older agent could leave: a pending version that was never resumed, older than the served one.
        a.state.set_model_version("v0000", "pending", 5)
        a.state._db.execute("INSERT INTO embeddings SELECT 'v0000', row, seq, vec, logits, pretext FROM embeddings "
                            "WHERE version='v0001'")
        a.state._db.commit()
    finally:
        a.close()
    assert rows_by_version(tmp_path / "data") == {"v0001": N, "v0000": N}
    a = agent(tmp_path, models)
    try:
        assert a.status().model_version == "v0001"
        assert a.state.model_versions()["v0000"][0] == "superseded"
    finally:
        a.close()
    assert rows_by_version(tmp_path / "data") == {"v0001": N}


def test_status_never_shows_a_version_both_serving_and_pending(tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    a = agent(tmp_path, models)
    try:
        fill(a, 200)
        seen: set[tuple[str, str]] = set()
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                st = a.status()
                seen.add((st.model_version, st.pending_model_version))

        t = threading.Thread(target=poll)
        t.start()
        try:
            for seed in (1, 2, 3):
                publish_linear(models, size=SIZE, dim=16, seed=seed)
                a.manager.check()
        finally:
            done.set()
            t.join()
        assert ("v0001", "v0002") in seen or ("v0002", "v0003") in seen  # it did look during re-embeds
        assert not [(s, p) for s, p in seen if s == p or not s], seen
    finally:
        a.close()


def test_a_copy_of_the_served_model_is_swapped_in_with_its_embeddings(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The field's rollback: v0001 served, a bad v0002 being embedded, v0001 republished as v0003. v0002 is
    abandoned and v0003, the same files and preprocessing as the served v0001, is served at once with
    v0001's embeddings (moved, not copied), nothing re-embedded, before and after a restart."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    a = agent(tmp_path, models)
    try:
        fill(a)
        before = a.manager.current.index.view().vecs.copy()  # type: ignore[union-attr]
        bad = publish_linear(models, size=SIZE, dim=24, seed=1)

        def rollback(k: int) -> None:
            if k == 1:
                republish(models, "v0001")
                a.manager.reload()

        on_embed(monkeypatch, bad, rollback)
        copy_batches = on_embed(monkeypatch, "v0003", lambda k: None)
        a.manager.check()
        st = a.status()
        assert (st.model_version, st.embedded, st.pending_model_version) == ("v0003", N, "")
        assert copy_batches == []  # nothing re-embedded
        assert np.array_equal(a.manager.current.index.view().vecs, before)  # type: ignore[union-attr]
        versions = a.state.model_versions()
        assert versions["v0001"][0] == "retired" and versions[bad][0] == "superseded"
        assert versions["v0003"][:2] == ("serving", N)
        assert a.ingest.batch([Incoming(f"y{i}", "image", png(im), png(im))  # ingest goes on into it
                               for i, im in enumerate(make_images(3, seed=9))]).accepted == 3
        assert a.status().embedded == N + 3
        copy_batches.clear()  # the 3 ingested were embedded by Ingest, with the copy's model
    finally:
        a.close()
    assert rows_by_version(tmp_path / "data") == {"v0003": N + 3}
    a = agent(tmp_path, models)
    try:
        a.manager.check()
        st = a.status()
        assert (st.model_version, st.embedded) == ("v0003", N + 3) and copy_batches == []
        assert sorted(p.name for p in (tmp_path / "data" / "index").iterdir()) == ["v0003"]
    finally:
        a.close()


def test_a_pending_version_whose_folder_is_removed_mid_reembed_is_refused_not_served(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Removing the folder of the version being embedded (a `prune --without-agent`, an `rm -rf` by hand) used
    to let it be swapped in seconds later: the agent then served a model no restart could load again."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)  # v0001: served
    a = agent(tmp_path, models)
    try:
        fill(a)
        v2 = publish_linear(models, size=SIZE, dim=24, seed=1)

        def remove_during_second_batch(k: int) -> None:
            if k == 2:
                shutil.rmtree(models / v2)
                a.manager.reload()  # the next look at the registry is now, not a poll interval away

        sizes = on_embed(monkeypatch, v2, remove_during_second_batch)
        a.manager.check()
        st = a.status()
        assert st.model_version == "v0001" and st.embedded == N and not st.pending_model_version
        assert len(sizes) == 2 < N // BATCH  # stopped after the batch under way
        status, embedded, why = a.state.model_versions()[v2]
        assert (status, embedded) == ("failed", 0) and "folder was removed" in why and "never served" in why
        assert rows_by_version(tmp_path / "data") == {"v0001": N}
        assert any(v2 in w and "folder was removed" in w for w in st.warnings)
        v3 = publish_linear(models, size=SIZE, dim=24, seed=1)  # published again: served as usual
        a.manager.check()
        assert a.status().model_version == v3
    finally:
        a.close()


def fallen_back(tmp_path: Path) -> Agent:
    """An agent restarted after the folder of the version it served (v0002, N samples, 6 labelled) was removed:
    it serves v0001, with none of the pool embedded yet (``background=False``: the test embeds it)."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)  # v0001
    a = agent(tmp_path, models)
    try:
        fill(a)
        assert a.submit_labels([(f"x{i}", "cat" if i % 2 else "dog") for i in range(6)], "ann")[0] == 6
        v2 = publish_linear(models, size=SIZE, dim=24, seed=1)
        a.manager.check()
        assert a.status().model_version == v2 and not any("not embedded yet" in w for w in a.status().warnings)
    finally:
        a.close()
    shutil.rmtree(models / v2)
    return agent(tmp_path, models)


def test_after_a_restart_falls_back_the_answers_say_the_pool_is_still_being_embedded(tmp_path: Path) -> None:
    """The version served before a restart is gone: the agent serves the newest left and embeds the pool with
    it in the background. Until then Select, PriorLabels and GetStatus say they cover the embedded samples only,
    and PriorLabels does not claim there are no labels."""
    b = fallen_back(tmp_path)
    try:
        st = b.status()
        assert st.model_version == "v0001" and st.embedded == 0 and st.samples == N
        assert any(f"{N} of {N} stored samples are not embedded yet by v0001" in w for w in st.warnings)
        with pytest.raises(FailedPrecondition, match="none of the 6 labelled samples is embedded yet by v0001"):
            list(b.prior_labels("knn", [], {}))
        b.manager._catch_up(b.manager.current.embedder, b.manager.current.index, hold_lock=True,  # type: ignore[union-attr]
                            limit=BATCH * 2)  # part of the pool: 8 of 20
        got = list(b.prior_labels("knn", [], {}))
        assert got and got[0].not_embedded == N - 2 * BATCH and all(r.not_embedded == 0 for r in got[1:])
        sel = b.select(SelectQuery(3, "random", {}, 0, {}))
        assert f"{N - 2 * BATCH} of {N} stored samples are not embedded yet by v0001" in sel.details["not_embedded"]
        b.manager.check()  # the rest
        st = b.status()
        assert st.embedded == N and not any("not embedded yet" in w for w in st.warnings)
        assert next(iter(b.prior_labels("knn", [], {}))).not_embedded == 0
        assert "not_embedded" not in b.select(SelectQuery(3, "random", {}, 1, {})).details
    finally:
        b.close()


def test_while_the_pool_is_partly_embedded_select_says_why_it_is_empty_refuses_the_audit_and_counts_no_draw(
        tmp_path: Path) -> None:
    """After a fallback (the pool embedded in the background): an empty Select says nothing (or no unlabelled
    sample) is embedded yet, not that every sample is labelled; the audit, a uniform draw of the whole pool, is
    refused; a random Select is answered but is no uniform draw for the calibration, in memory or recorded."""
    b = fallen_back(tmp_path)
    try:
        assert b.status().embedded == 0
        empty = b.select(SelectQuery(3, "random", {}, 0, {}))
        assert empty.selected == [] and empty.details["nothing_selected"] == (
            f"nothing is embedded yet: {N} stored samples are not embedded yet (the pool is being embedded in the "
            "background) and not candidates until then; ask again when Status.embedded reaches Status.samples")
        with pytest.raises(FailedPrecondition, match=f"an audit draw must cover the whole pool, and {N} of {N} "
                                                     "stored samples are not embedded yet by v0001"):
            b.select(SelectQuery(3, "audit", {}, 0, {}))
        b.manager._catch_up(b.manager.current.embedder, b.manager.current.index, hold_lock=True,  # type: ignore[union-attr]
                            limit=BATCH * 2)  # x0..x7, of which x0..x5 are labelled
        part = b.select(SelectQuery(3, "random", {}, 0, {}))
        assert sorted(i for i, _ in part.selected) == ["x6", "x7"]
        assert "not count as audit labels" in part.details["not_uniform"]
        assert b._draws == [] and b._recorded_draws() == []
        with pytest.raises(FailedPrecondition, match="an audit draw must cover the whole pool"):
            b.select(SelectQuery(3, "audit", {}, 0, {}))
        assert b.submit_labels([("x6", "cat"), ("x7", "dog")], "ann")[0] == 2
        assert b.select(SelectQuery(3, "random", {}, 1, {})).details["nothing_selected"].startswith(
            f"every embedded sample is labelled; {N - 2 * BATCH} stored samples are not embedded yet")
        assert b.select(SelectQuery(3, "random", {}, 5, {"site": "a"})).details["nothing_selected"].startswith(
            "no unlabelled embedded sample matches where site=a; ")
        b.manager.check()  # the rest: now a random Select is a uniform draw again, and the audit is answered
        whole = b.select(SelectQuery(3, "random", {}, 2, {}))
        assert len(whole.selected) == 3 and "not_uniform" not in whole.details
        assert [len(d) for _, d in b._recorded_draws()] == [3] and len(b._draws) == 1
        assert len(b.select(SelectQuery(3, "audit", {}, 0, {})).selected) == 3
    finally:
        b.close()
