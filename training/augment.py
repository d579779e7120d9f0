"""Batched image augmentation on tensors, on the training device, with per-sample random parameters.

The images are decoded once into a uint8 tensor (Nx3xHxW); every step takes a batch of them and builds
the views here with a handful of whole-batch tensor ops (one ``grid_sample`` for crop + flip + resize,
a few element-wise ops for colour), so a 2-core CPU run spends its time in the network, not in
per-image PIL calls. The parameters follow torchvision's ``RandomResizedCrop``, ``RandomHorizontalFlip``,
``ColorJitter`` and ``RandomGrayscale`` (the SimSiam / SimCLR CIFAR recipe, Chen et al. 2020 appendix A),
with two documented simplifications: the crop's aspect ratio is clamped instead of resampled when the
box would not fit, and the four colour-jitter operations are applied in a fixed order
(brightness, contrast, saturation, hue) rather than a random permutation.

Every random draw uses an explicit ``torch.Generator`` so that a resumed run replays exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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
