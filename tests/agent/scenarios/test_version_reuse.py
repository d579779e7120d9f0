"""A version number that names two models (a folder removed, then another model put under its name) never
mixes their embeddings: the agent records the model fingerprint of what it embeds, and compares it with the
folder's (or, for rows written before fingerprints, the folder's model's vectors with the stored ones)."""

from __future__ import annotations

import logging
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from agent.config import AgentConfig
from agent.core import Agent
from agent.embedder import Embedder
from agent.ingest import Incoming
from agent.state import EmbeddingRows
from agent.testing import publish_linear
from shortlist.images import decode_stored
from shortlist.manifest import check_version, model_fingerprint, short_fingerprint
from tests.agent.conftest import SIZE, make_images, png

IMAGES = [png(im) for im in make_images(12)]


def agent(tmp_path: Path, models: Path, **kw: object) -> Agent:
    return Agent(AgentConfig(tmp_path / "data", models, background=False, use_cuda=False, **kw))  # type: ignore[arg-type]


def ingest(a: Agent, first: int, last: int) -> None:
    got = a.ingest.batch([Incoming(f"x{i}", "image", IMAGES[i], IMAGES[i]) for i in range(first, last)])
    assert got.accepted == last - first


def vectors_of(folder: Path, ids: range) -> np.ndarray:
    """What the model in ``folder`` computes for samples x<i>, i in ``ids``."""
    manifest = check_version(folder)
    emb = Embedder(folder, manifest, use_cuda=False)
    return emb.embed(np.stack([decode_stored("image", IMAGES[i], manifest.preprocess) for i in ids])).vecs


def served(a: Agent) -> dict[int, np.ndarray]:
    """seq -> the vector the serving index holds (seq i + 1 is sample x<i>)."""
    cur = a.manager.current
    assert cur is not None
    view = cur.index.view()
    return {int(q): view.vecs[r] for r, q in enumerate(view.seqs)}


def assert_all_by(a: Agent, folder: Path, n: int) -> None:
    """Every one of the n samples is in the served index with the vector ``folder``'s model gives it."""
    got = served(a)
    assert sorted(got) == list(range(1, n + 1))
    want = vectors_of(folder, range(n))
    np.testing.assert_allclose(np.stack([got[i + 1] for i in range(n)]), want, atol=1e-5)


def put_by_hand(models: Path, version: str, seed: int, tmp_path: Path) -> None:
    """Replace ``models/version`` with another model under the same name (what a folder removed, then
    reused by an older publisher or a copy by hand, gives)."""
    other = tmp_path / f"other{seed}"
    publish_linear(other, size=SIZE, dim=16, seed=seed)
    shutil.rmtree(models / version, ignore_errors=True)
    shutil.move(other / "v0001", models / version)


def forget_fingerprints(data: Path) -> None:
    """Make the rows look written by an agent from before model fingerprints were recorded."""
    with sqlite3.connect(data / "state.sqlite") as db:
        db.execute("UPDATE model_versions SET fingerprint=''")


