"""Why `bench as3l`'s FlexMatch arms fall below the linear probe (docs/benchmarks.md): small CPU diagnostics.

    python scripts/experiments/as3l_dynamics.py prep DATA OUT.npz [SIDE]  # 2,000-image pool + 500 test, class-balanced
    python scripts/experiments/as3l_dynamics.py head ENC DATA.npz          # what a fresh linear head predicts
    python scripts/experiments/as3l_dynamics.py bn ENC DATA.npz            # BatchNorm: separate vs one forward pass
    python scripts/experiments/as3l_dynamics.py scale ENC                  # the encoder's weight / BN scale
    python scripts/experiments/as3l_dynamics.py run ENC DATA.npz NAME STEPS EVERY BS '{"lr": 0.03}'  # as3l run

ENC is a training run folder (encoder.pt); DATA.npz the output of ``prep``; the labels are 1 per class (seed 0).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from training import loop
from training.augment import WEAK, augment, strong_augment
from training.data import TensorData, from_hwc
from training.finetune import (
    FinetuneConfig,
    _logits,
    _raw_features,
    finetune,
    keep_labels_per_class,
    linear_probe,
    test_accuracy,
)
from training.pretrain import load_encoder, preprocess_by_name


def prep(source: str, out: str, side: int) -> None:
    from bench.cifar10.profiles import stratified_subset
    from shortlist.datasets import load_array

    tr = load_array(source, "train", size=(side, side))
    te = load_array(source, "test", size=(side, side), classes=tr.classes)
    pi, ti = stratified_subset(tr.labels, 2000, 0), stratified_subset(te.labels, 500, 0)
    np.savez(out, px=tr.images[pi], py=tr.labels[pi], tx=te.images[ti], ty=te.labels[ti], classes=np.array(tr.classes))


def _load(npz: str) -> tuple[TensorData, TensorData, str]:
    d = np.load(npz)
    classes = [str(c) for c in d["classes"]]
    pool = from_hwc(d["px"], d["py"], classes, [f"p{i}" for i in range(len(d["py"]))])
    test = from_hwc(d["tx"], d["ty"], classes, [f"t{i}" for i in range(len(d["ty"]))])
    return pool, test, f"cifar10@{d['px'].shape[1]}"


def head(enc_dir: str, npz: str) -> None:
    _, test, pre_name = _load(npz)
    enc, _ = load_encoder(Path(enc_dir))
    f = _raw_features(enc, test.images, preprocess_by_name(pre_name), loop.setup_runtime("cpu", False, False, 2))
    cos = float(F.cosine_similarity(f, f.mean(0, keepdim=True)).mean())
    print(f"features: min {float(f.min()):.3f}, mean {float(f.mean()):.4f}, mean cosine to the mean feature {cos:.3f}")
    for seed in range(5):
        torch.manual_seed(seed)
        with torch.no_grad():
            p = torch.nn.Linear(enc.dim, len(test.classes))(f).softmax(1)
        top = torch.bincount(p.argmax(1), minlength=len(test.classes)).max().item() / len(f)
        acc = float((p.argmax(1) == test.labels).float().mean())
        print(f"head seed {seed}: most predicted class {top:.2f} of the images, mean max prob "
              f"{float(p.max(1).values.mean()):.3f}, accuracy {acc:.3f}")


def bn(enc_dir: str, npz: str) -> None:
    pool, test, pre_name = _load(npz)
    pre, rt = preprocess_by_name(pre_name), loop.setup_runtime("cpu", False, False, 2)
    data = keep_labels_per_class(pool, 1, 0)
    enc, _ = load_encoder(Path(enc_dir))
    enc.classifier = torch.nn.Linear(enc.dim, len(pool.classes))
    torch.manual_seed(0)
    linear_probe(enc, data, pre, rt, 100, 0)
    print(f"probe head, eval mode: test accuracy {test_accuracy(enc, test, pre, rt):.3f}")
    g = torch.Generator().manual_seed(0)
    lab = data.labeled_rows
    for mode in ("separate", "concat"):
        e = copy.deepcopy(enc)
        e.train()
        accs = []
        with torch.no_grad():
            for _ in range(10):
                pick = torch.randint(0, len(pool), (56,), generator=g)
                xl = augment(pool.images[lab[torch.randint(0, len(lab), (8,), generator=g)]], pre, WEAK, g)
                xw, xs = augment(pool.images[pick], pre, WEAK, g), strong_augment(pool.images[pick], pre, g)
                if mode == "separate":
                    _logits(e, xl)
                    pw = _logits(e, xw)
                    _logits(e, xs)
                else:
                    pw = _logits(e, torch.cat([xl, xw, xs]))[8:64]
                accs.append(float((pw.argmax(1) == pool.labels[pick]).float().mean()))
        print(f"{mode}: weak-view pseudo-label accuracy in train mode {np.mean(accs):.3f}; eval-mode test accuracy "
              f"after these 10 forwards (running statistics only) {test_accuracy(e, test, pre, rt):.3f}")


def scale(enc_dir: str) -> None:
    enc, _ = load_encoder(Path(enc_dir))
    for name, m in [(n, m) for n, m in enc.named_modules() if isinstance(m, torch.nn.BatchNorm2d)][-3:]:
        print(f"{name}: |gamma| mean {float(m.weight.detach().abs().mean()):.4f}, beta mean "
              f"{float(m.bias.detach().mean()):.4f}")
    for name, p in [(n, p) for n, p in enc.named_parameters() if p.dim() == 4][-2:]:
        fan_in = p.shape[1] * p.shape[2] * p.shape[3]
        print(f"{name} {tuple(p.shape)}: rms {float(p.detach().pow(2).mean().sqrt()):.4f} (Kaiming init: "
              f"{(2 / fan_in) ** 0.5:.4f})")


def run(enc_dir: str, npz: str, name: str, steps: int, every: int, bs: int, extra: dict[str, object]) -> None:
    pool, test, pre_name = _load(npz)
    data = keep_labels_per_class(pool, 1, 0)
    cfg = FinetuneConfig(out=f"/tmp/as3l-dynamics/{name}", mode="as3l", init=enc_dir, preprocess=pre_name,
                         steps=steps, batch_size=bs, mu=7, eval_every=every, progress=False, device="cpu", threads=2,
                         **extra)  # type: ignore[arg-type]
    out = finetune(cfg, data, console=Console(quiet=True), eval_data=test)
    summary = json.loads((out / loop.SUMMARY).read_text())
    print(json.dumps({"name": name, "extra": extra, "eval": summary["eval"]}))


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[0] == "prep":
        prep(a[1], a[2], int(a[3]) if len(a) > 3 else 32)
    elif a[0] == "head":
        head(a[1], a[2])
    elif a[0] == "bn":
        bn(a[1], a[2])
    elif a[0] == "scale":
        scale(a[1])
    else:
        run(a[1], a[2], a[3], int(a[4]), int(a[5]), int(a[6]), json.loads(a[7]) if len(a) > 7 else {})
