"""Image and payload decoding shared by the agent, the CLI, training and the benchmarks (Pillow; no torch).

The one home of payload decoding: ``decode_image`` (encoded bytes), ``tensor_pixels`` (a raw Tensor
payload, validated against dtype x shape before anything is allocated), ``image_header`` (size from the
header only, refusing decompression bombs before decoding), and over them ``decode_payload`` (what
Ingest receives), ``decode_stored`` (what the agent's blob store holds) and ``decode_sample`` (a
``shortlist.v1.Sample`` message, e.g. from ListSamples).
"""

from __future__ import annotations

import io
import math
import re
import warnings
from typing import IO

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from shortlist.manifest import Preprocess
from shortlist.v1 import agent_pb2

# Decompression-bomb guard: a field pipeline must not be able to make the agent allocate gigabytes
# from a small file. 64 megapixels covers any camera we expect.
MAX_PIXELS = 64_000_000
# float32 tensors: how far outside [0, 1] a value may stray (rounding) before the tensor is refused
FLOAT_TOLERANCE = 1e-3
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


# The formats ``open_image`` (every Image.open here) lets Pillow try, by Pillow's format name: the still-image
# formats whose plugin decodes in-process. An explicit list, so a plugin a later Pillow adds is not trusted
# unseen. Left out: EPS (Pillow runs Ghostscript, a PostScript interpreter, on the file: an untrusted payload
# would be a program run inside the agent), IPTC (its load opens the embedded data with every plugin, EPS
# included), MPEG (a video's header only) and the stubs that never decode pixels (BUFR, GRIB, HDF5, WMF).
# MPO files are opened by the JPEG plugin. shortlist.datasets.IMAGE_EXTENSIONS are these formats' extensions.
RASTER_FORMATS = frozenset({
    "JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "DIB", "AVIF", "JPEG2000", "TGA", "ICO", "CUR", "ICNS", "PPM",
    "PSD", "QOI", "SGI", "PCX", "DCX", "DDS", "BLP", "FLI", "FTEX", "GBR", "IM", "IMT", "MSP", "PCD", "PIXAR",
    "SPIDER", "SUN", "XBM", "XPM", "XVTHUMB", "MCIDAS", "FITS"})
# Formats Pillow could open that are refused on purpose, with what to do instead (the per-item reason).
REFUSED_FORMATS = {"EPS": "EPS/PostScript is not read (Pillow would run Ghostscript on it): convert to PNG",
                   "IPTC": "IPTC/NAA files are not read: convert to PNG"}


def raster_formats() -> list[str]:
    """RASTER_FORMATS in Pillow's own order of trying them (``Image.ID``, after every plugin is loaded): the
    ``formats`` argument of every Image.open here. A format this Pillow lacks is left out."""
    Image.init()
    return [fmt for fmt in Image.ID if fmt in RASTER_FORMATS]


def open_image(fp: IO[bytes]) -> ImageFile.ImageFile:
    """``Image.open`` of encoded bytes limited to ``raster_formats()`` (UnidentifiedImageError for any other,
    EPS included, without starting anything): the one way Shortlist opens an image it was given."""
    return Image.open(fp, formats=raster_formats())


class TooManyPixels(ValueError):
    """An image or tensor above the pixel limit, found from its header or shape (nothing was decoded)."""


