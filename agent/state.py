"""The agent's durable state: one SQLite database (WAL) in the data folder, mirrored in memory.

Tables:
    samples        seq (rowid, ingest order), id, uri, metadata (JSON), kind (image|tensor), sha256, ingested_at
    labels         every label ever given (seq, class, annotator, time, source, model version served then);
                   the current label is the latest; a row with class RETRACTED (-1) is a retraction
                   (RetractLabels): the sample is unlabelled from then on, until labelled again
    audit          samples drawn by Select strategy "audit" (seq, selection id, time): agent/audit.py
    classes        the class list in index order; ``meta.classes_closed`` says whether it is closed; a closed
                   list's first ``meta.class_count`` names are its classes, the rest retired names that only
                   the label history uses (``set_closed_classes``); ``meta.renamed_classes``: names retired by
                   ``rename_class`` (RenameClass) -> the class they were renamed or merged to
    embeddings     per model version, row r of its index: sample seq, vector (float32 bytes), logits, pretext loss
    selections     recorded Selects: request, result, model version, time (every uniform draw; the newest
                   others, agent.core.SELECTIONS_KEPT)
    queues         labelling queues (GetQueue / UpdateQueue; the web app's Queue page): name -> JSON body
    model_versions name, status (serving|pending|retired|superseded|failed), embedded count, error (why refused),
                   updated, fingerprint: of a refused version its folder's (names, sizes, mtimes: the folder is
                   looked at again only when it changes), then "|" and what the refusal depends on: the
                   manifest reader (shortlist.manifest.READER_ID: an upgraded agent looks again) or "folder";
                   of a version embedded or served the model's
                   (``model:<sha256>``, shortlist.manifest.model_fingerprint), which the stored embeddings were
                   made by; '' when unknown (rows written before it was recorded: agent/models.py compares
                   their embeddings with the folder's model when it loads them)
    deletions      one tombstone per DeleteSamples: time, annotator, reason, how many samples, label rows removed,
                   the highest seq ever given then (seqs are never reused); no ids (docs/agent.md "Deleting samples")
    meta           key/value

Schema version: ``PRAGMA user_version`` holds ``SCHEMA_VERSION``. Opening a folder written by an older
agent migrates it (``MIGRATIONS``, each step in one transaction, so a crash leaves it at the old or the
new version); a folder written by a newer agent is refused (``SchemaVersionError``) before anything is
changed. To change the schema: change ``SCHEMA`` (what a new folder gets), append the step that brings a
folder of the previous version to it to ``MIGRATIONS``, and add a test that opens an old folder.

Durability: ``journal_mode=WAL`` with ``synchronous=FULL``, so a commit is on disk (WAL fsynced) when
``commit`` returns; the agent acknowledges Ingest and SubmitLabels only after that. (``NORMAL`` would
be crash-safe for the file but can lose the last commits on power loss, i.e. acknowledged samples.)
Every change is one transaction, so a crash leaves the state before or after it, never between.

Damage: opening checks the file (``check``: ``PRAGMA integrity_check`` by default, ``quick_check``, or
none) before anything is read, and a file SQLite finds corrupt (SQLITE_CORRUPT, SQLITE_NOTADB) while
opening, or that fails the check, is refused with ``StateCorruptError`` (what SQLite said; restore a
backup). ``quick_check`` misses index entries missing from an index (the damage a plain ``cp`` of a live
folder most often has): the agent then reads the labels through that index and starts with labels
missing, without an error; ``integrity_check`` finds it (its cost: docs/agent.md, "Backup and restore").

All methods are thread-safe (one lock; SQLite writes are serialised anyway). The in-memory mirror
(ids, metadata, current labels) is updated only after a commit succeeds.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import quoted
from agent.security import owner_only_file

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, uri TEXT NOT NULL, metadata TEXT NOT NULL,
    kind TEXT NOT NULL, sha256 TEXT NOT NULL, ingested_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS labels (
    n INTEGER PRIMARY KEY, seq INTEGER NOT NULL REFERENCES samples(seq), class INTEGER NOT NULL,
    annotator TEXT NOT NULL, time REAL NOT NULL, source TEXT NOT NULL DEFAULT '',
    model_version TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS labels_seq ON labels(seq);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY REFERENCES samples(seq), selection_id TEXT NOT NULL, time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS classes (idx INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS embeddings (
    version TEXT NOT NULL, row INTEGER NOT NULL, seq INTEGER NOT NULL, vec BLOB NOT NULL,
    logits BLOB, pretext REAL, PRIMARY KEY (version, row)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS selections (
    selection_id TEXT PRIMARY KEY, request TEXT NOT NULL, result TEXT NOT NULL,
    model_version TEXT NOT NULL, time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS model_versions (
    name TEXT PRIMARY KEY, status TEXT NOT NULL, embedded INTEGER NOT NULL, error TEXT NOT NULL,
    updated REAL NOT NULL, fingerprint TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS queues (name TEXT PRIMARY KEY, body TEXT NOT NULL, time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deletions (
    n INTEGER PRIMARY KEY, time REAL NOT NULL, annotator TEXT NOT NULL, reason TEXT NOT NULL,
    samples INTEGER NOT NULL, label_rows INTEGER NOT NULL, max_seq INTEGER NOT NULL);
"""

SERVING_KEY = "serving_version"  # meta key: the model version served (agent/models.py)
INGEST_ANNOTATOR = "ingest"
INGEST_SOURCE = "ingest"  # labels.source of labels that came with Ingest
MANUAL_SOURCE = "manual"  # ... of SubmitLabels without a source
RENAME_SOURCE = "rename"  # ... of the labels a class rename moved (RenameClass; its annotator: who renamed)
# ... of a label put back by RetractLabels with restore_previous (its annotator: who gave the label put back,
# not who asked for the undo; no label given: agent/progress.py does not count it as one)
RESTORE_SOURCE = "restored"
# The sources only the agent gives (SubmitLabels refuses them: agent/core.py ``source_problem``; `shortlist label`
# of an exported labels.csv stores such rows with its --source), each with what it marks.
AGENT_SOURCES = {INGEST_SOURCE: "labels that come with Ingest",
                 RESTORE_SOURCE: "the labels RetractLabels puts back (restore_previous)",
                 RENAME_SOURCE: "the labels a class rename moves (RenameClass)"}
RENAMED_KEY = "renamed_classes"  # meta: JSON {retired name: the class it was renamed (or merged) to}

# meta: the highest label row number (labels.n) a deletion removed. SQLite numbers a new row one past the highest
# row left, so without it a label given after the deletion of the samples with the latest rows took their numbers
# again, and a ListLabels client resuming after_seq (a row number it had seen) missed it.
LABEL_ROWS_HIGH_KEY = "label_rows_high"
# Status.label_events of a state database: its label rows, and the rows deletions removed plus one per deletion
# (the deletions table): State's counter at open, and what `shortlist backup` / `restore` print.
LABEL_EVENTS_SQL = ("SELECT (SELECT COUNT(*) FROM labels) + (SELECT COALESCE(SUM(label_rows + 1), 0) FROM "
                    "deletions)")
# The samples whose current label is an accepted prior: the latest label row other than a rename's (a rename
# moves a label, it does not change where the label came from) has source prior:METHOD and is no retraction.
ACCEPTED_SQL = ("SELECT l.seq FROM labels l JOIN (SELECT seq, MAX(n) AS m FROM labels WHERE source != ? GROUP BY seq) "
                "t ON l.n = t.m WHERE l.source LIKE 'prior:%' AND l.class != ?")
# The samples whose current label is a label RetractLabels put back (restore_previous): whether each is an
# accepted prior follows the label row it put back (``accepted_history``), read from its history at open.
RESTORED_SQL = ("SELECT l.seq FROM labels l JOIN (SELECT seq, MAX(n) AS m FROM labels WHERE source != ? GROUP BY "
                "seq) t ON l.n = t.m WHERE l.source = ?")
INDEX_STALE_KEY = "index_snapshots_stale"  # meta: "1" after a deletion, until the next start drops the snapshots
RETRACTED = -1  # labels.class of a retraction (RetractLabels)

def accepted_history(rows: Sequence[tuple[int, str]]) -> bool:
    """Whether the current label of a sample whose label rows are ``rows`` ((class, source), oldest first) is
    an accepted prior. A prior:METHOD row is one (not a retraction); a rename's row moves the label before it
    and keeps where it came from; a row RetractLabels put back (RESTORE_SOURCE) is a copy of the row before the
    undone one, three rows back (that row, the undone row, the undo's retraction, the put-back row: State's
    ``label_before_last`` at the undo), and keeps where that one came from, so an accepted prior changed and
    the change undone is an accepted prior again, not a person's label (the calibration leaves it out)."""
    accepted: list[bool] = []
    for i, (cls, source) in enumerate(rows):
        if source == RENAME_SOURCE:
            accepted.append(i > 0 and accepted[i - 1])
        elif source == RESTORE_SOURCE:
            accepted.append(cls != RETRACTED and i >= 3 and accepted[i - 3])
        else:
            accepted.append(source.startswith("prior:") and cls != RETRACTED)
    return bool(accepted) and accepted[-1]


