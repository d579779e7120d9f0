"""A model whose embeddings are all zero, or one direction whatever the image, is refused on real images (the
stored samples being embedded, Ingest's batches) as NaN embeddings are; real encoders, even random ones, pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.config import AgentConfig
from agent.core import Agent, SelectQuery
from agent.embedder import JUDGE_MIN, Embedder, ModelFailed, degenerate
from agent.errors import FailedPrecondition
from agent.ingest import Incoming
from agent.models import ModelManager
from agent.models_import import ImportRefused, import_onnx
from agent.testing import (
    IR_VERSION,
    OPSET,
    conv_encoder,
    foreign_encoder,
    linear_encoder,
    publish_linear,
    publish_model,
)
from shortlist.manifest import EMBEDDING_OUTPUT, INPUT_NAME, Preprocess, newest_complete
from tests.agent.conftest import SIZE, make_images, png


def broken_encoder(kind: str, size: tuple[int, int] = SIZE, dim: int = 6) -> onnx.ModelProto:
    """``kind`` "zeros": relu(flatten(x) @ W - 50), zero for every image (a collapsed ReLU head); "constant":
    flatten(x) @ W * 0 + c, one vector whatever the image. Both pass the load check's blank batch."""
    rng = np.random.default_rng(0)
    flat = 3 * size[0] * size[1]
    inits = [numpy_helper.from_array(rng.normal(0, 1 / np.sqrt(flat), (flat, dim)).astype(np.float32), "W")]
    nodes = [helper.make_node("Flatten", [INPUT_NAME], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "W"], ["vec"])]
    if kind == "zeros":
        inits.append(numpy_helper.from_array(np.full(1, 50, np.float32), "shift"))
        nodes += [helper.make_node("Sub", ["vec", "shift"], ["low"]),
                  helper.make_node("Relu", ["low"], [EMBEDDING_OUTPUT])]
    else:
        inits += [numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
                  numpy_helper.from_array(rng.normal(0, 1, dim).astype(np.float32), "c")]
        nodes += [helper.make_node("Mul", ["vec", "zero"], ["none"]), helper.make_node("Add", ["none", "c"],
                                                                                      [EMBEDDING_OUTPUT])]
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                                                          ["N", 3, *size])],
                              [helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["N", dim])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def loaded(reg: Path, model: onnx.ModelProto, size: tuple[int, int] = SIZE) -> Embedder:
    publish_model(reg, model, Preprocess(size=size))
    found = newest_complete(reg)
    assert found is not None
    return Embedder(reg / found[0], found[1], use_cuda=False)  # the load check (blank images) passes


def images(n: int, size: tuple[int, int] = SIZE, seed: int = 0) -> np.ndarray:
    return np.stack([im[: size[0], : size[1]] for im in make_images(n, seed, hw=size)])


def test_zero_or_constant_embeddings_of_real_images_are_the_models_fault(tmp_path: Path) -> None:
    zeros = loaded(tmp_path / "z", broken_encoder("zeros"))
    with pytest.raises(ModelFailed, match=r"gave all-zero embeddings for 8 of a batch of 8 images: the model is at "
                                          r"fault.*shortlist models rollback"):
        zeros.embed(images(JUDGE_MIN))
    constant = loaded(tmp_path / "c", broken_encoder("constant"))
    with pytest.raises(ModelFailed, match=r"gave the same embedding \(direction\) for all of a batch of 9 "
                                          r"images \(9 clearly different images\)"):
        constant.embed(images(JUDGE_MIN + 1))
    # not judged: a batch too small to tell (Ingest of a few images), or the same picture sent many times
    assert zeros.embed(images(JUDGE_MIN - 1)).vecs.shape == (JUDGE_MIN - 1, 6)
    same = np.repeat(images(1), 20, axis=0)
    assert constant.embed(same).vecs.shape == (20, 6)


def test_real_encoders_even_random_ones_pass_on_images_that_look_alike(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    near = np.clip(128 + rng.integers(0, 2, (64, 32, 32, 3)), 0, 255).astype(np.uint8)  # pixels differ by 0 or 1
    noise = rng.integers(0, 255, (64, 32, 32, 3), dtype=np.uint8)
    for i, model in enumerate((conv_encoder((32, 32), (8, 16), 16), linear_encoder((32, 32), 16))):
        emb = loaded(tmp_path / str(i), model, (32, 32))
        for batch in (near, noise, np.zeros_like(near)):
            assert emb.embed(batch).vecs.shape == (64, 16)


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (224, 224)])
def test_dark_frames_a_speck_apart_are_not_judged_different_images(size: tuple[int, int]) -> None:
    """Eight black frames, each with one pixel at level 1 (a camera trap at night): a weak encoder gives them
    embeddings within 3e-5 of each other, rightly; counted as 8 different images by their bytes, the batch was
    refused as the model's fault (Ingest FAILED_PRECONDITION). Alike images are not judged; a constant model on
    clearly different ones still is."""
    frames = np.zeros((JUDGE_MIN, *size, 3), np.uint8)
    for i in range(JUDGE_MIN):
        frames[i, (3 * i) % size[0], (5 * i) % size[1], 0] = 1
    same = np.tile(np.linspace(-1, 1, 16, dtype=np.float32), (JUDGE_MIN, 1))
    assert degenerate(frames, same) == ""
    assert "the same embedding (direction)" in degenerate(images(JUDGE_MIN), same)


