"""Broken published versions are refused with a reason in GetStatus warnings (kept across restarts),
the previous version keeps serving, and a broken newest version never hides a good one before it."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.core import Agent
from agent.ingest import Incoming
from agent.testing import foreign_encoder, publish_linear, publish_model
from shortlist.manifest import MANIFEST_NAME, ONNX_NAME, Preprocess, check_version, sha256_file
from tests.agent.conftest import CLASSES, SIZE, make_images, png


def agent(tmp_path: Path, models: Path) -> Agent:
    return Agent(AgentConfig(tmp_path / "data", models, background=False, use_cuda=False))


def ingest_three(a: Agent) -> None:
    """Three images stored in ``a``'s pool (x0, x1, x2)."""
    assert a.ingest.batch([Incoming(f"x{i}", "image", png(im), png(im))
                           for i, im in enumerate(make_images(3))]).accepted == 3


def edit_manifest(folder: Path, **changes: object) -> None:
    m = json.loads((folder / MANIFEST_NAME).read_text())
    m.update(changes)
    (folder / MANIFEST_NAME).write_text(json.dumps(m))


def corrupt_onnx_hash_ok(v: Path) -> None:  # the bytes are garbage but the manifest's hash matches them
    (v / ONNX_NAME).write_bytes(b"not an onnx graph" * 10)
    edit_manifest(v, files={ONNX_NAME: sha256_file(v / ONNX_NAME)})


