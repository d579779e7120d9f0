"""The agent's settings: one frozen ``AgentConfig`` (with its input ``Limits``) built once by
``shortlist serve`` (or a test) and handed to agent.service.create_server, which passes it on to
``Agent``, the ingest pipeline and the model manager. Defaults live here and nowhere else.

Every limit below is documented in docs/agent.md (flag, default, what it guards, the status code a
client gets); each violation's message names the limit and the ``shortlist serve`` flag that changes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
}


def limit_hint(name: str) -> str:
    """'(limit max_x; change it with `shortlist serve --max-x`)' for a Limits field name."""
    return f"(limit {name}; the operator can change it with `shortlist serve {LIMIT_FLAGS[name]} ...`)"


@dataclass(frozen=True)
class AgentConfig:
    """Everything one agent process is configured with. Security settings (TLS, tokens, --insecure)
    are added beside these by the security layer; create_server also takes extra interceptors and
    server credentials directly."""

    data_dir: Path
    models: Path
    host: str = "127.0.0.1"
    port: int = 50051  # 0 = any free port (tests)
    classes: tuple[str, ...] | None = None  # a closed class list; None = the model's, else open
    blobs: bool = True  # keep payloads (needed to re-embed under a new model and for ListSamples payloads)
    poll_s: float = 5.0  # seconds between registry checks
    batch_size: int = 256  # images per onnxruntime call
    use_cuda: bool = True
    workers: int = 16  # gRPC worker threads (concurrent RPCs)
    snapshot_s: float = 30.0  # seconds between index snapshots
    background: bool = True  # run the model manager's polling thread (False: tests call check())
    min_free_bytes: int = 256 * MIB  # GetStatus warns when the data folder has less free space
    limits: Limits = field(default_factory=Limits)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
