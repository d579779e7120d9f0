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

from shortlist.manifest import EMBEDDING_OUTPUT, LOGITS_OUTPUT, ONNX_NAME, ROTATION_OUTPUT, Manifest
from shortlist.vectors import unit_rows

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


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
        self.session = _session(str(version_dir / ONNX_NAME), use_cuda, threads)
        self.provider = self.session.get_providers()[0]
        names = [o.name for o in self.session.get_outputs()]
        if EMBEDDING_OUTPUT not in names:
            raise ValueError(f"{version_dir / ONNX_NAME} has no '{EMBEDDING_OUTPUT}' output (has {names})")
        self.outputs = [EMBEDDING_OUTPUT]
        if manifest.has_logits and LOGITS_OUTPUT in names:
            self.outputs.append(LOGITS_OUTPUT)
        self.rotation = pretext and manifest.has_rotation_head and ROTATION_OUTPUT in names
        if self.rotation:
            self.outputs.append(ROTATION_OUTPUT)
        self.input_name = manifest.input_name
        self.dim = manifest.embedding_dim
        self.classes = list(manifest.classes or []) if LOGITS_OUTPUT in self.outputs else []
        self._check_shapes()

    def _check_shapes(self) -> None:
        """Run one blank image so that a manifest that disagrees with its model fails at load time
        (the version is then marked failed) rather than on every Ingest."""
        h, w = self.preprocess.size
        outs = self._run(np.zeros((1, 3, h, w), np.float32))
        got = {name: o.shape for name, o in zip(self.outputs, outs, strict=True)}
        want = {EMBEDDING_OUTPUT: (1, self.dim), LOGITS_OUTPUT: (1, len(self.classes)), ROTATION_OUTPUT: (1, 4)}
        bad = {n: s for n, s in got.items() if tuple(s) != want[n]}
        if bad:
            raise ValueError(f"{self.version}: output shapes {bad} disagree with the manifest (expected "
                             f"{ {n: want[n] for n in bad} } for a 1x3x{h}x{w} input)")

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(o) for o in self.session.run(self.outputs, {self.input_name: x})]

    def embed(self, images: np.ndarray) -> EmbedOutput:
        """NxHxWx3 uint8 at the manifest's size -> EmbedOutput (batched by ``batch_size``)."""
        n = len(images)
        vecs = np.zeros((n, self.dim), np.float32)
        logits = np.zeros((n, len(self.classes)), np.float32) if self.classes else None
        pretext = np.zeros(n, np.float32) if self.rotation else None
        for start in range(0, n, self.batch_size):
            x = self.preprocess.normalize(images[start:start + self.batch_size])  # Bx3xHxW
            outs = self._run(x)
            end = start + len(x)
            vecs[start:end] = outs[0].reshape(len(x), -1)
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


def _cross_entropy(logits: np.ndarray, target: int) -> np.ndarray:
    """Bx4 logits, one target class -> B cross-entropies (nats), computed stably via log-sum-exp."""
    z = logits.astype(np.float64)
    return np.asarray(logsumexp(z, axis=1) - z[:, target])
