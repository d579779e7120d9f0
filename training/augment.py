"""Batched image augmentation on tensors, on the training device, with per-sample random parameters.

The images are decoded once into a uint8 tensor (Nx3xHxW); every step takes a batch of them and builds
the views here with a handful of whole-batch tensor ops (one ``grid_sample`` for crop + flip + resize,
a few element-wise ops for colour), so a 2-core CPU run spends its time in the network, not in
per-image PIL calls. The parameters follow torchvision's ``RandomResizedCrop``, ``RandomHorizontalFlip``,
``ColorJitter`` and ``RandomGrayscale`` (the SimSiam / SimCLR CIFAR recipe, Chen et al. 2020 appendix A),
with two documented simplifications: the crop's aspect ratio is clamped instead of resampled when the
box would not fit, and the four colour-jitter operations are applied in a fixed order
(brightness, contrast, saturation, hue) rather than a random permutation.

FixMatch's strong augmentation (``strong_augment``: the weak crop + flip, then ``rand_augment``, then
``cutout``) is built the same way: per-sample operations and magnitudes, each operation applied to the
samples that drew it as one batched call; see ``rand_augment`` for the paper, the ranges and the references.

Every random draw uses an explicit ``torch.Generator`` so that a resumed run replays exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from shortlist.manifest import Preprocess

# ITU-R BT.601 luma weights, as torchvision's rgb_to_grayscale uses.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the view augmentations (defaults: SimSiam's CIFAR recipe)."""

    crop_scale: tuple[float, float] = (0.2, 1.0)  # area fraction of the random resized crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2