def truncated_onnx(v: Path) -> None:
    data = (v / ONNX_NAME).read_bytes()
    (v / ONNX_NAME).write_bytes(data[: len(data) // 2])


def symlink_out(v: Path) -> None:
    outside = v.parent.parent / "elsewhere.onnx"
    shutil.copy(v / ONNX_NAME, outside)
    (v / ONNX_NAME).unlink()
    os.symlink(outside, v / ONNX_NAME)


def version_symlink_out(v: Path) -> None:
    outside = v.parent.parent / "elsewhere"
    shutil.move(v, outside)
    os.symlink(outside, v)


def absolute_path(v: Path) -> None:
    edit_manifest(v, files={ONNX_NAME: sha256_file(v / ONNX_NAME), "/etc/passwd": sha256_file(Path("/etc/passwd"))})


def fixed_batch(v: Path) -> None:  # exported at batch 1 without dynamic axes
    (v / ONNX_NAME).write_bytes(foreign_encoder(SIZE, 16, batch=1).SerializeToString())
    edit_manifest(v, files={ONNX_NAME: sha256_file(v / ONNX_NAME)}, outputs=["embedding"], classes=None)


BREAKAGES: dict[str, tuple[Callable[[Path], object], str]] = {
    "fixed batch": (fixed_batch, "the batch axis is fixed at 1"),
    "unknown interpolation": (lambda v: edit_manifest(v, preprocess={"size": [8, 8], "mean": [0, 0, 0],
                                                                     "std": [1, 1, 1], "interpolation": "bicubc"}),
                              "write one of bilinear, bicubic"),
    "onnx garbage": (corrupt_onnx_hash_ok, "cannot load"),
    "onnx truncated": (truncated_onnx, "sha256"),
    "wrong embedding size": (lambda v: edit_manifest(v, embedding_dim=8), "disagree"),
    "no embedding output": (lambda v: edit_manifest(v, outputs=["feature"]), "no 'embedding' output"),
    "unknown format": (lambda v: edit_manifest(v, format=99), "unsupported manifest format 99"),
    "zero std": (lambda v: edit_manifest(v, preprocess={"size": [8, 8], "mean": [0, 0, 0], "std": [1, 0, 1]}),
                 "std"),
    "dotdot path": (lambda v: edit_manifest(v, files={"../" + ONNX_NAME: "0" * 64, ONNX_NAME: sha256_file(
        v / ONNX_NAME)}), "outside its version folder"),
    "absolute path": (absolute_path, "outside its version folder"),
    "symlinked file": (symlink_out, "outside the registry"),
    "symlinked folder": (version_symlink_out, "outside the registry"),
    "not json": (lambda v: (v / MANIFEST_NAME).write_text("{not json"), "not JSON"),
    "not an object": (lambda v: (v / MANIFEST_NAME).write_text("[1, 2]"), "not a JSON object"),
    "no manifest": (lambda v: (v / MANIFEST_NAME).unlink(), "no manifest.json"),
    "manifest before files": (lambda v: (v / ONNX_NAME).unlink(), "missing"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_broken_version_is_refused_with_a_reason(tmp_path: Path, breakage: str) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, classes=CLASSES, seed=0)
    a = agent(tmp_path, models)
    try:
        assert a.ingest.batch([Incoming("x", "image", png(im), png(im)) for im in make_images(1)]).accepted == 1
        good = publish_linear(models, size=SIZE, dim=16, classes=CLASSES, seed=1)  # v0002: good
        broken = publish_linear(models, size=SIZE, dim=16, classes=CLASSES, seed=2)  # v0003: broken below
        breaks, why = BREAKAGES[breakage]
        breaks(models / broken)
        a.manager.check()
        st = a.status()
        assert st.model_version == good, st.warnings  # the newest GOOD version, not the one before it
        assert st.embedded == 1
        assert [w for w in st.warnings if broken in w and why in w], st.warnings
    finally:
        a.close()
    a = agent(tmp_path, models)  # the warning survives a restart
    try:
        assert a.status().model_version == good
        assert [w for w in a.status().warnings if broken in w and why in w]
    finally:
        a.close()


def test_refused_first_version_and_a_copy_that_completes(tmp_path: Path) -> None:
    """No model yet and the only version is half copied: nothing served, a warning; once the copy is
    complete the same folder is looked at again and served."""
    models = tmp_path / "models"
    v = publish_linear(models, size=SIZE, dim=16, seed=0)
    manifest = (models / v / MANIFEST_NAME).read_text()
    (models / v / MANIFEST_NAME).unlink()
    a = agent(tmp_path, models)
    try:
        st = a.status()
        assert st.model_version == "" and [w for w in st.warnings if "no manifest.json" in w]
        a.manager.check()  # unchanged folder: not read again, still refused
        assert a.status().model_version == ""
        (models / v / MANIFEST_NAME).write_text(manifest)
        a.manager.check()
        st = a.status()
        assert st.model_version == v and not st.warnings
    finally:
        a.close()


def test_check_version_rejects_nul_and_backslash_names(tmp_path: Path) -> None:
    models = tmp_path / "models"
    v = models / publish_linear(models, size=SIZE, dim=16, seed=0)
    check_version(v)
    for name in ("a\x00b", "..\\x", ""):
        edit_manifest(v, files={ONNX_NAME: sha256_file(v / ONNX_NAME), name: "0" * 64})
        with pytest.raises(ValueError, match="invalid file name"):
            check_version(v)


def test_a_version_refused_for_a_setting_is_tried_again_after_a_restart(tmp_path: Path) -> None:
    """--no-blobs refuses a new version (the pool cannot be re-embedded); that is about the agent's
    settings, not the folder, so a restart with blobs on tries it again."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    a = Agent(AgentConfig(tmp_path / "data", models, background=False, use_cuda=False, blobs=False))
    try:
        assert a.ingest.batch([Incoming(f"x{i}", "image", png(im), png(im))
                               for i, im in enumerate(make_images(2))]).accepted == 2
        v2 = publish_linear(models, size=SIZE, dim=24, seed=1)
        a.manager.check()
        assert a.status().model_version == "v0001" and [w for w in a.status().warnings if "--no-blobs" in w]
    finally:
        a.close()
    a = agent(tmp_path, models)
    try:
        a.manager.check()
        st = a.status()  # served; the two samples whose payloads were never kept are reported
        assert st.model_version == v2 and [w for w in st.warnings if "2 sample(s) cannot be embedded" in w]
    finally:
        a.close()


def test_a_version_failing_while_it_embeds_the_pool_is_refused_once_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model that passes the load check but fails on the stored samples (it runs at a batch of 2 only) is
    refused with the reason, its partial embeddings dropped, and not tried again at every poll."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    a = agent(tmp_path, models)
    try:
        ingest_three(a)
        bad = publish_model(models, foreign_encoder(SIZE, 16, reshape_batch=2), Preprocess(size=SIZE))
        a.manager.check()  # raised out of the poll (a traceback every poll) before
        st = a.status()
        assert st.model_version == "v0001" and st.pending_model_version == "" and st.embedded == 3
        assert [w for w in st.warnings if w.startswith(f"{bad} refused: it failed while embedding the stored "
                                                       "samples") and "failed on a batch of 3 images" in w], st.warnings
        assert a.state.model_versions_full()[bad][0] == "failed"
        loads: list[str] = []
        monkeypatch.setattr(a.manager, "_load", lambda *args, **kw: loads.append(args[0]))
        a.manager.check()  # the folder has not changed: not tried again
        assert loads == [] and a.status().model_version == "v0001"
    finally:
        a.close()


def test_a_first_model_failing_on_the_stored_samples_is_one_warning_not_a_traceback_a_poll(tmp_path: Path) -> None:
    models = tmp_path / "models"
    a = agent(tmp_path, models)  # no model yet: samples are stored, embedded once one is published
    try:
        ingest_three(a)
        v = publish_model(models, foreign_encoder(SIZE, 16, reshape_batch=2), Preprocess(size=SIZE))
        a.manager.check()  # serves it (it passes the load check), then fails on the batch of 3: no exception
        st = a.status()
        assert st.model_version == v and st.embedded == 0
        assert [w for w in st.warnings if w.startswith(f"{v} cannot embed the stored samples it lacks: the model "
                                                       f"{v} failed on a batch of 3 images")], st.warnings
    finally:
        a.close()


def test_a_version_an_older_agent_refused_for_its_format_is_served_after_the_upgrade(tmp_path: Path) -> None:
    """An agent that read format 1 only refused a crop (format 2) version for good, keyed by its folder; today's
    agent, which reads format 2, must look again at start instead of restoring that refusal as its own."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    a = agent(tmp_path, models)
    try:
        ingest_three(a)
        crop = Preprocess(size=SIZE, resize="crop", crop_fraction=0.875)
        v2 = publish_model(models, foreign_encoder(SIZE, 24), crop)
        assert json.loads((models / v2 / MANIFEST_NAME).read_text())["format"] == 2
        # What the agent of commit a0440ea stored (agent/models.py ``_refuse(..., for_good=True)``): the folder's
        # fingerprint alone, nothing of the reader that refused it.
        a.state.set_model_version(v2, "failed", 0, f"{v2} refused: unsupported manifest format 2 (this agent reads "
                                  "format 1; upgrade shortlist to serve it)", fingerprint=a.manager._fingerprint(v2))
    finally:
        a.close()
    a = agent(tmp_path, models)
    try:
        a.manager.check()
        st = a.status()
        assert st.model_version == v2 and st.embedded == 3, st
        assert not [w for w in st.warnings if "unsupported manifest format" in w], st.warnings
    finally:
        a.close()


def test_an_older_agents_refusal_of_a_folder_changed_while_embedded_stands_after_the_upgrade(tmp_path: Path) -> None:
    """Stored by an agent older than the refusals' tags: a version whose folder changed while the pool was embedded
    with it is the folder's refusal, not a reader's: today's agent keeps it (it would serve the changed folder)."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    a = agent(tmp_path, models)
    try:
        v2 = publish_linear(models, size=SIZE, dim=24, seed=1)
        why = (f"{v2} refused: {models / v2} holds another model than the one being embedded (its files changed "
               "while the pool was being embedded with it); it was never served")
        a.state.set_model_version(v2, "failed", 0, why, fingerprint=a.manager._fingerprint(v2))
    finally:
        a.close()
    a = agent(tmp_path, models)
    try:
        a.manager.check()
        assert a.status().model_version == "v0001"
        assert [w for w in a.status().warnings if "holds another model" in w]
    finally:
        a.close()


def test_a_version_this_agent_refused_for_good_stays_refused_after_a_restart(tmp_path: Path) -> None:
    """The refusal is stored with this reader: the same agent restarted does not look at the folder again."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    a = agent(tmp_path, models)
    try:
        v2 = publish_linear(models, size=SIZE, dim=24, seed=1)
        edit_manifest(models / v2, format=7)
        a.manager.check()
        assert [w for w in a.status().warnings if "unsupported manifest format 7" in w]
    finally:
        a.close()
    a = agent(tmp_path, models)
    try:
        assert a.manager._fingerprints[v2] == a.manager._fingerprint(v2)  # restored: not checked again
        a.manager.check()
        assert a.status().model_version == "v0001"
        assert [w for w in a.status().warnings if "unsupported manifest format 7" in w]
    finally:
        a.close()


def test_a_manifest_the_reader_before_the_schema_check_served_is_still_served_after_the_upgrade(
        tmp_path: Path) -> None:
    """Written by another JSON writer (8.0 for 8, nulls): the a0440ea agent served it; today's must too, as the same
    model (its stored embeddings kept), not log "cannot be loaded any more" and end with no model."""
    models = tmp_path / "models"
    v1 = publish_linear(models, size=SIZE, dim=16, seed=0)
    m = json.loads((models / v1 / MANIFEST_NAME).read_text())
    edit_manifest(models / v1, format=1.0, created=None, git_commit=None, training_config=None,
                  preprocess={**m["preprocess"], "size": [float(v) for v in SIZE],
                              "mean": [str(v) for v in m["preprocess"]["mean"]]})
    a = agent(tmp_path, models)
    try:
        ingest_three(a)
    finally:
        a.close()
    a = agent(tmp_path, models)
    try:
        a.manager.check()
        st = a.status()
        assert st.model_version == v1 and st.embedded == 3 and not [w for w in st.warnings if "refused" in w], st
    finally:
        a.close()