def allow_pixels(max_pixels: int) -> None:
    """Let Pillow open images up to ``max_pixels`` (its own bomb check, ``Image.MAX_IMAGE_PIXELS``, is
    process-wide; it never goes below the default ``MAX_PIXELS``). ``image_header`` enforces the limit."""
    Image.MAX_IMAGE_PIXELS = max(MAX_PIXELS, max_pixels, Image.MAX_IMAGE_PIXELS or 0)

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def resize_rgb(img: Image.Image, size: tuple[int, int] | None, interpolation: str = "bilinear",
               resize: str = "squash", crop_fraction: float = 1.0) -> np.ndarray:
    """A Pillow image -> HxWx3 uint8 RGB at ``size`` = (height, width) when given, as the manifest's preprocess
    ``resize`` says (shortlist.manifest.RESIZE_MODES; every model's images are resized here and nowhere else):

    - "squash": resized to exactly H x W (the aspect ratio not kept); an image already that size is left as is;
    - "crop": torchvision's Resize + CenterCrop. Resized keeping its aspect ratio so that it just covers
      H / crop_fraction x W / crop_fraction: the side that binds (the shorter one for a square target) becomes
      round(side / crop_fraction) pixels, the other ``int`` of its scaled length as torchvision's Resize
      computes it (never below the target's); then the centre H x W is cropped (offsets rounded as
      CenterCrop does). Always applied, even to an image already H x W (as the model's evaluation did).
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    if size is None:
        return np.asarray(img, dtype=np.uint8)
    height, width = size
    resample = _RESAMPLE[interpolation]  # manifests name one of INTERPOLATIONS
    if resize == "crop":
        if width * img.height >= height * img.width:  # the image is taller than the target's shape: width binds
            new_w = round(width / crop_fraction)
            new_h = max(height, int(new_w * img.height / img.width))
        else:
            new_h = round(height / crop_fraction)
            new_w = max(width, int(new_h * img.width / img.height))
        if (new_h, new_w) != (img.height, img.width):
            img = img.resize((new_w, new_h), resample)
        top, left = round((new_h - height) / 2.0), round((new_w - width) / 2.0)
        img = img.crop((left, top, left + width, top + height))
    elif resize != "squash":
        raise ValueError(f"unknown resize mode {resize!r}")  # Preprocess.from_dict refuses it in a manifest
    elif (img.height, img.width) != (height, width):
        img = img.resize((width, height), resample)
    return np.asarray(img, dtype=np.uint8)


# ISO-BMFF major brands of HEIC/HEIF files (iPhone photos), which Pillow does not read (AVIF's are avif, avis)
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1",
                         b"msf1"})
JPEG_SIGNATURE = b"\xff\xd8\xff"


def _signature_format(data: bytes) -> tuple[str, str] | None:
    """(format, why Pillow cannot read it: "" when the format is one it reads) of the format whose signature
    ``data`` starts with, by Pillow's own plugin checks (the accept function each format registers in
    ``Image.OPEN``, given the first 16 bytes as ``Image.open`` gives them), or None when none matches."""
    Image.init()
    head = data[:16]
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1]
        try:
            found = accept(head) if accept is not None else False
        except Exception:  # a plugin's check that chokes on a short prefix: not its format
            continue
        if found:
            return fmt, found if isinstance(found, str) else ""  # a str: the plugin's "support not installed"
    return None


def _unreadable(data: bytes) -> str:
    """Pillow's UnidentifiedImageError names the BytesIO object; say what the bytes are instead: a HEIC/HEIF
    file (not supported: convert it), a damaged JPEG (its signature, but not readable), a damaged file of
    another format whose signature they start with (PNG, GIF, TIFF, WebP, BMP, ...: Pillow's plugins tell),
    or bytes no format Pillow reads starts like."""
    first = f"{len(data):,} bytes, first bytes {data[:8].hex(' ')}"
    if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:
        return (f"not a readable image: a HEIC/HEIF image (brand {data[8:12].decode()}; {first}), which is not "
                "supported: convert it to JPEG or PNG")
    if data.startswith(JPEG_SIGNATURE):
        return (f"not a readable image: a damaged JPEG ({first}: a JPEG's signature, but its markers cannot be "
                "read); copy or export the file again")
    known = _signature_format(data)
    if known is not None and known[0] in REFUSED_FORMATS:
        return f"not a readable image: {REFUSED_FORMATS[known[0]]} ({first})"
    if known is not None and known[1]:
        return (f"not a readable image: a {known[0]} image ({first}), which this agent's Pillow cannot read "
                f"({known[1]}): convert it to JPEG or PNG")
    if known is not None:
        return (f"not a readable image: a damaged {known[0]} ({first}: a {known[0]}'s signature, but its header "
                "cannot be read); copy or export the file again")
    return (f"not a readable image: no image format Pillow reads starts like these {len(data):,} bytes "
            f"(first bytes {data[:8].hex(' ')}); send JPEG, PNG, WebP, TIFF, BMP, GIF, ...")


def _corrupt(e: BaseException, data: bytes, what: str = "corrupt image data") -> str:
    """A rejection's reason for bytes ``data`` that Pillow took for an image but could not read: the format
    when its signature tells (corrupt PNG image data), and the library's own detail without the Python
    exception class (OSError, SyntaxError, ...), which means nothing to a client written in another language."""
    known = _signature_format(data)
    if known is not None and what == "corrupt image data":
        what = f"corrupt {known[0]} image data"
    detail = str(e).strip()
    return f"{what} ({detail})" if detail else f"{what}: Pillow could not read it"


# Transparent pixels are composited over this colour (white, as a page shows a transparent logo), so an
# image's look does not depend on the colours its fully transparent pixels happen to hold.
BACKGROUND = (255, 255, 255)


class UnsupportedImage(ValueError):
    """A readable image whose pixel values have no defined 8-bit RGB meaning here (the message says why)."""


# 16-bit value -> 8-bit (v / 257, rounded): one table lookup per pixel, no float temporaries (an 8000x8000
# 16-bit PNG cost 0.8 GB in float64 ones)
_SIXTEEN_TO_EIGHT = (np.arange(65536) / 257.0 + 0.5).astype(np.uint8)


def _on_background(img: Image.Image) -> Image.Image:
    """An RGBA image composited over BACKGROUND, as RGB."""
    background = Image.new("RGBA", img.size, (*BACKGROUND, 255))
    return Image.alpha_composite(background, img).convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB with the pixel values the file means (see ``decode_image``)."""
    mode = img.mode
    transparency = img.info.get("transparency")
    if mode == "RGB" and transparency is None:
        return img
    if mode.startswith("I;16") or mode == "I":  # 16-bit (and 32-bit integer) greyscale
        x = np.asarray(img)
        lo, hi = int(x.min()), int(x.max())
        if mode == "I" and (lo < 0 or hi > 65535):
            raise UnsupportedImage(f"32-bit integer image with values in [{lo}, {hi}]: only 0..65535 "
                             "(16-bit) integer images are supported")
        grey = Image.fromarray(_SIXTEEN_TO_EIGHT[x], "L")  # 65535 -> 255, 257 -> 1
        if isinstance(transparency, int):  # a tRNS grey value: those pixels are transparent
            grey.putalpha(Image.fromarray(np.where(x == transparency, np.uint8(0), np.uint8(255))))
            return _on_background(grey.convert("RGBA"))
        return grey.convert("RGB")
    if mode == "F":  # 32-bit float greyscale (TIFF)
        x = np.asarray(img, dtype=np.float32)
        if not np.isfinite(x).all():
            raise UnsupportedImage("float image holds NaN or infinite values")
        lo_f, hi_f = float(x.min()), float(x.max())
        if lo_f < 0.0 or hi_f > 255.0:
            raise UnsupportedImage(f"float image with values in [{lo_f:.4g}, {hi_f:.4g}]: floats must be in [0, 1] "
                             "(scaled by 255) or [0, 255]")
        y = x * np.float32(255.0 if hi_f <= 1.0 else 1.0)
        y += np.float32(0.5)
        return Image.fromarray(y.astype(np.uint8), "L").convert("RGB")
    if mode == "CMYK" and img.info.get("icc_profile"):
        try:  # the file's own profile says what its inks look like
            profile = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
            out = ImageCms.profileToProfile(img, profile, ImageCms.createProfile("sRGB"), outputMode="RGB")
            if out is not None:
                return out
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: Pillow's plain conversion below
    try:
        # every image with transparency goes on the same background: an alpha channel, or a transparent
        # palette index, grey value (L, 1) or colour (RGB) from the file's tRNS
        if transparency is not None or mode in ("PA", "LA", "RGBa", "La", "RGBA"):
            return _on_background(img.convert("RGBA"))
        return img.convert("RGB")
    except ValueError as e:  # a mode Pillow cannot convert
        raise UnsupportedImage(f"image mode {mode} cannot be converted to RGB ({e})") from None


def decode_image(data: bytes, size: tuple[int, int] | None = None, interpolation: str = "bilinear",
                 resize: str = "squash", crop_fraction: float = 1.0) -> np.ndarray:
    """Encoded image bytes (any format Pillow reads) -> HxWx3 uint8 RGB as the file means it to be seen,
    brought to ``size`` = (H, W) by ``resize_rgb`` (``resize``, ``crop_fraction``: the manifest's):

    - EXIF orientation is applied (a portrait phone photo comes out portrait);
    - 16-bit greyscale (PNG, TIFF: modes I;16*, and I with values 0..65535) is scaled to 8 bits (v / 257);
    - float greyscale (TIFF, mode F) in [0, 1] is scaled by 255, in [0, 255] taken as is; other ranges,
      NaN and infinities are refused (UnsupportedImage, with the range found);
    - transparency (an alpha channel: RGBA, LA, PA; a transparent palette index, grey value or colour from
      the file's tRNS: P, L, 1, RGB, 16-bit grey) is composited over white (BACKGROUND), whatever the mode;
    - CMYK goes through the file's ICC profile when it has one (else Pillow's conversion); every other
      mode (1, L, P, YCbCr, LAB, HSV, ...) through Pillow's conversion to RGB; a multi-frame file
      (GIF, TIFF) gives its first frame.

    Raises ValueError with a message fit for a per-item rejection when the bytes are not a readable image.
    """
    if not data:
        raise ValueError("empty image payload")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open_image(io.BytesIO(data)) as img:
                if img.format in ("JPEG", "MPO") and (problem := truncated_jpeg(data, *img.size)) is not None:
                    raise TruncatedImage(problem)
                img.load()
                ImageOps.exif_transpose(img, in_place=True)
                return resize_rgb(_to_rgb(img), size, interpolation, resize, crop_fraction)
    except (UnsupportedImage, TruncatedImage):
        raise
    except UnidentifiedImageError:
        raise ValueError(_unreadable(data)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(_corrupt(e, data, "not a readable image")) from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt files
        raise ValueError(_corrupt(e, data)) from None


def resize_array(pixels: np.ndarray, size: tuple[int, int] | None, interpolation: str = "bilinear",
                 resize: str = "squash", crop_fraction: float = 1.0) -> np.ndarray:
    """HxWx3 (or HxW / HxWx1) uint8 -> HxWx3 uint8 at ``size``, by ``resize_rgb`` (as an encoded image is)."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if (resize == "squash" and pixels.ndim == 3 and size is not None and pixels.shape[:2] == tuple(size)
            and pixels.shape[2] == 3):
        return np.ascontiguousarray(pixels, dtype=np.uint8)
    return resize_rgb(Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)), size, interpolation, resize,
                      crop_fraction)


def preprocess_array(pixels: np.ndarray, pre: Preprocess) -> np.ndarray:
    """``resize_array`` as ``pre`` (a manifest's preprocess) says: HxWx3 uint8 -> ``pre.size`` HxWx3 uint8."""
    return resize_array(pixels, pre.size, pre.interpolation, pre.resize, pre.crop_fraction)


def preprocess_image(data: bytes, pre: Preprocess) -> np.ndarray:
    """``decode_image`` as ``pre`` (a manifest's preprocess) says: encoded bytes -> ``pre.size`` HxWx3 uint8."""
    return decode_image(data, pre.size, pre.interpolation, pre.resize, pre.crop_fraction)


def encode_png(pixels: np.ndarray) -> bytes:
    """HxWx3 uint8 -> PNG bytes (lossless; used to store raw-pixel sources as blobs)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class TruncatedImage(ValueError):
    """An image whose file holds much less data than its header's size needs (``truncated_jpeg``)."""


# Frame headers (SOFn markers) of Huffman-coded JPEGs: baseline, extended, progressive, lossless and their
# hierarchical forms. An arithmetic-coded one (SOF9-11, SOF13-15) can take less than a bit a block: no bound.
_HUFFMAN_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7})


def _jpeg_frame_marker(data: bytes) -> int | None:
    """The SOFn marker byte of a JPEG's frame header (the segments before it walked by their lengths), or None
    when there is none before the first scan or the data is not laid out as JPEG segments."""
    i = 2  # after SOI
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker
        if marker in (0xDA, 0xD9):  # a scan or the end before any frame header
            return None
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def truncated_jpeg(data: bytes, width: int, height: int) -> str | None:
    """Why a JPEG (Huffman-coded) whose header says ``width`` x ``height`` cannot be whole (None when it can):
    each 8x8 block of a component sampled at full resolution needs at least one bit of coded data (its DC
    code), so a file of fewer than ceil(W/8) x ceil(H/8) / 8 bytes lacks most of its image. libjpeg does not
    fail on one that ends with an end marker: it paints what is missing grey and Pillow reports nothing (the
    security review: 631 bytes claiming 7000x9000 were stored as a grey 63-megapixel image). A JPEG cut off
    without an end marker fails Pillow's load already (``ImageFile.LOAD_TRUNCATED_IMAGES`` stays False)."""
    if width <= 0 or height <= 0 or _jpeg_frame_marker(data) not in _HUFFMAN_SOF:
        return None
    needed = -(-math.ceil(width / 8) * math.ceil(height / 8) // 8)
    if len(data) >= needed:
        return None
    return (f"truncated JPEG: its header says {width}x{height} pixels, whose image data needs at least {needed:,} "
            f"bytes, but the whole file has {len(data):,} (cut short, or a header that claims a larger image; "
            "the missing part would be painted grey)")


def image_header(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of encoded image bytes from the header alone (``Image.open`` does not decode the
    pixels). TooManyPixels above ``max_pixels`` (a decompression bomb is refused here, before any
    decoding); ValueError when the bytes are not an image."""
    if not data:
        raise ValueError("empty image payload")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open_image(io.BytesIO(data)) as img:
                width, height = img.size
                kind = img.format
    except Image.DecompressionBombError as e:  # Pillow's own guard (above 2 x Image.MAX_IMAGE_PIXELS)
        # said with our limit, not Pillow's (its message names twice its own default)
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)):,} pixels" if found else "more pixels than Pillow opens"
        raise TooManyPixels(f"image of {size} exceeds the limit of {max_pixels:,} pixels; refused before "
                            "decoding") from None
    except UnidentifiedImageError:
        raise ValueError(_unreadable(data)) from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt headers
        raise ValueError(_corrupt(e, data)) from None
    if width * height > max_pixels:
        raise TooManyPixels(f"image of {width}x{height} = {width * height:,} pixels exceeds the limit of "
                            f"{max_pixels:,} pixels; refused before decoding")
    if kind in ("JPEG", "MPO") and (problem := truncated_jpeg(data, width, height)) is not None:
        raise TruncatedImage(problem)
    return width, height


def tensor_pixels(dtype: str, shape: tuple[int, ...], data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Validate a raw tensor payload and return it as HxWxC uint8 (C = 1 or 3). Shape, pixel count and
    byte length are checked against dtype x shape before anything is allocated."""
    if dtype not in ("uint8", "float32"):
        raise ValueError(f"tensor dtype {dtype!r} not supported; send uint8 HWC or float32 CHW")
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"tensor shape {list(shape)} must have 3 positive dims (uint8 HWC or float32 CHW)")
    channels = shape[2] if dtype == "uint8" else shape[0]
    if channels not in (1, 3):
        layout = "HWC with C" if dtype == "uint8" else "CHW with C"
        raise ValueError(f"{dtype} tensor shape {list(shape)} must be {layout} = 1 or 3")
    pixels = math.prod(shape) // channels
    if pixels > max_pixels:
        raise TooManyPixels(f"tensor of {pixels:,} pixels exceeds the limit of {max_pixels:,} pixels")
    itemsize = 1 if dtype == "uint8" else 4
    if len(data) != math.prod(shape) * itemsize:
        raise ValueError(f"tensor data is {len(data)} bytes but shape {list(shape)} {dtype} needs "
                         f"{math.prod(shape) * itemsize}")
    if dtype == "uint8":
        return np.frombuffer(data, np.uint8).reshape(shape)
    x = np.frombuffer(data, "<f4").reshape(shape)  # little-endian, as the proto says, whatever this machine
    if not np.isfinite(x).all():
        raise ValueError("float32 tensor holds NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    # a tolerance for float rounding only: 0..255 values (8-bit pixels not divided by 255) or a normalised
    # tensor (mean/std already applied) would otherwise be clipped to a white or black image without a word
    if low < -FLOAT_TOLERANCE or high > 1.0 + FLOAT_TOLERANCE:
        hint = "divide 8-bit pixel values by 255" if high > 1.0 + FLOAT_TOLERANCE else \
            "send pixels before any mean/std normalisation (the model's manifest applies it)"
        raise ValueError(f"float32 tensor values must lie in [0, 1], found {low:.4g} to {high:.4g}: {hint}")
    # [0, 1] floats -> uint8 HWC so every payload goes through the one preprocessing path.
    return np.ascontiguousarray((np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0))


def decode_payload(kind: str, data: bytes, dtype: str, shape: tuple[int, ...], pre: Preprocess | None,
                   max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A sample's payload -> HxWx3 uint8 RGB at ``pre.size`` (H, W), resized as ``pre`` says (``resize_rgb``)
    (any size when ``pre`` is None: the payload is only validated). Raises ValueError (TooManyPixels above
    ``max_pixels``) with a message fit for a per-sample Rejection.

    kind "image": encoded bytes (any format Pillow reads, any size; resized as ``pre`` says); the pixel
    count is checked from the header before decoding.
    kind "tensor": raw pixels, ``dtype`` uint8 with shape (H, W, 3|1) or float32 with shape (3|1, H, W)
    in [0, 1]; ``data`` is C-contiguous and exactly prod(shape) * itemsize bytes.
    """
    size = None if pre is None else pre.size
    pre = pre or Preprocess()  # None: only validated, no resize (its mode is then unused)
    if kind == "image":
        image_header(data, max_pixels)
        return decode_image(data, size, pre.interpolation, pre.resize, pre.crop_fraction)
    if kind == "tensor":
        return resize_array(tensor_pixels(dtype, shape, data, max_pixels), size, pre.interpolation, pre.resize,
                            pre.crop_fraction)
    raise ValueError("no payload: set encoded_image or tensor")


def decode_stored(kind: str, blob: bytes, pre: Preprocess | None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A payload as the agent's blob store keeps it (kind "image": the encoded bytes; "tensor": a
    serialised shortlist.v1.Tensor) -> HxWx3 uint8 at ``pre.size``."""
    if kind == "tensor":
        t = agent_pb2.Tensor.FromString(blob)
        return decode_payload("tensor", t.data, t.dtype, tuple(t.shape), pre, max_pixels)
    return decode_payload(kind, blob, "", (), pre, max_pixels)


def decode_sample(sample: agent_pb2.Sample, pre: Preprocess | None,
                  max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A shortlist.v1.Sample message with a payload (e.g. from ListSamples) -> HxWx3 uint8 at ``pre.size``."""
    which = sample.WhichOneof("payload")
    if which == "encoded_image":
        return decode_payload("image", sample.encoded_image, "", (), pre, max_pixels)
    if which == "tensor":
        t = sample.tensor
        return decode_payload("tensor", t.data, t.dtype, tuple(int(d) for d in t.shape), pre, max_pixels)
    raise ValueError("no payload (ask ListSamples with include_payload=true)")


def thumbnail(kind: str, blob: bytes, max_side: int, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A stored payload (as ``decode_stored`` takes it) -> an upright 8-bit RGB Pillow image whose longer
    side is at most ``max_side`` (never enlarged), with the colours ``decode_image`` gives. JPEGs are
    decoded at a reduced scale (Pillow's ``draft``), so a thumbnail of a 24-megapixel photo costs a
    fraction of a full decode. Raises ValueError (TooManyPixels above ``max_pixels``) like ``decode_payload``."""
    if kind == "tensor":
        t = agent_pb2.Tensor.FromString(blob)
        pixels = tensor_pixels(t.dtype, tuple(t.shape), t.data, max_pixels)
        img = Image.fromarray(resize_array(pixels, None))
    elif kind == "image":
        image_header(blob, max_pixels)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with open_image(io.BytesIO(blob)) as src:
                    src.draft("RGB", (max_side, max_side))  # JPEG only: decode at 1/2, 1/4 or 1/8 scale
                    src.load()
                    img = ImageOps.exif_transpose(src)
                    img = _to_rgb(img)
        except UnsupportedImage:
            raise
        except UnidentifiedImageError:
            raise ValueError(_unreadable(blob)) from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as e:
            raise ValueError(_corrupt(e, blob)) from None
    else:
        raise ValueError("no payload: set encoded_image or tensor")
    if img.mode != "RGB":
        img = img.convert("RGB")
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return img


# EXIF tags ``exif_metadata`` reads (Pillow's ExifTags numbers): IFD0's Make and Model, the Exif IFD's
# DateTimeOriginal, OffsetTimeOriginal and ImageNumber.
_EXIF_IFD = 0x8769
_MAKE, _MODEL = 0x010F, 0x0110
_DATETIME_ORIGINAL, _OFFSET_TIME_ORIGINAL, _IMAGE_NUMBER = 0x9003, 0x9011, 0x9211
_EXIF_DATETIME = re.compile(r"(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_EXIF_OFFSET = re.compile(r"[+-]\d{2}:\d{2}|Z")


def _exif_text(value: object) -> str:
    """An EXIF ASCII value as one line of text: NUL padding, control characters and outer blanks dropped."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str | int):
        return ""
    return "".join(c for c in str(value) if c.isprintable()).strip()


def exif_metadata(data: bytes) -> dict[str, str]:
    """Sample metadata from an encoded image's EXIF (JPEG's, and any format Pillow reads EXIF from; only the
    header is parsed, nothing is decoded): ``taken_at`` = DateTimeOriginal as ISO 8601 (``2024-05-01T06:12:09``,
    with the file's OffsetTimeOriginal appended when it has one; no time zone is assumed otherwise),
    ``camera`` = Make and Model (``Reconyx HC600``; Model alone when it already starts with Make), and
    ``sequence`` = ImageNumber where the camera writes it. A missing or malformed tag is absent; a file
    without EXIF, or not readable, gives {} (Ingest says why an unreadable image is rejected)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open_image(io.BytesIO(data)) as img:
                exif = img.getexif()
                sub = exif.get_ifd(_EXIF_IFD)
    except Exception:  # not an image, a bomb, a corrupt EXIF block: no metadata from it
        return {}
    out: dict[str, str] = {}
    taken = _EXIF_DATETIME.fullmatch(_exif_text(sub.get(_DATETIME_ORIGINAL) or ""))
    if taken:
        y, mo, d, h, mi, s = taken.groups()
        offset = _exif_text(sub.get(_OFFSET_TIME_ORIGINAL) or "")
        out["taken_at"] = f"{y}-{mo}-{d}T{h}:{mi}:{s}" + (offset if _EXIF_OFFSET.fullmatch(offset) else "")
    make, model = _exif_text(exif.get(_MAKE) or ""), _exif_text(exif.get(_MODEL) or "")
    camera = model if make and model.lower().startswith(make.lower()) else f"{make} {model}".strip()
    if camera:
        out["camera"] = camera
    number = _exif_text(sub.get(_IMAGE_NUMBER, ""))  # frame 0 is a number (``or`` dropped it)
    if number:
        out["sequence"] = number
    return out
