"""``shortlist check``: a data folder's database, payload files and deletion tombstones, read without changing it;
and GetStatus's warning about payload files found missing or damaged (data steward's report, items 6 and 7)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent import client
from agent.blobs import sha256_hex
from agent.state import State
from shortlist.cli import app
from shortlist.v1 import agent_pb2
from tests.agent.conftest import Running, make_samples, start
from tests.agent.test_backup import blob_folder, text

runner = CliRunner()


def test_check_finds_missing_and_damaged_payloads_lists_deletions_and_says_what_to_do(tmp_path: Path) -> None:
    data = tmp_path / "d"
    digests = blob_folder(data)  # s0..s4, and one orphan blob
    ok = runner.invoke(app, ["check", "--data-dir", str(data)])
    assert ok.exit_code == 0, ok.output
    assert "integrity_check ok; 5 samples; 5 payload file(s), all present and matching their sha256" in text(ok)
    assert "1 blob file(s) no sample names" in text(ok) and "deletions: none" in text(ok)
    assert "schema version 5 (this shortlist's)" in text(ok)
    s = State(data / "state.sqlite")
    s.delete_samples([5], "ops", "GDPR request 42")  # s4; its blob stays (the agent removes it, not State)
    s.close()
    (data / "blobs" / digests[0][:2] / digests[0][2:]).unlink()
    (data / "blobs" / digests[1][:2] / digests[1][2:]).write_bytes(b"bit rot")
    before = sorted((p, p.stat().st_mtime_ns) for p in data.rglob("*") if p.is_file())
    bad = runner.invoke(app, ["check", "--data-dir", str(data)])
    assert bad.exit_code == 1, bad.output
    out = text(bad)
    assert "4 samples; 4 payload file(s), 2 missing or damaged" in out and "2 blob file(s) no sample names" in out
    assert "deletions: 1" in out and 'by "ops": 1 sample(s), 0 label row(s); reason "GDPR request 42"' in out
    assert f'1 payload file(s) of 1 sample(s) are missing from {data / "blobs"} (e.g. "s0"' in out
    assert f'1 payload file(s) of 1 sample(s) are damaged in {data / "blobs"} (e.g. "s1"' in out
    assert "re-ingest the same files under the same ids" in out
    assert sorted((p, p.stat().st_mtime_ns) for p in data.rglob("*") if p.is_file()) == before  # nothing changed
    as_json = json.loads(runner.invoke(app, ["check", "--data-dir", str(data), "--json"]).stdout)
    assert as_json["missing"] == {digests[0]: ["s0"]} and as_json["damaged"] == {digests[1]: ["s1"]}
    assert [d["reason"] for d in as_json["deletions"]] == ["GDPR request 42"]
    with open(data / "state.sqlite", "r+b") as f:
        f.write(b"not a database, not at all")
    broken = runner.invoke(app, ["check", "--data-dir", str(data)])
    assert broken.exit_code == 1 and "fails SQLite's integrity check" in text(broken), broken.output
    assert "samples and payloads not checked" in text(broken) and "all present" not in text(broken)
    assert f"shortlist restore BACKUP {data} --force" in text(broken)
    assert runner.invoke(app, ["check", "--data-dir", str(tmp_path / "none")]).exit_code == 2


def warnings(r: Running) -> list[str]:
    return list(r.stub.GetStatus(agent_pb2.GetStatusRequest()).warnings)


def test_status_warns_of_payload_files_found_missing_at_start_or_on_a_read_until_repaired(
        tmp_path: Path, registry: Path) -> None:
    samples = make_samples(4)
    path = lambda i: tmp_path / "data" / "blobs" / sha256_hex(samples[i].encoded_image)[:2] / \
        sha256_hex(samples[i].encoded_image)[2:]  # noqa: E731
    r = start(tmp_path / "data", registry)
    try:
        client.ingest(r.stub, samples)
        assert not any("missing or damaged" in w for w in warnings(r))
        path(1).write_bytes(b"bit rot")
        list(client.list_samples(r.stub, include_payload=True))  # a read that finds it
        found = [w for w in warnings(r) if "missing or damaged" in w]
        assert len(found) == 1 and "1 stored payload(s)" in found[0] and '"s1"' in found[0], found
        assert "shortlist check --data-dir" in found[0]
        client.ingest(r.stub, [samples[1]])  # re-ingesting repairs it
        assert not any("missing or damaged" in w for w in warnings(r))
    finally:
        r.stop()
    path(2).unlink()
    again = start(tmp_path / "data", registry)
    try:  # found by the start's sweep, before anything reads it
        found = [w for w in warnings(again) if "missing or damaged" in w]
        assert len(found) == 1 and '"s2": payload file missing' in found[0], found
    finally:
        again.stop()


def test_a_folder_without_its_blobs_folder_has_lost_every_payload(tmp_path: Path) -> None:
    """check said "no payloads kept (serve --no-blobs)", exit 0, of a folder whose blobs/ was removed, where an
    agent started on it says every payload is missing: it says so now, unless told the agent runs --no-blobs."""
    import shutil

    data = tmp_path / "d"
    blob_folder(data)
    shutil.rmtree(data / "blobs")
    lost = runner.invoke(app, ["check", "--data-dir", str(data)])
    assert lost.exit_code == 1, lost.output
    assert "has no blobs/ folder, so the payload files of all 5 samples are missing" in text(lost)
    assert "5 payload file(s), 5 missing or damaged" in text(lost)
    told = runner.invoke(app, ["check", "--data-dir", str(data), "--no-blobs"])
    assert told.exit_code == 0 and "no payloads kept (serve --no-blobs)" in text(told), told.output


def test_a_sample_deleted_while_payloads_are_hashed_is_no_missing_payload(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """check on a served folder: a DeleteSamples committing (and removing its payload file) after check read the
    state was reported as a missing payload, exit 1, with the advice to re-ingest the deleted image."""
    from agent import check as check_module

    data = tmp_path / "d"
    digests = blob_folder(data)
    hash_file = check_module._hash_file
    deleted: list[str] = []

    def deleting_first(path: Path) -> str | None:
        if not deleted:  # the agent deletes s0 meanwhile: its row goes, then its payload file
            deleted.append("s0")
            s = State(data / "state.sqlite")
            s.delete_samples([s.lookup("s0").seq], "ops", "privacy")  # type: ignore[union-attr]
            s.close()
            (data / "blobs" / digests[0][:2] / digests[0][2:]).unlink()
        return hash_file(path)

    monkeypatch.setattr(check_module, "_hash_file", deleting_first)
    res = runner.invoke(app, ["check", "--data-dir", str(data)])
    assert deleted and res.exit_code == 0, res.output
    assert "missing" not in text(res).replace("missing or damaged", "")


def test_check_says_an_older_folder_will_be_migrated(tmp_path: Path) -> None:
    """check, the command to run before an upgrade, said nothing of the folder's schema version."""
    import sqlite3

    data = tmp_path / "d"
    blob_folder(data)
    with sqlite3.connect(data / "state.sqlite") as db:
        db.execute("PRAGMA user_version=4")
    res = runner.invoke(app, ["check", "--data-dir", str(data)])
    assert res.exit_code == 0 and "schema version 4: this shortlist's agent migrates it to 5" in text(res), res.output
    assert json.loads(runner.invoke(app, ["check", "--data-dir", str(data), "--json"]).stdout)["schema_version"] == 4
