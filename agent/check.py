"""``shortlist check``: verify a data folder (served or not) without changing it, and read its deletion tombstones.

What is checked:
1. ``state.sqlite``: ``PRAGMA integrity_check`` through a ``query_only`` connection (a WAL reader: an agent
   serving the folder goes on writing), which also reads the samples and the tombstones in that snapshot.
2. Every payload a sample names (``samples.sha256``): its file in ``blobs/`` exists and its bytes hash to the
   digest (every file is read and hashed: the cost grows with the payloads' size, unlike GetStatus's warning,
   which only reports what work done anyway noticed).
3. Files in ``blobs/`` that no sample names: not a problem (the agent removes them at its next start), counted.

Refused as a problem without opening state.sqlite (which could roll a journal back): an unfinished backup or
restore copy (it holds agent.state.UNFINISHED_MARKER); a state.sqlite without the agent's schema is one too.
Folders killed backups or restores left beside the folder (``.D.restore-PID``, ``.D.replaced-PID``,
``.D.partial-PID``) are named (``leftovers``), not a problem of the folder itself.

The index snapshot (``index/``) and the map are caches the agent checks against the stored embeddings and
rebuilds at start (docs/agent.md, "Faults"), so they are not checked here.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from agent.backup import BLOBS, STATE_FILE, BackupUsageError, leftovers, open_source
from agent.errors import quoted
from agent.state import check_database, journal_message, no_schema_message, unfinished_copy

_THREADS = 4  # files read and hashed at once (hashlib releases the GIL on large buffers)


@dataclass
class Deletion:
    """One tombstone of the ``deletions`` table (docs/agent.md, "Deleting samples"): no ids."""

    time: float  # Unix time
    annotator: str
    reason: str
    samples: int
    label_rows: int


@dataclass
class CheckReport:
    """What ``check`` found (``shortlist check --json``). ``problems``: one line each, with what to do; empty
    when the folder is sound."""

    data_dir: str
    integrity: list[str]  # integrity_check's complaints (empty: ok)
    samples: int = 0
    schema_version: int = 0  # PRAGMA user_version of state.sqlite (an older one is migrated at the next start)
    payloads: int = 0  # distinct payloads the samples name
    blobs_kept: bool = True  # False: the folder keeps no payloads (serve --no-blobs): none checked
    missing: dict[str, list[str]] = field(default_factory=dict)  # digest -> ids of the samples naming it
    damaged: dict[str, list[str]] = field(default_factory=dict)
    orphans: int = 0  # blob files no sample names
    deletions: list[Deletion] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unfinished: bool = False  # an unfinished backup/restore copy, or a state.sqlite without the agent's schema
    # folders killed backups/restores left beside it: "PATH: what it is"
    leftovers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        d = dict(vars(self))
        d["deletions"] = [vars(x) for x in self.deletions]
        return d


def _hash_file(path: Path) -> str | None:
    """The sha256 hex of the file, None when it does not exist."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except FileNotFoundError:
        return None
    return h.hexdigest()


def _read_state(path: Path, report: CheckReport, by_digest: dict[str, list[str]]) -> None:
    """Step 1 of the module's docstring into ``report``; ``by_digest``: payload sha256 -> the ids naming it."""
    db = open_source(path)
    try:
        db.execute("BEGIN")  # one snapshot for everything read below
        report.schema_version = int(db.execute("PRAGMA user_version").fetchone()[0])
        report.integrity = check_database(db, "full")
        if report.integrity:
            return
        if db.execute("SELECT 1 FROM sqlite_master WHERE name='samples'").fetchone() is None:
            report.unfinished = True
            return
        for sid, digest in db.execute("SELECT id, sha256 FROM samples ORDER BY seq"):
            by_digest.setdefault(str(digest), []).append(str(sid))
            report.samples += 1
        if db.execute("SELECT 1 FROM sqlite_master WHERE name='deletions'").fetchone() is None:
            return  # a folder of an agent older than deletions (schema < 4): none were made
        report.deletions = [Deletion(float(t), str(a), str(r), int(n), int(rows)) for t, a, r, n, rows in
                            db.execute("SELECT time, annotator, reason, samples, label_rows FROM deletions "
                                       "ORDER BY n")]
    finally:
        db.close()