# PRAGMA journal_size_limit: once a checkpoint has copied the whole WAL into the database, the next commit
# truncates the WAL file to this size. Without it the WAL keeps the size of its largest transaction (dropping a
# retired version's embeddings, an outside VACUUM) until the agent stops. Set above the WAL's working size (the
# 1,000-page autocheckpoint), so everyday commits never cut it: measured by scripts/experiments/wal_size_limit.py,
# figures in docs/agent.md "Backup and restore".
JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024

SCHEMA_VERSION = 5


def _v0_to_v1(db: sqlite3.Connection) -> None:
    """Schema 0 (the release before schema versions) -> 1: refused model versions remember their
    folder's fingerprint."""
    cols = [r[1] for r in db.execute("PRAGMA table_info(model_versions)")]
    if "fingerprint" not in cols:
        db.execute("ALTER TABLE model_versions ADD COLUMN fingerprint TEXT NOT NULL DEFAULT ''")


def _v1_to_v2(db: sqlite3.Connection) -> None:
    """Schema 1 -> 2: labels remember their source and the model version served when they arrived (older
    labels: "ingest" for those that came with Ingest, "manual" for the rest; version unknown), and the
    audit table records Select strategy "audit"'s draws."""
    cols = [r[1] for r in db.execute("PRAGMA table_info(labels)")]
    if "source" not in cols:
        db.execute("ALTER TABLE labels ADD COLUMN source TEXT NOT NULL DEFAULT ''")
        db.execute("UPDATE labels SET source = CASE WHEN annotator = ? THEN ? ELSE ? END",
                   (INGEST_ANNOTATOR, INGEST_SOURCE, MANUAL_SOURCE))
    if "model_version" not in cols:
        db.execute("ALTER TABLE labels ADD COLUMN model_version TEXT NOT NULL DEFAULT ''")
    db.execute("CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY REFERENCES samples(seq), "
               "selection_id TEXT NOT NULL, time REAL NOT NULL)")


def _v2_to_v3(db: sqlite3.Connection) -> None:
    """Schema 2 -> 3: labelling queues are kept (the queues table), and labels may be retracted (rows
    with class RETRACTED; an agent of schema 2 would read -1 as the last class, hence the new version)."""
    db.execute("CREATE TABLE IF NOT EXISTS queues (name TEXT PRIMARY KEY, body TEXT NOT NULL, time REAL NOT NULL)")


_DELETIONS_TABLE = ("CREATE TABLE IF NOT EXISTS deletions (n INTEGER PRIMARY KEY, time REAL NOT NULL, "
                    "annotator TEXT NOT NULL, reason TEXT NOT NULL, samples INTEGER NOT NULL, "
                    "label_rows INTEGER NOT NULL, max_seq INTEGER NOT NULL)")


def _v3_to_v4(db: sqlite3.Connection) -> None:
    """Schema 3 -> 4: samples may be deleted (DeleteSamples): the deletions table keeps a tombstone of each,
    and the seqs it freed are never given again (an agent of schema 3 would give a deleted last seq again and
    count the label revision from the rows left, hence the new version)."""
    db.execute(_DELETIONS_TABLE)


def _v4_to_v5(db: sqlite3.Connection) -> None:
    """Schema 4 -> 5: label rows are numbered past every row ever stored (meta LABEL_ROWS_HIGH_KEY, kept by
    deletions), ListLabels' cursor. Nothing to change in the tables; the version keeps agents of schema 4 away,
    which number a new row one past the highest row left and so give a deleted row's number again (a client
    syncing by cursor then misses the row)."""
    db.execute("INSERT OR IGNORE INTO meta(key, value) SELECT ?, CAST(COALESCE(MAX(n), 0) AS TEXT) FROM labels",
               (LABEL_ROWS_HIGH_KEY,))


# MIGRATIONS[v] brings a folder from schema v to v + 1.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v0_to_v1, _v1_to_v2, _v2_to_v3, _v3_to_v4, _v4_to_v5]
assert len(MIGRATIONS) == SCHEMA_VERSION


class SchemaVersionError(RuntimeError):
    """The data folder was written by a newer agent (its schema version is higher than this agent's)."""


class StateCorruptError(RuntimeError):
    """state.sqlite is damaged: SQLite refused it as corrupt or not a database, or it failed the start check."""


# Written first into the folder a backup or restore copies into (``.DEST.partial-PID``, ``.D.restore-PID``) and
# removed last, just before its rename into place: a folder holding it is an unfinished copy, whose state.sqlite
# may hold a hot rollback journal that SQLite would roll back to an empty database (agent/backup.py).
UNFINISHED_MARKER = "UNFINISHED-COPY.txt"


def unfinished_copy(folder: Path) -> str | None:
    """What to say of ``folder`` when it is an unfinished backup or restore copy (it holds UNFINISHED_MARKER),
    else None."""
    if not (folder / UNFINISHED_MARKER).exists():
        return None
    return (f"{folder} is an unfinished backup (or restore) copy: the process that made it stopped before the "
            f"end (it holds {UNFINISHED_MARKER}), so it may hold part of the data or none: it is no data folder. "
            "Remove it (it may hold a copy of deleted data) and take the backup again: shortlist backup --data-dir "
            "D --out NEW (docs/agent.md, \"Backup and restore\")")


# ``State(check=...)``: what opening a database checks before reading it (docs/agent.md, "Backup and restore").
STATE_CHECKS = {"full": "integrity_check", "quick": "quick_check", "none": ""}
# SQLite's primary result codes that mean the file itself is damaged (the rest, e.g. SQLITE_FULL, SQLITE_READONLY,
# SQLITE_BUSY, are the disk's or another process's, and keep their own messages).
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
MAX_CHECK_ERRORS = 20  # problems a check lists at most


def journal_message(path: Path) -> str:
    """What ``serve`` and ``check`` say of a state.sqlite beside a rollback journal."""
    return (f"{path} has a rollback journal beside it ({path.name}-journal), which the agent never leaves (it "
            "runs in WAL mode): an unfinished copy, e.g. of a killed `shortlist backup`, whose journal SQLite "
            "would roll back to an empty database; it is left unopened. Give --data-dir the right folder (a "
            f"complete backup), or restore {path.parent} from one (shortlist restore BACKUP {path.parent} --force; "
            "docs/agent.md, \"Backup and restore\")")


def no_schema_message(path: Path) -> str:
    """What ``serve`` and ``check`` say of a state.sqlite that holds tables, none of them the agent's."""
    return (f"{path} holds no shortlist agent data (no samples table), though it is not a new empty file: some "
            "other program's database, and the agent creates a new pool only in a new folder: give --data-dir "
            "the right folder, restore "
            f"{path.parent} from a backup (shortlist restore BACKUP {path.parent} --force), or, to start an empty "
            f"pool, a new folder")


def corrupt_message(path: Path, detail: str) -> str:
    """What ``serve`` says about a damaged state database, and what to do."""
    detail = " ".join(detail.split())  # integrity_check's lines hold newlines
    if len(detail) > 240:
        detail = detail[:240] + " ..."
    return (f"{path} is corrupt (SQLite: {detail}): restore it from a backup: shortlist restore BACKUP "
            f"{path.parent} --force (docs/agent.md \"Backup and restore\"). Just restored by copying files over "
            f"the folder? The old folder's {path.name}-wal, replayed onto the copy, is the likely cause: "
            "shortlist restore leaves none")


