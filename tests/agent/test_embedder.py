"""The embedder: preprocessing from the manifest, payload validation, the RotNet pretext loss, CPU fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from agent.embedder import Embedder, ModelFailed, ModelRefused
from agent.errors import map_exception
from agent.testing import foreign_encoder, linear_encoder, publish_model
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


def foreign(tmp_path: Path, input_name: str = "image", size: tuple[int, int] = (8, 8),
            **kw: Any) -> Embedder:
    """An Embedder over a published ``foreign_encoder(**kw)`` whose manifest says ``input_name`` and ``size``."""
    reg = tmp_path / "m"
    model = foreign_encoder(input_name=str(kw.pop("graph_input", input_name)), **kw)
    publish_model(reg, model, Preprocess(size=size), input_name=input_name)
    found = newest_complete(reg)
    assert found is not None
    return Embedder(reg / found[0], found[1], batch_size=3)


def refusal(tmp_path: Path, **kw: Any) -> str:
    with pytest.raises(ModelRefused) as e:
        foreign(tmp_path, **kw)
    return str(e.value)


def test_a_fixed_batch_axis_is_refused_at_load_with_how_to_export(tmp_path: Path) -> None:
    said = refusal(tmp_path, batch=1)
    assert "the batch axis is fixed at 1" in said
    assert 'dynamic_axes={"image": {0: "batch"}' in said
    # declared dynamic but reshaped to a batch of 1 inside (what tracing can leave): the batch of 2 shows it
    said = refusal(tmp_path / "b", reshape_batch=1)
    assert "fails on a batch of 2 blank images" in said and "dynamic batch axis" in said


def test_a_model_failing_on_a_batch_is_its_fault_not_the_agents(tmp_path: Path) -> None:
    emb = foreign(tmp_path, reshape_batch=2)  # passes the load check (a batch of 2), fails on any other size
    with pytest.raises(ModelFailed) as e:
        emb.embed(np.zeros((3, 8, 8, 3), np.uint8))
    mapped = map_exception(e.value)
    assert mapped.code.name == "FAILED_PRECONDITION"
    assert "bug" not in mapped.message and "the model is at fault" in mapped.message
    assert "publish a fixed version" in mapped.message


def test_refusals_say_what_the_agent_feeds_and_what_to_change(tmp_path: Path) -> None:
    said = refusal(tmp_path / "a", input_name="image", graph_input="pixels")
    assert "the manifest's input_name is 'image' but the model's inputs are ['pixels']" in said
    said = refusal(tmp_path / "b", nhwc=True)
    assert "shape ['N', 8, 8, 3] (it looks channels-last, NHWC)" in said
    assert "the agent feeds float32 NCHW batches of shape (N, 3, 8, 8)" in said
    said = refusal(tmp_path / "c", size=(16, 16))  # the manifest asks for another size than the model takes
    assert "shape ['N', 3, 8, 8]" in said and "(N, 3, 16, 16)" in said and "preprocess size 16x16" in said
    said = refusal(tmp_path / "d", float16=True)
    assert "takes tensor(float16), but the agent feeds float32" in said and "add a Cast" in said


def test_a_pooled_output_is_served_and_a_feature_map_is_refused(tmp_path: Path) -> None:
    emb = foreign(tmp_path, pooled=True)  # Nx16x1x1
    imgs = np.random.default_rng(3).integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    flat = foreign(tmp_path / "flat").embed(imgs).vecs  # the same weights, an Nx16 output
    assert np.allclose(emb.embed(imgs).vecs, flat, atol=1e-6)
    said = refusal(tmp_path / "map", feature_map=True)  # Nx4x2x2: 16 numbers an image, but no pooling
    assert "is a feature map ((2, 4, 2, 2) for a batch of 2)" in said and "global average pooling" in said


def test_the_manifests_output_name_picks_the_embedding(tmp_path: Path) -> None:
    emb = foreign(tmp_path, output_name="feat")
    assert emb.manifest.output_name == "feat" and emb.outputs == ["feat"]
    assert emb.embed(np.zeros((2, 8, 8, 3), np.uint8)).vecs.shape == (2, 16)
    reg = tmp_path / "m"
    found = newest_complete(reg)
    assert found is not None
    found[1].outputs.append("embedding")
    found[1].output_name = "embedding"  # a manifest naming an output the graph lacks
    with pytest.raises(ModelRefused, match=r"has no 'embedding' output .*feat.*: set the manifest's output_name"):
        Embedder(reg / found[0], found[1])


def test_a_model_giving_nan_is_refused_at_load_or_failed_on_the_batch(tmp_path: Path) -> None:
    said = refusal(tmp_path / "a", nonfinite="always")  # NaN on the blank batch already
    assert "NaN or infinite values in ['embedding']" in said
    emb = foreign(tmp_path / "b", nonfinite="some")  # 0 on the blank batch, NaN where a projection is negative
    with pytest.raises(ModelFailed) as e:
        emb.embed(np.random.default_rng(4).integers(0, 255, (5, 8, 8, 3), dtype=np.uint8))
    # the first batch (batch_size 3): each row has some of its 16 projections negative
    assert "gave NaN or infinite embeddings for 3 of a batch of 3 images" in str(e.value)
    assert "the model is at fault" in str(e.value) and map_exception(e.value).code.name == "FAILED_PRECONDITION"
