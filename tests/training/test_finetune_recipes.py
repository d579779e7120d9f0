"""The fine-tuning pieces the recipes added: the SVM head, MoBYv2AL's unlabelled subset (lowest
contrastive loss), the rotation term that keeps a RotNet head matched, and warm starts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from tests.training.conftest import PRE, SIZE
from training import loop
from training.augment import plain
from training.data import load
from training.finetune import SVM_C_GRID, FinetuneConfig, finetune, svm_c_by_cv
from training.methods import Encoder, MoBY
from training.pretrain import PretrainConfig, load_encoder, preprocess_by_name, pretrain


def _cfg(out: Path, mode: str, **kw: object) -> FinetuneConfig:
    base: dict[str, object] = dict(out=str(out), mode=mode, arch="resnet18_w32", preprocess=PRE, labels_per_class=2,
                                   steps=2, batch_size=6, mu=2, threads=1, channels_last=False, progress=False)
    base.update(kw)
    return FinetuneConfig(**base)  # type: ignore[arg-type]


def test_svm_head_exports_the_svm_decision_values(tiny_data: Path, tmp_path: Path) -> None:
    pre = preprocess_by_name(PRE)
    data = load(str(tiny_data), "train", pre.size)
    run = finetune(_cfg(tmp_path / "svm", "svm", labels_per_class=4, svm_c=1.0), data)
    summary = json.loads((run / loop.SUMMARY).read_text())
    assert summary["mode"] == "svm" and summary["train_acc"] == 1.0  # colour classes: separable
    enc, _ = load_encoder(run)
    assert enc.classifier is not None
    with torch.no_grad():
        feats = enc(plain(data.images, pre)).double().numpy()
        logits = enc.classifier(torch.from_numpy(feats).float()).numpy()
    lab = data.labels.numpy()
    # The same SVM fitted by hand on the labelled rows (the run kept 4 per class, seed 0) gives the logits.
    from training.finetune import keep_labels_per_class

    rows = keep_labels_per_class(data, 4, 0).labeled_rows.numpy()
    scaler = StandardScaler().fit(feats[rows])
    svm = LinearSVC(C=1.0, random_state=0, max_iter=5000).fit(scaler.transform(feats[rows]), lab[rows])
    expected = svm.decision_function(scaler.transform(feats))
    assert np.allclose(logits, expected, atol=1e-3 * np.abs(expected).max())
    assert (logits.argmax(1) == lab).mean() > 0.9


def test_svm_c_by_cross_validation_beats_a_hard_margin_on_few_noisy_rows() -> None:
    """50 labelled rows of 512 standardised dims, 8 of them informative (frozen features at 1% labels):
    the C picked by cross-validation generalises better than C = 1, the old fixed default."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 8)) * 2.0

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 10
        x = rng.normal(size=(n, 512))
        x[:, :8] += centres[y]
        return x, y

    x, y = draw(50)
    test_x, test_y = draw(2000)
    c = svm_c_by_cv(x, y, seed=0)
    assert c in SVM_C_GRID and c < 1.0

    def accuracy(c: float) -> float:
        return float((LinearSVC(C=c, random_state=0, max_iter=5000).fit(x, y).predict(test_x) == test_y).mean())

    assert accuracy(c) > accuracy(1.0) + 0.03, (c, accuracy(c), accuracy(1.0))
    # A class with one row leaves no fold to validate on: the middle of the grid.
    assert svm_c_by_cv(x[:11], y[:11], seed=0) == SVM_C_GRID[len(SVM_C_GRID) // 2]


def test_moby_al_trains_on_a_low_contrastive_subset(tiny_data: Path, tmp_path: Path) -> None:
    data = load(str(tiny_data), "train", (SIZE, SIZE))
    cfg = _cfg(tmp_path / "m", "moby_al", steps=3, mu=1, unlabeled_ratio=1.0, unlabeled_pick="low_contrastive",
               contrast_labeled=True)
    run = finetune(cfg, data)
    assert json.loads((run / loop.SUMMARY).read_text())["steps"] == 3
    state = torch.load(run / loop.CHECKPOINT, weights_only=False)
    upool = state["state"]["extra"]["upool"]  # the subset: as large as the labelled set (6 of 42 unlabelled rows)
    assert len(upool) == 6 and len(set(upool)) == 6 and all(0 <= i < 42 for i in upool)
    assert state["state"]["extra"]["ranked"] == 2  # re-ranked at 1/3 and 2/3 of the run
    with pytest.raises(ValueError, match="unlabeled_pick"):
        finetune(_cfg(tmp_path / "bad", "moby_al", unlabeled_pick="highest"), data)


def test_per_sample_contrastive_loss_matches_the_batch_loss() -> None:
    from training.backbones import build_backbone

    torch.manual_seed(0)
    moby = MoBY(Encoder(build_backbone("resnet18_w32")), queue=64).eval()
    x1, x2 = torch.randn(4, 3, SIZE, SIZE), torch.randn(4, 3, SIZE, SIZE)
    per = moby.per_sample_loss(x1, x2)
    assert per.shape == (4,) and torch.isfinite(per).all()
    # forward's loss is the batch mean of the same two InfoNCE terms (before its momentum update moves the target:
    # the momentum is 0.99 and the target starts equal, so it barely moves)
    assert torch.allclose(per.mean(), moby(x1, x2).detach(), rtol=1e-2)


def test_rotation_weight_needs_a_rotation_head_and_warm_start_keeps_the_head(tiny_data: Path, tmp_path: Path) -> None:
    data = load(str(tiny_data), "train", (SIZE, SIZE))
    with pytest.raises(ValueError, match="rotation head"):
        finetune(_cfg(tmp_path / "no", "full", rotation_weight=1.0), data)
    rot = tmp_path / "rotnet"
    pretrain(PretrainConfig(data=str(tiny_data), out=str(rot), method="rotnet", arch="resnet18_w32", epochs=1,
                            batch_size=16, preprocess=PRE, knn_every=0, final_knn=False, progress=False, threads=1,
                            channels_last=False))
    first = finetune(_cfg(tmp_path / "r1", "full", init=str(rot), rotation_weight=1.0), data)
    enc1, meta = load_encoder(first)
    assert meta["rotation_head"] and enc1.rotation is not None and enc1.classifier is not None
    for keep in (True, False):  # lr 0: the head after one step is the one it started from
        again = finetune(_cfg(tmp_path / f"r2{keep}", "full", init=str(first), keep_head=keep, steps=1, lr=0.0), data)
        enc2, _ = load_encoder(again)
        assert enc2.classifier is not None
        assert torch.equal(enc1.classifier.weight, enc2.classifier.weight) == keep
