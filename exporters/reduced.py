"""Smaller exports of a verified fp32 ONNX encoder: int8 (CPU) and fp16 (GPU), each checked by whether
the embedding's nearest neighbours survive, not only by the largest output difference.

- int8: onnxruntime static quantization (QDQ, per-channel weights, activations calibrated on real
  preprocessed images, MinMax), https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html
- fp16: onnxruntime.transformers.float16.convert_float_to_float16 with fp32 inputs/outputs kept
  (``keep_io_types``), so the agent feeds and reads float32 as before.

The agent never loads these files: it serves ``encoder.onnx`` (float32). They are for running the same
encoder outside the agent (int8 on a CPU-only device, fp16 on a GPU); docs/training.md, "Exports".

Agreement = mean over query images of |top-k neighbours (fp32) ∩ top-k neighbours (reduced)| / k, with
cosine similarity among the same images; required >= ``MIN_AGREEMENT``. Neighbour lists are what
selection strategies and prior labels consume, so that is the property worth keeping.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shortlist.manifest import EMBEDDING_OUTPUT, INPUT_NAME
from shortlist.vectors import unit_rows

INT8_NAME = "encoder.int8.onnx"
FP16_NAME = "encoder.fp16.onnx"
MIN_AGREEMENT = 0.8
K = 10


class AgreementError(RuntimeError):
    """A reduced-precision export changed the embedding's neighbourhoods too much: not published."""


def _embed(path: Path, x: np.ndarray, providers: list[str] | None = None) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
    out = np.concatenate([sess.run([EMBEDDING_OUTPUT], {INPUT_NAME: x[i:i + 64]})[0] for i in range(0, len(x), 64)])
    return unit_rows(out)


def neighbour_agreement(a: np.ndarray, b: np.ndarray, k: int = K) -> float:
    """Mean top-k neighbour overlap in [0, 1] between two NxD L2-normalised embeddings of the same images."""
    k = min(k, len(a) - 1)
    if k <= 0:
        return 1.0

    def topk(e: np.ndarray) -> np.ndarray:
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)  # an image is not its own neighbour
        return np.argsort(-sim, axis=1)[:, :k]

    ta, tb = topk(a), topk(b)
    return float(np.mean([len(set(ra) & set(rb)) / k for ra, rb in zip(ta, tb, strict=True)]))


def quantize_int8(src: Path, dst: Path, calibration: np.ndarray) -> None:
    """Static QDQ int8 quantization of ``src`` calibrated on ``calibration`` (Nx3xHxW float32)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{INPUT_NAME: calibration[i:i + 16]} for i in range(0, len(calibration), 16)])

        def get_next(self) -> dict[str, Any] | None:
            return next(self.batches, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)


def convert_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def reduced_exports(fp32: Path, formats: list[str], images: np.ndarray,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the requested reduced exports ("int8", "fp16") beside ``fp32``, verify each by neighbour
    agreement on ``images`` (Nx3xHxW float32, preprocessed); AgreementError if one falls short.

    Returns {format: {"file": name, "knn_agreement": a, "max_rel_error": e}}.
    """
    report: dict[str, Any] = {}
    ref = _embed(fp32, images)
    for fmt in formats:
        if fmt == "int8":
            dst = fp32.with_name(INT8_NAME)
            quantize_int8(fp32, dst, images)
        elif fmt == "fp16":
            dst = fp32.with_name(FP16_NAME)
            convert_fp16(fp32, dst)
        else:
            raise ValueError(f"unknown reduced format {fmt!r}; valid: int8, fp16")
        got = _embed(dst, images)
        agreement = neighbour_agreement(ref, got)
        err = float(np.abs(ref - got).max() / max(float(np.abs(ref).max()), 1e-12))
        report[fmt] = {"file": dst.name, "knn_agreement": agreement, "max_rel_error": err, "k": K,
                       "images": len(images)}
        log(f"verify {fmt:11s} {len(images)} images: top-{K} neighbour agreement {agreement:.3f}, "
            f"max relative error {err:.2e}")
        if agreement < MIN_AGREEMENT:
            raise AgreementError(f"{fmt} export keeps only {agreement:.2f} of the top-{K} neighbours "
                                 f"(< {MIN_AGREEMENT}): nothing published")
    return report
