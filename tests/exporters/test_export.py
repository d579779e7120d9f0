"""Export round trips (ONNX and TorchScript agree with eager), manifest, atomic publish."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from exporters import publish_run
from exporters.export import ExportWrapper, VerificationError, export_run, read_onnx_manifest, verify
from shortlist.manifest import MANIFEST_NAME, ONNX_NAME, TORCHSCRIPT_NAME, Manifest, newest_complete, read_complete
from tests.training.conftest import CLASSES, PRE, SIZE, make_images
from training.backbones import build_backbone
from training.methods import Encoder
from training.pretrain import load_encoder, preprocess_by_name, save_encoder


def _run(tmp_path: Path, name: str, num_classes: int = 0, rotation: bool = False) -> Path:
    torch.manual_seed(0)
    enc = Encoder(build_backbone("resnet18_w32"), num_classes=num_classes, rotation_head=rotation)
    # give BatchNorm non-trivial running statistics, as after training
    enc.train()
    with torch.no_grad():
        enc(torch.randn(16, 3, SIZE, SIZE) * 2 + 0.5)
    run = tmp_path / name
    run.mkdir()
    save_encoder(run, enc.eval(), arch="resnet18_w32", method="rotnet" if rotation else "simsiam",
                 pre=preprocess_by_name(PRE), classes=CLASSES if num_classes else None,
                 config={"note": "test"}, dataset="")
    return run


@pytest.mark.parametrize(("num_classes", "rotation"), [(0, False), (3, True)])
def test_export_round_trip(tmp_path: Path, num_classes: int, rotation: bool) -> None:
    run = _run(tmp_path, "run", num_classes, rotation)
    registry = tmp_path / "models"
    imgs, _ = make_images(8)
    version = publish_run(run, registry, real_images=imgs)
    assert version == "v0001"
    manifest = read_complete(registry / version)
    assert manifest is not None
    want = ["embedding"] + (["logits"] if num_classes else []) + (["rotation_logits"] if rotation else [])
    assert manifest.outputs == want and manifest.embedding_dim == 256
    assert manifest.classes == (CLASSES if num_classes else None)
    assert manifest.preprocess.size == (SIZE, SIZE)
    assert set(manifest.files) == {ONNX_NAME, TORCHSCRIPT_NAME}
    assert manifest.verification["onnx"]["real"]["embedding"] < 1e-4
    # the manifest travels inside the ONNX file too
    assert read_onnx_manifest(registry / version / ONNX_NAME).outputs == want
    # dynamic batch: any batch size runs, and matches eager
    sess = ort.InferenceSession(str(registry / version / ONNX_NAME), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((5, 3, SIZE, SIZE)).astype(np.float32)
    outs = sess.run(want, {"image": x})
    ts = torch.jit.load(str(registry / version / TORCHSCRIPT_NAME))
    from training.pretrain import load_encoder

    enc, _ = load_encoder(run)
    with torch.no_grad():
        ref = ExportWrapper(enc)(torch.from_numpy(x))
        ts_out = ts(torch.from_numpy(x))
    for r, o, t in zip(ref, outs, ts_out, strict=True):
        assert o.shape[0] == 5
        assert np.abs(r.numpy() - o).max() <= 1e-4 * np.abs(r.numpy()).max()
        assert torch.allclose(r, t, rtol=0, atol=1e-5 * float(r.abs().max()))
    # a second export is the next version
    assert export_run(run, registry, formats=["onnx"]) == "v0002"
    assert newest_complete(registry) is not None and newest_complete(registry)[0] == "v0002"  # type: ignore[index]


def test_verification_failure_publishes_nothing(tmp_path: Path) -> None:
    run = _run(tmp_path, "run")
    from training.pretrain import load_encoder

    enc, _ = load_encoder(run)
    wrapper = ExportWrapper(enc).eval()
    other = _run(tmp_path, "other")
    registry = tmp_path / "m"
    export_run(other, registry, formats=["onnx", "torchscript"])
    with torch.no_grad():  # a different model's files cannot verify against this eager model
        for p in wrapper.parameters():
            p.add_(0.1)
    files = {"onnx": registry / "v0001" / ONNX_NAME}
    batch = {"random": np.random.default_rng(0).standard_normal((4, 3, SIZE, SIZE)).astype(np.float32)}
    with pytest.raises(VerificationError, match="nothing published"):
        verify(wrapper, files, batch)


def test_half_written_version_is_not_complete(tmp_path: Path) -> None:
    run = _run(tmp_path, "run")
    registry = tmp_path / "models"
    export_run(run, registry, formats=["onnx"])
    # a crash mid-publish leaves a .tmp-* folder, or (if someone copies by hand) a version without its
    # manifest or with a truncated file: none of them is seen as complete
    (registry / ".tmp-export-1-abc").mkdir()
    (registry / ".tmp-export-1-abc" / ONNX_NAME).write_bytes(b"partial")
    (registry / "v0002").mkdir()
    (registry / "v0002" / ONNX_NAME).write_bytes((registry / "v0001" / ONNX_NAME).read_bytes())
    manifest = json.loads((registry / "v0001" / MANIFEST_NAME).read_text())
    (registry / "v0003").mkdir()
    (registry / "v0003" / ONNX_NAME).write_bytes(b"truncated")
    (registry / "v0003" / MANIFEST_NAME).write_text(json.dumps(manifest))
    newest = newest_complete(registry)
    assert newest is not None and newest[0] == "v0001"
    assert isinstance(newest[1], Manifest)
    # the next publish skips the taken numbers and cleans up nothing of others'
    assert export_run(run, registry, formats=["onnx"]) == "v0004"
    assert newest_complete(registry)[0] == "v0004"  # type: ignore[index]
    assert not any(p.name.startswith(".tmp-export-") and p.name != ".tmp-export-1-abc" for p in registry.iterdir())


def test_int8_and_fp16_exports_keep_neighbours(tmp_path: Path) -> None:
    from exporters.reduced import FP16_NAME, INT8_NAME, neighbour_agreement

    run = _run(tmp_path, "run")
    imgs, _ = make_images(48, seed=5)
    registry = tmp_path / "models"
    version = export_run(run, registry, formats=["onnx", "int8", "fp16"], real_images=imgs)
    manifest = read_complete(registry / version)
    assert manifest is not None and {INT8_NAME, FP16_NAME} <= set(manifest.files)
    for fmt in ("int8", "fp16"):
        assert manifest.verification["reduced"][fmt]["knn_agreement"] >= 0.8
    # the agreement measure itself: identical embeddings agree fully, shuffled ones do not
    e = np.random.default_rng(0).standard_normal((30, 8)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    assert neighbour_agreement(e, e) == 1.0
    assert neighbour_agreement(e, e[np.random.default_rng(1).permutation(30)]) < 0.6


class _UpsamplingPool(torch.nn.Module):
    """A backbone the ONNX exporter refuses: an adaptive pool to a size that does not divide its input (as
    torchvision's ImageNet VGG-16 does on 32 px images, 1x1 -> 7x7)."""

    out_dim = 27

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x[:, :, :2, :2], 3).flatten(1)  # Nx27


