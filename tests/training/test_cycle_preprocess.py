"""A cycle decodes and normalises the pulled samples exactly as the agent feeds the model it trains (rule 5: the
preprocessing is defined once, in the manifest / the run's encoder.pt, and read from there)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from agent import client
from shortlist.images import decode_sample, preprocess_image
from shortlist.manifest import Preprocess
from tests.training.conftest import CLASSES, PRE
from training import loop
from training.augment import plain
from training.cycle import CycleConfig, training_preprocess
from training.data import from_samples, load
from training.finetune import FinetuneConfig, finetune
from training.pretrain import load_encoder, preprocess_by_name

# nothing of it the CIFAR-10 defaults: another size, normalisation, interpolation and resize mode
ODD = Preprocess(size=(8, 12), mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7), interpolation="bicubic", resize="crop",
                 crop_fraction=0.75)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_pulled_samples_are_decoded_and_normalised_as_the_agent_feeds_the_model() -> None:
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(37, 23, 3), (20, 50, 3), (12, 8, 3)]]
    samples = [client.image_sample("a", _png(photos[0]), label="red"), client.image_sample("b", _png(photos[1])),
               client.tensor_sample("c", photos[2], label="blue")]
    data = from_samples(samples, ODD, ["blue", "red"])
    agent_hwc = np.stack([decode_sample(s, ODD) for s in samples])  # what the agent embeds, before normalising
    assert np.array_equal(agent_hwc[0], preprocess_image(_png(photos[0]), ODD))
    assert np.array_equal(data.images.permute(0, 2, 3, 1).numpy(), agent_hwc)
    fed = plain(data.images, ODD).numpy()  # the training's model input
    np.testing.assert_allclose(fed, ODD.normalize(agent_hwc), atol=1e-6)  # the agent's (Embedder) input


def test_a_cycle_fine_tunes_an_init_run_with_its_whole_preprocessing(tmp_path: Path) -> None:
    full = CycleConfig(tmp_path / "models", tmp_path / "out", mode="full", init="run", preprocess="cifar10")
    assert training_preprocess(full, ODD, served=None) == ODD  # not --preprocess's mean/std, nor only its size
    fresh = CycleConfig(tmp_path / "models", tmp_path / "out", mode="simsiam", preprocess="cifar100")
    own = training_preprocess(fresh, ODD, served=ODD)  # a new encoder: its own preprocessing, the served size
    assert own == Preprocess(size=ODD.size, mean=preprocess_by_name("cifar100").mean,
                             std=preprocess_by_name("cifar100").std)


def test_finetune_trains_and_records_the_preprocessing_it_is_given(tiny_data: Path, tmp_path: Path) -> None:
    pre = Preprocess(size=(16, 16), mean=(0.3, 0.3, 0.3), std=(0.2, 0.3, 0.4), interpolation="bicubic")
    data = load(str(tiny_data), "train", pre.size)
    cfg = FinetuneConfig(out=str(tmp_path / "ft"), mode="full", arch="resnet18_w32", preprocess=PRE, steps=1,
                         batch_size=6, threads=1, channels_last=False)
    run = finetune(cfg, data, pre=pre)
    assert json.loads((run / loop.SUMMARY).read_text())["steps"] == 1
    _, meta = load_encoder(run)
    assert Preprocess.from_dict(meta["preprocess"]) == pre and meta["classes"] == CLASSES
