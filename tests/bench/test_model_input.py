"""The benchmark feeds a model version what the agent would: the manifest's whole preprocess (a crop model's
images cropped, its interpolation), not only its size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import agent.embedder
from agent.testing import linear_encoder, publish_model
from bench.cifar10 import evaluation
from bench.cifar10.data import images_at_model_size
from shortlist.datasets import ImageArray
from shortlist.images import preprocess_array
from shortlist.manifest import Preprocess

CROP = Preprocess(size=(8, 8), mean=(0.2, 0.3, 0.4), std=(0.3, 0.3, 0.3), interpolation="bicubic", resize="crop",
                  crop_fraction=0.5)


def _arrays(n: int, side: int, seed: int) -> ImageArray:
    rng = np.random.default_rng(seed)
    return ImageArray(rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8), np.arange(n) % 2, ["a", "b"],
                      [f"{seed}-{i}" for i in range(n)])


@pytest.mark.parametrize("side", [8, 20])  # already the model's size (a crop model still crops it), or larger
def test_the_bench_brings_images_to_the_model_input_as_the_agent_does(tmp_path: Path, side: int,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    version = publish_model(tmp_path / "models", linear_encoder(CROP.size, 16, ["a", "b"]), CROP, ["a", "b"])
    train, test = _arrays(6, side, 0), _arrays(4, side, 1)
    pool, tests = images_at_model_size(tmp_path / "no-files", tmp_path / "models" / version, train, test,
                                       np.array([1, 3, 5]), np.arange(4))
    assert np.array_equal(pool, np.stack([preprocess_array(im, CROP) for im in train.images[[1, 3, 5]]]))
    assert np.array_equal(tests, np.stack([preprocess_array(im, CROP) for im in test.images]))

    seen: list[np.ndarray] = []

    class Spy:  # the agent's Embedder, recording what it is given
        def __init__(self, *args: object, **kw: object) -> None:
            pass

        def embed(self, images: np.ndarray) -> object:
            seen.append(images)
            return type("E", (), {"logits": np.zeros((len(images), 2), np.float32)})()

    monkeypatch.setattr(agent.embedder, "Embedder", Spy)
    evaluation.classifier_accuracy(tmp_path / "models" / version, test.images, test.labels, ["a", "b"])
    assert np.array_equal(seen[0], tests)
