"""The agent's settings: one frozen ``AgentConfig`` (with its input ``Limits``) built once by
``shortlist serve`` (or a test) and handed to agent.service.create_server, which passes it on to
``Agent``, the ingest pipeline and the model manager. Defaults live here and nowhere else.
The input limits (``Limits``) are defined in agent.limits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.admission import LaneThreads
from agent.limits import MIB, Limits
from agent.pool_map import MapConfig
from agent.security import ServerSecurity

__all__ = ["MIB", "AgentConfig", "Limits", "MapConfig"]


@dataclass(frozen=True)
class WorkConfig:
    """Heavy work (Select, PriorLabels: strategies and prior methods), agent/admission.py and agent/cache.py."""

    # Heavy calls computing at once (`shortlist serve --max-concurrent-work`) and waiting for a turn
    # (`--max-queued-work`); one more is RESOURCE_EXHAUSTED at once with a retry hint.
    max_concurrent: int = 2
    max_queued: int = 8
    # The heavy lane's work runs in threads of its own at niceness +10 and with one OpenMP thread per call
    # (agent/admission.py LaneThreads): light calls preempt it, and two heavy calls take at most the two
    # cores of a small machine (one thread each was also faster per call under load: docs/reliability.md).
    heavy_threads: LaneThreads = field(default_factory=LaneThreads)
    # Light PriorLabels (knn: mostly its calibration, several times a light Select; figures in docs/agent.md,
    # "Heavy work: admission, cancellation, cache") run in threads of their own at niceness +5, so
    # GetStatus, SubmitLabels and light Selects go first.
    light_prior_threads: LaneThreads = field(default_factory=lambda: LaneThreads(nice=5, sample_share=False))
    # The longest a heavy call waits in the queue for a turn (seconds; None: until its deadline). A call
    # expected to wait longer is refused at once; one whose turn has not come by then (the estimates were
    # wrong: the machine slowed) leaves the queue with RESOURCE_EXHAUSTED then. Either way the refusal is
    # prompt and the client retries with the hint, instead of waiting most of its deadline to hear no.
    max_queue_wait_s: float | None = 1.0
    # Light work (strategies declared light at the request's budget: random, margin, entropy, ..., coreset
    # and badge at small budgets) has a lane of its own, so it never waits behind k-means; light
    # PriorLabels (knn for at most 1,000 ids) a second lane of the same size.
    light_max_concurrent: int = 4
    light_max_queued: int = 16
    # Decoding an encoded image of more than ``large_image_pixels`` pixels (a 63.8-megapixel PNG of a few
    # hundred KB decodes to 190 MB of RGB) takes a slot of its own lane: at most ``decode_max_concurrent``
    # at once and ``decode_max_queued`` waiting (`--max-concurrent-decodes`, `--max-queued-decodes`);
    # beyond, that Ingest is RESOURCE_EXHAUSTED at once with a retry hint (earlier batches stay stored).
    large_image_pixels: int = 4_000_000
    decode_max_concurrent: int = 2
    decode_max_queued: int = 4
    # Answers of repeated identical Selects / PriorLabels kept, and the rows they may hold in all.
    cache_entries: int = 64
    cache_rows: int = 500_000

    def __post_init__(self) -> None:
        if self.max_queue_wait_s is not None and not self.max_queue_wait_s > 0:
            raise ValueError("work: max_queue_wait_s must be > 0 (or None)")
        if (min(self.max_concurrent, self.light_max_concurrent, self.decode_max_concurrent) < 1
                or min(self.max_queued, self.light_max_queued, self.decode_max_queued, self.cache_entries,
                       self.cache_rows, self.large_image_pixels) < 0):
            raise ValueError("work: max_concurrent must be >= 1; max_queued, cache_entries, cache_rows, "
                             "large_image_pixels >= 0")

    @property
    def threads(self) -> int:
        """gRPC threads the heavy and light lanes may hold at once (added to AgentConfig.workers)."""
        return (self.max_concurrent + self.max_queued + 2 * (self.light_max_concurrent + self.light_max_queued)
                + self.decode_max_concurrent + self.decode_max_queued)


# Audit labels that must count (their class keeps a label outside their fold) before the priors'
# temperature T is fitted on them rather than on the labelled set (agent/priors/calibration.py). At 20 the
# audit's sampling noise is below the labelled set's bias it replaces: the standard error of an accuracy
# near 0.3 on 20 random samples is sqrt(0.3 * 0.7 / 20) = 0.10, below the gap measured between held-out
# labels and the pool (docs/benchmarks.md); and 20 is as many predictions as the labelled cross-fit has at
# 10-20 labels (one per label at most), so the MAP prior (calibration.PRIOR_WEIGHT samples) weighs no more
# than it does there. Fewer give one label a large say. Here, not in agent.priors: the CLI reads it, and
# agent.priors loads scipy.
AUDIT_MIN_LABELS = 20


@dataclass(frozen=True)
class AuditConfig:
    """The audit of the prior methods (agent/audit.py): how its estimates are computed and shown."""

    confidence_level: float = 0.95
    # scipy.stats.binomtest(...).proportion_ci method: "wilson" (score interval; close to the nominal
    # coverage on average) or "exact" (Clopper-Pearson; at least the nominal coverage, wider).
    interval: Literal["wilson", "exact"] = "wilson"
    # A class gets its own estimate once it has this many labelled audit samples.
    min_per_class: int = 5
    # Prior methods audited (None: every registered one).
    methods: tuple[str, ...] | None = None
    # The longest one background recomputation may take, its wait for a heavy-lane slot included (seconds;
    # None: no limit). Past it the work stops at its next checkpoint and frees the lane; GetStatus keeps
    # the last estimate (current false) with a note, and the audit is not started again before as long
    # again has passed and the labels, audit draws or model have changed (so a slow audit holds the heavy
    # lane at most half the time).
    max_seconds: float | None = 60.0
    # After the heavy lane refused a recomputation (busy), none is tried again before this many seconds or
    # the lane's retry hint, whichever is later: a refusal for the deadline hints 0 s (nothing to wait
    # for, the run itself would be too long), and every GetStatus would otherwise try, and log, again.
    busy_backoff_s: float = 10.0

    def __post_init__(self) -> None:
        if self.busy_backoff_s < 0:
            raise ValueError("audit: busy_backoff_s must be >= 0")
        if not 0.0 < self.confidence_level < 1.0 or self.min_per_class < 1 or self.interval not in ("wilson",
                                                                                                      "exact"):
            raise ValueError("audit: confidence_level in (0, 1), min_per_class >= 1, interval wilson or exact")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError("audit: max_seconds must be > 0 (or None: no limit)")


@dataclass(frozen=True)
class ImagesConfig:
    """GetImages (agent/images.py): request bounds and the thumbnail cache."""

    max_ids: int = 256  # ids in one GetImagesRequest
    min_side: int = 16  # thumbnail sizes accepted (longer side, pixels)
    max_side: int = 1024
    quality: int = 80  # JPEG / WebP quality of thumbnails
    cache_entries: int = 20_000  # thumbnails kept ...
    cache_bytes: int = 64 * MIB  # ... and their encoded bytes in all

    def __post_init__(self) -> None:
        if not (1 <= self.min_side <= self.max_side and self.max_ids >= 1 and 1 <= self.quality <= 100
                and min(self.cache_entries, self.cache_bytes) >= 0):
            raise ValueError("images: need 1 <= min_side <= max_side, max_ids >= 1, quality 1..100, cache sizes >= 0")


def class_list(text: str) -> tuple[str, ...] | None:
    """``serve --classes a,b,c`` read into AgentConfig.classes: the comma-separated names, each stripped,
    empty ones dropped; None (no closed list) when none is left."""
    return tuple(c.strip() for c in text.split(",") if c.strip()) or None


@dataclass(frozen=True)
class AgentConfig:
    """Everything one agent process is configured with. ``security`` holds TLS, tokens and --insecure
    (agent/security.py); create_server also takes extra interceptors and server credentials directly."""

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
    # What opening state.sqlite verifies first: "full" (PRAGMA integrity_check), "quick" (quick_check: misses
    # rows missing from an index) or "none" (agent/state.py, STATE_CHECKS)
    state_check: str = "full"
    limits: Limits = field(default_factory=Limits)
    work: WorkConfig = field(default_factory=WorkConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    map: MapConfig = field(default_factory=MapConfig)  # the 2-D pool map (GetMap), agent/pool_map.py
    images: ImagesConfig = field(default_factory=ImagesConfig)
    security: ServerSecurity = field(default_factory=ServerSecurity)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"
