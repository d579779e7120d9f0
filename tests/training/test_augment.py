"""FixMatch's batched RandAugment and Cutout (training.augment) against torchvision and PIL, image by image."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageEnhance, ImageOps

from tests.training.conftest import PRE
from training.augment import (
    GEOMETRIC,
    RA_OPS,
    RA_RANGES,
    apply_op,
    cutout,
    rand_augment,
    rand_augment_params,
    strong_augment,
)
from training.pretrain import preprocess_by_name

K, H, W = 5, 20, 24  # not square, so that a swapped height / width shows; > 255 pixels, else Equalize is a no-op


def _images(seed: int = 0, n: int = K) -> tuple[torch.Tensor, torch.Tensor]:
    """n random uint8 images (values 40..199, so that AutoContrast has work) and the same as float32 in [0, 1]."""
    u = torch.randint(40, 200, (n, 3, H, W), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return u, u.float() / 255.0


def _magnitudes(name: str, seed: int = 1) -> torch.Tensor:
    lo, hi = RA_RANGES[name]
    return torch.rand(K, generator=torch.Generator().manual_seed(seed)) * (hi - lo) + lo


def _torchvision(name: str, x: torch.Tensor, u: torch.Tensor, v: float) -> torch.Tensor:
    """torchvision.transforms.v2.functional's op on one 3xHxW image with one magnitude -> float in [0, 1]."""
    no_shear, no_move = [0.0, 0.0], [0.0, 0.0]
    ops: dict[str, Callable[[], torch.Tensor]] = {
        "AutoContrast": lambda: TF.autocontrast(x),
        "Brightness": lambda: TF.adjust_brightness(x, v),
        "Color": lambda: TF.adjust_saturation(x, v),
        "Contrast": lambda: TF.adjust_contrast(x, v),
        "Equalize": lambda: TF.equalize(u).float() / 255.0,
        "Identity": lambda: x,
        "Posterize": lambda: TF.posterize(u, int(v)).float() / 255.0,
        "Rotate": lambda: TF.rotate(x, v),
        "Sharpness": lambda: TF.adjust_sharpness(x, v),
        # torchvision's RandAugment convention for PIL's shear: shear angle atan(s) about the corner (0, 0)
        "ShearX": lambda: TF.affine(x, angle=0.0, translate=no_move, scale=1.0,
                                    shear=[math.degrees(math.atan(v)), 0.0], center=[0.0, 0.0]),
        "ShearY": lambda: TF.affine(x, angle=0.0, translate=no_move, scale=1.0,
                                    shear=[0.0, math.degrees(math.atan(v))], center=[0.0, 0.0]),
        "Solarize": lambda: TF.solarize(x, v),
        "TranslateX": lambda: TF.affine(x, angle=0.0, translate=[v * W, 0.0], scale=1.0, shear=no_shear),
        "TranslateY": lambda: TF.affine(x, angle=0.0, translate=[0.0, v * H], scale=1.0, shear=no_shear),
    }
    return ops[name]()


@pytest.mark.parametrize("name", RA_OPS)
def test_op_matches_torchvision_per_image(name: str) -> None:
    u, x = _images()
    v = _magnitudes(name)
    got = apply_op(x, name, v)
    want = torch.stack([_torchvision(name, x[i], u[i], float(v[i])) for i in range(K)])
    assert got.shape == x.shape and got.dtype == torch.float32
    # float rounding of the blend only; geometric ops (nearest, zero fill) and the uint8 ops are exact
    assert torch.allclose(got, want, rtol=0, atol=1e-6), float((got - want).abs().max())
    assert torch.equal(got, x) == (name == "Identity")


def _pil(name: str, img: Image.Image, v: float) -> Image.Image:
    """The PIL calls of the reference implementations (USB / kekmodel), magnitudes in our units."""
    w, h = img.size
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return getattr(ImageEnhance, name)(img).enhance(v)  # type: ignore[no-any-return]
    calls: dict[str, Callable[[], Image.Image]] = {
        "AutoContrast": lambda: ImageOps.autocontrast(img),
        "Equalize": lambda: ImageOps.equalize(img),
        "Identity": lambda: img,
        "Posterize": lambda: ImageOps.posterize(img, int(v)),
        "Rotate": lambda: img.rotate(v),
        "ShearX": lambda: img.transform(img.size, Image.Transform.AFFINE, (1, v, 0, 0, 1, 0)),
        "ShearY": lambda: img.transform(img.size, Image.Transform.AFFINE, (1, 0, 0, v, 1, 0)),
        "Solarize": lambda: ImageOps.solarize(img, math.ceil(v * 255)),  # PIL: invert values >= threshold
        # PIL's offsets move the content the other way: -v
        "TranslateX": lambda: img.transform(img.size, Image.Transform.AFFINE, (1, 0, -v * w, 0, 1, 0)),
        "TranslateY": lambda: img.transform(img.size, Image.Transform.AFFINE, (1, 0, 0, 0, 1, -v * h)),
    }
    return calls[name]()