def is_corruption(e: sqlite3.DatabaseError) -> bool:
    """Whether SQLite raised ``e`` because the database file is damaged."""
    code = getattr(e, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _CORRUPT_CODES


def check_database(db: sqlite3.Connection, how: str = "full", max_errors: int = MAX_CHECK_ERRORS) -> list[str]:
    """The problems ``PRAGMA integrity_check`` (``how`` "full") or ``quick_check`` ("quick") finds, at most
    ``max_errors`` (empty: sound; "none": not checked)."""
    pragma = STATE_CHECKS[how]
    if not pragma:
        return []
    rows = [str(r[0]) for r in db.execute(f"PRAGMA {pragma}({int(max_errors)})")]
    return [] if rows == ["ok"] else rows


@dataclass(frozen=True)
class SampleRecord:
    """One stored sample (payload bytes live in the blob store under ``sha256``)."""

    seq: int
    id: str
    uri: str
    metadata: dict[str, str]
    kind: str  # "image" (encoded bytes) or "tensor" (a serialised shortlist.v1.Tensor)
    sha256: str


@dataclass
class NewSample:
    """A validated sample about to be stored; ``label`` is a class index or -1."""

    id: str
    uri: str
    metadata: dict[str, str]
    kind: str
    sha256: str
    label: int = -1


@dataclass
class EmbeddingRows:
    """Embeddings of some samples under one model version, for rows ``start_row..start_row+K-1``.

    vecs: KxD float32 (L2-normalised); logits: KxC float32 or None; pretext: K float32 or None."""

    version: str
    start_row: int
    vecs: np.ndarray
    logits: np.ndarray | None = None
    pretext: np.ndarray | None = None


@dataclass
class StoredEmbeddings:
    """Everything stored for one version, in row order: seqs R int64, vecs RxD, logits RxC | None,
    pretext R | None."""

    seqs: np.ndarray
    vecs: np.ndarray
    logits: np.ndarray | None
    pretext: np.ndarray | None


@dataclass(frozen=True)
class LabelEvent:
    """One label as stored: ``label`` is the class name ("" for a retraction); ``current`` whether it is the
    sample's current label (the latest, and not a retraction)."""

    seq: int
    id: str
    label: str
    annotator: str
    time: float
    source: str
    model_version: str
    audit: bool
    current: bool
    retracted: bool = False
    row: int = 0  # the label row's number (labels.n): increasing in storage order, never given twice


class ClassListError(ValueError):
    """The class list given at start-up conflicts with labels already stored."""


class State:
    """SQLite-backed state of one agent data folder, with an in-memory mirror for fast Select."""

    def __init__(self, path: Path, classes: Sequence[str] | None = None, check: str = "full") -> None:
        """Open (or create) the database at ``path``; ``check`` ("full", "quick", "none": ``STATE_CHECKS``)
        is what is verified before it is read. StateCorruptError when it is damaged, SchemaVersionError when
        a newer agent wrote it, ClassListError when ``classes`` conflicts with its labels."""
        if check not in STATE_CHECKS:
            raise ValueError(f"state check {quoted(check)}: one of {', '.join(STATE_CHECKS)}")
        self.path = path
        self._lock = threading.RLock()
        unfinished = unfinished_copy(path.parent)
        if unfinished is not None:
            raise StateCorruptError(unfinished)
        # A rollback journal beside it: the agent never leaves one (it runs in WAL mode), a killed backup's copy
        # does, and opening it would roll it back to an empty database, which the next start would take for a new
        # one: refused before SQLite opens it, so the file is left as it is.
        if Path(f"{path}-journal").exists():
            raise StateCorruptError(journal_message(path))
        owner_only_file(path)  # 0600; SQLite gives -wal and -shm the database file's mode
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            self._open(classes, check)
        except sqlite3.DatabaseError as e:
            self._db.close()
            if is_corruption(e):
                raise StateCorruptError(corrupt_message(path, str(e))) from None
            raise
        except BaseException:
            self._db.close()
            raise

    def _open(self, classes: Sequence[str] | None, check: str) -> None:
        """Check the database, create, migrate or refuse its schema, and read it into the mirror."""
        path = self.path
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        # Zero freed space for the connection's whole life, not only inside a deletion: a row rewritten later (a
        # queue replaced) leaves its old bytes in the page's free space otherwise, and a deleted id it listed
        # then survives the deletion in the file and every later backup (the backup API copies pages, free ones
        # too). Not stored in the file: every connection that writes must set it (agent/backup.py's copy too).
        self._db.execute("PRAGMA secure_delete=ON")
        self._pending_sources: list[tuple[int, bool]] = []  # (seq, accepted) of the open transaction's label rows
        self._accepted: set[int] = set()  # (filled below, once the schema is current)
        self._db.execute(f"PRAGMA journal_size_limit={int(JOURNAL_SIZE_LIMIT)}")
        t0 = time.monotonic()
        problems = check_database(self._db, check)
        if problems:
            more = "" if len(problems) <= 3 else "; and more" if len(problems) >= MAX_CHECK_ERRORS else \
                f"; and {len(problems) - 3} more"
            raise StateCorruptError(corrupt_message(path, "; ".join(problems[:3]) + more))
        if check != "none":
            log.info("%s: %s ok in %.2f s", path, STATE_CHECKS[check], time.monotonic() - t0)
        self._open_schema()
        self._records: list[SampleRecord | None] = [None]  # index = seq (seqs start at 1)
        self._seq_by_id: dict[str, int] = {}
        # NFC form -> a stored id not in NFC (e.g. an NFD file name from macOS), for ``unicode_variant``: the
        # few such ids only, so no call scans every id to explain an unknown one
        self._id_by_nfc: dict[str, str] = {}
        self._seq_by_sha: dict[str, int] = {}  # the first sample stored with each payload
        # by seq: the first seq stored with the same payload (itself for the first; 0 for seq 0 and gaps), and
        # how many samples are byte-identical to an earlier one (0: no twins, payload_groups answers None)
        self._first_by_seq = np.zeros(1024, np.int64)
        self._twins = 0
        self._group_members: dict[int, list[int]] = {}  # first seq -> the seqs of its payload, when 2 or more
        self._label = np.full(1024, -1, np.int64)  # current class index by seq, -1 = unlabelled
        self._labeled_count = 0
        # Label rows ever stored (labels, changes, retractions): Status.label_events, a revision of the labels
        # that changes with every label change (the labelled count does not: retract one, label another).
        # Rows a deletion removed still count (plus one per deletion), so the revision never goes back to a
        # value it had with other labels.
        self._label_events = int(self._db.execute(LABEL_EVENTS_SQL).fetchone()[0])
        # Seqs whose current label is an accepted prior (latest row's source prior:METHOD, not a retraction):
        # read once here, then kept by every label row written (``_insert_labels``, applied at commit).
        self._accepted = {int(r[0]) for r in self._db.execute(ACCEPTED_SQL, (RENAME_SOURCE, RETRACTED))}
        # ... and the labels an undo put back (few: each read from its history) that copy an accepted prior
        self._accepted |= {q for q in (int(r[0]) for r in self._db.execute(RESTORED_SQL, (RENAME_SOURCE,
                                                                                           RESTORE_SOURCE)))
                           if self._restored_accepted(q)}

        # Samples deleted ever (Status.samples_deleted): a revision of the sample set, as label_events of labels.
        self._samples_deleted = int(self._db.execute(
            "SELECT COALESCE(SUM(samples), 0) FROM deletions").fetchone()[0])
        for seq, sid, uri, meta, kind, digest in self._db.execute(
                "SELECT seq, id, uri, metadata, kind, sha256 FROM samples ORDER BY seq"):
            self._append_record(SampleRecord(seq, sid, uri, json.loads(meta), kind, digest))
        # Seqs of deleted samples are never given again (``add_samples`` numbers from len(_records)): a recorded
        # draw or an index row of the deleted sample must not come to mean a new one.
        high = int(self._db.execute("SELECT COALESCE(MAX(max_seq), 0) FROM deletions").fetchone()[0])
        self._reserve(high)
        for seq, cls in self._db.execute(
                "SELECT seq, class FROM labels WHERE n IN (SELECT MAX(n) FROM labels GROUP BY seq)"):
            if cls != RETRACTED:
                self._set_label(seq, cls)
        self._audit: set[int] = {q for (q,) in self._db.execute("SELECT seq FROM audit")}
        names = [n for (n,) in self._db.execute("SELECT name FROM classes ORDER BY idx")]
        count = self.get_meta("class_count")  # absent before retired classes existed: every name is a class
        self.classes: list[str] = names[:int(count)] if count is not None else names
        # Names after the class list: classes of a closed list's history only (labels retracted or changed
        # before the list was closed), kept so the history still names them; never a class of the pool.
        self._retired: list[str] = names[len(self.classes):]
        self.closed = self.get_meta("classes_closed") == "1"
        self.renamed: dict[str, str] = json.loads(self.get_meta(RENAMED_KEY) or "{}")
        if classes is not None:
            self.set_closed_classes(list(classes))

    def _open_schema(self) -> None:
        """Create the schema in a new database, migrate an older one, refuse a newer one."""
        found = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            self._db.close()
            raise SchemaVersionError(
                f"{self.path} was written by a newer shortlist agent (schema version {found}; this agent reads "
                f"schema versions up to {SCHEMA_VERSION}); upgrade shortlist, or use another --data-dir")
        fresh = self._db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name='samples'").fetchone()[0] == 0
        # tables, none of them the agent's: another program's database (an empty file, or one in WAL mode without
        # tables, is an agent's first start cut short: a new pool is right there)
        if fresh and self._db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
            raise StateCorruptError(no_schema_message(self.path))
        if fresh:
            with self._transaction():
                # statement by statement: executescript would commit the open transaction
                for stmt in SCHEMA.split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            return
        for version in range(found, SCHEMA_VERSION):
            log.warning("migrating %s from schema version %d to %d", self.path, version, version + 1)
            with self._transaction():
                MIGRATIONS[version](self._db)
                self._db.execute(f"PRAGMA user_version={version + 1}")

    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # ---- mirror helpers (call with the lock held) -------------------------------------------------
    def _append_record(self, rec: SampleRecord) -> None:
        while len(self._records) < rec.seq:  # seqs are dense unless a transaction rolled back
            self._records.append(None)
        self._records.append(rec)
        self._seq_by_id[rec.id] = rec.seq
        if not unicodedata.is_normalized("NFC", rec.id):
            self._id_by_nfc.setdefault(unicodedata.normalize("NFC", rec.id), rec.id)
        first = self._seq_by_sha.setdefault(rec.sha256, rec.seq)
        if rec.seq >= len(self._label):
            grown = np.full(max(2 * len(self._label), rec.seq + 1), -1, np.int64)
            grown[: len(self._label)] = self._label
            self._label = grown
        if rec.seq >= len(self._first_by_seq):
            firsts = np.zeros(max(2 * len(self._first_by_seq), rec.seq + 1), np.int64)
            firsts[: len(self._first_by_seq)] = self._first_by_seq
            self._first_by_seq = firsts
        self._first_by_seq[rec.seq] = first
        if first != rec.seq:
            self._twins += 1
            self._group_members.setdefault(first, [first]).append(rec.seq)

    def _reserve(self, seq: int) -> None:
        """Make seqs up to ``seq`` taken (as gaps when not stored), growing the arrays indexed by seq."""
        while len(self._records) <= seq:
            self._records.append(None)
        for name in ("_label", "_first_by_seq"):
            a = getattr(self, name)
            if seq >= len(a):
                grown = np.full(max(2 * len(a), seq + 1), -1 if name == "_label" else 0, np.int64)
                grown[: len(a)] = a
                setattr(self, name, grown)

    def _drop_record(self, seq: int) -> None:
        """Forget deleted sample ``seq`` in the mirror (its label, audit draw and payload group)."""
        rec = self._records[seq]
        assert rec is not None
        self._unset_label(seq)
        self._audit.discard(seq)
        self._accepted.discard(seq)
        del self._seq_by_id[rec.id]
        nfc = unicodedata.normalize("NFC", rec.id)
        if self._id_by_nfc.get(nfc) == rec.id:
            del self._id_by_nfc[nfc]
        self._records[seq] = None
        first = int(self._first_by_seq[seq])
        self._first_by_seq[seq] = 0
        members = self._group_members.pop(first, None)
        if members is None:  # no twin: its payload is no sample's now
            if self._seq_by_sha.get(rec.sha256) == seq:
                del self._seq_by_sha[rec.sha256]
            return
        members.remove(seq)
        self._twins -= 1
        new_first = members[0]
        for q in members:
            self._first_by_seq[q] = new_first
        if len(members) > 1:
            self._group_members[new_first] = members
        self._seq_by_sha[rec.sha256] = new_first

    def _set_label(self, seq: int, cls: int) -> None:
        if self._label[seq] < 0:
            self._labeled_count += 1
        self._label[seq] = cls

    def _unset_label(self, seq: int) -> None:
        if self._label[seq] >= 0:
            self._labeled_count -= 1
        self._label[seq] = -1

    # ---- classes ---------------------------------------------------------------------------------
    def set_closed_classes(self, classes: list[str]) -> None:
        """Make ``classes`` the closed class list. Stored labels keep their names: each current label must be
        in the new list (ClassListError otherwise), and their indices are remapped in one transaction. A class
        only the history uses (a typo retracted or corrected) need not be listed: it is kept after the list,
        as a retired name, so the history still says it."""
        if len(set(classes)) != len(classes) or not all(classes):
            raise ClassListError(f"class names must be unique and non-empty: {classes}")
        with self._lock:
            if self.closed and classes == self.classes:
                return
            names = self.classes + self._retired
            current = {names[c] for c in np.unique(self._label[self._label >= 0])}
            missing = sorted(current - set(classes))
            if renamed := [c for c in classes if c in self.renamed]:
                now = [self.renamed.get(c, c) for c in classes]
                raise ClassListError(
                    "the given class list names "
                    + ", ".join(f"{quoted(c)}, which was renamed to {quoted(self.renamed[c])}" for c in renamed)
                    + f" (`shortlist rename-class`): pass --classes {','.join(dict.fromkeys(now))}")
            if missing:
                raise ClassListError(
                    f"labels stored now use classes {missing} that are not in the given class list "
                    f"{classes}; add them to --classes, or first relabel those samples (`shortlist "
                    "rename-class OLD NEW` while the agent runs with its current list, or `shortlist label`) or "
                    "take their labels back (`shortlist retract-labels`)")
            used = {names[c] for (c,) in self._db.execute("SELECT DISTINCT class FROM labels WHERE class >= 0")}
            order = list(classes) + [n for n in names if n in used and n not in classes]
            remap = {i: order.index(name) for i, name in enumerate(names) if name in order}
            with self._transaction():
                for old, new in remap.items():  # offset first so the UPDATEs never collide
                    self._db.execute("UPDATE labels SET class=? WHERE class=?", (new + 1_000_000, old))
                self._db.execute("UPDATE labels SET class=class-1000000 WHERE class>=1000000")
                self._db.execute("DELETE FROM classes")
                self._db.executemany("INSERT INTO classes(idx, name) VALUES (?, ?)", list(enumerate(order)))
                self._set_meta("class_count", str(len(classes)))
                self._set_meta("classes_closed", "1")
            lab = self._label
            mapped = lab.copy()
            for old, new in remap.items():
                mapped[lab == old] = new
            self._label = mapped
            self.classes = list(classes)
            self._retired = order[len(classes):]
            self.closed = True

    def rename_class(self, old: str, new: str, annotator: str, model_version: str = "") -> tuple[int, bool]:
        """Rename class ``old`` to ``new`` in one transaction: every sample whose current label is ``old`` gets
        a label row of ``new`` (``annotator``: who renamed, source RENAME_SOURCE; the earlier rows keep who gave
        each label), and ``old`` is retired (``renamed``: SubmitLabels and Ingest refuse it, naming ``new``).
        A merge when ``new`` is a class already. ``new`` takes ``old``'s place in the list (its index in an
        open list, its position in a closed one), so a rename keeps the web app's keys; ``old`` stays after
        the list for the history. (moved labels, merged); ClassListError when ``old`` is no class."""
        with self._lock:
            if old in self.renamed:
                raise ClassListError(f"class {quoted(old)} was renamed to {quoted(self.renamed[old])} already")
            names = self.classes + self._retired
            if old not in self.classes:
                raise ClassListError(f"no class {quoted(old)}; the classes: {', '.join(self.classes[:20])}"
                                     + (" ..." if len(self.classes) > 20 else ""))
            merged = new in self.classes and new not in self.renamed  # (an open list keeps its retired names)
            if self.closed:
                closed = [c for c in self.classes if c != old] if merged else \
                    [new if c == old else c for c in self.classes]
                used = {names[c] for (c,) in self._db.execute("SELECT DISTINCT class FROM labels WHERE class >= 0")}
                order = closed + [n for n in names if n not in closed and (n in used or n == old)]
            elif merged:
                order = list(names)
            else:  # ``new`` takes ``old``'s index (its key in the web app); ``old`` goes to the end, for the history
                order = [n for n in names if n != new]  # (``new`` may be a retired name: it is taken back)
                order[order.index(old)] = new
                order.append(old)
            remap = {i: order.index(n) for i, n in enumerate(names) if n in order}
            target = order.index(new)
            seqs = [int(q) for q in np.flatnonzero(self._label == names.index(old))]
            renamed = {k: (new if v == old else v) for k, v in self.renamed.items() if k != new}
            renamed[old] = new
            now = time.time()
            with self._transaction():
                for a, b in remap.items():  # offset first so the UPDATEs never collide
                    if a != b:
                        self._db.execute("UPDATE labels SET class=? WHERE class=?", (b + 1_000_000, a))
                self._db.execute("UPDATE labels SET class=class-1000000 WHERE class>=1000000")
                self._db.execute("DELETE FROM classes")
                self._db.executemany("INSERT INTO classes(idx, name) VALUES (?, ?)", list(enumerate(order)))
                if self.closed:
                    self._set_meta("class_count", str(len(closed)))
                self._insert_labels([(q, target, annotator, now, RENAME_SOURCE, model_version) for q in seqs])
                self._set_meta(RENAMED_KEY, json.dumps(renamed, sort_keys=True))
            lab = self._label
            mapped = lab.copy()
            for a, b in remap.items():
                mapped[lab == a] = b
            mapped[seqs] = target
            self._label = mapped
            self.classes = closed if self.closed else order
            self._retired = order[len(closed):] if self.closed else []
            self.renamed = renamed
            self._label_events += len(seqs)
            return len(seqs), merged

    def move_retired_labels(self, old: str, annotator: str, model_version: str = "") -> int:
        """Move the current labels that still name ``old``, a name ``rename_class`` retired, to the class it
        became (``renamed[old]``), in one transaction, as ``rename_class`` does (a row each, source
        RENAME_SOURCE): a repair for labels stored after the rename by a path that did not check for it (an
        Ingest in flight, before that check was made under the lock). Returns how many moved (0: none left)."""
        with self._lock:
            new = self.renamed.get(old)
            names = self.classes + self._retired
            if new is None or old not in names or new not in self.classes:
                return 0
            seqs = [int(q) for q in np.flatnonzero(self._label == names.index(old))]
            if not seqs:
                return 0
            target = self.classes.index(new)
            now = time.time()
            with self._transaction():
                self._insert_labels([(q, target, annotator, now, RENAME_SOURCE, model_version) for q in seqs])
            self._label[seqs] = target
            self._label_events += len(seqs)
            return len(seqs)

    def renamed_problem(self, name: str) -> str | None:
        """Why a label ``name`` is refused because the class was renamed (RenameClass), or None."""
        to = self.renamed.get(name)
        return None if to is None else f"{quoted(name)} was renamed to {quoted(to)}; label with that"

    def class_name(self, idx: int) -> str:
        """The name of class index ``idx`` in a label row: a class, or a retired one (history only)."""
        return self.classes[idx] if idx < len(self.classes) else self._retired[idx - len(self.classes)]

    def class_index(self, name: str) -> int | None:
        """Index of class ``name``; for an open list a new name gets the next index (stored with the
        next commit that uses it); None when the list is closed and ``name`` is not in it."""
        with self._lock:
            if name in self.classes:
                return self.classes.index(name)
            if self.closed:
                return None
            self.classes.append(name)
            return len(self.classes) - 1

    def _persist_new_classes(self) -> None:
        stored = self._db.execute("SELECT COUNT(*) FROM classes").fetchone()[0]
        self._db.executemany("INSERT INTO classes(idx, name) VALUES (?, ?)",
                             [(i, self.classes[i]) for i in range(stored, len(self.classes))])

    # ---- transactions ----------------------------------------------------------------------------
    class _Tx:
        def __init__(self, state: State) -> None:
            self.state = state

        def __enter__(self) -> None:
            self.state._db.execute("BEGIN IMMEDIATE")

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            pending, self.state._pending_sources = self.state._pending_sources, []
            self.state._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
            if exc_type is None:  # the label rows are durable: their sources count now (``accepted_prior_seqs``)
                for seq, accepted in pending:
                    if accepted:
                        self.state._accepted.add(seq)
                    else:
                        self.state._accepted.discard(seq)

    def _transaction(self) -> State._Tx:
        return State._Tx(self)

    # ---- samples ---------------------------------------------------------------------------------
    def lookup_payload(self, sha256: str) -> SampleRecord | None:
        """The first sample stored with payload ``sha256``, if any."""
        with self._lock:
            seq = self._seq_by_sha.get(sha256)
            return None if seq is None else self._records[seq]

    def payload_digests(self) -> set[str]:
        """The sha256 of every stored sample's payload (a copy)."""
        with self._lock:
            return set(self._seq_by_sha)

    def payload_groups(self) -> np.ndarray | None:
        """By seq 0..max_seq: the seq of the first sample stored with the same payload bytes (sha256), the
        sample's own seq when it is the first (0 for seq 0); byte-identical samples share one value. None when
        no two samples are byte-identical (the common case: nothing to group). A copy."""
        with self._lock:
            if not self._twins:
                return None
            return self._first_by_seq[: len(self._records)].copy()

    def payload_twins(self, seq: int) -> list[int]:
        """The seqs of the other samples stored with the exact payload of sample ``seq``, in ingest order."""
        with self._lock:
            if not self._twins or seq >= len(self._first_by_seq):
                return []
            return [q for q in self._group_members.get(int(self._first_by_seq[seq]), []) if q != seq]

    def lookup(self, sample_id: str) -> SampleRecord | None:
        with self._lock:
            seq = self._seq_by_id.get(sample_id)
            return None if seq is None else self._records[seq]

    def unicode_variant(self, sample_id: str) -> str | None:
        """A stored id that differs from ``sample_id`` only in Unicode normalisation ("forêt" in NFD, as macOS
        names files, beside the same name in NFC from a CSV), or None: the hint for an unknown id. Ids are
        compared exactly, so such an id is another id. Two dict lookups, no scan."""
        nfc = unicodedata.normalize("NFC", sample_id)
        with self._lock:
            if nfc != sample_id and nfc in self._seq_by_id:
                return nfc
            other = self._id_by_nfc.get(nfc)
            return other if other is not None and other != sample_id else None

    def lookup_seq(self, seq: int) -> SampleRecord | None:
        """The sample stored under ``seq``; None for a gap, a deleted sample, seq 0 or past the end."""
        with self._lock:
            return self._records[seq] if 0 <= seq < len(self._records) else None

    def record(self, seq: int) -> SampleRecord:
        rec = self._records[seq]
        assert rec is not None
        return rec

    def add_samples(self, samples: list[NewSample], embeddings: EmbeddingRows | None = None,
                    model_version: str = "") -> list[int]:
        """Store new samples (their labels with annotator and source "ingest", under ``model_version``)
        and, when given, their embeddings (aligned with ``samples``) in one durable transaction. Returns
        the new samples' seqs."""
        now = time.time()
        with self._lock:
            seqs: list[int] = []
            with self._transaction():
                self._persist_new_classes()
                for s in samples:  # numbered past every seq ever given (a deleted sample's is not given again)
                    seq = len(self._records) + len(seqs)
                    self._db.execute(
                        "INSERT INTO samples(seq, id, uri, metadata, kind, sha256, ingested_at) VALUES (?,?,?,?,?,?,?)",
                        (seq, s.id, s.uri, json.dumps(s.metadata, sort_keys=True), s.kind, s.sha256, now))
                    seqs.append(seq)
                self._insert_labels([(q, s.label, INGEST_ANNOTATOR, now, INGEST_SOURCE, model_version)
                                     for q, s in zip(seqs, samples, strict=True) if s.label >= 0])
                if embeddings is not None:
                    self._insert_embeddings(embeddings, seqs)
            for q, s in zip(seqs, samples, strict=True):
                self._append_record(SampleRecord(q, s.id, s.uri, s.metadata, s.kind, s.sha256))
                if s.label >= 0:
                    self._set_label(q, s.label)
                    self._label_events += 1
            return seqs

    def count(self) -> int:
        return len(self._seq_by_id)

    def labeled_count(self) -> int:
        return self._labeled_count

    def accepted_prior_seqs(self) -> np.ndarray:
        """The seqs (ascending int64) of the samples whose current label is an accepted prior: its
        latest label row but a rename's has source ``prior:METHOD`` (SubmitLabels' source for a prior a person
        accepted, docs/app.md; ACCEPTED_SQL), or is a row an undo put back of such a label (``accepted_history``).
        The calibration leaves them out of its held-out set
        (agent/priors/calibration.py). Kept in memory (read at open, then by every label row written): no
        query of the labels table, which a query per label revision scanned whole under the lock."""
        with self._lock:
            return np.array(sorted(self._accepted), np.int64)

    def label_event_count(self) -> int:
        """Label rows ever stored (labels, changes, retractions, ingested labels): a revision of the labels."""
        return self._label_events

    def samples_deleted(self) -> int:
        """Samples deleted ever (the deletions table's sum): a revision of the sample set."""
        return self._samples_deleted

    def max_seq(self) -> int:
        return len(self._records) - 1

    def label_index(self, seq: int) -> int:
        """The current class index of sample ``seq`` (-1 when unlabelled)."""
        with self._lock:
            return int(self._label[seq]) if seq < len(self._label) else -1

    def label_name(self, seq: int) -> str:
        """The current label of sample ``seq`` ("" when unlabelled)."""
        with self._lock:
            idx = int(self._label[seq]) if seq < len(self._label) else -1
            return self.classes[idx] if idx >= 0 else ""

    def labels_by_seq(self) -> np.ndarray:
        """Current class index for every seq 0..max_seq (-1 = unlabelled; seq 0 unused). A copy."""
        with self._lock:
            return self._label[: len(self._records)].copy()

    def iter_records(self, labeled_only: bool = False, chunk: int = 1024,
                     snapshot: tuple[np.ndarray, np.ndarray] | None = None) -> Iterator[tuple[SampleRecord, int]]:
        """(record, class index or -1) of every sample stored when the call started, in ingest order; the
        records are taken ``chunk`` at a time under the lock (never a copy of the whole pool), so a long
        listing streams while ingestion and labelling go on. The labels are one snapshot, read at the start
        in the same hold of the lock as the pool's end (``label_snapshot``): a label given, changed or taken
        back while the listing streams is in it for no sample, early or late (was: read a chunk at a time, so
        a late sample showed a label given after an early one's was read, a state the agent was never in).
        ``snapshot``: the (seqs, labels) of a ``label_snapshot`` the caller took (the records of those seqs)."""
        seqs, labels = snapshot if snapshot is not None else self.label_snapshot(labeled_only)[1:3]
        for start in range(0, len(seqs), chunk):
            part_seqs = seqs[start:start + chunk].tolist()
            with self._lock:
                part = [self._records[q] for q in part_seqs]
            for r, lab in zip(part, labels[start:start + chunk].tolist(), strict=True):
                if r is not None:
                    yield r, lab

    def label_snapshot(self, labeled_only: bool = False) -> tuple[int, np.ndarray, np.ndarray, int]:
        """(label revision, seqs, class index of each or -1, last label row) of every sample stored now
        (``labeled_only``: of the labelled ones), ascending seqs, read in one hold of the lock: the revision
        (``label_event_count``) is the one those labels are at, and the label rows numbered up to the last one
        (labels.n) are the rows they come from (``label_givers``)."""
        with self._lock:
            end = len(self._records)
            labels = self._label[1:end].copy()
            events = self._label_events
            last_row = int(self._db.execute("SELECT COALESCE(MAX(n), 0) FROM labels").fetchone()[0])
        seqs = np.arange(1, end, dtype=np.int64)
        if labeled_only:
            keep = labels >= 0
            seqs, labels = seqs[keep], labels[keep]
        return events, seqs, labels, last_row

    def label_givers(self, seqs: Sequence[int], end: int) -> dict[int, tuple[str, float, str]]:
        """seq -> (annotator, Unix time, source) of the current label of each of ``seqs`` as of label row ``end``
        (``label_snapshot``'s last row), as ListLabels without history lists it (``label_events``): a label a
        class rename moved is the row it moved. Unlabelled samples are left out."""
        if not len(seqs):
            return {}
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, class, annotator, time, source FROM labels WHERE n IN (SELECT MAX(n) FROM labels "
                "WHERE seq IN (SELECT value FROM json_each(:seqs)) AND n <= :end GROUP BY seq)",
                {"seqs": json.dumps([int(q) for q in seqs]), "end": end}).fetchall()
            moved = self._moved_label_rows([int(r[0]) for r in rows if r[4] == RENAME_SOURCE and r[1] != RETRACTED],
                                           end)
        out: dict[int, tuple[str, float, str]] = {}
        for seq, cls, annotator, t, source in rows:
            if cls == RETRACTED:
                continue
            if source == RENAME_SOURCE and seq in moved:
                annotator, t, source, _ = moved[seq]
            out[int(seq)] = (str(annotator), float(t), str(source))
        return out

    def alive_by_seq(self) -> np.ndarray:
        """For every seq 0..max_seq: whether a sample is stored under it now (False for seq 0, for the gaps of
        rolled-back Ingests and for deleted samples). A copy."""
        with self._lock:
            return self._first_by_seq[: len(self._records)] > 0

    def all_seqs(self) -> np.ndarray:
        """Seqs of every stored sample, ascending (S int64)."""
        with self._lock:
            return np.array([r.seq for r in self._records if r is not None], np.int64)

    # ---- deletion --------------------------------------------------------------------------------
    def delete_samples(self, seqs: Sequence[int], annotator: str, reason: str,
                       before_commit: Callable[[], None] | None = None) -> list[str]:
        """Delete samples ``seqs`` for good in one durable transaction: their rows, label rows, audit draws and
        embeddings of every version; their ids leave every queue (and its marks) and every recorded selection
        (replaced by ""); a tombstone row (no ids) is added. Returns the sha256 of the payloads no sample
        names any more (the caller removes those blobs after this returns). ``before_commit``: called inside
        the transaction, last (tests make it fail: nothing is deleted then)."""
        now = time.time()
        with self._lock:
            recs = [self.record(q) for q in seqs]
            gone = {r.id for r in recs}
            marks = ",".join("?" * len(seqs))
            args = [int(q) for q in seqs]
            # The freed space is zeroed: secure_delete is on for the connection's life (``_open``).
            self._delete_rows(recs, seqs, args, marks, gone, annotator, reason, now, before_commit)
            for q in seqs:
                self._drop_record(int(q))
            self._label_events += 1  # the removed rows stay counted (as the deletions table counts them at open)
            self._samples_deleted += len(recs)
            return sorted({r.sha256 for r in recs} - set(self._seq_by_sha))

    def _delete_rows(self, recs: list[SampleRecord], seqs: Sequence[int], args: list[int], marks: str,
                     gone: set[str], annotator: str, reason: str, now: float,
                     before_commit: Callable[[], None] | None) -> None:
        """``delete_samples``' transaction (call with the lock held)."""
        with self._transaction():
            label_rows = int(self._db.execute(f"SELECT COUNT(*) FROM labels WHERE seq IN ({marks})",
                                              args).fetchone()[0])
            if label_rows:  # the numbers of the rows removed are never given again (LABEL_ROWS_HIGH_KEY)
                self._db.execute(
                    "INSERT OR REPLACE INTO meta(key, value) SELECT ?, CAST(MAX(COALESCE((SELECT MAX(n) FROM labels), "
                    "0), COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = ?), 0)) AS TEXT)",
                    (LABEL_ROWS_HIGH_KEY, LABEL_ROWS_HIGH_KEY))
            for table in ("labels", "audit", "embeddings", "samples"):  # samples last: the others refer to it
                self._db.execute(f"DELETE FROM {table} WHERE seq IN ({marks})", args)
            for name, body in self._db.execute("SELECT name, body FROM queues").fetchall():
                q = json.loads(body)
                ids = [i for i in q.get("ids", []) if i not in gone]
                if len(ids) != len(q.get("ids", [])):
                    q["ids"] = ids
                    q["marks"] = {i: m for i, m in q.get("marks", {}).items() if i not in gone}
                    self._db.execute("UPDATE queues SET body=? WHERE name=?", (json.dumps(q, sort_keys=True), name))
            for sid, result in self._db.execute("SELECT selection_id, result FROM selections").fetchall():
                picks = json.loads(result)
                if any(p[0] in gone for p in picks):
                    # kept as "" (the pick's place in the draw), so the draw's order and size stay
                    picks = [["", p[1]] if p[0] in gone else p for p in picks]
                    self._db.execute("UPDATE selections SET result=? WHERE selection_id=?",
                                     (json.dumps(picks), sid))
            self._db.execute("INSERT INTO deletions(time, annotator, reason, samples, label_rows, max_seq) "
                             "VALUES (?,?,?,?,?,?)", (now, annotator, reason, len(recs), label_rows,
                                                      len(self._records) - 1))
            self._set_meta(INDEX_STALE_KEY, "1")
            if before_commit is not None:
                before_commit()

    def deletions(self) -> list[tuple[float, str, str, int]]:
        """(time, annotator, reason, samples) of every DeleteSamples, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT time, annotator, reason, samples FROM deletions ORDER BY n").fetchall()
        return [(float(t), str(a), str(r), int(n)) for t, a, r, n in rows]

    def compact_embeddings(self) -> bool:
        """Renumber every version's stored embedding rows densely from 0 (a deletion leaves gaps), in one
        transaction; whether any changed (the index snapshots are then stale). Call before the versions load."""
        with self._lock:
            gaps = self._db.execute("SELECT COUNT(*) FROM (SELECT version FROM embeddings GROUP BY version "
                                    "HAVING MAX(row) + 1 != COUNT(*))").fetchone()[0]
            if not gaps:
                return False
            with self._transaction():
                self._db.execute("DROP TABLE IF EXISTS temp.renumber")
                self._db.execute("CREATE TEMP TABLE renumber AS SELECT version, row AS old, ROW_NUMBER() OVER "
                                 "(PARTITION BY version ORDER BY row) - 1 AS new FROM embeddings")
                # Two steps so renumbering never collides with a row not yet moved.
                self._db.execute("UPDATE embeddings SET row = -1 - (SELECT new FROM renumber r WHERE "
                                 "r.version = embeddings.version AND r.old = embeddings.row)")
                self._db.execute("UPDATE embeddings SET row = -1 - row")
                self._db.execute("DROP TABLE temp.renumber")
            return True

    # ---- labels ----------------------------------------------------------------------------------
    def add_labels(self, assignments: list[tuple[int, int]], annotator: str, source: str = MANUAL_SOURCE,
                   model_version: str = "") -> None:
        """Durably record (seq, class index) labels given by ``annotator`` through ``source`` while
        ``model_version`` was served; earlier labels stay in the history."""
        now = time.time()
        with self._lock:
            with self._transaction():
                self._persist_new_classes()
                self._insert_labels([(q, c, annotator, now, source, model_version) for q, c in assignments])
            for q, c in assignments:
                self._set_label(q, c)
            self._label_events += len(assignments)

    def retract_labels(self, seqs: list[int], annotator: str, source: str = MANUAL_SOURCE,
                       model_version: str = "", restore: Sequence[tuple[int, int, str]] = ()) -> None:
        """Durably make ``seqs`` unlabelled: one retraction row each (the labels given stay in the history).
        ``restore``: (seq, class index, annotator) of labels put back after the retraction, in the same
        transaction (RetractLabels with restore_previous): a row each, in that annotator's name, source
        RESTORE_SOURCE; each seq among ``seqs``."""
        now = time.time()
        with self._lock:
            with self._transaction():
                self._insert_labels([(q, RETRACTED, annotator, now, source, model_version) for q in seqs])
                self._insert_labels([(q, c, a, now, RESTORE_SOURCE, model_version) for q, c, a in restore])
                # a label put back keeps where the row it copies came from (``accepted_history``): applied at
                # commit after the rows' own (False) entries
                self._pending_sources += [(q, self._restored_accepted(q)) for q, _, _ in restore]
            for q in seqs:
                self._unset_label(q)
            for q, c, _ in restore:
                self._set_label(q, c)
            self._label_events += len(seqs) + len(restore)

    def _restored_accepted(self, seq: int) -> bool:
        """Whether sample ``seq``'s current label is an accepted prior, from its label rows (``accepted_history``;
        for a label put back by an undo, whose row's source does not say)."""
        rows = self._db.execute("SELECT class, source FROM labels WHERE seq=? ORDER BY n", (seq,)).fetchall()
        return accepted_history([(int(c), str(s)) for c, s in rows])

    def label_before_last(self, seq: int) -> tuple[int, str] | None:
        """(class index, annotator) of the label row of sample ``seq`` before its latest one (class RETRACTED
        for a retraction), or None when the latest is its first."""
        with self._lock:
            row = self._db.execute("SELECT class, annotator FROM labels WHERE seq=? ORDER BY n DESC LIMIT 1 OFFSET 1",
                                   (seq,)).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def label_history(self, seq: int) -> list[tuple[str, str, float]]:
        """(label, annotator, time) of every label given to ``seq``, oldest first ("" for a retraction)."""
        with self._lock:
            rows = self._db.execute("SELECT class, annotator, time FROM labels WHERE seq=? ORDER BY n",
                                    (seq,)).fetchall()
            return [(self.class_name(c) if c != RETRACTED else "", a, t) for c, a, t in rows]

    def last_label_by(self, seq: int) -> tuple[str, str] | None:
        """(annotator, source) of the latest label row of sample ``seq`` (a label or a retraction), or None."""
        with self._lock:
            row = self._db.execute("SELECT annotator, source FROM labels WHERE seq=? ORDER BY n DESC LIMIT 1",
                                   (seq,)).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def label_giver(self, seq: int) -> tuple[str, str] | None:
        """(annotator, source) of who gave sample ``seq``'s current label, or took it back (its latest label row),
        or None when it has none. A label a class rename moved is named by the row it moved, as ``label_givers``
        (ListLabels, ListSamples' Sample.annotator) names it: a rename moves a label, it gives none (its own
        row, which ``last_label_by`` returns, names the renamer)."""
        with self._lock:
            row = self._db.execute("SELECT n, class, annotator, source FROM labels WHERE seq=? ORDER BY n DESC "
                                   "LIMIT 1", (seq,)).fetchone()
            if row is None:
                return None
            n, cls, annotator, source = row
            if source == RENAME_SOURCE and cls != RETRACTED:
                moved = self._moved_label_rows([seq], int(n)).get(seq)
                if moved is not None:
                    annotator, _, source, _ = moved
        return str(annotator), str(source)

    def label_events(self, history: bool = False, chunk: int = 4096, after: int = 0,
                     limit: int = 0) -> Iterator[LabelEvent]:
        """Every label and retraction stored when the call started (or, without ``history``, each labelled
        sample's current label then), oldest first, read ``chunk`` rows at a time so a long listing never holds
        the lock (nor a copy of the whole table) while labelling goes on. "Current" is as of the start (rows up
        to ``end``) on every page: judged against the table as it is at each page, a sample relabelled during
        the listing lost its old row (no longer its latest) before its new one (past ``end``) could be read,
        and went missing from an export. ``after``: only rows numbered above it (LabelEvent.row, ListLabels'
        cursor); ``limit``: at most that many events (0: all)."""
        with self._lock:
            end = int(self._db.execute("SELECT COALESCE(MAX(n), 0) FROM labels").fetchone()[0])
            audit = self._audit_set()
        latest = "SELECT MAX(n) FROM labels l2 WHERE l2.seq = labels.seq AND l2.n <= :end"
        where = "" if history else f" AND n = ({latest}) AND class != {RETRACTED}"
        left = limit if limit > 0 else -1
        while left:
            with self._lock:
                rows = self._db.execute(
                    f"SELECT n, seq, class, annotator, time, source, model_version, n = ({latest}) "
                    f"FROM labels WHERE n > :after AND n <= :end{where} ORDER BY n LIMIT :chunk",
                    {"after": after, "end": end, "chunk": chunk if left < 0 else min(chunk, left)}).fetchall()
                classes = list(self.classes) + self._retired
                # A label a class rename moved (a RENAME_SOURCE row, the sample's current one) is listed as the
                # label row it moved, under its new class: who gave it, when, how and with which model, as the
                # history keeps them (agent/progress.py LabelTally credits the giver likewise); the row number
                # stays the rename's, the cursor. (Was: the renamer, with source "rename", so export-labels'
                # labels.csv, imported elsewhere, stored every renamed label as the renamer's.)
                moved = self._moved_label_rows([r[1] for r in rows if r[5] == RENAME_SOURCE], end) \
                    if not history else {}
            if not rows:
                return
            for n, seq, cls, annotator, t, source, version, current in rows:
                if source == RENAME_SOURCE and seq in moved:
                    annotator, t, source, version = moved[seq]
                rec = self._records[seq]
                if rec is not None:
                    gone = cls == RETRACTED
                    yield LabelEvent(seq, rec.id, "" if gone else classes[cls], annotator, float(t), source, version,
                                     seq in audit, bool(current) and not gone, gone, int(n))
                    left -= 1
                    if not left:
                        return
                after = n

    def _moved_label_rows(self, seqs: list[int], end: int) -> dict[int, tuple[str, float, str, str]]:
        """seq -> (annotator, time, source, model_version) of the latest label row of each of ``seqs`` numbered
        up to ``end`` that is not a class rename's (RENAME_SOURCE): the label that a chain of renames moved.
        Call with the lock held."""
        if not seqs:
            return {}
        rows = self._db.execute(
            "SELECT seq, annotator, time, source, model_version FROM labels WHERE n IN (SELECT MAX(n) FROM labels "
            "WHERE seq IN (SELECT value FROM json_each(:seqs)) AND n <= :end AND source != :rename GROUP BY seq)",
            {"seqs": json.dumps(seqs), "end": end, "rename": RENAME_SOURCE}).fetchall()
        return {int(q): (str(a), float(t), str(s), str(v)) for q, a, t, s, v in rows}

    def label_rows_high(self) -> int:
        """The highest label row number (labels.n) this folder ever gave, a deleted row's too: ListLabels'
        cursor never passes it."""
        with self._lock:
            return int(self._db.execute(
                "SELECT MAX(COALESCE((SELECT MAX(n) FROM labels), 0), "
                "COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = ?), 0))",
                (LABEL_ROWS_HIGH_KEY,)).fetchone()[0])

    # ---- audit draws (agent/audit.py) ------------------------------------------------------------
    def _audit_set(self) -> set[int]:
        return set(self._audit)

    def add_audit(self, seqs: Sequence[int], selection_id: str) -> None:
        """Durably record samples drawn by Select strategy "audit" (a sample drawn twice keeps its first draw)."""
        now = time.time()
        with self._lock:
            with self._transaction():
                self._db.executemany("INSERT OR IGNORE INTO audit(seq, selection_id, time) VALUES (?,?,?)",
                                     [(int(q), selection_id, now) for q in seqs])
            self._audit.update(int(q) for q in seqs)

    def audit_seqs(self) -> np.ndarray:
        """Seqs of every sample ever drawn by the audit, ascending (int64)."""
        with self._lock:
            return np.array(sorted(self._audit), np.int64)

    # ---- embeddings ------------------------------------------------------------------------------
    def _insert_embeddings(self, e: EmbeddingRows, seqs: Sequence[int], alive_only: bool = False) -> None:
        vecs = np.ascontiguousarray(e.vecs, np.float32)
        logits = None if e.logits is None else np.ascontiguousarray(e.logits, np.float32)
        self._db.executemany(
            "INSERT OR REPLACE INTO embeddings(version, row, seq, vec, logits, pretext) VALUES (?,?,?,?,?,?)",
            [(e.version, e.start_row + i, int(q), vecs[i].tobytes(),
              None if logits is None else logits[i].tobytes(),
              None if e.pretext is None else float(e.pretext[i])) for i, q in enumerate(seqs)
             if not alive_only or self.lookup_seq(int(q)) is not None])

    def add_embeddings(self, e: EmbeddingRows, seqs: Sequence[int]) -> None:
        """Durably store embeddings of existing samples ``seqs`` (aligned with ``e.vecs``). A sample deleted
        since it was embedded (a background batch that read it before a DeleteSamples) gets no row: its row
        number is left a gap, which the next start closes (``compact_embeddings``)."""
        with self._lock, self._transaction():
            self._insert_embeddings(e, seqs, alive_only=True)

    def load_embeddings(self, version: str, dim: int, num_logits: int) -> StoredEmbeddings:
        """Every stored embedding of ``version`` in row order (rows are dense from 0)."""
        with self._lock:
            rows = self._db.execute("SELECT seq, vec, logits, pretext FROM embeddings WHERE version=? "
                                    "ORDER BY row", (version,)).fetchall()
        n = len(rows)
        seqs = np.array([r[0] for r in rows], np.int64)
        vecs = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(n, dim) if n else \
            np.zeros((0, dim), np.float32)
        logits = None
        if num_logits and all(r[2] is not None for r in rows):
            logits = np.frombuffer(b"".join(r[2] for r in rows), np.float32).reshape(n, num_logits) if n \
                else np.zeros((0, num_logits), np.float32)
        pretext = None
        if all(r[3] is not None for r in rows) and n:
            pretext = np.array([r[3] for r in rows], np.float32)
        return StoredEmbeddings(seqs, vecs.copy(), None if logits is None else logits.copy(), pretext)

    def repair_embeddings(self, version: str, dim: int) -> list[str]:
        """Make ``version``'s stored rows agree with the samples table: rows of samples that do not
        exist, repeated samples and vectors of the wrong size are dropped, and rows renumbered densely
        from 0. Returns what was wrong (empty, and nothing written, when all was well). Cannot happen
        through the agent's own writes (each is one transaction); guards against damage from outside."""
        with self._lock:
            rows = self._db.execute("SELECT row, seq, length(vec) FROM embeddings WHERE version=? ORDER BY row",
                                    (version,)).fetchall()
            problems: list[str] = []
            seen: set[int] = set()
            keep: list[int] = []
            orphans = dups = wrong = 0
            for row, seq, nbytes in rows:
                if seq >= len(self._records) or self._records[seq] is None:
                    orphans += 1
                elif seq in seen:
                    dups += 1
                elif nbytes != 4 * dim:
                    wrong += 1
                else:
                    seen.add(seq)
                    keep.append(row)
            if orphans:
                problems.append(f"{orphans} row(s) of samples that do not exist")
            if dups:
                problems.append(f"{dups} repeated sample(s)")
            if wrong:
                problems.append(f"{wrong} vector(s) not {dim}-dimensional")
            if keep != list(range(len(keep))) and not problems:
                problems.append("row numbers with gaps")
            if not problems:
                return []
            with self._transaction():
                self._db.execute("CREATE TEMP TABLE IF NOT EXISTS keep_rows (old INTEGER PRIMARY KEY, new INTEGER)")
                self._db.execute("DELETE FROM keep_rows")
                self._db.executemany("INSERT INTO keep_rows(old, new) VALUES (?, ?)",
                                     [(old, new) for new, old in enumerate(keep)])
                self._db.execute("DELETE FROM embeddings WHERE version=? AND row NOT IN (SELECT old FROM keep_rows)",
                                 (version,))
                # Two steps so renumbering never collides with a row not yet moved.
                self._db.execute("UPDATE embeddings SET row = -1 - (SELECT new FROM keep_rows WHERE old = row) "
                                 "WHERE version=?", (version,))
                self._db.execute("UPDATE embeddings SET row = -1 - row WHERE version=?", (version,))
            return problems

    def drop_embeddings(self, version: str) -> None:
        """Forget a retired version's embeddings (space)."""
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM embeddings WHERE version=?", (version,))

    def drop_version(self, version: str, status: str, error: str = "") -> None:
        """Mark ``version`` retired or superseded (with why) and forget its embeddings, in one transaction:
        a crash leaves either the old row with its embeddings or the new row without them, never a
        'pending' row whose embeddings are half gone."""
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM embeddings WHERE version=?", (version,))
            self._put_model_version(version, status, 0, error)

    def rename_version(self, old: str, new: str, embedded: int, fingerprint: str) -> None:
        """Serve ``new`` with ``old``'s embeddings (the same model under another name: a rollback's copy;
        ``fingerprint`` its model's): the rows move to ``new``, it becomes the served version and ``old`` is
        retired, in one transaction, so a crash leaves either ``old`` served with its rows or ``new`` served
        with them."""
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM embeddings WHERE version=?", (new,))
            self._db.execute("UPDATE embeddings SET version=? WHERE version=?", (new, old))
            self._set_meta(SERVING_KEY, new)
            self._put_model_version(new, "serving", embedded, fingerprint=fingerprint)
            self._put_model_version(old, "retired", 0)

    def set_serving(self, version: str, embedded: int) -> None:
        """Record that ``version`` is served (meta ``serving_version`` and its model_versions row) in one
        transaction, so a restart loads the version the swap made current."""
        with self._lock, self._transaction():
            self._set_meta(SERVING_KEY, version)
            self._put_model_version(version, "serving", embedded)

    # ---- selections, model versions, meta --------------------------------------------------------
    def record_selection(self, selection_id: str, request: dict[str, object], result: list[tuple[str, float]],
                         model_version: str) -> None:
        """Record a Select. Its commit is ``synchronous=NORMAL``: written to the WAL (a crash of the process
        keeps it) but not fsynced, so every Select does not wait for the disk under the state lock
        (queueing behind each other's and SubmitLabels' fsyncs); the next FULL commit (a label, a sample)
        or checkpoint makes it durable. A power loss can lose the last selection records, never an
        acknowledged label or sample. Disk full / read-only still fail here (the write itself fails)."""
        with self._lock:
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                with self._transaction():
                    self._db.execute(
                        "INSERT INTO selections(selection_id, request, result, model_version, time) VALUES (?,?,?,?,?)",
                        (selection_id, json.dumps(request, sort_keys=True), json.dumps(result), model_version,
                         time.time()))
            finally:
                self._db.execute("PRAGMA synchronous=FULL")

    def prune_selections(self, keep: int, draw_strategies: Collection[str]) -> int:
        """Delete all but the newest ``keep`` recorded selections that are not uniform draws (a Select of one
        of ``draw_strategies`` without a where filter: their labels calibrate the priors, so every draw is
        kept); returns how many were deleted. The records are history (no RPC reads them back), and a client
        sending distinct Selects would otherwise grow the table by a few kB each, for good."""
        marks = ",".join("?" * len(draw_strategies)) or "NULL"
        with self._lock, self._transaction():
            cur = self._db.execute(
                f"DELETE FROM selections WHERE rowid IN (SELECT rowid FROM selections WHERE NOT "
                f"(json_extract(request, '$.strategy') IN ({marks}) AND json_extract(request, '$.where') = '{{}}') "
                f"ORDER BY time DESC LIMIT -1 OFFSET ?)", (*draw_strategies, keep))
            return int(cur.rowcount)

    def queue(self, name: str) -> tuple[dict[str, Any], float] | None:
        """The stored body of queue ``name`` (JSON object) and when it was stored, or None."""
        with self._lock:
            row = self._db.execute("SELECT body, time FROM queues WHERE name=?", (name,)).fetchone()
        return None if row is None else (json.loads(row[0]), float(row[1]))

    def set_queue(self, name: str, body: dict[str, Any]) -> None:
        """Durably store queue ``name`` (a JSON-serialisable object), replacing what was there."""
        text = json.dumps(body, sort_keys=True)
        with self._lock, self._transaction():
            self._db.execute("INSERT OR REPLACE INTO queues(name, body, time) VALUES (?,?,?)",
                             (name, text, time.time()))

    def selections(self) -> list[tuple[str, dict[str, object], list[list[object]], str]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT selection_id, request, result, model_version FROM selections ORDER BY time").fetchall()
        return [(s, json.loads(req), json.loads(res), v) for s, req, res, v in rows]

    def set_model_version(self, name: str, status: str, embedded: int, error: str = "",
                          fingerprint: str | None = None) -> None:
        """Write ``name``'s model_versions row; ``fingerprint`` None keeps the one it has ('' for a new row)."""
        with self._lock, self._transaction():
            self._put_model_version(name, status, embedded, error, fingerprint)

    def _put_model_version(self, name: str, status: str, embedded: int, error: str = "",
                           fingerprint: str | None = None) -> None:
        """Write ``name``'s model_versions row (call with the lock held, inside a transaction); ``fingerprint``
        None keeps the row's."""
        if fingerprint is None:
            row = self._db.execute("SELECT fingerprint FROM model_versions WHERE name=?", (name,)).fetchone()
            fingerprint = "" if row is None else str(row[0])
        self._db.execute(
            "INSERT OR REPLACE INTO model_versions(name, status, embedded, error, updated, fingerprint) "
            "VALUES (?,?,?,?,?,?)", (name, status, embedded, error, time.time(), fingerprint))

    def set_fingerprint(self, name: str, fingerprint: str) -> None:
        """Set ``name``'s recorded fingerprint (nothing when it has no row)."""
        with self._lock, self._transaction():
            self._db.execute("UPDATE model_versions SET fingerprint=? WHERE name=?", (fingerprint, name))

    def model_versions(self) -> dict[str, tuple[str, int, str]]:
        """name -> (status, embedded, error)."""
        return {n: (s, e, err) for n, (s, e, err, _) in self.model_versions_full().items()}

    def model_versions_full(self) -> dict[str, tuple[str, int, str, str]]:
        """name -> (status, embedded, error, fingerprint)."""
        with self._lock:
            rows = self._db.execute("SELECT name, status, embedded, error, fingerprint FROM model_versions").fetchall()
        return {n: (s, e, err, fp) for n, s, e, err, fp in rows}

    def _insert_labels(self, rows: Sequence[tuple[int, int, str, float, str, str]]) -> None:
        """Insert label rows (seq, class, annotator, time, source, model_version), numbered (labels.n) past every
        row ever stored, a deleted one's too (LABEL_ROWS_HIGH_KEY): the numbers are ListLabels' cursor. Call
        inside a transaction."""
        if not rows:
            return
        # (a rename moves a label without changing where it came from: an accepted prior renamed is one still)
        self._pending_sources += [(int(q), source.startswith("prior:") and c != RETRACTED)
                                  for q, c, _, _, source, _ in rows if source != RENAME_SOURCE]
        start = 1 + int(self._db.execute(
            "SELECT MAX(COALESCE((SELECT MAX(n) FROM labels), 0), "
            "COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = ?), 0))",
            (LABEL_ROWS_HIGH_KEY,)).fetchone()[0])
        self._db.executemany(
            "INSERT INTO labels(n, seq, class, annotator, time, source, model_version) VALUES (?,?,?,?,?,?,?)",
            [(start + i, *row) for i, row in enumerate(rows)])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def set_meta(self, key: str, value: str) -> None:
        with self._lock, self._transaction():
            self._set_meta(key, value)

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
