"""One published model version as an onnxruntime session.

Preprocessing is read from the version's manifest (shortlist.manifest.Preprocess, the single
definition); payloads are decoded and validated by shortlist.images (Pillow), their one home. No torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from scipy.special import logsumexp

from agent.errors import FailedPrecondition
from shortlist.manifest import (
    LOGITS_OUTPUT,
    MANIFEST_NAME,
    ONNX_EXPORT_HINT,
    ONNX_NAME,
    ROTATION_OUTPUT,
    Manifest,
    ManifestError,
    check_version,
    list_versions,
)
from shortlist.vectors import MIN_NORM, unit_rows

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
FLOAT32 = "tensor(float)"  # onnxruntime's name for the element type the agent feeds
PROBE_BATCH = 2  # images in the load check's blank batch: more than one proves the batch axis is not fixed at 1
# A batch of real images is judged degenerate (the model is at fault, as for NaN) only from JUDGE_MIN rows on:
# Ingest may send one image, or a few that look alike. Then: more than ZERO_SHARE of its embeddings all-zero
# (no direction in cosine space: the vectors clamp them to zero), or every embedding the same direction
# (within SAME_DISTANCE, L2 between unit vectors) for at least JUDGE_MIN different images. A randomly
# initialised conv encoder (agent.testing.conv_encoder) puts images whose pixels differ by 0 or 1 up to 0.006
# apart and a linear one up to 0.09 (docs/agent.md, How it works, Models), so only a model that ignores its
# input, up to float32 rounding, trips SAME_DISTANCE.
JUDGE_MIN = 8
ZERO_SHARE = 0.1
SAME_DISTANCE = 1e-5
MAX_ORT_TEXT = 400  # characters of an onnxruntime error quoted in a refusal (its text can run to pages)
# What onnxruntime raises (its pybind classes derive from Exception only).
_state = ort.capi.onnxruntime_pybind11_state
ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    c for c in (getattr(_state, n, None) for n in ("Fail", "InvalidArgument", "RuntimeException", "NotImplemented",
                                                    "EPFail", "InvalidGraph", "NoSuchFile", "InvalidProtobuf",
                                                    "NoModel", "ModelLoaded", "EngineError"))
    if isinstance(c, type) and issubclass(c, Exception))


class ModelRefused(ManifestError):
    """The agent's load check refuses a version: its ONNX graph does not agree with its manifest or with what the
    agent feeds it. The message says what is wrong and what to do (shown in the agent's warnings, by
    ``shortlist models list`` / ``rollback`` and by the benchmarks' --encoder)."""


class ModelFailed(FailedPrecondition):
    """A loaded model failed on a batch (onnxruntime raised): the model is at fault, not the agent, so Ingest
    answers FAILED_PRECONDITION with what to do instead of INTERNAL."""


def _ort_text(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= MAX_ORT_TEXT else text[:MAX_ORT_TEXT] + " ..."


@dataclass
class EmbedOutput:
    """Embeddings of a batch: vecs NxD float32 L2-normalised, logits NxC or None, pretext N (nats) or None."""

    vecs: np.ndarray
    logits: np.ndarray | None
    pretext: np.ndarray | None


# Whether CUDA worked when first tried in this process (None = not tried yet). onnxruntime-gpu lists
# CUDAExecutionProvider as available even on machines without a GPU or CUDA libraries, so the only
# reliable test is creating a session and seeing whether it kept the provider.
_cuda_works: bool | None = None


def _session(model: bytes | str, want_cuda: bool, threads: int) -> ort.InferenceSession:
    global _cuda_works
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if want_cuda and _cuda_works is not False and CUDA in ort.get_available_providers():
        ort.set_default_logger_severity(4)  # the provider's load failure is expected on CPU machines
        try:
            sess = ort.InferenceSession(model, opts, providers=[CUDA, CPU])
            _cuda_works = CUDA in sess.get_providers()
            if _cuda_works:
                return sess
        except Exception as e:  # a CUDA build without a usable GPU or libraries
            _cuda_works = False
            log.info("CUDA execution provider unusable (%s); using CPU", e)
        finally:
            ort.set_default_logger_severity(2)
    return ort.InferenceSession(model, opts, providers=[CPU])


def open_session(onnx_path: Path, use_cuda: bool = False, threads: int = 0) -> ort.InferenceSession:
    """An onnxruntime session over ``onnx_path``; ModelRefused, with what to do, when onnxruntime cannot load it
    (the agent's loader, and ``shortlist models import`` before it writes a manifest)."""
    try:
        return _session(str(onnx_path), use_cuda, threads)
    except ORT_ERRORS as e:
        raise ModelRefused(f"onnxruntime cannot load {onnx_path.name} ({_ort_text(e)}): is it an ONNX model? Publish "
                           f"one of an opset this onnxruntime {ort.__version__} runs (17 is safe), e.g. exported "
                           f"from PyTorch with {ONNX_EXPORT_HINT}") from None


class Embedder:
    """An onnxruntime session over one registry version: NxHxWx3 uint8 images -> EmbedOutput."""

    def __init__(self, version_dir: Path, manifest: Manifest, batch_size: int = 256, use_cuda: bool = True,
                 threads: int = 0, pretext: bool = True) -> None:
        """``pretext=False`` skips the RotNet pretext loss (4 extra inferences per image) for callers that
        only want embeddings and logits."""
        self.version = version_dir.name
        self.manifest = manifest
        self.preprocess = manifest.preprocess
        self.batch_size = batch_size
        self.session = open_session(version_dir / ONNX_NAME, use_cuda, threads)
        self.provider = self.session.get_providers()[0]
        names = [o.name for o in self.session.get_outputs()]
        self.output_name = manifest.output_name
        if self.output_name not in names:
            raise ModelRefused(f"{ONNX_NAME} has no '{self.output_name}' output (its outputs: {names}): set the "
                               "manifest's output_name (`shortlist models import --output-name`) to the output "
                               "that gives the embedding")
        self.outputs = [self.output_name]
        if manifest.has_logits and LOGITS_OUTPUT in names:
            self.outputs.append(LOGITS_OUTPUT)
        self.rotation = pretext and manifest.has_rotation_head and ROTATION_OUTPUT in names
        if self.rotation:
            self.outputs.append(ROTATION_OUTPUT)
        self.input_name = manifest.input_name
        self.dim = manifest.embedding_dim
        self.classes = list(manifest.classes or []) if LOGITS_OUTPUT in self.outputs else []
        self._check_input()
        self._check_shapes()

    def _feeds(self) -> str:
        h, w = self.preprocess.size
        return (f"the agent feeds float32 NCHW batches of shape (N, 3, {h}, {w}) (N images, 3 channels, then the "
                f"manifest's preprocess size {h}x{w})")

    def _check_input(self) -> None:
        """Refuse, with what to do, a model whose declared input the agent cannot feed: another name, another
        element type, a fixed batch axis, another layout or size (onnxruntime's get_inputs())."""
        inputs = {i.name: i for i in self.session.get_inputs()}
        inp = inputs.get(self.input_name)
        if inp is None:
            raise ModelRefused(f"the manifest's input_name is {self.input_name!r} but the model's inputs are "
                               f"{list(inputs)}: set input_name in {MANIFEST_NAME} (`shortlist models import "
                               "--input-name`) to the model's image input")
        if len(inputs) > 1:
            raise ModelRefused(f"the model has inputs {list(inputs)}; the agent feeds one, {self.input_name!r} (the "
                               "images): export the encoder with the image as its only input")
        if inp.type != FLOAT32:
            raise ModelRefused(f"the model's input {inp.name!r} takes {inp.type}, but the agent feeds float32 "
                               f"({FLOAT32}): export the model in float32, or add a Cast from float32 at its input (a "
                               "half-precision model: convert it with float32 inputs and outputs kept, e.g. "
                               "onnxruntime's convert_float_to_float16(keep_io_types=True))")
        shape = list(inp.shape)
        h, w = self.preprocess.size
        if len(shape) != 4:
            raise ModelRefused(f"the model's input {inp.name!r} is declared with shape {shape}, but {self._feeds()}: "
                               "export the model with a 4-D NCHW input")
        if isinstance(shape[0], int):
            raise ModelRefused(f"the batch axis is fixed at {shape[0]} (the model's input {inp.name!r} is declared "
                               f"with shape {shape}), but the agent embeds images in batches of any size: export with "
                               f"a dynamic batch axis, e.g. {ONNX_EXPORT_HINT}")
        if shape[3] == 3 and isinstance(shape[1], int) and shape[1] != 3:
            raise ModelRefused(f"the model's input {inp.name!r} is declared with shape {shape} (it looks "
                               f"channels-last, NHWC), but {self._feeds()}: export the model with channels first "
                               "(e.g. a transpose at its start)")
        if any(isinstance(shape[i], int) and shape[i] != want for i, want in ((1, 3), (2, h), (3, w))):
            raise ModelRefused(f"the model's input {inp.name!r} is declared with shape {shape}, but {self._feeds()}: "
                               "export the model for 3-channel NCHW input, or set the manifest's preprocess size "
                               "(`shortlist models import --size H W`) to the height and width the model takes")

    def _check_shapes(self) -> None:
        """Run a batch of PROBE_BATCH blank images so that a model that disagrees with its manifest, or cannot
        take a batch, fails at load time (the version is then refused with the reason) rather than on every
        Ingest. The embedding output may be NxDx1x1 (a pooling layer's, any number of trailing 1s): ``embed``
        flattens it. A feature map (NxCxHxW, H or W > 1) is refused even when C*H*W is the embedding size: its
        flattened pixels are no embedding (a pooling layer is missing)."""
        h, w, n = *self.preprocess.size, PROBE_BATCH
        try:
            outs = self._probe(np.zeros((n, 3, h, w), np.float32))
        except ORT_ERRORS as e:
            raise ModelRefused(f"the model fails on a batch of {n} blank images ({_ort_text(e)}), but "
                               f"{self._feeds()}: check that it runs on such a batch with onnxruntime (a dynamic "
                               f"batch axis all through the graph, float32, NCHW), e.g. exported with "
                               f"{ONNX_EXPORT_HINT}") from None
        got = {name: tuple(o.shape) for name, o in zip(self.outputs, outs, strict=True)}
        # the embedding's entry last: an embedding output named like a head (e.g. an imported classifier's
        # ``logits``) is checked as the embedding
        want = {LOGITS_OUTPUT: (n, len(self.classes)), ROTATION_OUTPUT: (n, 4), self.output_name: (n, self.dim)}
        emb = got[self.output_name]
        if len(emb) >= 2 and emb[0] == n and emb[1] == self.dim and all(d == 1 for d in emb[2:]):
            got[self.output_name] = (n, self.dim)
        elif len(emb) > 2 and emb[0] == n and any(d != 1 for d in emb[2:]):
            raise ModelRefused(f"the output {self.output_name!r} is a feature map ({emb} for a batch of {n}), not one "
                               "vector per image: end the model with a global average pooling (e.g. "
                               "torch.nn.AdaptiveAvgPool2d(1) and a flatten) and export it again")
        bad = {name: s for name, s in got.items() if s != want[name]}
        if bad:
            raise ModelRefused(f"output shapes {bad} disagree with the manifest (expected "
                               f"{ {name: want[name] for name in bad} } for a {n}x3x{h}x{w} input): set the manifest's "
                               "embedding_dim (and classes) to what the model gives")
        broken = [name for name, o in zip(self.outputs, outs, strict=True) if not np.isfinite(o).all()]
        if broken:
            raise ModelRefused(f"the model gives NaN or infinite values in {broken} for a batch of {n} blank images: "
                               "check the exported graph with onnxruntime (e.g. a division by a norm that can be 0, "
                               "or an overflow in float16)")

    def _probe(self, x: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(o) for o in self.session.run(self.outputs, {self.input_name: x})]

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        try:
            return self._probe(x)
        except ORT_ERRORS as e:  # the model, which passed the load check, fails on this batch
            raise ModelFailed(f"the model {self.version} failed on a batch of {len(x)} images ({_ort_text(e)}): "
                              "the model is at fault, not the agent (e.g. an export that runs at some batch sizes "
                              "only); publish a fixed version, or bring a good one back with `shortlist models "
                              "rollback`") from None

    def embed(self, images: np.ndarray) -> EmbedOutput:
        """NxHxWx3 uint8 at the manifest's size -> EmbedOutput (batched by ``batch_size``)."""
        n = len(images)
        vecs = np.zeros((n, self.dim), np.float32)
        logits = np.zeros((n, len(self.classes)), np.float32) if self.classes else None
        pretext = np.zeros(n, np.float32) if self.rotation else None
        for start in range(0, n, self.batch_size):
            x = self.preprocess.normalize(images[start:start + self.batch_size])  # Bx3xHxW
            outs = self._run(x)
            if not np.isfinite(outs[0]).all():  # an index of NaN rows answers nothing sensible: the model is at fault
                rows = int((~np.isfinite(outs[0].reshape(len(x), -1))).any(axis=1).sum())
                raise ModelFailed(f"the model {self.version} gave NaN or infinite embeddings for {rows} of a batch of "
                                  f"{len(x)} images: the model is at fault, not the agent (check the exported graph "
                                  "with onnxruntime on such images); publish a fixed version, or bring a good one "
                                  "back with `shortlist models rollback`")
            end = start + len(x)
            vecs[start:end] = outs[0].reshape(len(x), -1)
            if why := degenerate(images[start:end], vecs[start:end]):
                raise ModelFailed(f"the model {self.version} {why}: the model is at fault, not the agent (Select and "
                                  "PriorLabels would answer nothing sensible in such a space: a collapsed or broken "
                                  "export); publish a fixed version, or bring a good one back with `shortlist models "
                                  "rollback`")
            if logits is not None:
                logits[start:end] = outs[1]
            if pretext is not None:
                pretext[start:end] = self._rotation_loss(x, outs[-1])
        # cosine space: the index and strategies expect unit rows
        return EmbedOutput(unit_rows(vecs), logits, pretext)

    def _rotation_loss(self, x: np.ndarray, rot0_logits: np.ndarray) -> np.ndarray:
        """RotNet pretext loss per image (Gidaris et al., ICLR 2018, "Unsupervised representation
        learning by predicting image rotations", Sec. 2, Eq. 1-2): mean over the 4 rotations
        k*90 degrees of the cross-entropy of ``rotation_logits`` against k. x: Bx3xHxW; returns B nats.
        Rotation 0 reuses the logits already computed; 90/270 need a square input."""
        losses = [_cross_entropy(rot0_logits, 0)]
        for k in (1, 2, 3):
            xr = np.ascontiguousarray(np.rot90(x, k, axes=(2, 3)))
            if xr.shape != x.shape:  # non-square models cannot take a 90-degree rotation
                continue
            losses.append(_cross_entropy(self._run(xr)[-1], k))
        return np.mean(losses, axis=0).astype(np.float32)


def degenerate(images: np.ndarray, vecs: np.ndarray, what: str = "") -> str:
    """Why ``vecs`` (NxD raw embeddings of the NxHxWx3 uint8 ``images``, ``what``: how to name them, default
    "a batch of N images") are no embedding of them ("" when they can be): all-zero for more than ZERO_SHARE
    of the rows, or one direction for every row while the images differ (JUDGE_MIN different ones at least).
    Batches under JUDGE_MIN rows are not judged."""
    n = len(vecs)
    if n < JUDGE_MIN:
        return ""
    norms = np.linalg.norm(vecs, axis=1)
    zero = int((norms <= MIN_NORM).sum())
    what = what or f"a batch of {n} images"
    if zero > ZERO_SHARE * n:
        return f"gave all-zero embeddings for {zero} of {what}"
    if zero:
        return ""  # some rows have no direction: not all the same
    units = unit_rows(vecs)
    if float(np.linalg.norm(units - units[0], axis=1).max()) > SAME_DISTANCE:
        return ""
    different = len({_looks(img) for img in images})
    if different < JUDGE_MIN:  # the same picture again, or pictures alike (dark frames): one embedding is right
        return ""
    return f"gave the same embedding (direction) for all of {what} ({different} clearly different images)"


def _looks(img: np.ndarray) -> bytes:
    """What an HxWx3 uint8 image looks like, coarsely: its grey levels averaged over an 8x8 grid of cells, in
    16 steps. Images alike by that (night frames of a camera trap, blank scans, a speck apart) may rightly get
    one embedding: a weak encoder gave eight black frames a pixel apart embeddings within 3e-5 of each other,
    and the check refused the batch as the model's fault."""
    grey = img.astype(np.float32).mean(axis=2)
    cells = [c.mean() for band in np.array_split(grey, min(8, grey.shape[0]), axis=0)
             for c in np.array_split(band, min(8, grey.shape[1]), axis=1)]
    return (np.asarray(cells) // 16).astype(np.uint8).tobytes()


def load_check(version_dir: Path, manifest: Manifest) -> None:
    """The agent's own load check of a complete version (``manifest`` from check_version), on the CPU: the
    checks an agent makes before it serves ``version_dir`` (the declared input, a batch of PROBE_BATCH blank
    images, the output shapes against the manifest), then the check it makes on every batch of real images
    (``degenerate``) on ``probe_images``. ModelRefused says why an agent would refuse it and what to change.
    Used by ``shortlist models list`` / ``rollback`` / ``import`` and the benchmarks' --encoder; no torch."""
    try:
        emb = Embedder(version_dir, manifest, batch_size=JUDGE_MIN, use_cuda=False, threads=1)
    except ModelRefused:
        raise
    except Exception as e:  # what else loading raises (the agent refuses the version for it as well)
        raise ModelRefused(f"cannot load it: {e}") from None
    judge_probe(emb)


def judge_probe(emb: Embedder, batch: int = JUDGE_MIN) -> None:
    """Embed ``probe_images`` (JUDGE_MIN of them, ``batch`` at a time) with ``emb`` and refuse (ModelRefused,
    with the likely cause and what to do) a model that gives NaN, all-zero or one-direction embeddings for them:
    the check every batch of real images gets (``degenerate``), made before anything is served. ``load_check``
    runs it as one batch; the agent (agent.models) in batches of PROBE_BATCH, the size its blank batch proved,
    so that a model failing at some batch sizes only is judged on its embeddings here and refused, as before,
    when it fails on the stored samples or answers Ingest FAILED_PRECONDITION."""
    images = probe_images(emb.preprocess.size)
    try:
        vecs = np.concatenate([emb._run(emb.preprocess.normalize(images[i:i + batch]))[0].reshape(
            len(images[i:i + batch]), -1) for i in range(0, len(images), batch)])
    except ModelFailed as e:
        raise ModelRefused(str(e)) from None
    what = (f"{len(images)} synthetic images (seeded noise at {len(images)} brightness levels, standing in for "
            "the real images an agent embeds, which it would refuse the model on the same way)")
    rows = int((~np.isfinite(vecs)).any(axis=1).sum())
    why = f"gave NaN or infinite embeddings for {rows} of {what}" if rows else degenerate(images, vecs, what)
    if why:  # what the agent refuses on the stored samples, seen before anything is published
        cause = ("a division by a norm that can be 0, a square root or log of a negative number" if rows else
                 "a head that gives 0 for every input, e.g. a ReLU after a large negative bias" if "all-zero" in why
                 else "a collapsed training run (every input mapped to one point), or a graph that ignores its "
                 "input, e.g. a constant output")
        raise ModelRefused(f"the model {why}: check the exported graph with onnxruntime on real images ({cause})")


def probe_images(size: tuple[int, int]) -> np.ndarray:
    """JUDGE_MIN different HxWx3 uint8 images (``size`` = (H, W)): seeded noise, 64 levels wide, from dark to
    bright. ``load_check`` embeds them to refuse a model whose embeddings are all zero or one direction
    whatever the image, which the blank probe batch cannot show."""
    rng = np.random.default_rng(0)
    lows = np.linspace(0, 191, JUDGE_MIN).astype(np.uint8)
    return np.stack([lo + rng.integers(0, 64, (*size, 3), dtype=np.uint8) for lo in lows])


def newest_servable(registry: Path) -> tuple[str, Manifest] | str:
    """What an agent serving ``registry`` serves: (version, manifest) of the newest complete version that
    passes ``load_check``; when none does, a sentence saying why (each refused version with its reason)."""
    refused: list[str] = []
    for name in reversed(list_versions(registry)):
        try:
            manifest = check_version(registry / name, verify_hashes=True)
            load_check(registry / name, manifest)
        except ManifestError as e:  # ModelRefused is one
            refused.append(f"{name}: {e}")
            continue
        return name, manifest
    if not refused:
        return f"no model version in {registry} (publish one with `shortlist export` or `shortlist models import`)"
    return f"no version in {registry} is one an agent serves: " + "; ".join(refused)


def _cross_entropy(logits: np.ndarray, target: int) -> np.ndarray:
    """Bx4 logits, one target class -> B cross-entropies (nats), computed stably via log-sum-exp."""
    z = logits.astype(np.float64)
    return np.asarray(logsumexp(z, axis=1) - z[:, target])