@pytest.mark.parametrize("name", RA_OPS)
def test_op_close_to_the_references_pil(name: str) -> None:
    u, x = _images(seed=2)
    v = _magnitudes(name, seed=3)
    got = (apply_op(x, name, v) * 255).round().to(torch.int16)
    for i in range(K):
        img = Image.fromarray(u[i].permute(1, 2, 0).numpy())
        want = torch.from_numpy(np.asarray(_pil(name, img, float(v[i])), dtype=np.int16).copy()).permute(2, 0, 1)
        # PIL rounds blends and truncates AutoContrast's LUT to uint8 (1 level), and averages grayscale levels in
        # integers (Contrast)
        tol = 1 if name in ("AutoContrast", "Brightness", "Color", "Contrast", "Sharpness") else 0
        assert int((got[i] - want).abs().max()) <= tol, name


def test_rand_augment_matches_its_ops_applied_one_sample_at_a_time() -> None:
    _, x = _images(n=64)
    g = torch.Generator().manual_seed(5)
    out = rand_augment(x, g)
    ops, mags = rand_augment_params(64, torch.Generator().manual_seed(5))
    assert len(set(ops[:, 0].tolist())) >= 10  # samples get different ops...
    ranged = torch.tensor([RA_RANGES[RA_OPS[int(i)]][1] > 0 for i in ops[:, 0]])
    assert mags[ranged, 0].unique().numel() == int(ranged.sum()) > 32  # ...and their own magnitudes
    for i in range(64):
        y = x[i:i + 1]
        for k in range(2):
            y = apply_op(y, RA_OPS[int(ops[i, k])], mags[i, k:k + 1])
        assert torch.allclose(out[i:i + 1], y, rtol=0, atol=1e-6), (i, RA_OPS[int(ops[i, 0])], RA_OPS[int(ops[i, 1])])


def test_rand_augment_params_ranges() -> None:
    ops, mags = rand_augment_params(4000, torch.Generator().manual_seed(0))
    assert ops.shape == mags.shape == (4000, 2)
    assert set(ops.flatten().tolist()) == set(range(len(RA_OPS)))
    for i, name in enumerate(RA_OPS):
        lo, hi = RA_RANGES[name]
        m = mags[ops == i]
        assert float(m.min()) >= lo and float(m.max()) <= hi, name
    assert {int(b) for b in mags[ops == RA_OPS.index("Posterize")].floor()} == {4, 5, 6, 7}  # as USB: int(U[4, 8))


def test_rand_augment_deterministic_shape_range_and_fp32_under_autocast() -> None:
    _, x = _images(n=32)
    a = rand_augment(x, torch.Generator().manual_seed(1))
    b = rand_augment(x, torch.Generator().manual_seed(1))
    c = rand_augment(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = rand_augment(x, torch.Generator().manual_seed(1))
    assert d.dtype == torch.float32 and torch.equal(a, d)


def test_geometric_ops_fill_with_black() -> None:
    x = torch.ones(2, 3, H, W)
    for name in GEOMETRIC:
        y = apply_op(x, name, torch.tensor([RA_RANGES[name][1], RA_RANGES[name][0]]))
        assert set(y.unique().tolist()) == {0.0, 1.0}, name


def test_cutout_boxes() -> None:
    x = torch.rand(200, 3, 32, 32) * 0.4  # never 0.5, the fill
    y = cutout(x, torch.Generator().manual_seed(0), max_frac=0.5, fill=0.5)
    box = (y == 0.5).all(dim=1)  # NxHxW
    assert torch.equal(y[~box.unsqueeze(1).expand_as(y)], x[~box.unsqueeze(1).expand_as(x)])
    rows, cols = box.any(dim=2).sum(dim=1), box.any(dim=1).sum(dim=1)
    assert int(rows.max()) <= 16 and int(cols.max()) <= 16  # side <= 0.5 x 32
    assert int((rows > 10).sum()) > 0 and int((rows == 0).sum()) > 0  # the side is random in [0, 16]
    assert torch.equal(box.sum(dim=(1, 2)), rows * cols)  # one rectangle (a square unless clipped)
    assert torch.equal(y, cutout(x, torch.Generator().manual_seed(0), max_frac=0.5, fill=0.5))


def test_strong_augment_view() -> None:
    pre = preprocess_by_name(PRE)
    u = torch.randint(0, 256, (8, 3, *pre.size), dtype=torch.uint8)
    a = strong_augment(u, pre, torch.Generator().manual_seed(3), channels_last=True)
    b = strong_augment(u, pre, torch.Generator().manual_seed(3))
    assert a.shape == (8, 3, *pre.size) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert a.is_contiguous(memory_format=torch.channels_last) and torch.equal(a, b)
