"""``shortlist models import``: an ONNX encoder Shortlist did not train, published byte for byte with its
preprocessing and input and output names, then served by a real agent; models the agent's load check refuses
are refused with its advice and nothing published."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from agent.embedder import Embedder
from agent.models_import import ImportRefused, import_onnx, preprocess_from_options
from agent.testing import IR_VERSION, OPSET
from shortlist.cli import app
from shortlist.manifest import EMBEDDING_OUTPUT, ONNX_NAME, Preprocess, check_version, list_versions, sha256_file
from shortlist.v1 import agent_pb2
from tests.agent.conftest import make_samples, start

runner = CliRunner()
DIM = 6
SIDE = 8
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def said(output: str) -> str:
    return " ".join(output.split())


def pooled_cnn(path: Path, *, batch: int | str = "N", layout: str = "NCHW", dtype: int = TensorProto.FLOAT,
               input_name: str = "pixels", output_name: str = "feat", flat: bool = False,
               extra_output: bool = False) -> np.ndarray:
    """Write a tiny CNN to ``path`` (1x1 conv to DIM channels, global average pool: (N, DIM, 1, 1), or (N, DIM)
    when ``flat``) with a torchvision-like interface; returns its conv weight (DIM x 3)."""
    w = np.random.default_rng(3).normal(size=(DIM, 3)).astype(np.float32)
    nodes, x = [], input_name
    if dtype != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [x], ["as_float"], to=TensorProto.FLOAT))
        x = "as_float"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    nodes += [helper.make_node("Conv", [x, "w"], ["conv"]),
              helper.make_node("GlobalAveragePool", ["conv"], ["gap" if flat else output_name])]
    out_shape: list[int | str] = [batch, DIM] if flat else [batch, DIM, 1, 1]
    if flat:
        nodes.append(helper.make_node("Flatten", ["gap"], [output_name], axis=1))
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, out_shape)]
    if extra_output:
        nodes.append(helper.make_node("ReduceMean", ["conv"], ["spatial"], axes=[1], keepdims=0))
        outputs.append(helper.make_tensor_value_info("spatial", TensorProto.FLOAT, [batch, SIDE, SIDE]))
    in_shape: list[int | str] = [batch, 3, SIDE, SIDE] if layout == "NCHW" else [batch, SIDE, SIDE, 3]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(input_name, dtype, in_shape)], outputs,
                              initializer=[numpy_helper.from_array(w.reshape(DIM, 3, 1, 1), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return w


def _import(model: Path, models: Path, *extra: str) -> tuple[int, str, str]:
    r = runner.invoke(app, ["models", "import", str(model), "--models", str(models), *extra])
    return r.exit_code, r.stdout, r.stderr


PRE_ARGS = ("--mean", *map(str, MEAN), "--std", *map(str, STD), "--interpolation", "bicubic")


def test_an_imported_pooled_cnn_is_published_with_its_preprocessing_and_served_by_an_agent(tmp_path: Path) -> None:
    src, models = tmp_path / "resnet_like.onnx", tmp_path / "models"
    w = pooled_cnn(src)
    code, out, err = _import(src, models, *PRE_ARGS)
    assert code == 0, err
    assert "published" in out and "v0001" in out and f"shortlist serve --models {models}" in said(out)
    assert f"bench embeddings --encoder {models / 'v0001'}" in out
    manifest = check_version(models / "v0001")  # complete, hashes checked
    assert manifest.preprocess == Preprocess(size=(SIDE, SIDE), mean=MEAN, std=STD, interpolation="bicubic")
    assert manifest.embedding_dim == DIM and manifest.input_name == "pixels"
    assert manifest.output_name == "feat" and manifest.outputs == ["feat"]  # (N, 6, 1, 1): the agent flattens it
    assert manifest.method == "imported" and manifest.source_run == str(src.resolve())
    assert sha256_file(models / "v0001" / ONNX_NAME) == sha256_file(src)  # the user's file, byte for byte

    # The agent's own loader computes the model's embedding: W @ (the mean normalised pixel).
    images = np.random.default_rng(0).integers(0, 256, (5, SIDE, SIDE, 3), dtype=np.uint8)
    vecs = Embedder(models / "v0001", manifest, use_cuda=False, batch_size=4).embed(images).vecs
    want = manifest.preprocess.normalize(images).mean(axis=(2, 3)) @ w.T
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(vecs, want, atol=1e-5)

    r = start(tmp_path / "data", models)
    try:
        reply = r.stub.Ingest(iter([agent_pb2.IngestRequest(samples=make_samples(7))]))
        assert reply.accepted == 7 and not reply.rejected
        st = r.stub.GetStatus(agent_pb2.GetStatusRequest())
        assert st.model_version == "v0001" and st.embedded == 7 and not st.warnings
        sel = r.stub.Select(agent_pb2.SelectRequest(budget=3, strategy="kmedoids", seed=1))
        assert sel.model_version == "v0001" and len({s.id for s in sel.selected}) == 3
    finally:
        r.stop()


def test_a_model_already_in_the_agents_shape_is_published_byte_for_byte(tmp_path: Path) -> None:
    src, models = tmp_path / "m.onnx", tmp_path / "models"
    pooled_cnn(src, flat=True, output_name=EMBEDDING_OUTPUT, input_name="image")
    code, out, err = _import(src, models, "--preprocess", "cifar10", "--json")
    assert code == 0, err
    outcome = json.loads(out)
    assert outcome["published"] == "v0001" and outcome["embedding_dim"] == DIM
    assert outcome["preprocess"]["size"] == [SIDE, SIDE]  # the model's own fixed size beats the preset's 32
    assert outcome["preprocess"]["mean"] == [0.4914, 0.4822, 0.4465]  # the preset's
    assert sha256_file(models / "v0001" / ONNX_NAME) == sha256_file(src)
    assert check_version(models / "v0001").output_name == EMBEDDING_OUTPUT


@pytest.mark.parametrize(("kind", "advice"), [
    ({"batch": 1}, "the batch axis is fixed at 1"),
    ({"layout": "NHWC"}, "(it looks channels-last, NHWC)"),
    ({"dtype": TensorProto.FLOAT16}, "keep_io_types=True"),
    ({"extra_output": True}, "say which one is the embedding with --output-name"),
])
def test_a_model_the_agent_could_not_run_is_refused_with_advice_and_nothing_published(
        tmp_path: Path, kind: dict[str, object], advice: str) -> None:
    src, models = tmp_path / "bad.onnx", tmp_path / "models"
    pooled_cnn(src, **kind)  # type: ignore[arg-type]
    code, out, err = _import(src, models, *PRE_ARGS, "--size", str(SIDE), str(SIDE))
    # 2: names that do not fit the file, found reading it (a usage error); 1: the agent's load check refused it
    assert code == (2 if "extra_output" in kind else 1) and advice in said(err) and "nothing was published" in err, err
    assert "Traceback" not in err and out == ""
    assert not models.exists()  # no registry created, no staging folder left
    assert ("torch.onnx.export(" in err) == ("batch" in kind)  # the agent's refusal carries the export hint


def test_names_and_sizes_are_checked_before_anything_is_published(tmp_path: Path) -> None:
    src, models = tmp_path / "m.onnx", tmp_path / "models"
    pooled_cnn(src, extra_output=True)
    code, _, err = _import(src, models, *PRE_ARGS, "--output-name", "nope")
    assert code == 1 and "has no 'nope' output (its outputs: ['feat', 'spatial'])" in said(err)
    assert "--output-name" in err
    code, _, err = _import(src, models, *PRE_ARGS, "--size", "8", "8", "--input-name", "image", "--output-name", "feat")
    assert code == 1 and "input_name is 'image' but the model's inputs are ['pixels']" in said(err)
    assert "--input-name" in said(err)
    code, _, err = _import(src, models, *PRE_ARGS, "--size", "16", "16", "--output-name", "feat")
    assert code == 1 and "shape ['N', 3, 8, 8]" in said(err) and "(N, 3, 16, 16)" in said(err)
    assert "--size H W" in said(err)
    code, _, err = _import(src, models, "--output-name", "feat")  # no mean / std: no silent default
    assert code == 2 and "--preprocess imagenet" in err
    code, _, err = _import(tmp_path / "missing.onnx", models, *PRE_ARGS)
    assert code == 2 and "is not a file" in err
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    code, _, err = _import(tmp_path / "junk.onnx", models, *PRE_ARGS, "--size", "8", "8")
    # not an ONNX file: bad input (exit 2), as a missing file is
    assert code == 2 and "onnxruntime cannot load" in err and "torch.onnx.export" in err
    assert list_versions(models) == []
    code, _, err = _import(src, models, *PRE_ARGS, "--output-name", "feat")  # right names: published
    assert code == 0, err
    assert list_versions(models) == ["v0001"]


def test_preprocess_options() -> None:
    pre = preprocess_from_options("imagenet", None, None, (1.0, 1.0, 1.0), "bilinear", None)
    assert pre.size == (224, 224) and pre.mean == (0.485, 0.456, 0.406) and pre.std == (1.0, 1.0, 1.0)
    assert preprocess_from_options("imagenet", (64, 48), None, None, "lanczos", (8, 8)).size == (64, 48)
    with pytest.raises(ImportRefused, match="unknown --interpolation 'bicubc'"):
        preprocess_from_options("imagenet", None, None, None, "bicubc", None)
    with pytest.raises(ImportRefused, match="--size H W"):
        preprocess_from_options(None, None, MEAN, STD, "bilinear", None)
    with pytest.raises(ImportRefused, match="std finite and positive"):
        preprocess_from_options(None, (8, 8), MEAN, (0.0, 1.0, 1.0), "bilinear", None)


def test_import_refuses_a_training_run_folder_as_registry(tmp_path: Path) -> None:
    src, run = tmp_path / "m.onnx", tmp_path / "run"
    pooled_cnn(src)
    run.mkdir()
    (run / "encoder.pt").write_bytes(b"x")
    with pytest.raises(ImportRefused, match="training run folder"):
        import_onnx(src, run, Preprocess(size=(SIDE, SIDE)))


def test_a_pooled_output_named_embedding_is_published_as_is_and_flattened_by_the_agent(tmp_path: Path) -> None:
    src, models = tmp_path / "m.onnx", tmp_path / "models"
    w = pooled_cnn(src, output_name=EMBEDDING_OUTPUT)  # (N, 6, 1, 1) called embedding: the agent flattens it
    version, manifest = import_onnx(src, models, Preprocess(size=(SIDE, SIDE), mean=MEAN, std=STD))
    assert version == "v0001" and manifest.embedding_dim == DIM and manifest.output_name == EMBEDDING_OUTPUT
    assert sha256_file(models / version / ONNX_NAME) == sha256_file(src)
    images = np.random.default_rng(2).integers(0, 256, (3, SIDE, SIDE, 3), dtype=np.uint8)
    vecs = Embedder(models / version, check_version(models / version), use_cuda=False).embed(images).vecs
    want = manifest.preprocess.normalize(images).mean(axis=(2, 3)) @ w.T
    np.testing.assert_allclose(vecs, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)


def test_an_output_named_like_a_head_can_be_the_embedding(tmp_path: Path) -> None:
    src, models = tmp_path / "m.onnx", tmp_path / "models"
    pooled_cnn(src, flat=True, output_name="logits")  # a classifier's scores, served as the embedding
    version, manifest = import_onnx(src, models, Preprocess(size=(SIDE, SIDE), mean=MEAN, std=STD))
    assert manifest.output_name == "logits" and manifest.embedding_dim == DIM
    emb = Embedder(models / version, check_version(models / version), use_cuda=False)
    assert emb.embed(np.zeros((3, SIDE, SIDE, 3), np.uint8)).vecs.shape == (3, DIM) and not emb.classes


def external_data_cnn(folder: Path, location: str = "m.onnx.data") -> Path:
    """The tiny CNN saved as torch.onnx.export (torch >= 2.9) saves it: a small m.onnx whose weights are in
    ``location`` (relative to ``folder``)."""
    pooled_cnn(folder / "inline.onnx", flat=True, output_name=EMBEDDING_OUTPUT, input_name="image")
    model = onnx.load(str(folder / "inline.onnx"))
    (folder / "inline.onnx").unlink()
    onnx.save_model(model, str(folder / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return folder / "m.onnx"


def _embed(version: Path, images: np.ndarray) -> np.ndarray:
    return Embedder(version, check_version(version), use_cuda=False).embed(images).vecs


def test_a_model_with_external_data_is_published_as_one_self_contained_file(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    src, models = external_data_cnn(tmp_path / "src"), tmp_path / "models"
    assert (tmp_path / "src" / "m.onnx.data").stat().st_size > 0  # the weights are outside m.onnx
    code, out, err = _import(src, models, "--preprocess", "cifar10", "--json")
    assert code == 0, err
    assert json.loads(out)["published"] == "v0001"
    version = models / "v0001"
    assert sorted(p.name for p in version.iterdir()) == ["encoder.onnx", "manifest.json"]
    assert list(check_version(version).files) == [ONNX_NAME]
    images = np.random.default_rng(0).integers(0, 256, (3, SIDE, SIDE, 3), dtype=np.uint8)
    inline = tmp_path / "inline.onnx"
    pooled_cnn(inline, flat=True, output_name=EMBEDDING_OUTPUT, input_name="image")
    assert _import(inline, tmp_path / "models_inline", "--preprocess", "cifar10")[0] == 0
    expected = _embed(tmp_path / "models_inline" / "v0001", images)
    for f in (tmp_path / "src").iterdir():  # the published version needs nothing of the source folder
        f.unlink()
    np.testing.assert_allclose(_embed(version, images), expected, rtol=1e-6)


def test_a_model_over_the_inline_limit_keeps_its_weights_in_one_data_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.models_import

    monkeypatch.setattr(agent.models_import, "INLINE_LIMIT", 0)  # as a model of 2 GB or more would be
    (tmp_path / "src").mkdir()
    src, models = external_data_cnn(tmp_path / "src", "all.bin"), tmp_path / "models"
    code, _, err = _import(src, models, "--preprocess", "cifar10")
    assert code == 0, err
    version = models / "v0001"
    assert sorted(check_version(version).files) == [ONNX_NAME, ONNX_NAME + ".data"]  # both hashed, both checked
    for f in (tmp_path / "src").iterdir():
        f.unlink()
    assert _embed(version, np.zeros((2, SIDE, SIDE, 3), np.uint8)).shape == (2, DIM)


def test_a_model_whose_external_data_is_missing_or_outside_its_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    src, models = external_data_cnn(tmp_path / "a"), tmp_path / "models"
    (tmp_path / "a" / "m.onnx.data").unlink()  # the .onnx copied alone
    code, _, err = _import(src, models, "--preprocess", "cifar10")
    assert code == 2 and "m.onnx.data is not in" in said(err) and "external_data=False" in err, err
    assert "nothing was published" in err and not models.exists()
    (tmp_path / "b" / "in").mkdir(parents=True)
    src = external_data_cnn(tmp_path / "b" / "in")  # then pointed at a file outside its folder (onnx will not
    (tmp_path / "b" / "in" / "m.onnx.data").rename(tmp_path / "b" / "outside.data")  # write such a location)
    proto = onnx.load(str(src), load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../outside.data"
    src.write_bytes(proto.SerializeToString())
    code, _, err = _import(src, models, "--preprocess", "cifar10")
    assert code == 2 and "nothing was published" in err and "Traceback" not in err, err
    assert not models.exists()


def test_the_imagenet_preset_imports_a_centre_crop_and_resize_squash_keeps_the_old_behaviour(tmp_path: Path) -> None:
    src, models = tmp_path / "m.onnx", tmp_path / "models"
    pooled_cnn(src)
    code, out, err = _import(src, models, "--preprocess", "imagenet")
    assert code == 0, err
    assert "8x8 (centre crop of 0.875)" in said(out)
    pre = check_version(models / "v0001").preprocess
    assert (pre.resize, pre.crop_fraction, pre.mean) == ("crop", 0.875, (0.485, 0.456, 0.406))
    assert json.loads((models / "v0001" / "manifest.json").read_text())["preprocess"]["crop_fraction"] == 0.875
    code, out, err = _import(src, models, "--preprocess", "imagenet", "--resize", "squash")  # as before the change
    assert code == 0, err
    assert check_version(models / "v0002").preprocess.resize == "squash" and "(squashed)" in out
    code, _, err = _import(src, models, *PRE_ARGS, "--resize", "crop", "--crop-fraction", "0.5")
    assert code == 0, err
    assert check_version(models / "v0003").preprocess == Preprocess(
        size=(SIDE, SIDE), mean=MEAN, std=STD, interpolation="bicubic", resize="crop", crop_fraction=0.5)


@pytest.mark.parametrize(("extra", "says"), [
    (("--resize", "crop", "--crop-fraction", "1.5"), "--crop-fraction 1.5 must be in (0, 1]"),
    (("--resize", "crop", "--crop-fraction", "0"), "--crop-fraction 0.0 must be in (0, 1]"),
    (("--crop-fraction", "0.9"), "--crop-fraction goes with --resize crop"),
    (("--resize", "fit"), "unknown --resize 'fit'; valid: squash, crop"),
])
def test_a_bad_resize_option_is_a_one_line_error_and_nothing_is_published(
        tmp_path: Path, extra: tuple[str, ...], says: str) -> None:
    src, models = tmp_path / "m.onnx", tmp_path / "models"
    pooled_cnn(src)
    code, out, err = _import(src, models, *PRE_ARGS, *extra)
    assert code == 2 and err.startswith("error: ") and says in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and out == ""
    assert not models.exists()


def test_a_model_whose_input_fixes_another_size_than_the_presets_says_the_size_was_replaced(tmp_path: Path) -> None:
    """The model's fixed input size wins over the preset's (the model cannot take 224 px), and a note line says
    so (it was replaced silently: only the published line's size told); no note when the sizes agree, when
    --size is given, or without a preset. With --json the note goes to stderr: stdout stays one object."""
    src, models = tmp_path / "m.onnx", tmp_path / "models"
    pooled_cnn(src, input_name="image")
    code, out, err = _import(src, models, "--preprocess", "imagenet")
    assert code == 0, err
    assert check_version(models / "v0001").preprocess.size == (SIDE, SIDE)
    assert (f"note: the model's input 'image' fixes {SIDE}x{SIDE}, so images are brought to {SIDE}x{SIDE} in "
            "place of the imagenet preset's 224x224 (its mean, std and resize are kept)") in said(out), out
    code, out, err = _import(src, models, "--preprocess", "imagenet", "--json")
    assert code == 0 and json.loads(out)["preprocess"]["size"] == [SIDE, SIDE], out
    assert "note: the model's input 'image' fixes" in said(err), err
    for extra in (("--preprocess", "imagenet", "--size", str(SIDE), str(SIDE)), PRE_ARGS):
        code, out, err = _import(src, models, *extra)
        assert code == 0 and "note:" not in out + err, out + err


def test_no_size_note_when_the_model_fixes_the_presets_size() -> None:
    from agent.models_import import size_note

    assert size_note("cifar10", None, (32, 32), "image") is None
    assert size_note("cifar10", None, None, "image") is None
    assert size_note("cifar10", None, (8, 8), "image") is not None