def test_an_unexportable_encoder_is_an_export_error(tmp_path: Path) -> None:
    from exporters.export import ExportError, export_onnx

    with pytest.raises(ExportError, match=r"cannot be exported to ONNX at .* nothing published"):
        export_onnx(ExportWrapper(Encoder(_UpsamplingPool())), tmp_path / "m.onnx", (SIZE, SIZE), {})


def test_cifar_vgg_exports_at_32_px(tmp_path: Path) -> None:
    """MoBYv2AL's CIFAR VGG-16-BN (the recipe's gpu profile) runs on 32 px and exports to ONNX exactly."""
    from exporters.export import export_onnx

    torch.manual_seed(0)
    enc = Encoder(build_backbone("vgg16_bn_cifar")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = enc(x)
    assert want.shape == (2, 512)
    export_onnx(ExportWrapper(enc), tmp_path / "vgg.onnx", (32, 32), {})
    sess = ort.InferenceSession(str(tmp_path / "vgg.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["embedding"], {"image": x.numpy()})[0]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-3, atol=1e-4)


def test_a_registry_that_is_a_file_or_a_version_folder_is_refused(tmp_path: Path) -> None:
    """--models pointing at a file, or at a version inside a registry (whose versions would nest where no
    agent looks), is refused before anything is exported; a data set moved away is said, not skipped."""
    run = _run(tmp_path, "run")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file: --models takes the registry folder"):
        export_run(run, tmp_path / "notes.txt", formats=["onnx"])
    registry = tmp_path / "m"
    assert export_run(run, registry, formats=["onnx"]) == "v0001"
    with pytest.raises(ValueError, match=f"is a version folder of the registry {registry}: pass --models"):
        export_run(run, registry / "v0001", formats=["onnx"])
    said: list[str] = []
    from training.pretrain import load_encoder

    _, meta = load_encoder(run)
    from exporters.export import real_batch

    assert real_batch({**meta, "dataset": str(tmp_path / "gone")}, preprocess_by_name(PRE), log=said.append) is None
    assert said and "cannot be read from here" in said[0] and "random inputs only" in said[0]


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"echo ran > {self.marker}",)


def test_an_encoder_pt_or_checkpoint_whose_pickle_names_code_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    """encoder.pt and checkpoint.pt are read with torch.load(weights_only=True): a file whose pickle calls
    os.system (a run folder from elsewhere) is refused with a clear error, and the command never runs."""
    from training import loop

    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "ran"
    torch.save({"arch": "resnet18", "method": "simsiam", "preprocess": {}, "num_classes": 0,
                "rotation_head": False, "state_dict": {}, "config": _RunsCode(marker)}, run / "encoder.pt")
    with pytest.raises(ValueError, match=r"is not a Shortlist training run's encoder: it is a pickled system "
                                         r"object \((posix|os)\.system\), which is not loaded"):
        load_encoder(run)
    torch.save({"state": {}, "generator": _RunsCode(marker)}, run / loop.CHECKPOINT)
    with pytest.raises(ValueError, match=r"--resume: .*checkpoint.pt holds more than tensors and plain data "
                                         r"\(it names (posix|os)\.system\)"):
        loop.load_checkpoint(run, {}, torch.Generator())
    assert not marker.exists()


@pytest.mark.parametrize(("saved", "said"), [
    (lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)).state_dict(), "a plain state dict"),  # torchvision's
    (lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)), "a pickled Sequential object"),  # torch.save(model)
    (lambda: {"arch": "resnet18", "weights": {}}, "a dict without 'method', 'preprocess'"),
])
def test_export_of_an_encoder_pt_shortlist_did_not_write_says_so_and_points_at_models_import(
        tmp_path: Path, saved: Any, said: str) -> None:
    from typer.testing import CliRunner

    from shortlist.cli import app

    run = tmp_path / "run"
    run.mkdir()
    torch.save(saved(), run / "encoder.pt")
    out = CliRunner().invoke(app, ["export", "--run", str(run), "--models", str(tmp_path / "models")])
    text = " ".join(out.output.split())
    assert out.exit_code == 2, out.output
    assert "Traceback" not in text and "is not a Shortlist training run's encoder" in text and said in text
    assert "shortlist models import encoder.onnx --models REGISTRY" in text and "dynamic_axes=" in text
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").glob("v*"))

    onnx_file = tmp_path / "model.onnx"  # an ONNX file given as the run
    onnx_file.write_bytes(b"onnx")
    out = CliRunner().invoke(app, ["export", "--run", str(onnx_file), "--models", str(tmp_path / "models")])
    assert out.exit_code == 2 and "is a file, not a training run folder" in " ".join(out.output.split())
    assert "shortlist models import" in " ".join(out.output.split())


def test_export_help_says_the_agent_serves_encoder_onnx_only() -> None:
    from typer.testing import CliRunner

    from shortlist.cli import app

    out = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "200"})
    text = " ".join(out.output.replace("│", " ").split())
    assert out.exit_code == 0 and "The agent serves encoder.onnx only" in text
    assert "outside the agent" in text and "shortlist models import" in text
