"""The Ingest pipeline, without gRPC: decode, blob, embed, commit, index.

One batch (one IngestRequest message) goes through three stages:

1. ``prepare`` (no lock): per-sample checks (id, payload, the input limits of agent.limits), decoding
   at the serving model's size (shortlist.images, the one home of payload decoding; decompression
   bombs are refused from the header), an id repeated within the batch judged as a resend in a later
   batch would be (so the outcome does not depend on how a client batches its items), and the payload blobs
   written and fsynced before anything refers to them.
2. ``embed`` (no lock): onnxruntime on the batch's new samples under the serving version.
3. ``store``: under the model manager's write lock (``ModelManager.writing``, the only way to take
   it; the same lock the model swap holds, so no sample is embedded by one version and missed by the
   next) decide which samples are new, then store samples, labels and embeddings in one durable
   SQLite transaction and add them to the serving index.

``stream`` runs the stages of a stream's batches in three threads (reader: batch k+2, embedder:
batch k+1, committer: batch k; onnxruntime, Pillow, SQLite and fsync release the GIL, so they
overlap), with at most ``Limits.max_ingest_streams`` streams at once. Per-sample problems are
Rejections; a whole-request problem (too many samples in one message, a full disk, a broken stream)
is raised as an agent.errors exception, with a note on how many samples of the stream were stored
(``agent.errors.note_stored``: also the trailing metadata ``shortlist-stored``, ``shortlist-handled``, ...).
"""

from __future__ import annotations

import logging
import posixpath
import queue
import shlex
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np

from agent.admission import Admission, large_decode_slot
from agent.blobs import BlobStore, sha256_hex
from agent.cancel import CancelToken, ShuttingDown
from agent.embedder import EmbedOutput, ModelFailed
from agent.errors import Cancelled, DeadlineExceeded, Problem, Rejected, ResourceExhausted, note_stored, quoted
from agent.limits import (
    Limits,
    annotator_name,
    check_count,
    class_name_problem,
    limit_hint,
    metadata_problem,
    name_problem,
    text_problem,
)
from agent.models import ModelManager, Serving
from agent.state import INGEST_ANNOTATOR, INGEST_SOURCE, EmbeddingRows, NewSample, SampleRecord, State
from shortlist.images import TooManyPixels, decode_payload, image_header
from shortlist.manifest import Preprocess
from shortlist.v1 import agent_pb2

log = logging.getLogger(__name__)

# ListSamples(include_payload) sends a sample whose stored payload is missing or corrupt without a
# payload and with this metadata key saying why (instead of ending the stream); Ingest refuses it.
PAYLOAD_ERROR_KEY = "shortlist.payload_error"


@dataclass
class Incoming:
    """One sample as received: ``kind`` "image" (``data`` = encoded bytes) or "tensor" (``data`` =
    raw pixel bytes with ``dtype``/``shape``), ``blob`` = the bytes to keep (the encoded image, or the
    serialised Tensor message), or kind "" when the sample carried no payload."""

    id: str
    kind: str
    data: bytes
    blob: bytes
    dtype: str = ""
    shape: tuple[int, ...] = ()
    uri: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    label: str = ""


@dataclass
class Prepared:
    """A batch after stage 1: samples still to store, their sha256 and pixels (HxWx3 uint8 at
    ``version``'s size; None when no model), and the rejections so far."""

    samples: list[Incoming]
    digests: list[str]
    pixels: list[np.ndarray | None]
    version: str
    rejected: list[Rejected]
    duplicates: int = 0
    # Of the duplicates: those sent with another uri than the stored (or first) one, and the first of them.
    other_uri: int = 0
    other_uri_example: tuple[str, str, str] | None = None  # (id, stored uri, sent uri)


@dataclass
class Embedded:
    """A batch after stage 2: ``fresh`` = positions in ``prep.samples`` not yet stored when it ran,
    ``early`` = their embeddings under ``prep.version`` (None without a model)."""

    prep: Prepared
    fresh: list[int]
    early: EmbedOutput | None


SAME_PAYLOAD_EXAMPLES = 10  # (id, other id) pairs an IngestReply names besides the count; also twin conflicts


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    # Of the duplicates: samples stored without a label that a resend gave theirs (IngestReply.labels_added).
    labels_added: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    # Accepted samples whose payload another id already holds, and the first few (id, other id).
    same_payload: int = 0
    same_payload_examples: list[tuple[str, str]] = field(default_factory=list)
    # Of the duplicates: resends with another uri than the stored one (the stored one is kept), and the first.
    other_uri: int = 0
    other_uri_example: tuple[str, str, str] | None = None  # (id, stored uri, sent uri)
    # Accepted labelled samples whose payload a sample under another id holds with another label, and the
    # first few (id, twin id, twin's label).
    twin_conflicts: int = 0
    twin_conflict_examples: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, other: IngestResult) -> None:
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.labels_added += other.labels_added
        self.rejected.extend(other.rejected)
        self.same_payload += other.same_payload
        room = SAME_PAYLOAD_EXAMPLES - len(self.same_payload_examples)
        self.same_payload_examples.extend(other.same_payload_examples[:max(room, 0)])
        self.other_uri += other.other_uri
        self.other_uri_example = self.other_uri_example or other.other_uri_example
        self.twin_conflicts += other.twin_conflicts
        room = SAME_PAYLOAD_EXAMPLES - len(self.twin_conflict_examples)
        self.twin_conflict_examples.extend(other.twin_conflict_examples[:max(room, 0)])

    def note_same_payload(self, sample_id: str, other_id: str) -> None:
        self.same_payload += 1
        if len(self.same_payload_examples) < SAME_PAYLOAD_EXAMPLES:
            self.same_payload_examples.append((sample_id, other_id))