def _drop_deleted_since(path: Path, report: CheckReport) -> None:
    """Of the payloads found missing or damaged, forget the samples deleted since the state was read (a served
    folder: a DeleteSamples commits, then removes their files, while the payloads are hashed); a payload none of
    whose samples is left is no problem. Read again from the database, for those ids only."""
    if not report.missing and not report.damaged:
        return
    db = open_source(path)
    try:
        for found in (report.missing, report.damaged):
            for digest in list(found):
                left = [i for i in found[digest]
                        if db.execute("SELECT 1 FROM samples WHERE id=? AND sha256=?", (i, digest)).fetchone()]
                if left:
                    found[digest] = left
                else:
                    del found[digest]
    finally:
        db.close()


def check(data_dir: Path, no_blobs: bool = False) -> CheckReport:
    """Check the data folder ``data_dir`` (see the module's docstring); BackupUsageError when it is none.
    ``no_blobs``: the agent runs with --no-blobs (no payloads to check); otherwise a folder without ``blobs/``
    whose samples name payloads has lost every payload file (the agent says so when it starts)."""
    if not (data_dir / STATE_FILE).is_file() and unfinished_copy(data_dir) is None:
        raise BackupUsageError(f"{data_dir} is not an agent data folder (it has no {STATE_FILE}): give --data-dir "
                               "the folder `shortlist serve --data-dir` uses")
    report = CheckReport(str(data_dir), [])
    kinds = {"partial": "a killed backup's unfinished copy", "restore": "a killed restore's unfinished copy",
            "replaced": "the old folder a killed `restore --force` moved aside: a full copy of its data"}
    report.leftovers = [f"{p}: {kinds[kind]}{' (its process still runs)' if alive else ''}"
                        for p, kind, alive in leftovers(data_dir)]
    unfinished = unfinished_copy(data_dir)
    if unfinished is not None:
        report.unfinished = True
        report.problems.append(unfinished)
        return report
    # the agent never leaves a rollback journal (WAL mode); a killed backup's copy does, which SQLite would roll
    # back to an empty database: not opened (opening it rolls the journal back)
    if (data_dir / f"{STATE_FILE}-journal").exists():
        report.unfinished = True
        report.problems.append(journal_message(data_dir / STATE_FILE))
        return report
    by_digest: dict[str, list[str]] = {}
    try:
        _read_state(data_dir / STATE_FILE, report, by_digest)
    except sqlite3.DatabaseError as e:  # not a database, malformed past what integrity_check reports
        report.integrity = [f"SQLite: {e}"]
    report.payloads = len(by_digest)
    blobs = data_dir / BLOBS
    if report.unfinished:
        report.problems.append(no_schema_message(data_dir / STATE_FILE))
        return report
    if report.integrity:
        detail = " ".join("; ".join(report.integrity[:3]).split())
        report.problems.append(f"{data_dir / STATE_FILE} fails SQLite's integrity check ({detail}): restore the "
                               f"folder from a backup: shortlist restore BACKUP {data_dir} --force")
        return report
    if no_blobs:
        report.blobs_kept = False
        return report
    if not blobs.is_dir():
        report.missing = dict(by_digest)
        if by_digest:
            report.problems.append(
                f"{data_dir} has no {BLOBS}/ folder, so the payload files of all {report.samples} samples are "
                "missing: restore the folder from a backup (shortlist restore), or re-ingest the same files under "
                "the same ids; if the agent runs with --no-blobs (no payloads kept), run `shortlist check "
                "--no-blobs` instead")
        return report
    with ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="check") as pool:
        for digest, got in zip(by_digest, pool.map(lambda d: _hash_file(blobs / d[:2] / d[2:]), by_digest),
                               strict=True):
            if got is None:
                report.missing[digest] = by_digest[digest]
            elif got != digest:
                report.damaged[digest] = by_digest[digest]
    _drop_deleted_since(data_dir / STATE_FILE, report)
    for folder in blobs.iterdir():
        if len(folder.name) == 2 and folder.is_dir():
            with os.scandir(folder) as entries:
                report.orphans += sum(1 for e in entries if not e.name.startswith(".")
                                      and folder.name + e.name not in by_digest)
    for what, found in (("missing from", report.missing), ("damaged in", report.damaged)):
        if found:
            ids = [i for group in found.values() for i in group]
            report.problems.append(
                f"{len(found)} payload file(s) of {len(ids)} sample(s) are {what} {blobs} (e.g. "
                f"{quoted(ids[0])}, sha256 {next(iter(found))}): re-ingest the same files under the same ids (each is "
                "counted as a duplicate and its file written again), or restore the folder from a backup "
                "(shortlist restore)")
    return report
