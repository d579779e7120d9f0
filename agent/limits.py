"""Input limits: what one request may ask of the agent, so that no request can crash it, hang it or
exhaust its memory. ``Limits`` is part of agent.config.AgentConfig; ``shortlist serve`` sets each
field with the flag in ``LIMIT_FLAGS``; docs/agent.md has the table (flag, default, what it guards,
the status code a client gets).

A whole request over a limit is a status (RESOURCE_EXHAUSTED for sizes and counts, INVALID_ARGUMENT for
a field out of range); one sample over a limit inside an Ingest batch is a per-sample Rejection. Every
message names the limit and the flag that changes it (``limit_hint``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass

from agent.errors import InvalidArgument, ResourceExhausted, quoted

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask of the agent (so that no request can crash it, hang it or
    exhaust its memory). ``flag`` names the ``shortlist serve`` option that sets each one."""

    # Largest gRPC message, either direction (gRPC itself answers RESOURCE_EXHAUSTED).
    max_message_bytes: int = 64 * MIB
    # Samples in one IngestRequest message (a stream may carry any number of messages).
    max_samples_per_request: int = 4096
    # Encoded image bytes of one sample (and raw tensor bytes).
    max_image_bytes: int = 32 * MIB
    # Decoded pixels (height x width) of one image or tensor, checked from the header before decoding.
    max_pixels: int = 64_000_000
    # String lengths, in characters.
    max_id_chars: int = 512
    max_label_chars: int = 256  # labels (class names) and annotator names
    max_uri_chars: int = 4096
    max_metadata_entries: int = 64
    max_metadata_chars: int = 4096  # each key and each value
    # (id, label) pairs in one SubmitLabelsRequest, and ids in one PriorLabelsRequest.
    max_ids_per_request: int = 100_000
    # Largest Select budget accepted (budgets above the candidate count return what is left).
    max_select_budget: int = 100_000
    # Ingest streams served at once; more get RESOURCE_EXHAUSTED at once with a retry hint.
    max_ingest_streams: int = 4
    # The retry hint (seconds) sent with that RESOURCE_EXHAUSTED.
    ingest_retry_after_s: float = 2.0
    # Seconds an Ingest stream may send nothing while the agent holds none of its samples in work; then
    # the agent ends it (DEADLINE_EXCEEDED, with how many of its samples were stored) to free its slot.
    # Generous: the time counts while one message travels, and a 32 MiB image over a slow link takes minutes.
    ingest_idle_timeout_s: float = 300.0
    # Server streams (ListSamples, ListLabels, GetMap, PriorLabels) served at once, and unary calls that may wait
    # the stall timeout for their request message (agent/streams.py RequestGuard); more streams get
    # RESOURCE_EXHAUSTED at once with a retry hint (ingest_retry_after_s). The gRPC pool has as many threads
    # more (and max_ingest_streams more) than --workers, so streams never take the unary calls' threads.
    max_server_streams: int = 16
    # Seconds a server stream may wait for its client to take one message; then the agent cancels it
    # (agent/streams.py), freeing its thread and its slot. The time counts while one message travels.
    stream_stall_timeout_s: float = 60.0
    # TCP connections served at once (gRPC's grpc.max_allowed_incoming_connections: more are closed as they
    # come), so connections cannot use up the process's file descriptors.
    max_connections: int = 256
    # Seconds a new connection may take to finish its TLS handshake and send HTTP/2's preface and settings
    # (grpc.server_handshake_timeout_ms; gRPC's own default is 120 s).
    handshake_timeout_s: float = 20.0
    # Seconds a connection may stay open with no call in flight (grpc.max_connection_idle_ms); then the
    # agent closes it with GOAWAY (a client reconnects when it next calls).
    connection_idle_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value <= 0:
                raise ValueError(f"limit {name} must be positive (got {value})")


# The `shortlist serve` flag that sets each limit (for messages that say how to change it).
LIMIT_FLAGS = {
    "max_message_bytes": "--max-message-mb",
    "max_samples_per_request": "--max-samples-per-request",
    "max_image_bytes": "--max-image-mb",
    "max_pixels": "--max-pixels",
    "max_id_chars": "--max-id-chars",
    "max_label_chars": "--max-label-chars",
    "max_uri_chars": "--max-uri-chars",
    "max_metadata_entries": "--max-metadata-entries",
    "max_metadata_chars": "--max-metadata-chars",
    "max_ids_per_request": "--max-ids-per-request",
    "max_select_budget": "--max-budget",
    "max_ingest_streams": "--max-ingest-streams",
    "ingest_idle_timeout_s": "--ingest-idle-timeout",
    "max_server_streams": "--max-server-streams",
    "stream_stall_timeout_s": "--stream-stall-timeout",
    "max_connections": "--max-connections",
    "handshake_timeout_s": "--handshake-timeout",
    "connection_idle_timeout_s": "--connection-idle-timeout",
}


def limit_hint(name: str) -> str:
    """'(limit max_x; change it with `shortlist serve --max-x`)' for a Limits field name."""
    return f"(limit {name}; the operator can change it with `shortlist serve {LIMIT_FLAGS[name]} ...`)"


