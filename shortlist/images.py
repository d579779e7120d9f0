"""Image decoding shared by the agent, the CLI, training and the benchmarks (Pillow; no torch)."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

# Decompression-bomb guard: a field pipeline must not be able to make the agent allocate gigabytes
# from a small file. 64 megapixels covers any camera we expect.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def resize_rgb(img: Image.Image, size: tuple[int, int] | None, interpolation: str = "bilinear") -> np.ndarray:
    """A Pillow image -> HxWx3 uint8 RGB, resized to ``size`` = (height, width) when given and different."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    if size is not None and (img.height, img.width) != tuple(size):
        img = img.resize((size[1], size[0]), _RESAMPLE.get(interpolation, Image.Resampling.BILINEAR))
    return np.asarray(img, dtype=np.uint8)


def decode_image(data: bytes, size: tuple[int, int] | None = None, interpolation: str = "bilinear") -> np.ndarray:
    """Encoded image bytes (any format Pillow reads) -> HxWx3 uint8 RGB, resized to ``size`` = (H, W).

    Raises ValueError with a message fit for a per-item rejection when the bytes are not a readable image.
    """
    if not data:
        raise ValueError("empty image payload")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                return resize_rgb(img, size, interpolation)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"not a readable image ({type(e).__name__}: {e})") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt files
        raise ValueError(f"corrupt image data ({type(e).__name__}: {e})") from None


def resize_array(pixels: np.ndarray, size: tuple[int, int] | None, interpolation: str = "bilinear") -> np.ndarray:
    """HxWx3 (or HxW / HxWx1) uint8 -> HxWx3 uint8 at ``size``."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 3 and size is not None and pixels.shape[:2] == tuple(size) and pixels.shape[2] == 3:
        return np.ascontiguousarray(pixels, dtype=np.uint8)
    return resize_rgb(Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)), size, interpolation)


def encode_png(pixels: np.ndarray) -> bytes:
    """HxWx3 uint8 -> PNG bytes (lossless; used to store raw-pixel sources as blobs)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
