"""AS3L / FlexMatch fine-tuning (training.finetune, mode as3l): one forward pass over labelled + weak + strong,
the probe-initialised head (LP-FT) as the starting point, the weight EMA that is evaluated and exported, and a
run from good features on a separable problem that keeps its starting accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.training.conftest import CLASSES, PRE, make_images
from training import loop
from training.backbones import build_backbone
from training.data import TensorData, from_hwc
from training.finetune import FinetuneConfig, ema_avg_fn, finetune, keep_labels_per_class
from training.methods import Encoder
from training.pretrain import load_encoder, preprocess_by_name, save_encoder


def _split(n: int, seed: int) -> TensorData:
    imgs, labels = make_images(n, seed)
    return from_hwc(imgs, labels, CLASSES, [f"s{seed}-{i}" for i in range(n)])


@pytest.fixture(scope="module")
def init_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A "pretrained" encoder folder: resnet18_w32 at its seeded random init (its features separate the tiny
    colour classes, as a good SSL encoder's separate CIFAR's)."""
    run = tmp_path_factory.mktemp("init")
    torch.manual_seed(0)
    save_encoder(run, Encoder(build_backbone("resnet18_w32")), arch="resnet18_w32", method="simsiam",
                 pre=preprocess_by_name(PRE), classes=None, config={}, dataset="tiny")
    return run


def _cfg(out: Path, init: Path, **kw: object) -> FinetuneConfig:
    base: dict[str, object] = dict(out=str(out), mode="as3l", init=str(init), preprocess=PRE, batch_size=6, mu=3,
                                   threads=1, channels_last=False, linear_epochs=50, progress=False)
    base.update(kw)
    return FinetuneConfig(**base)  # type: ignore[arg-type]


def test_one_forward_pass_over_labelled_weak_and_strong(init_run: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """FlexMatch's reference code (TorchSSL; USB with use_cat) forwards labelled + weak + strong as one batch, so
    BatchNorm normalises the labelled rows with the statistics of the whole batch and its running statistics
    (used in eval mode) are those of that mix, not of the last (strongly augmented) pass."""
    data = keep_labels_per_class(_split(60, 0), 2, 0)
    sizes: list[int] = []
    enc_forward = Encoder.forward

    def counting(self: Encoder, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            sizes.append(int(x.shape[0]))
        return enc_forward(self, x)

    monkeypatch.setattr(Encoder, "forward", counting)
    finetune(_cfg(tmp_path / "r", init_run, steps=2), data)
    assert sizes == [6 + 2 * 18, 6 + 2 * 18]  # per step: 6 labelled + 18 weak + 18 strong, one call


def test_probe_head_starts_training_at_the_probe(init_run: Path, tmp_path: Path) -> None:
    """head_init="probe" (LP-FT): the step-0 evaluation is the linear probe's test accuracy on the same labels,
    where a fresh head starts near chance (a random head on non-negative pooled features predicts mostly one
    class, and FlexMatch's warmed-up thresholds, 0 at the start, train on all of those pseudo-labels)."""
    data = keep_labels_per_class(_split(90, 0), 1, 0)  # 3 labels
    test = _split(60, 1)
    probe = finetune(_cfg(tmp_path / "l", init_run, mode="linear"), data, eval_data=test)
    probe_acc = json.loads((probe / loop.SUMMARY).read_text())["test_accuracy"]
    run = finetune(_cfg(tmp_path / "p", init_run, steps=2, eval_every=2, head_init="probe"), data, eval_data=test)
    summary = json.loads((run / loop.SUMMARY).read_text())
    assert summary["eval"][0] == [0, pytest.approx(probe_acc)] and probe_acc >= 0.9
    assert summary["probe_train_acc"] == 1.0


def test_flexmatch_from_good_features_keeps_its_start(init_run: Path, tmp_path: Path) -> None:
    """From features that separate the classes and the probe's head, FlexMatch's first iterations (warmed-up
    thresholds are 0: every pseudo-label counts) at an lr suited to the backbone do not fall below the start
    (docs/benchmarks.md: at lr 0.03 a small-weight SSL encoder is pulled apart within ten iterations)."""
    data = keep_labels_per_class(_split(90, 0), 1, 0)  # 3 labels
    test = _split(60, 1)
    run = finetune(_cfg(tmp_path / "k", init_run, steps=12, eval_every=4, head_init="probe", ema=0.999, lr=0.003),
                   data, eval_data=test)
    evals = json.loads((run / loop.SUMMARY).read_text())["eval"]
    assert [s for s, _ in evals] == [0, 4, 8, 12]
    start = evals[0][1]
    assert start >= 0.9 and min(a for _, a in evals) >= start - 0.05, evals


def test_ema_is_what_is_evaluated_and_exported(init_run: Path, tmp_path: Path) -> None:
    data = keep_labels_per_class(_split(60, 0), 2, 0)
    test = _split(30, 1)
    run = finetune(_cfg(tmp_path / "e", init_run, steps=4, eval_every=2, ema=0.999), data, eval_data=test)
    ckpt = torch.load(run / loop.CHECKPOINT, map_location="cpu", weights_only=False)
    exported, _ = load_encoder(run)
    ema = {k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    live = ckpt["model"]
    w = "classifier.weight"
    assert torch.equal(exported.state_dict()[w], ema[w])
    assert not torch.allclose(live[w], ema[w])  # the EMA lags the live weights
    for k, v in exported.state_dict().items():  # BatchNorm statistics: the live model's (USB's EMA too)
        if "running_mean" in k:
            assert torch.equal(v, live[k])
    # what the summary reports is the exported network's accuracy
    from training.finetune import test_accuracy

    rt = loop.setup_runtime("cpu", True, False, 1)
    summary = json.loads((run / loop.SUMMARY).read_text())
    assert summary["test_accuracy"] == pytest.approx(test_accuracy(exported, test, preprocess_by_name(PRE), rt))


def test_ema_momentum_warms_up_to_the_reference() -> None:
    avg = ema_avg_fn(0.999)
    ema_p, p = torch.zeros(3), torch.ones(3)
    # d_n = min(0.999, (1 + n) / (10 + n)): 2/11 after the first average, FlexMatch's 0.999 from n ~ 9,000 on
    assert torch.allclose(avg(ema_p, p, torch.tensor(1)), torch.full((3,), 1 - 2 / 11))
    assert torch.allclose(avg(ema_p, p, torch.tensor(100_000)), torch.full((3,), 0.001))


def test_bad_head_init_and_ema_are_refused(tmp_path: Path) -> None:
    data = keep_labels_per_class(_split(30, 0), 1, 0)
    with pytest.raises(ValueError, match="head_init"):
        finetune(FinetuneConfig(out=str(tmp_path / "a"), mode="as3l", head_init="zeros", steps=1), data)
    with pytest.raises(ValueError, match="ema"):
        finetune(FinetuneConfig(out=str(tmp_path / "b"), mode="as3l", ema=1.0, steps=1), data)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