def test_the_served_folder_holding_another_model_at_start_is_embedded_again(tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    a = agent(tmp_path, models)
    try:
        ingest(a, 0, 8)
        a.manager.check()
        assert_all_by(a, models / "v0001", 8)
    finally:
        a.close()
    old = short_fingerprint(model_fingerprint(check_version(models / "v0001")))
    put_by_hand(models, "v0001", seed=5, tmp_path=tmp_path)
    (tmp_path / "data" / "map").mkdir(exist_ok=True)
    (tmp_path / "data" / "map" / "v0001.npz").write_bytes(b"a map of the other model's vectors")
    a = agent(tmp_path, models)
    try:
        a.manager.check()
        ingest(a, 8, 12)  # the operator's repro: new samples after the restart
        assert_all_by(a, models / "v0001", 12)  # never the removed model's vectors beside the new one's
        new = short_fingerprint(model_fingerprint(check_version(models / "v0001")))
        assert [w for w in a.status().warnings if old in w and new in w and "embedded again" in w], a.status().warnings
        assert not (tmp_path / "data" / "map" / "v0001.npz").exists()
        assert state_row(tmp_path / "data", "v0001") == ("serving", model_fingerprint(check_version(models / "v0001")))
    finally:
        a.close()


def state_row(data: Path, version: str) -> tuple[str, str]:
    with sqlite3.connect(data / "state.sqlite") as db:
        status, fp = db.execute("SELECT status, fingerprint FROM model_versions WHERE name=?", (version,)).fetchone()
    return str(status), str(fp)


@pytest.mark.parametrize("replaced", [True, False])
def test_rows_without_a_fingerprint_are_checked_against_the_folders_model(tmp_path: Path, replaced: bool) -> None:
    """Data from an agent that recorded no fingerprints (every row ''): at start the stored vectors are compared
    with the folder's model's on a few samples; another model's are dropped and embedded again, the same
    model's kept (not embedded again) and the fingerprint filled."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    a = agent(tmp_path, models)
    try:
        ingest(a, 0, 8)
        a.manager.check()
    finally:
        a.close()
    forget_fingerprints(tmp_path / "data")
    if replaced:
        put_by_hand(models, "v0001", seed=5, tmp_path=tmp_path)
    a = agent(tmp_path, models)
    try:
        cur = a.manager.current
        assert cur is not None
        assert cur.index.n == (0 if replaced else 8)  # dropped before anything used them / kept
        a.manager.check()
        assert_all_by(a, models / "v0001", 8)
        assert bool([w for w in a.status().warnings if "embedded again" in w]) == replaced
        assert state_row(tmp_path / "data", "v0001") == ("serving", model_fingerprint(check_version(models / "v0001")))
    finally:
        a.close()


def test_the_served_folder_changing_while_the_agent_runs_is_warned_about_and_never_mixed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    loaded = tmp_path / "loaded"
    shutil.copytree(models / "v0001", loaded / "v0001")
    a = agent(tmp_path, models)
    try:
        ingest(a, 0, 6)
        a.manager.check()
        ours = short_fingerprint(model_fingerprint(check_version(models / "v0001")))
        put_by_hand(models, "v0001", seed=5, tmp_path=tmp_path)
        theirs = short_fingerprint(model_fingerprint(check_version(models / "v0001")))
        with caplog.at_level(logging.WARNING, logger="agent.models"):
            a.manager.check()
            a.manager.check()
        said = [w for w in a.status().warnings if ours in w and theirs in w]
        assert said and "restart" in said[0], a.status().warnings
        assert len([r for r in caplog.records if theirs in r.getMessage()]) == 1  # one log line, not one a poll
        ingest(a, 6, 10)  # embedded by the model it serves (loaded in memory), like the rest of its index
        assert_all_by(a, loaded / "v0001", 10)
    finally:
        a.close()
    a = agent(tmp_path, models)  # a restart embeds every sample with the folder's model
    try:
        a.manager.check()
        assert_all_by(a, models / "v0001", 10)
    finally:
        a.close()


def test_the_served_folder_removed_while_the_agent_runs_is_warned_about_and_a_newer_version_served(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The operator's second repro: v0003 served, v0002 and v0003 removed, a new model published."""
    models = tmp_path / "models"
    for seed in range(3):
        publish_linear(models, size=SIZE, dim=16, seed=seed)
    a = agent(tmp_path, models)
    try:
        ingest(a, 0, 6)
        a.manager.check()
        assert a.status().model_version == "v0003"
        removed = tmp_path / "removed"
        removed.mkdir()
        for name in ("v0002", "v0003"):
            shutil.move(models / name, removed / name)
        with caplog.at_level(logging.WARNING, logger="agent.models"):
            a.manager.check()
            a.manager.check()
        gone = [w for w in a.status().warnings if "v0003" in w and "is gone" in w]
        assert gone and a.status().model_version == "v0003", a.status().warnings
        assert len([r for r in caplog.records if "is gone" in r.getMessage()]) == 1
        assert publish_linear(models, size=SIZE, dim=16, seed=7) == "v0004"
        a.manager.check()
        st = a.status()
        assert st.model_version == "v0004" and st.embedded == 6
        assert not [w for w in st.warnings if "is gone" in w], st.warnings
        assert_all_by(a, models / "v0004", 6)
    finally:
        a.close()


def test_a_pending_version_whose_folder_now_holds_another_model_is_not_resumed_from_its_rows(tmp_path: Path) -> None:
    """A restart mid re-embed resumes the pending version from its stored rows, only if its folder still holds
    the model that made them."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    a = agent(tmp_path, models)
    try:
        ingest(a, 0, 8)
        a.manager.check()
        v2 = publish_linear(models, size=SIZE, dim=16, seed=1)
        # what a restart mid re-embed leaves: v0002 pending with the first 4 samples embedded by its model
        a.state.set_model_version(v2, "pending", 4, fingerprint=model_fingerprint(check_version(models / v2)))
        a.state.add_embeddings(EmbeddingRows(v2, 0, vectors_of(models / v2, range(4))), [1, 2, 3, 4])
    finally:
        a.close()
    put_by_hand(models, v2, seed=5, tmp_path=tmp_path)
    a = agent(tmp_path, models)
    try:
        a.manager.check()
        assert a.status().model_version == v2
        assert_all_by(a, models / v2, 8)
    finally:
        a.close()
