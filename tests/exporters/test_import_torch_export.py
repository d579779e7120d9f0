"""``shortlist models import`` of a model exported as docs/training.md's "Bring your own encoder" says, with
the torch in this venv: its torch.onnx.export writes the weights to a separate .onnx.data by default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from agent.embedder import Embedder
from shortlist.cli import app
from shortlist.manifest import ONNX_NAME, check_version


def test_torch_onnx_exports_default_external_data_is_imported_as_one_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
    src = tmp_path / "export"
    src.mkdir()
    torch.onnx.export(model.eval(), (torch.randn(2, 3, 16, 16),), str(src / "enc.onnx"), input_names=["image"],
                      output_names=["embedding"], dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}})
    if not (src / "enc.onnx.data").exists():  # an exporter that keeps small weights inline tests nothing here
        pytest.skip("this torch.onnx.export wrote no external data")
    r = CliRunner().invoke(app, ["models", "import", str(src / "enc.onnx"), "--models", str(tmp_path / "reg"),
                                 "--preprocess", "cifar10", "--size", "16", "16", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["embedding_dim"] == 5
    version = tmp_path / "reg" / "v0001"
    assert list(check_version(version).files) == [ONNX_NAME]
    for f in src.iterdir():  # the version needs nothing of the export's folder
        f.unlink()
    images = np.random.default_rng(1).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    vecs = Embedder(version, check_version(version), use_cuda=False).embed(images).vecs
    pre = check_version(version).preprocess
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - torch.tensor(pre.mean).view(1, 3, 1, 1)) \
        / torch.tensor(pre.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model(x).flatten(1), dim=1).numpy()
    np.testing.assert_allclose(vecs, expected, atol=1e-5)