def check_count(items: Sized, limit: int, name: str, what: str, advice: str = "split it into several") -> None:
    """ResourceExhausted when ``items`` holds more than ``limit`` entries."""
    if len(items) > limit:
        raise ResourceExhausted(f"{len(items):,} {what} in one request message, above the limit of {limit:,}; "
                                f"{advice} {limit_hint(name)}")


def text_problem(value: str, limit: int, name: str, what: str) -> str | None:
    """Why ``value`` is too long for ``limit`` characters (a Rejection reason), or None."""
    if len(value) <= limit:
        return None
    return f"{what} of {len(value):,} characters is longer than the limit of {limit:,} {limit_hint(name)}"


def name_problem(value: str, what: str) -> str | None:
    """Why ``value`` cannot name a sample or a class (a Rejection reason), or None: a name is compared
    exactly, and one with white space at an end, a control character (newline, NUL, ...) or an invisible
    format character (a zero-width space, a bidirectional override) looks like another name in a table, a
    CSV file or a terminal, so "dog\\n" and " dog" would become classes of their own that nobody can tell
    from "dog". Empty names are the callers' own rejections."""
    # Cc: control characters; Cf: invisible format characters (zero-width space U+200B, the bidi overrides)
    bad = sorted({c for c in value if unicodedata.category(c) in ("Cc", "Cf")})
    if bad:
        shown = ", ".join(f"U+{ord(c):04X}" for c in bad[:5])
        return (f"{what} {quoted(value[:64])} holds control characters or invisible ones ({shown}): use one line of "
                "printable text")
    if value != value.strip():
        return f"{what} {quoted(value[:64])} starts or ends with white space: send it without"
    return None


def folder_name_problem(value: str, what: str) -> str | None:
    """Why ``value`` cannot be a folder name (an ImageFolder export writes a folder per class), or None."""
    if value in (".", "..") or value.startswith(".") or "/" in value or "\\" in value:
        return (f"{what} {quoted(value[:64])} cannot be a folder name (a /, a \\ or a leading dot), and every class is "
                "one in an ImageFolder export: name it without")
    return None


def class_name_problem(value: str, what: str = "label", classes: Sequence[str] = ()) -> str | None:
    """Why ``value`` cannot name a new class beside ``classes`` (``name_problem``, ``folder_name_problem``,
    or the same name as one of them but for case or Unicode form: "Fish" beside "fish"), or None. Checked
    where a class is made (a new label, ``serve --classes``), so one label cannot break every later
    ImageFolder export of the pool, nor split a class in two."""
    problem = name_problem(value, what) or folder_name_problem(value, what)
    if problem is None and "," in value:  # the list could never be declared (closed) again
        problem = (f"{what} {quoted(value[:64])} holds a comma, and `serve --classes a,b,c` splits on commas: name it "
                   "without")
    if problem is None:
        key = unicodedata.normalize("NFKC", value).casefold()
        same = [c for c in classes if c != value and unicodedata.normalize("NFKC", c).casefold() == key]
        if same:
            problem = (f"{what} {quoted(value[:64])} differs from the class {quoted(same[0][:64])} only in case or "
                       f"Unicode form: use {quoted(same[0][:64])}")
    return problem


def check_text(value: str, limit: int, name: str, what: str) -> None:
    """InvalidArgument when ``value`` is longer than ``limit`` characters."""
    problem = text_problem(value, limit, name, what)
    if problem is not None:
        raise InvalidArgument(problem)


def metadata_problem(metadata: Mapping[str, str], limits: Limits, what: str = "metadata") -> str | None:
    """Why a metadata map (or a Select ``where`` filter) breaks the limits, or None."""
    if len(metadata) > limits.max_metadata_entries:
        return (f"{what} has {len(metadata)} entries, more than the limit of {limits.max_metadata_entries} "
                f"{limit_hint('max_metadata_entries')}")
    for key, value in metadata.items():
        limit = limits.max_metadata_chars
        problem = (text_problem(key, limit, "max_metadata_chars", f"{what} key")
                   or (f"{what} has an empty key: name each entry" if not key else None)
                   or name_problem(key, f"{what} key")  # a key is a name (compared exactly); a value is free text
                   or text_problem(value, limit, "max_metadata_chars", f"{what} value of {quoted(key[:64])}"))
        if problem is not None:
            return problem
    return None


# What an empty annotator name (SubmitLabels, RetractLabels, RenameClass) is stored as: indistinguishable from a
# person of that name in the label history, so messages about a label call it "an unnamed annotator".
UNNAMED_ANNOTATOR = "unknown"


def stored_annotator(annotator: str) -> str:
    """The annotator name a request's ``annotator`` is stored as (``UNNAMED_ANNOTATOR`` for an empty one)."""
    return annotator or UNNAMED_ANNOTATOR


def annotator_name(by: str) -> str:
    """A stored annotator name as messages say it: "an unnamed annotator" for ``UNNAMED_ANNOTATOR``."""
    return "an unnamed annotator" if by == UNNAMED_ANNOTATOR else by