# A Rejection's id is the id as sent up to this many characters (or --max-id-chars when larger): every valid id,
# and a too-long one whole unless it is huge (a 1 MB id would take the room of every other rejection in the reply)
REJECTION_ID_CHARS = 4096


def rejection_id(sample_id: str, max_id_chars: int) -> str:
    """The id a Rejection of ``sample_id`` carries: the id as sent, so that a client can match each rejection to
    its item; only an id longer than both the agent's ``max_id_chars`` (so rejected for its length) and
    REJECTION_ID_CHARS comes back cut to the larger of the two (agent.proto, Rejection.id: matched by prefix)."""
    keep = max(max_id_chars, REJECTION_ID_CHARS)
    return sample_id if len(sample_id) <= keep else sample_id[:keep]


def differences(metadata: dict[str, str], s: Incoming, had: str, sent: str) -> str:
    """What ``s`` says that differs from a sample's ``metadata`` (each metadata entry it carries that is not the
    same there), for a rejection: "'k': '1' stored, '2' sent" with ``had``/``sent`` the words for the two
    sides; "" when nothing differs. The first three differences, and how many more. Not the uri: a resend
    from another place is the same sample (``note_other_uri``)."""
    differs = [
        f"{quoted(k[:64])}: {quoted(metadata[k][:64])} {had}, {quoted(v[:64])} {sent}" if k in metadata
        else f"{quoted(k[:64])}: not {had}, {quoted(v[:64])} {sent}"
        for k, v in sorted(s.metadata.items()) if metadata.get(k) != v]
    return "; ".join(differs[:3]) + (f"; and {len(differs) - 3} more" if len(differs) > 3 else "")


def same_uri(stored: str, sent: str) -> bool:
    """Whether the uri stored with a sample and the one sent now are the same path: equal after ``normpath``
    (``a/./b`` = ``a/b``, ``a//b`` = ``a/b``). "" (no uri) is none. Only the path: the same path can still name
    two files (two folders ingested from different working directories, a mount point reused), and a relative
    uri and an absolute one are never taken for the same (a relative ``cat/0000.jpg`` is the tail of every
    source's ``cat/0000.jpg``)."""
    return bool(stored) and bool(sent) and posixpath.normpath(stored) == posixpath.normpath(sent)


def note_other_uri(res: IngestResult | Prepared, uri: str, s: Incoming) -> None:
    """Count a duplicate ``s`` whose uri differs from ``uri`` (the stored one, or the id's first item's in this
    batch) as paths (``same_uri``; ``./cat/1.jpg`` is ``cat/1.jpg``): the same files read from another working
    directory, an absolute path, a card mounted elsewhere. The stored uri is kept (a uri is where the sample
    came from, first); the reply says how many came from elsewhere instead of rejecting each one (a rerun
    from another directory rejected every stored image)."""
    if s.uri and not same_uri(uri, s.uri):
        res.other_uri += 1
        if res.other_uri_example is None:
            res.other_uri_example = (s.id, uri, s.uri)


def new_class_problem(classes: Sequence[str], label: str) -> str | None:
    """Why ``label`` cannot become a new class (``class_name_problem``), or None; a class already in the list
    passes as it is (one stored before this check keeps working)."""
    return None if label in classes else class_name_problem(label, "label", classes)


def live_classes(state: State) -> list[str]:
    """The classes a label may name: ``State.classes`` less the names RenameClass retired (an open list keeps
    them there, after the others, for the label history)."""
    return [c for c in state.classes if c not in state.renamed]


def _fold(name: str) -> str:
    return unicodedata.normalize("NFKC", name).casefold()


def near_retired_problem(state: State, label: str, renaming: str = "") -> str | None:
    """Why ``label`` cannot be a new class because it differs from a name RenameClass retired only in case or
    Unicode form ("Cat" after `cat` was renamed to `feline`), advising the class that name became, or None.
    ``renaming``: RenameClass's from_class, when ``label`` is its to_class (advise the retired name itself
    when it was renamed to that class: a rename back)."""
    key = _fold(label)
    for name, to in state.renamed.items():
        if name != label and _fold(name) == key:
            use = name if to == renaming else to
            return (f"label {quoted(label[:64])} differs from {quoted(name[:64])} only in case or Unicode form, and "
                    f"{quoted(name[:64])} was renamed to {quoted(to[:64])}: use {quoted(use[:64])}")
    return None