WEAK = AugmentConfig(crop_scale=(0.8, 1.0), jitter_p=0.0, grayscale_p=0.0)  # FixMatch "weak": crop+flip
NONE = AugmentConfig(crop_scale=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def _bernoulli(n: int, p: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) < p


def crop_flip_resize(x: torch.Tensor, size: tuple[int, int], cfg: AugmentConfig,
                     g: torch.Generator) -> torch.Tensor:
    """Random resized crop + horizontal flip, resampled bilinearly to ``size``. Nx3xHxW -> Nx3xh'xw'.

    One affine sampling grid per sample: the crop box (area fraction ~ U(crop_scale), log aspect
    ratio ~ U(log crop_ratio), position uniform where it fits) mapped to [-1, 1] coordinates, its x axis
    negated for flipped samples.
    """
    n, dev = x.shape[0], x.device
    area = _uniform(n, *cfg.crop_scale, g, dev)
    log_r = _uniform(n, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), g, dev)
    ratio = torch.exp(log_r)
    # Crop width / height as fractions of the image side (a box must fit: clamp to 1).
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, generator=g, device=dev) * (1 - w) + w / 2) * 2 - 1  # centre in [-1, 1]
    cy = (torch.rand(n, generator=g, device=dev) * (1 - h) + h / 2) * 2 - 1
    flip = torch.where(_bernoulli(n, cfg.flip_p, g, dev), -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [n, x.shape[1], size[0], size[1]], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Nx3xHxW -> Nx1xHxW luma."""
    return _LUMA[0] * x[:, 0:1] + _LUMA[1] * x[:, 1:2] + _LUMA[2] * x[:, 2:3]


def _hue_rotate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``shift`` (N, fraction of a turn) as a rotation of the chroma plane in YIQ space.

    A linear approximation of torchvision's HSV hue shift (exact on the grey axis, close elsewhere),
    chosen because it is one batched 3x3 matrix per sample instead of an HSV round trip.
    """
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                       device=x.device, dtype=x.dtype)
    rgb = torch.linalg.inv(yiq)
    c, s = torch.cos(2 * math.pi * shift), torch.sin(2 * math.pi * shift)
    rot = torch.zeros(x.shape[0], 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
    m = rgb @ rot @ yiq  # Nx3x3
    return torch.einsum("nij,njhw->nihw", m, x)


def color(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Colour jitter (with probability jitter_p) then grayscale (grayscale_p). Nx3xHxW in [0,1] -> same."""
    n, dev = x.shape[0], x.device
    if cfg.jitter_p > 0:
        on = _bernoulli(n, cfg.jitter_p, g, dev).to(x.dtype).view(n, 1, 1, 1)
        b = _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, g, dev).view(n, 1, 1, 1)
        c = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, g, dev).view(n, 1, 1, 1)
        s = _uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, g, dev).view(n, 1, 1, 1)
        hshift = _uniform(n, -cfg.hue, cfg.hue, g, dev)
        # "off" samples get factor 1 / shift 0, i.e. unchanged, keeping the batch as one tensor.
        b, c, s = 1 + on * (b - 1), 1 + on * (c - 1), 1 + on * (s - 1)
        hshift = hshift * on.view(n)
        x = (x * b).clamp(0, 1)
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * c + mean).clamp(0, 1)
        gray = _gray(x)
        x = ((x - gray) * s + gray).clamp(0, 1)
        if cfg.hue > 0:
            x = _hue_rotate(x, hshift).clamp(0, 1)
    if cfg.grayscale_p > 0:
        to_gray = _bernoulli(n, cfg.grayscale_p, g, dev).view(n, 1, 1, 1)
        x = torch.where(to_gray, _gray(x).expand_as(x), x)
    return x


def normalize(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """Nx3xHxW in [0,1] -> (x - mean) / std, per channel (the model's input, as Preprocess defines it)."""
    mean = torch.tensor(pre.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def to_unit(images_u8: torch.Tensor) -> torch.Tensor:
    """Nx3xHxW uint8 -> float32 in [0, 1]."""
    return images_u8.float().div_(255.0)


def fp32(device: torch.device) -> torch.autocast:
    """A context with autocast off: augmentation stays in float32 even when called inside the training step's
    autocast region, where ``affine_grid``'s matmul and colour ``einsum`` would otherwise run in bf16 (a sampling
    grid off by ~0.25 pixel at 32 px)."""
    return torch.autocast(device.type, enabled=False)


def augment(images_u8: torch.Tensor, pre: Preprocess, cfg: AugmentConfig, g: torch.Generator,
            channels_last: bool = False) -> torch.Tensor:
    """One random view of each image: Nx3xHxW uint8 -> Nx3xhxw float32, normalised, h x w = pre.size."""
    with fp32(images_u8.device):
        x = to_unit(images_u8)
        if cfg != NONE or tuple(x.shape[-2:]) != tuple(pre.size):
            x = crop_flip_resize(x, pre.size, cfg, g)
        x = color(x, cfg, g)
        x = normalize(x, pre)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def plain(images_u8: torch.Tensor, pre: Preprocess, channels_last: bool = False) -> torch.Tensor:
    """No augmentation (evaluation): Nx3xHxW uint8 (already at pre.size) -> normalised float32."""
    if tuple(images_u8.shape[-2:]) != tuple(pre.size):
        raise ValueError(f"images are {tuple(images_u8.shape[-2:])}, the model expects {pre.size}; "
                         "decode them at the preprocess size")
    x = normalize(to_unit(images_u8), pre)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# ------------------------------------------------------------------- FixMatch's RandAugment and Cutout

# FixMatch's RandAugment pool and magnitude ranges (see rand_augment). Units: enhancement factor (1 = unchanged)
# for Brightness/Color/Contrast/Sharpness, bits kept for Posterize (drawn as int(U[4, 8)) = 4..7), degrees for
# Rotate, shear factor for ShearX/Y, threshold in [0, 1] for Solarize, fraction of the image side for
# TranslateX/Y. AutoContrast, Equalize and Identity take no magnitude.
RA_OPS: tuple[str, ...] = ("AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize",
                           "Rotate", "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY")
RA_RANGES: dict[str, tuple[float, float]] = {
    "AutoContrast": (0.0, 0.0), "Brightness": (0.05, 0.95), "Color": (0.05, 0.95), "Contrast": (0.05, 0.95),
    "Equalize": (0.0, 0.0), "Identity": (0.0, 0.0), "Posterize": (4.0, 8.0), "Rotate": (-30.0, 30.0),
    "Sharpness": (0.05, 0.95), "ShearX": (-0.3, 0.3), "ShearY": (-0.3, 0.3), "Solarize": (0.0, 1.0),
    "TranslateX": (-0.3, 0.3), "TranslateY": (-0.3, 0.3),
}
GEOMETRIC: tuple[str, ...] = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
_ID = {name: i for i, name in enumerate(RA_OPS)}


def _to_u8(x: torch.Tensor) -> torch.Tensor:
    """Nx3xHxW float in [0,1] -> uint8 (rounded: exact for images that came from uint8 / 255)."""
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def _per_sample(v: torch.Tensor) -> torch.Tensor:
    """K magnitudes -> Kx1x1x1 float32, to broadcast over Kx3xHxW."""
    return v.to(torch.float32).view(-1, 1, 1, 1)


def _blend(x: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance / torchvision's blend with a per-sample factor: clamp(f x + (1 - f) degenerate, 0, 1).

    torchvision's adjust_* ops at factor f are exactly this blend with the op at factor 0 (its "degenerate"
    image), which is what makes them batchable: the degenerate is parameter-free."""
    f = _per_sample(factor)
    return (x * f).add_(degenerate * (1.0 - f)).clamp_(0.0, 1.0)


def _affine_theta(op: torch.Tensor, v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-sample sampling matrices (output -> input) for the geometric ops, normalised for ``F.affine_grid``.

    op: K op indices into RA_OPS (each a GEOMETRIC one); v: K magnitudes. Returns Kx2x3 float32.
    In pixel coordinates centred on the image (torchvision's convention), the inverse maps are:
    Rotate by a degrees counter-clockwise about the centre (torchvision's ``rotate``); ShearX s: x_in = x + s (y + h/2),
    i.e. PIL's ``transform(AFFINE, (1, s, 0, 0, 1, 0))``, a shear about the top edge as the references do (and
    torchvision's RandAugment, via ``affine(shear=atan(s), center=[0, 0])``); ShearY likewise about the left edge;
    TranslateX t: content moves right by t w pixels (TranslateY: down by t h). Computed in float64 where the device
    has it, then rounded, as torchvision computes its matrix in Python floats.
    """
    dt = torch.float32 if v.device.type == "mps" else torch.float64
    v = v.to(dt)
    zero = torch.zeros_like(v)

    def on(name: str) -> torch.Tensor:
        return torch.where(op == _ID[name], v, zero)

    rot = torch.deg2rad(on("Rotate"))
    cos, sin = torch.cos(rot), torch.sin(rot)
    shx, shy, tx, ty = on("ShearX"), on("ShearY"), on("TranslateX"), on("TranslateY")
    m = torch.stack([
        torch.stack([cos, -sin + shx, shx * (h / 2) - tx * w], dim=1),
        torch.stack([sin + shy, cos, shy * (w / 2) - ty * h], dim=1),
    ], dim=1)  # Kx2x3, pixel units
    # To F.affine_grid's [-1, 1] coordinates (align_corners=False): theta = S^-1 M S with S = diag(w/2, h/2, 1).
    scale = torch.tensor([[1.0, h / w, 2.0 / w], [w / h, 1.0, 2.0 / h]], dtype=dt, device=v.device)
    return (m * scale).to(torch.float32)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Kx3xHxW resampled through per-sample Kx2x3 ``theta``: nearest neighbour, zero (black) outside the image,
    as the references (PIL's rotate / transform defaults) and torchvision's RandAugment do."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top ``bits`` (K ints, 0..8) bits of each uint8-quantised channel value, per sample."""
    b = bits.to(torch.int64).clamp(0, 8).view(-1, 1, 1, 1)
    mask = ((255 << (8 - b)) & 255).to(torch.uint8)
    return (_to_u8(x) & mask).to(torch.float32).div_(255.0)


def _colour_op(name: str, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if name == "Identity":
        return x
    if name == "AutoContrast":  # per image, per channel min/max stretch: torchvision's op is batched
        return TF.autocontrast(x)
    if name == "Equalize":  # per image, per channel histogram equalisation (PIL's LUT), batched on uint8
        return TF.equalize(_to_u8(x)).to(torch.float32).div_(255.0)
    if name == "Posterize":
        return _posterize(x, v.floor())
    if name == "Solarize":  # invert values >= threshold (torchvision / PIL)
        return torch.where(x >= _per_sample(v), 1.0 - x, x)
    if name == "Brightness":  # degenerate = black
        return (x * _per_sample(v)).clamp_(0.0, 1.0)
    if name == "Color":  # degenerate = the grayscale image
        return _blend(x, TF.adjust_saturation(x, 0.0), v)
    if name == "Contrast":  # degenerate = the mean grayscale level of each image
        return _blend(x, TF.adjust_contrast(x, 0.0), v)
    if name == "Sharpness":  # degenerate = smoothed by torchvision's 3x3 kernel (1 1 1 / 1 5 1 / 1 1 1) / 13,
        return _blend(x, TF.adjust_sharpness(x, 0.0), v)  # border pixels unchanged
    raise ValueError(f"unknown RandAugment op {name!r}; valid: {', '.join(RA_OPS)}")


def apply_op(x: torch.Tensor, name: str, v: torch.Tensor) -> torch.Tensor:
    """One RandAugment op applied to every sample with its own magnitude. x: Kx3xHxW float in [0,1];
    v: K magnitudes in the op's units (RA_RANGES; Posterize: bits, floored). Returns Kx3xHxW in [0,1]."""
    if name in GEOMETRIC:
        op = torch.full((x.shape[0],), _ID[name], dtype=torch.long, device=x.device)
        return _warp(x, _affine_theta(op, v, x.shape[-2], x.shape[-1]))
    return _colour_op(name, x, v)


def rand_augment_params(n: int, g: torch.Generator, n_ops: int = 2,
                        device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The random draws of ``rand_augment`` for n samples: (ops n x n_ops long, indices into RA_OPS, uniform
    with replacement; magnitudes n x n_ops float32, each uniform in its op's RA_RANGES)."""
    ops = torch.randint(0, len(RA_OPS), (n, n_ops), generator=g, device=device)
    u = torch.rand(n, n_ops, generator=g, device=device)
    lo = torch.tensor([RA_RANGES[name][0] for name in RA_OPS], device=device)
    hi = torch.tensor([RA_RANGES[name][1] for name in RA_OPS], device=device)
    return ops, lo[ops] + (hi - lo)[ops] * u


def _apply_slot(x: torch.Tensor, op: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Apply op[i] with magnitude v[i] to sample i: one batched call per op over the samples that drew it, and
    one affine_grid / grid_sample for all samples that drew a geometric op."""
    order = torch.argsort(op, stable=True)
    counts = torch.bincount(op, minlength=len(RA_OPS)).tolist()  # the slot's one host sync
    groups = dict(zip(RA_OPS, order.split(counts), strict=True))
    out = x.clone()
    geo = torch.cat([groups[name] for name in GEOMETRIC])
    if len(geo):
        out[geo] = _warp(x[geo], _affine_theta(op[geo], v[geo], x.shape[-2], x.shape[-1]))
    for name, rows in groups.items():
        if name not in GEOMETRIC and name != "Identity" and len(rows):
            out[rows] = _colour_op(name, x[rows], v[rows])
    return out


def rand_augment(x: torch.Tensor, g: torch.Generator, n_ops: int = 2) -> torch.Tensor:
    """FixMatch's RandAugment, batched: Nx3xHxW float32 in [0,1] -> Nx3xHxW float32 in [0,1].

    Sohn et al. 2020, "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence",
    Sec. 2.3 (strong augmentation: RandAugment with the magnitude sampled at random instead of one global M,
    followed by Cutout) and the appendix table of RandAugment transformations (section and table from memory:
    the paper was not re-read for this; the ranges were checked against the code named below).

    Each sample draws ``n_ops`` (2) operations uniformly with replacement from RA_OPS (14: AutoContrast,
    Brightness, Color, Contrast, Equalize, Identity, Posterize, Rotate, Sharpness, ShearX, ShearY, Solarize,
    TranslateX, TranslateY) and for each a magnitude uniform in RA_RANGES, applied always (no per-op
    probability). The ranges follow the USB reference code (microsoft/Semi-supervised-learning,
    semilearn/datasets/augmentation/randaugment.py, ``augment_list``; the same as kekmodel/FixMatch-pytorch's
    ``fixmatch_augment_pool``), which are the paper's table's ranges as we recall it: factors [0.05, 0.95],
    Posterize [4, 8] bits (int() of a uniform draw, so 4..7 as there), Rotate [-30, 30] degrees, Shear
    [-0.3, 0.3], Solarize threshold [0, 1] (USB: [0, 256] on uint8), Translate [-0.3, 0.3] of the side.

    Differences from the references, which apply PIL per image: the ops run in float on the batch (Posterize
    and Equalize on the uint8-quantised image) with torchvision's definitions (grayscale weights, Contrast's
    float mean, Sharpness kernel and border), tested against torchvision.transforms.v2.functional per image and
    within one grey level of the references' PIL calls. Magnitudes are continuous as in USB (kekmodel: integer
    levels, each op applied with probability 0.5; google-research/fixmatch's own RandAugment uses AutoAugment's
    ranges with probability 0.5 per op; USB's CIFAR configs use 3 ops). Geometric ops: nearest neighbour and
    zero (black) fill, PIL's defaults there.

    All draws come from ``g`` (on x's device); runs with autocast off. One host sync per op slot.
    """
    with fp32(x.device):
        ops, mags = rand_augment_params(x.shape[0], g, n_ops, x.device)
        x = x.float()
        for k in range(n_ops):
            x = _apply_slot(x, ops[:, k], mags[:, k])
    return x


def cutout(x: torch.Tensor, g: torch.Generator, max_frac: float = 0.5, fill: float = 0.5) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017) as FixMatch's strong augmentation ends: per sample, a square of side
    U(0, max_frac) x min(H, W) at a uniform random centre (clipped at the borders) set to ``fill``.
    Nx3xHxW float in [0,1] -> same.

    The side follows USB (``random() * 0.5`` of the width; the FixMatch paper's CTAugment table also lists
    Cutout with L in [0, 0.5]); google-research/fixmatch and kekmodel/FixMatch-pytorch use a fixed 16 px on
    32 px CIFAR images, i.e. 0.5. Fill: gray 0.5, as google-research/fixmatch (0 in its [-1, 1] scale) and
    kekmodel (127/255); USB fills with (125, 123, 114)/255, about the CIFAR-10 mean.
    """
    n, _, h, w = x.shape
    dev = x.device
    half = torch.rand(n, generator=g, device=dev) * (max_frac * min(h, w) / 2)
    cy = torch.rand(n, generator=g, device=dev) * h
    cx = torch.rand(n, generator=g, device=dev) * w
    ys = (torch.arange(h, device=dev) + 0.5).view(1, h, 1)  # pixel centres
    xs = (torch.arange(w, device=dev) + 0.5).view(1, 1, w)
    box = ((ys - cy.view(n, 1, 1)).abs() < half.view(n, 1, 1)) & ((xs - cx.view(n, 1, 1)).abs() < half.view(n, 1, 1))
    return x.masked_fill(box.unsqueeze(1), fill)


def strong_augment(images_u8: torch.Tensor, pre: Preprocess, g: torch.Generator, channels_last: bool = False,
                   n_ops: int = 2, cutout_frac: float = 0.5) -> torch.Tensor:
    """FixMatch's strong view: Nx3xHxW uint8 -> Nx3xhxw float32, normalised, h x w = pre.size.

    The weak augmentation (WEAK: crop + flip, its own draws), then ``rand_augment`` (n_ops), then ``cutout``."""
    with fp32(images_u8.device):
        x = crop_flip_resize(to_unit(images_u8), pre.size, WEAK, g)
        x = rand_augment(x, g, n_ops)
        x = cutout(x, g, cutout_frac)
        x = normalize(x, pre)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
