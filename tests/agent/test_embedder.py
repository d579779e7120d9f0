"""The embedder: preprocessing from the manifest, payload validation, the RotNet pretext loss, CPU fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from agent.embedder import Embedder
from agent.testing import linear_encoder, publish_model
from shortlist.images import decode_payload, tensor_pixels
from shortlist.manifest import Preprocess, newest_complete
from tests.agent.conftest import png


def embedder(tmp_path: Path, rotation: bool = False, size: tuple[int, int] = (8, 8)) -> Embedder:
    reg = tmp_path / "m"
    publish_model(reg, linear_encoder(size, 16, ["a", "b"], rotation), Preprocess(size=size), ["a", "b"])
    found = newest_complete(reg)
    assert found is not None
    return Embedder(reg / found[0], found[1], batch_size=3)


def test_embedding_matches_manual_preprocessing(tmp_path: Path) -> None:
    emb = embedder(tmp_path)
    assert emb.provider == "CPUExecutionProvider"  # no GPU here: CUDA must not be reported
    imgs = np.random.default_rng(0).integers(0, 255, (7, 8, 8, 3), dtype=np.uint8)
    out = emb.embed(imgs)
    assert out.vecs.shape == (7, 16) and out.logits is not None and out.logits.shape == (7, 2)
    assert np.allclose(np.linalg.norm(out.vecs, axis=1), 1, atol=1e-5)
    pre = Preprocess(size=(8, 8))
    sess = ort.InferenceSession(str(emb.session._model_path), providers=["CPUExecutionProvider"])
    raw = sess.run(["embedding"], {"image": pre.normalize(imgs)})[0]
    assert np.allclose(out.vecs, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)


def test_any_size_is_resized(tmp_path: Path) -> None:
    pre = Preprocess(size=(8, 8))
    big = np.random.default_rng(1).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    assert decode_payload("image", png(big), "", (), pre).shape == (8, 8, 3)
    assert decode_payload("tensor", big.tobytes(), "uint8", big.shape, pre).shape == (8, 8, 3)
    gray = big[:, :, :1].copy()
    assert decode_payload("tensor", gray.tobytes(), "uint8", gray.shape, pre).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="NaN"):
        tensor_pixels("float32", (3, 2, 2), np.full(12, np.nan, np.float32).tobytes())
    # floats outside [0, 1] are refused with what to do, never clipped to a white or black image
    unit = np.linspace(0, 1, 12, dtype=np.float32)
    assert tensor_pixels("float32", (3, 2, 2), unit.tobytes()).reshape(-1).tolist() == \
        np.round(unit.reshape(3, 2, 2).transpose(1, 2, 0) * 255).astype(int).reshape(-1).tolist()
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], found 0 to 255: divide 8-bit pixel values by 255"):
        tensor_pixels("float32", (3, 2, 2), (unit * 255).tobytes())
    with pytest.raises(ValueError, match="before any mean/std normalisation"):
        tensor_pixels("float32", (3, 2, 2), (unit - 0.5).tobytes())


def test_rotation_pretext_loss(tmp_path: Path) -> None:
    emb = embedder(tmp_path, rotation=True)
    imgs = np.random.default_rng(2).integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    out = emb.embed(imgs)
    assert out.pretext is not None and out.pretext.shape == (5,)
    # by hand: mean over k of CE(rotation_logits(rot90(x, k)), k)
    x = Preprocess(size=(8, 8)).normalize(imgs)
    sess = emb.session
    losses = []
    for k in range(4):
        z = sess.run(["rotation_logits"], {"image": np.ascontiguousarray(np.rot90(x, k, axes=(2, 3)))})[0]
        z = z - z.max(axis=1, keepdims=True)
        losses.append(-(z[:, k] - np.log(np.exp(z).sum(axis=1))))
    assert np.allclose(out.pretext, np.mean(losses, axis=0), atol=1e-4) and (out.pretext > 0).all()