def class_now(state: State, label: str) -> str:
    """The class ``label`` names now: ``label`` itself, or the class RenameClass made of it (``state.renamed``,
    followed to its end: a chain ``deer`` -> ``roe_deer`` -> ``capreolus`` makes ``deer`` name ``capreolus``;
    rename_class keeps the map flat, the loop is for a map written otherwise)."""
    seen = {label}
    while (to := state.renamed.get(label)) is not None and to not in seen:
        seen.add(to)
        label = to
    return label


def label_problem(state: State, label: str) -> Problem | None:
    """Why a label ``label`` cannot be stored now, or None: a name RenameClass retired (``renamed_problem``,
    naming the class it became), a new class name that ``new_class_problem`` refuses beside the classes a
    label may name (``live_classes``), or one that differs from a retired name only in case or Unicode form
    (``near_retired_problem``). The callers that store labels (Ingest's ``store``, SubmitLabels) check it,
    through ``label_refusal``, under the model manager's write lock, in the same section as the write:
    RenameClass takes that lock, so no label of a retired name is stored after its rename commits."""
    problem = state.renamed_problem(label)
    if problem is not None:
        return Problem(agent_pb2.REJECTION_CODE_UNKNOWN_CLASS, problem)
    live = live_classes(state)
    if label in live:
        return None
    problem = new_class_problem(live, label) or near_retired_problem(state, label)
    return None if problem is None else Problem(agent_pb2.REJECTION_CODE_INVALID_LABEL, problem)


@dataclass(frozen=True)
class LabelRefusal:
    """Why a label cannot be stored now: ``problem`` (a Rejection's code and reason); ``unlisted``: the name
    itself is fine but the closed class list lacks it (SubmitLabels judges that after the item's id and
    conditions)."""

    problem: Problem
    unlisted: bool = False


def label_refusal(state: State, label: str) -> LabelRefusal | None:
    """Why Ingest or SubmitLabels cannot store label ``label`` now (``label_problem``, or a name not in a
    closed class list), or None; then ``state.class_index(label)`` is its index (for an open list, a new
    class is made there: under the write lock only; this check makes none). The one label check of both."""
    problem = label_problem(state, label)
    if problem is not None:
        return LabelRefusal(problem)
    if state.closed and label not in state.classes:
        return LabelRefusal(Problem(agent_pb2.REJECTION_CODE_UNKNOWN_CLASS, unknown_label_reason(state.classes, label)),
                            unlisted=True)
    return None


def unknown_label_reason(classes: Sequence[str], label: str) -> str:
    shown = ", ".join(classes[:20]) + (" ..." if len(classes) > 20 else "")
    return f"unknown label {quoted(label)}: the class list is closed; valid: {shown}"


def _idle(limits: Limits) -> DeadlineExceeded:
    s = limits.ingest_idle_timeout_s
    return DeadlineExceeded(
        f"this Ingest stream sent nothing for {s:g} s, so the agent ended it to free its slot for other "
        f"clients: open a new stream when there is more to send, or close streams between bursts "
        f"{limit_hint('ingest_idle_timeout_s')}")


def _closing() -> ShuttingDown:
    return ShuttingDown("the agent is shutting down and stopped reading this stream: retry against the restarted "
                        "agent")