@pytest.mark.parametrize("kind", ["zeros", "constant"])
def test_a_degenerate_new_version_is_refused_and_the_served_one_keeps_serving(tmp_path: Path, kind: str) -> None:
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    a = Agent(AgentConfig(tmp_path / "data", models, background=False, use_cuda=False))
    try:
        assert a.ingest.batch([Incoming(f"x{i}", "image", png(im), png(im))
                               for i, im in enumerate(make_images(12))]).accepted == 12
        bad = publish_model(models, broken_encoder(kind), Preprocess(size=SIZE))
        a.manager.check()
        st = a.status()
        assert st.model_version == "v0001" and st.pending_model_version == "" and st.embedded == 12
        # refused on the load check's synthetic images, before the pool is embedded with it
        said = "all-zero embeddings for 8 of" if kind == "zeros" else "the same embedding (direction) for all of"
        assert [w for w in st.warnings if w.startswith(f"{bad} refused: cannot load it: the model gave {said} 8 "
                                                       "synthetic images") and "v0001 keeps serving" in w], st.warnings
        assert a.state.model_versions_full()[bad][0] == "failed"
    finally:
        a.close()


@pytest.mark.parametrize("kind", ["zeros", "constant"])
def test_the_load_check_refuses_it_on_synthetic_images_so_import_publishes_nothing(tmp_path: Path, kind: str) -> None:
    model = tmp_path / "broken.onnx"
    model.write_bytes(broken_encoder(kind).SerializeToString())
    said = r"(all-zero embeddings for 8|the same embedding \(direction\) for all) of 8 synthetic images"
    cause = "a ReLU after a large negative bias" if kind == "zeros" else "a constant output"  # each its own
    with pytest.raises(ImportRefused, match=rf"the model gave {said} .*: check the exported graph.*{cause}"):
        import_onnx(model, tmp_path / "models", Preprocess(size=SIZE))
    assert not (tmp_path / "models").exists()
    good = tmp_path / "good.onnx"
    good.write_bytes(conv_encoder(SIZE, (8, 16), 16).SerializeToString())
    assert import_onnx(good, tmp_path / "models", Preprocess(size=SIZE))[0] == "v0001"


@pytest.mark.parametrize("kind", ["zeros", "constant"])
def test_a_degenerate_first_model_is_refused_and_nothing_is_served(tmp_path: Path, kind: str) -> None:
    """With nothing served yet there are no stored embeddings to judge a model on: a degenerate first model was
    served and Select answered one score for every sample. It is refused on the synthetic images, as import
    refuses it; GetStatus and Select say so and what to do; a working encoder published after it is served."""
    models = tmp_path / "models"
    bad = publish_model(models, broken_encoder(kind), Preprocess(size=SIZE))
    a = Agent(AgentConfig(tmp_path / "data", models, background=False, use_cuda=False))
    try:
        assert a.ingest.batch([Incoming(f"x{i}", "image", png(im), png(im))
                               for i, im in enumerate(make_images(3))]).accepted == 3  # stored, not embedded
        a.manager.check()
        st = a.status()
        said = "all-zero embeddings for 8" if kind == "zeros" else "the same embedding (direction) for all"
        assert st.model_version == "" and st.embedded == 0
        assert [w for w in st.warnings if w.startswith(f"{bad} refused: cannot load it: the model gave {said} of 8 "
                                                       "synthetic images") and "no version is served" in w], st.warnings
        with pytest.raises(FailedPrecondition) as e:
            a.select(SelectQuery(2, "coreset", {}, 0, {}))
        assert f"no model is served: the agent refused the version(s) in {models} ({bad} refused" in str(e.value)
        assert said in str(e.value) and "publish a working encoder as a new version" in str(e.value)
        with pytest.raises(FailedPrecondition, match="no model is served: the agent refused"):
            a.prior_labels("knn", ["x0"], {})
        good = publish_linear(models, size=SIZE, dim=16, seed=0)
        a.manager.check()
        st = a.status()
        assert st.model_version == good and st.embedded == 3
        assert not [w for w in st.warnings if w.startswith(bad)], st.warnings  # older than the served one
    finally:
        a.close()


def test_a_version_refused_while_re_embedding_is_not_tried_again_after_a_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused while the pool was re-embedded with it (the model's fault: here it runs at a batch of 2 only, so it
    passes the load check), a version was stored without what identifies its folder: a restart embedded the
    whole pool with it again to refuse it again. Now only a changed folder, or a fixed model under a new name,
    is tried."""
    models = tmp_path / "models"
    publish_linear(models, size=SIZE, dim=16, seed=0)
    config = AgentConfig(tmp_path / "data", models, background=False, use_cuda=False)
    a = Agent(config)
    try:
        assert a.ingest.batch([Incoming(f"x{i}", "image", png(im), png(im))
                               for i, im in enumerate(make_images(12))]).accepted == 12
        bad = publish_model(models, foreign_encoder(SIZE, 16, reshape_batch=2), Preprocess(size=SIZE))
        a.manager.check()
        assert a.status().model_version == "v0001"
        assert a.state.model_versions_full()[bad][0] == "failed"
    finally:
        a.close()
    loads: list[str] = []
    real = ModelManager._load

    def counted(self: ModelManager, version: str, *args: object, **kw: object) -> object:
        loads.append(version)
        return real(self, version, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ModelManager, "_load", counted)
    a = Agent(config)
    try:
        a.manager.check()
        st = a.status()
        assert loads == ["v0001"] and st.model_version == "v0001" and st.embedded == 12  # bad: not loaded again
        assert [w for w in st.warnings if w.startswith(f"{bad} refused: it failed while embedding the stored samples")
                and "failed on a batch of 12 images" in w], st.warnings
        fixed = publish_linear(models, size=SIZE, dim=16, seed=1)  # the fix, under a new name
        a.manager.check()
        assert loads[-1] == fixed and a.status().model_version == fixed
    finally:
        a.close()