class IngestPipeline:
    """Ingest for one agent: its state, blob store (None with --no-blobs), model manager and limits."""

    def __init__(self, state: State, blobs: BlobStore | None, manager: ModelManager, limits: Limits,
                 decodes: Admission | None = None, large_image_pixels: int = 0) -> None:
        self.state = state
        self.blobs = blobs
        self.manager = manager
        self.limits = limits
        self._streams = threading.BoundedSemaphore(limits.max_ingest_streams)
        # Set at shutdown (``close_streams``): each open stream ends after the batch it is storing, with
        # UNAVAILABLE and how many of its samples were stored (gRPC's own cancel at the end of the grace
        # period said "Cancelling all calls", and a pipeline could not know what was durable).
        self.closing = threading.Event()
        # Streams open now, and how many the shutdown ended (``wait_closed``), under ``_open_changed``.
        self._open_changed = threading.Condition()
        self._open = 0
        self.ended_by_shutdown = 0
        # Encoded images above large_image_pixels decode in a slot of ``decodes`` (None: no bound).
        self.decodes = decodes
        self.large_image_pixels = large_image_pixels

    # ---- per-sample checks -----------------------------------------------------------------------
    def sample_problem(self, s: Incoming, resent: bool = False) -> Problem | None:
        """Why ``s`` breaks a rule or an input limit before decoding (a Rejection's code and reason), or None.
        ``resent``: ``s``'s id is stored, or appears earlier in its batch; then a label that RenameClass retired is
        left to the resend checks (``_resend``, ``_repeat``), which take it for the class it became
        (``class_now``): a rerun of the first ingest of a class-folder tree after a rename resends the retired
        name for samples that already hold the new one, and is a duplicate, not a rejection of each."""
        lim = self.limits
        if not s.id:
            return Problem(agent_pb2.REJECTION_CODE_INVALID_ID,
                           "empty id: every sample needs a client-chosen unique id")
        problem = text_problem(s.id, lim.max_id_chars, "max_id_chars", "id")
        if problem is not None:
            return Problem(agent_pb2.REJECTION_CODE_ID_TOO_LONG, problem)
        problem = name_problem(s.id, "id")
        if problem is not None:
            return Problem(agent_pb2.REJECTION_CODE_INVALID_ID, problem)
        problem = text_problem(s.label, lim.max_label_chars, "max_label_chars", "label")
        if problem is not None:
            return Problem(agent_pb2.REJECTION_CODE_INVALID_LABEL, problem)
        refused = label_problem(self.state, s.label) if s.label and not (resent and s.label in self.state.renamed) \
            else None
        if refused is not None:
            return refused
        problem = text_problem(s.uri, lim.max_uri_chars, "max_uri_chars", "uri") or metadata_problem(s.metadata, lim)
        if problem is not None:
            return Problem(agent_pb2.REJECTION_CODE_INVALID_METADATA, problem)
        if PAYLOAD_ERROR_KEY in s.metadata:
            return Problem(agent_pb2.REJECTION_CODE_INVALID_METADATA,
                           f"metadata key {quoted(PAYLOAD_ERROR_KEY)} is reserved: ListSamples uses it to flag a "
                           "sample whose stored payload cannot be read; rename it")
        if not s.kind:
            return Problem(agent_pb2.REJECTION_CODE_INVALID_PAYLOAD, "no payload: set encoded_image or tensor")
        if len(s.data) > lim.max_image_bytes:
            return Problem(agent_pb2.REJECTION_CODE_PAYLOAD_TOO_LARGE,
                           f"{'encoded image' if s.kind == 'image' else 'tensor'} of {len(s.data):,} bytes is larger "
                           f"than the limit of {lim.max_image_bytes:,} bytes {limit_hint('max_image_bytes')}")
        return None

    def _decode(self, s: Incoming, pre: Preprocess | None, token: CancelToken | None = None) -> np.ndarray:
        try:
            width, height = (image_header(s.data, self.limits.max_pixels)  # the header only: cheap
                             if self.decodes is not None and s.kind == "image" else (0, 0))
            with large_decode_slot(self.decodes, width * height, self.large_image_pixels, token,
                                   f"decoding the {width}x{height} image {quoted(s.id)}"):
                return decode_payload(s.kind, s.data, s.dtype, s.shape, pre, self.limits.max_pixels)
        except TooManyPixels as e:
            raise TooManyPixels(f"{e} {limit_hint('max_pixels')}") from None

    # ---- the three stages of one batch -----------------------------------------------------------
    def prepare(self, samples: Sequence[Incoming], token: CancelToken | None = None) -> Prepared:
        """Stage 1 (no lock, runs beside stage 2 of the previous batch): validate ids, limits and
        payloads, decode them at the serving model's size, judge repeats within the batch (``_repeat``), write blobs.
        ``token`` (the call's) bounds the wait for a large-image decode slot."""
        check_count(samples, self.limits.max_samples_per_request, "max_samples_per_request", "samples",
                    "send fewer samples per IngestRequest (`shortlist ingest --batch`)")
        serving = self.manager.current
        out = Prepared([], [], [], "" if serving is None else serving.version, [])
        # id -> (payload sha256, the item that said what this batch says of it: uri, metadata, label; its position
        # in out.samples, -1 when not there; the stored record when the id was stored), for the repeats of an id
        # within the batch, judged as a resend in another request would be (``_repeat``)
        seen: dict[str, tuple[str, Incoming, int, SampleRecord | None]] = {}
        for s in samples:
            resent = s.label in self.state.renamed and (s.id in seen or self.state.lookup(s.id) is not None)
            problem = self.sample_problem(s, resent)
            if problem is not None:
                out.rejected.append(problem.of(rejection_id(s.id, self.limits.max_id_chars)))
                continue
            digest = sha256_hex(s.blob)
            if s.id in seen:
                self._repeat(seen, s, digest, out)
                continue
            stored = self.state.lookup(s.id)
            if stored is not None:  # a resend: no need to decode (stage 3 re-checks new ids under the lock)
                self._stored_item(stored, digest, s, seen, out)
                continue
            try:
                # Without a model, still refuse what could never be embedded (decoded at full size).
                pixels: np.ndarray | None = self._decode(s, None if serving is None else serving.manifest.preprocess,
                                                         token)
                if serving is None:
                    pixels = None
            except ValueError as e:  # TooManyPixels (a ValueError): over --max-pixels
                code = (agent_pb2.REJECTION_CODE_PAYLOAD_TOO_LARGE if isinstance(e, TooManyPixels)
                        else agent_pb2.REJECTION_CODE_INVALID_PAYLOAD)
                out.rejected.append(Rejected(s.id, code, str(e)))
                continue
            seen[s.id] = (digest, s, len(out.samples), None)
            out.samples.append(s)
            out.digests.append(digest)
            out.pixels.append(pixels)
        if self.blobs is not None and out.samples:
            # Before the commit: a committed sample's blob is always there (orphans are harmless).
            self.blobs.put_many([(d, s.blob) for d, s in zip(out.digests, out.samples, strict=True)])
        return out

    def _stored_item(self, rec: SampleRecord, digest: str, s: Incoming,
                     seen: dict[str, tuple[str, Incoming, int, SampleRecord | None]], out: Prepared) -> None:
        """Stage 1 of an item whose id is stored (``rec``): a duplicate or a rejection now (``_resend``), or a
        label for a sample stored without one, added to ``out.samples`` for stage 3 (which stores it under the
        lock); noted in ``seen`` unless rejected (a repeat of a rejected item is judged, and rejected, again)."""
        rejected = len(out.rejected)
        pos = -1
        if self._resend(rec, digest, s, out, None):
            pos = len(out.samples)
            out.samples.append(s)
            out.digests.append(digest)
            out.pixels.append(None)
        if len(out.rejected) == rejected:
            seen[s.id] = (digest, s, pos, rec)
        if rec.sha256 == digest:
            self._repair_blob(rec, s.blob)

    def _repeat(self, seen: dict[str, tuple[str, Incoming, int, SampleRecord | None]], s: Incoming, digest: str,
                out: Prepared) -> None:
        """An id repeated within one batch (``seen``: what the batch said of it before), judged as the same item
        in a later request would be, so that the outcome does not depend on how the client batched its items: a
        duplicate when the payload is the same and each metadata entry and label it carries is the one stored or
        said before (another uri is counted, ``note_other_uri``); else a rejection that says what differs;
        except that a label for an id given before without one is its label (stored with the sample when the
        batch stores it, else as a resend's label for a sample stored without one)."""
        first_digest, first, pos, rec = seen[s.id]
        sid = s.id
        if first_digest != digest:
            out.rejected.append(Rejected(sid, agent_pb2.REJECTION_CODE_ID_TAKEN,
                                         "the same id appears twice in this batch with different payloads"))
            return
        if rec is not None and pos < 0:  # the earlier item changed nothing stored: judge this one as it alone
            self._stored_item(rec, digest, s, seen, out)
            return
        if rec is not None:
            shown, where, uri = differences(rec.metadata, s, "stored", "sent"), "is stored", rec.uri
        else:
            shown, where, uri = differences(first.metadata, s, "sent before", "sent again"), \
                "appears earlier in this request", first.uri
        if shown:
            out.rejected.append(Rejected(sid, agent_pb2.REJECTION_CODE_RESEND_CHANGES_SAMPLE,
                                         f"id {quoted(sid)} {where} (same payload) with other metadata "
                                         f"({shown}): metadata is set by the first ingest and a resend does not "
                                         "change it"))
        elif not s.label or s.label == first.label or (first.label and class_now(self.state, s.label) == first.label):
            out.duplicates += 1  # (a retired name of the first item's label, too: as a later request would judge it)
            note_other_uri(out, uri, s)
        elif first.label:
            out.rejected.append(Rejected(sid, agent_pb2.REJECTION_CODE_RESEND_CHANGES_LABEL,
                                         f"id {quoted(sid)} appears earlier in this request (same payload) with label "
                                         f"{quoted(first.label)}: a resend does not change labels; send one label per "
                                         f"sample, or give {self._label_to_give(s.label)} with SubmitLabels "
                                         "(`shortlist label`)"))
        elif (refusal := label_refusal(self.state, s.label)) is not None:
            # judged now, as a later request would judge it against the stored sample: only the label is refused
            # (merged into the first item, stage 3 refused the whole sample for it)
            out.rejected.append(refusal.problem.of(sid))
        else:  # new in this batch, given before without a label: stored with this one
            labelled = replace(first, label=s.label)
            out.samples[pos] = labelled
            seen[sid] = (digest, labelled, pos, None)
            out.duplicates += 1
            note_other_uri(out, uri, s)

    def _repair_blob(self, rec: SampleRecord, blob: bytes) -> None:
        """A resent payload of a stored sample whose blob is missing or corrupt: store it again, and
        let the model manager embed the sample again."""
        if self.blobs is None:
            return
        known_bad = (any(rec.seq in bad for bad in self.manager.unembeddable.values())
                     or self.blobs.is_unreadable(rec.sha256))  # a read found it damaged (GetStatus warns)
        if not known_bad and self.blobs.has(rec.sha256):  # a cheap test for every resend; hash only suspects
            return
        if not self.blobs.damaged(rec.sha256):
            return
        self.blobs.repair(rec.sha256, blob)
        self.manager.forgive(rec.seq)
        log.warning("payload of sample %r repaired by a re-ingest", rec.id)

    def embed(self, prep: Prepared) -> Embedded:
        """Stage 2 (no lock): embed the batch's new samples with the serving version."""
        fresh = [i for i, s in enumerate(prep.samples) if self.state.lookup(s.id) is None]
        serving = self.manager.current
        early: EmbedOutput | None = None
        if serving is not None and serving.version == prep.version and fresh:
            early = self._embed(serving, np.stack([_px(prep.pixels[i]) for i in fresh]))
        return Embedded(prep, fresh, early)

    def _embed(self, serving: Serving, images: np.ndarray) -> EmbedOutput:
        """``serving``'s embeddings of NxHxWx3 ``images``; a ModelFailed is also kept for GetStatus's warnings
        (the manager's ``ingest_failed``) until a batch of that version embeds again."""
        try:
            out = serving.embedder.embed(images)
        except ModelFailed as e:
            self.manager.ingest_failed(serving.version, str(e))
            raise
        self.manager.ingest_failed(serving.version, "")
        return out

    def store(self, emb: Embedded) -> IngestResult:
        """Stage 3: store samples, labels and embeddings in one durable transaction (and the index).
        Returns only after the commit."""
        prep, fresh, early = emb.prep, emb.fresh, emb.early
        res = IngestResult(duplicates=prep.duplicates, rejected=list(prep.rejected), other_uri=prep.other_uri,
                           other_uri_example=prep.other_uri_example)
        with self.manager.writing() as serving:
            # Decide under the lock: another stream may have stored the same id meanwhile.
            new: list[NewSample] = []
            took: list[int] = []  # positions in ``fresh`` of the samples in ``new``
            pos = {i: j for j, i in enumerate(fresh)}
            first_with: dict[str, tuple[str, str]] = {}  # payload -> (the first new id of this batch with it, label)
            resent_labels: list[tuple[int, int]] = []  # (seq, class) for stored samples without a label
            for i, (s, digest) in enumerate(zip(prep.samples, prep.digests, strict=True)):
                rec = self.state.lookup(s.id)
                if rec is not None:
                    self._resend(rec, digest, s, res, resent_labels)
                    continue
                assert i in pos
                label = -1
                if s.label:
                    # again under the lock: a RenameClass may have retired the label since ``sample_problem``
                    if (refusal := label_refusal(self.state, s.label)) is not None:
                        res.rejected.append(refusal.problem.of(s.id))
                        continue
                    idx = self.state.class_index(s.label)
                    assert idx is not None  # (label_refusal: a closed list holds it)
                    label = idx
                new.append(NewSample(s.id, s.uri, dict(s.metadata), s.kind, digest, label))
                took.append(pos[i])
                same = self.state.lookup_payload(digest)
                twin = (same.id, self.state.label_name(same.seq)) if same is not None else first_with.get(digest)
                if twin is not None:
                    res.note_same_payload(s.id, twin[0])
                    if s.label and twin[1] and twin[1] != s.label:  # (a file moved to another class folder)
                        res.twin_conflicts += 1
                        if len(res.twin_conflict_examples) < SAME_PAYLOAD_EXAMPLES:
                            res.twin_conflict_examples.append((s.id, *twin))
                first_with.setdefault(digest, (s.id, s.label))
            if resent_labels:
                self.state.add_labels(resent_labels, INGEST_ANNOTATOR, INGEST_SOURCE,
                                      "" if serving is None else serving.version)
            if not new:
                return res
            if self.blobs is not None:
                # A DeleteSamples may have removed a payload this batch found stored (put_many skipped it) after
                # stage 1: store it again, so a committed sample's payload is always there.
                lost = [(n.sha256, prep.samples[fresh[j]].blob) for n, j in zip(new, took, strict=True)
                        if not self.blobs.has(n.sha256)]
                if lost:
                    self.blobs.put_many(lost)
            if serving is None:
                self.state.add_samples(new)
            else:
                if early is not None and serving.version == prep.version:
                    sel = np.array(took, np.int64)
                    out = EmbedOutput(early.vecs[sel], None if early.logits is None else early.logits[sel],
                                      None if early.pretext is None else early.pretext[sel])
                else:  # a model arrived or was swapped in since stage 1: decode for it now
                    pre = serving.manifest.preprocess
                    srcs = [prep.samples[fresh[j]] for j in took]
                    out = self._embed(serving, np.stack([self._decode(s, pre) for s in srcs]))
                vindex = serving.index
                seqs = self.state.add_samples(
                    new, EmbeddingRows(serving.version, vindex.n, out.vecs, out.logits, out.pretext),
                    model_version=serving.version)
                vindex.add(np.array(seqs, np.int64), out.vecs, out.logits, out.pretext)
            res.accepted += len(new)
        return res

    def _resend(self, rec: SampleRecord, digest: str, s: Incoming, res: IngestResult | Prepared,
                labels: list[tuple[int, int]] | None) -> bool:
        """A sample whose id is stored (``rec``): a duplicate when it is a resend (the same payload, and each
        metadata entry and label that it carries is the stored one; one it leaves empty says nothing), so
        resending after a failure is safe and nothing it says is dropped unsaid; another uri is counted
        (``note_other_uri``), the stored one kept. Else a
        rejection that says what differs and where such a change goes, with one exception: a label for a
        sample stored without one is the label that sample was missing (an ingest without labels, then again
        with them), so it is kept, appended to ``labels`` as (seq, class index) for the caller to store under
        the state lock. ``labels`` None (stage 1, no lock): that case is left to stage 3, and the return is
        True."""
        sid = s.id
        if rec.sha256 != digest and same_uri(rec.uri, s.uri):
            # the same path with new bytes: a file replaced in place (a new --id-prefix would store the whole
            # source again), or another source's file at the same path (two folders ingested from different
            # working directories, a reused mount point: a new --id-prefix is the way). The agent cannot tell
            # the two apart, so the reason says both.
            arg = ("-- " if sid.startswith("-") else "") + shlex.quote(sid)
            res.rejected.append(Rejected(sid, agent_pb2.REJECTION_CODE_FILE_CHANGED,
                                         f"id {quoted(sid)} is stored from the same uri with a different payload: "
                                         f"the file {quoted(s.uri[-256:])} now holds other bytes than when it was "
                                         "ingested: if it was replaced in place, `shortlist delete-samples "
                                         f"{arg}` then ingest again (or keep the stored one); if it is another "
                                         "source's file with the same path, give each source its own --id-prefix"))
        elif rec.sha256 != digest:
            res.rejected.append(Rejected(sid, agent_pb2.REJECTION_CODE_ID_TAKEN,
                                         f"id {quoted(sid)} is already in the pool with a different payload; ids must "
                                         "be unique (use a new id for a new image)"))
        elif shown := differences(rec.metadata, s, "stored", "sent"):
            res.rejected.append(Rejected(sid, agent_pb2.REJECTION_CODE_RESEND_CHANGES_SAMPLE,
                                         f"id {quoted(sid)} is stored (same payload) with other metadata "
                                         f"({shown}): metadata is set by the first ingest and a resend does not "
                                         "change it"))
        elif not s.label or s.label == (label := self.state.label_name(rec.seq)) or \
                (label and class_now(self.state, s.label) == label):
            # (a label RenameClass retired names the class it became: the rename moved this sample's label there)
            res.duplicates += 1
            note_other_uri(res, rec.uri, s)
        elif label:
            res.rejected.append(Rejected(sid, agent_pb2.REJECTION_CODE_RESEND_CHANGES_LABEL,
                                         f"id {quoted(sid)} is stored (same payload) with label {quoted(label)}: a "
                                         f"resend does not change labels; give {self._label_to_give(s.label)} with "
                                         "SubmitLabels (`shortlist label`)"))
        elif (retired := self.state.renamed_problem(s.label)) is not None:
            # stored without a label: a retired name is no label to add (not mapped silently, as for a new sample)
            res.rejected.append(Rejected(sid, agent_pb2.REJECTION_CODE_UNKNOWN_CLASS, retired))
        elif labels is None:
            return True
        elif (last := self.state.last_label_by(rec.seq)) is not None:  # (under the lock: stage 3)
            # unlabelled, but labelled once: its label was taken back, which a resend must not undo (a nightly
            # ingest --with-labels put retracted labels back)
            res.rejected.append(Rejected(sid, agent_pb2.REJECTION_CODE_RESEND_CHANGES_LABEL,
                                         f"id {quoted(sid)} is stored (same payload) and its label was taken back (by "
                                         f"{annotator_name(last[0])}): a resend does not put labels back; give "
                                         f"{quoted(s.label)} with SubmitLabels (`shortlist label`) if it is right"))
        elif (refusal := label_refusal(self.state, s.label)) is not None:
            res.rejected.append(refusal.problem.of(sid))
        else:
            idx = self.state.class_index(s.label)
            assert idx is not None  # (label_refusal: a closed list holds it)
            labels.append((rec.seq, idx))
            res.duplicates += 1
            note_other_uri(res, rec.uri, s)
            if isinstance(res, IngestResult):
                res.labels_added += 1
        return False

    def _label_to_give(self, label: str) -> str:
        """``label`` quoted, for a reason's advice to give it with SubmitLabels; a name RenameClass retired is
        given as the class it became (SubmitLabels refuses the retired one)."""
        now = class_now(self.state, label)
        return quoted(label) if now == label else f"{quoted(now)} ({quoted(label)} was renamed to {quoted(now)})"

    def batch(self, samples: Sequence[Incoming]) -> IngestResult:
        """All three stages for one batch, in this thread."""
        return self.store(self.embed(self.prepare(samples)))

    # ---- a stream of batches ---------------------------------------------------------------------
    @contextmanager
    def stream_slot(self) -> Iterator[None]:
        """One of the ``max_ingest_streams`` slots, or ResourceExhausted at once (with a retry hint)."""
        if not self._streams.acquire(blocking=False):
            lim = self.limits
            raise ResourceExhausted(
                f"the agent is already serving {lim.max_ingest_streams} Ingest streams, its limit; retry in "
                f"{lim.ingest_retry_after_s:g} s {limit_hint('max_ingest_streams')}", lim.ingest_retry_after_s)
        with self._open_changed:
            self._open += 1
        try:
            yield
        finally:
            with self._open_changed:
                self._open -= 1
                self._open_changed.notify_all()
            self._streams.release()

    def close_streams(self) -> None:
        """Shutdown: every open stream ends after its current batch, saying how much of it was stored."""
        self.closing.set()

    def wait_closed(self, timeout: float) -> int:
        """After ``close_streams``: wait (up to ``timeout`` s) until no stream is open; how many streams the
        shutdown ended."""
        with self._open_changed:
            self._open_changed.wait_for(lambda: self._open == 0, timeout)
            return self.ended_by_shutdown

    def _ended_by_shutdown(self, stored: IngestResult) -> BaseException:
        with self._open_changed:
            self.ended_by_shutdown += 1
        return note_stored(_closing(), stored)

    def stream(self, batches: Iterable[Sequence[Incoming]], active: Callable[[], bool] = lambda: True,
               token: CancelToken | None = None) -> IngestResult:
        """Ingest every batch of ``batches`` (read lazily, e.g. from a gRPC client stream) through the
        three stages in three threads. ``active()`` False means the client went away (then a failure
        is Cancelled). Raises what a stage raised, noting how many samples were stored before it.
        ``token``: the call's (its deadline and cancellation end a wait for a large-image decode slot)."""
        with self.stream_slot():
            return self._pipeline(batches, active, token)

    def _pipeline(self, batches: Iterable[Sequence[Incoming]], active: Callable[[], bool],
                  token: CancelToken | None = None) -> IngestResult:
        done = threading.Event()
        prepared: queue.Queue[object] = queue.Queue(maxsize=2)
        embedded: queue.Queue[object] = queue.Queue(maxsize=2)

        def put(q: queue.Queue[object], item: object) -> bool:
            while not done.is_set():  # never block forever once this stream has ended
                try:
                    q.put(item, timeout=0.5)
                    return True
                except queue.Full:
                    continue
            return False

        # The idle timeout: when the read stage began waiting for the client's next message (None while
        # it prepares one), and the batches read and stored (each written by one thread only). The stream
        # is idle only when it waits and every batch read is stored: embedding one is the agent's time.
        waiting_since: list[float | None] = [time.monotonic()]
        batches_read, batches_stored = [0], [0]

        def read() -> None:
            try:
                it = iter(batches)
                while True:
                    waiting_since[0] = time.monotonic()
                    try:
                        samples = next(it)
                    except StopIteration:
                        break
                    finally:
                        waiting_since[0] = None
                    batches_read[0] += 1
                    if not put(prepared, self.prepare(samples, token)):
                        return
                put(prepared, None)
            except BaseException as e:  # a malformed message, the client cancelled, or a bug: hand it on
                put(prepared, e)

        def idle() -> bool:
            since = waiting_since[0]
            return (since is not None and batches_read[0] == batches_stored[0]
                    and time.monotonic() - since > self.limits.ingest_idle_timeout_s)

        def embed() -> None:
            while True:
                try:
                    # with a timeout: when the stream ends early (a store failed, the client left), the read
                    # stage may never hand on its end marker, and this thread must not wait for it forever
                    item = prepared.get(timeout=0.5)
                except queue.Empty:
                    if done.is_set():
                        return
                    continue
                if item is None or isinstance(item, BaseException):
                    put(embedded, item)
                    return
                try:
                    assert isinstance(item, Prepared)
                    if not put(embedded, self.embed(item)):
                        return
                except BaseException as e:
                    put(embedded, e)
                    return

        threading.Thread(target=read, name="ingest-read", daemon=True).start()
        threading.Thread(target=embed, name="ingest-embed", daemon=True).start()
        total = IngestResult()
        try:
            while True:
                try:
                    item = embedded.get(timeout=0.2)
                except queue.Empty:  # the client is between messages: a shutdown need not wait for it
                    if self.closing.is_set():
                        raise self._ended_by_shutdown(total) from None
                    if idle():
                        log.info("ended an Ingest stream idle for %g s (%d samples of it stored)",
                                 self.limits.ingest_idle_timeout_s, total.accepted)
                        raise note_stored(_idle(self.limits), total) from None
                    continue
                if item is None:
                    return total
                if isinstance(item, BaseException):
                    if not active():
                        raise note_stored(Cancelled("ingest stream broken by the client"), total) from item
                    raise note_stored(item, total)
                try:
                    assert isinstance(item, Embedded)
                    total.add(self.store(item))
                except Exception as e:  # e.g. disk full: earlier batches stay stored, this one is not
                    raise note_stored(e, total) from None
                batches_stored[0] += 1
                if self.closing.is_set():
                    raise self._ended_by_shutdown(total)
        finally:
            done.set()


def _px(pixels: np.ndarray | None) -> np.ndarray:
    assert pixels is not None  # decoded in stage 1 whenever a model was serving
    return pixels
