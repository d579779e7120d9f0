"""GetImages: samples' images for people to look at (the web app's grid, Label Studio's tasks).

A request names up to ``ImagesConfig.max_ids`` samples and either ``max_side`` 0 (the full-size image: the
encoded image as ingested when browsers show its format upright, BROWSER_FORMATS and ORIENTATION_SHOWN; else,
e.g. a WebP with an EXIF orientation, and for a raw tensor, a PNG of its decode, in a large-image decode slot
like thumbnails) or a thumbnail size (``min_side``..``max_side`` pixels on the longer side; upright, via
shortlist.images.thumbnail; JPEG or WebP). Thumbnails are kept
in a bounded LRU cache (agent.cache.LruCache, weighed in bytes) keyed by (payload sha256, size,
format): a payload never changes under its digest, so an entry is never stale.

A sample whose blob is missing or corrupt, or whose payload cannot be decoded, gets an ``error`` in its
Image and the others are still answered; unknown ids are NOT_FOUND, sizes out of range and too many ids
INVALID_ARGUMENT, originals too large for one reply message RESOURCE_EXHAUSTED (ask fewer ids).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.admission import Admission, large_decode_slot
from agent.blobs import BlobStore
from agent.cache import LruCache
from agent.cancel import CancelToken
from agent.config import ImagesConfig
from agent.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, quoted
from agent.state import State
from shortlist.images import MAX_PIXELS, decode_image, encode_png, image_header, open_image, tensor_pixels, thumbnail
from shortlist.v1 import agent_pb2

log = logging.getLogger(__name__)

FORMATS = {"jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}
# Pillow format -> mime type of the stored images browsers show as they are (an MPO is a JPEG with more
# pictures after the first: browsers show the first); any other (TIFF, TGA, JPEG 2000, PPM, ...) is sent
# as a PNG of shortlist.images.decode_image (upright, 8-bit, transparency on white).
BROWSER_FORMATS = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "GIF": "image/gif",
                   "WEBP": "image/webp", "BMP": "image/bmp", "AVIF": "image/avif"}
# Of those, the formats whose EXIF orientation every browser applies (CSS image-orientation: from-image, the
# default since 2020). Browsers ignore it in a WebP (Chromium showed an orientation-6 WebP sideways while its
# thumbnail and the model saw it upright) and its support in the others varies, so a stored image of another
# format whose EXIF orientation is not 1 is sent as a PNG of the decode, upright like its thumbnail.
ORIENTATION_SHOWN = {"JPEG", "MPO"}
ORIENTATION_TAG = 0x0112  # EXIF Orientation: 1 = as stored, 2..8 = flipped and/or rotated
# Room left in a reply for the framing of each Image and the message itself.
REPLY_MARGIN = 64 * 1024


@dataclass(frozen=True)
class ImageResult:
    id: str
    data: bytes = b""
    mime_type: str = ""
    width: int = 0
    height: int = 0
    sha256: str = ""
    error: str = ""


class Images:
    """Originals and cached thumbnails of one agent's samples."""

    def __init__(self, state: State, blobs: BlobStore | None, config: ImagesConfig, max_message_bytes: int,
                 max_pixels: int = MAX_PIXELS, decodes: Admission | None = None, large_image_pixels: int = 0,
                 check_ids: Callable[[Sequence[str], str], None] | None = None) -> None:
        """``check_ids``: raises for an empty or unknown id of a request (the agent's ``check_read_ids``, whose
        messages the other reads share); None: a plain NotFound for unknown ids."""
        self.state = state
        self.check_ids = check_ids
        self.blobs = blobs
        self.config = config
        self.max_reply_bytes = max_message_bytes - REPLY_MARGIN
        self.max_pixels = max_pixels
        # A thumbnail of an image above large_image_pixels decodes in a slot of ``decodes``, the lane Ingest's
        # large decodes share (agent.admission.large_decode_slot).
        self.decodes = decodes
        self.large_image_pixels = large_image_pixels
        self.cache: LruCache[ImageResult] = LruCache(config.cache_entries, config.cache_bytes)

    def check(self, ids: Sequence[str], max_side: int, fmt: str) -> str:
        """InvalidArgument for a request out of range; returns the format's key."""
        c = self.config
        if not ids:
            raise InvalidArgument("no ids: name the samples whose images you want (GetImagesRequest.ids)")
        if len(ids) > c.max_ids:
            raise InvalidArgument(f"{len(ids):,} ids in one GetImages request, above the limit of {c.max_ids}; "
                                  "ask in several requests")
        if max_side != 0 and not c.min_side <= max_side <= c.max_side:
            raise InvalidArgument(f"max_side={max_side} is out of range: must be 0 (the stored image) or a "
                                  f"thumbnail size {c.min_side}..{c.max_side} pixels")
        key = (fmt or "jpeg").strip().lower()
        if key not in FORMATS:
            raise InvalidArgument(f"format {quoted(fmt[:32])} is not supported: use one of {', '.join(FORMATS)}")
        if self.blobs is None:
            raise FailedPrecondition("payloads are not kept (the agent runs with --no-blobs), so it has no images "
                                     "to show")
        return key

    def get(self, ids: Sequence[str], max_side: int, fmt: str = "",
            token: CancelToken | None = None) -> list[ImageResult]:
        """The images of ``ids``, originals (``max_side`` 0) or thumbnails; ``token`` (the call's) bounds the
        wait for a large-image decode slot (Busy when the lane is full)."""
        key = self.check(ids, max_side, fmt)
        if self.check_ids is not None:
            self.check_ids(ids, "GetImages")
        recs = [self.state.lookup(i) for i in ids]
        unknown = [i for i, r in zip(ids, recs, strict=True) if r is None]
        if unknown:
            shown = ", ".join(quoted(u[:64]) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise NotFound(f"{len(unknown)} unknown id(s): {shown}")
        out: list[ImageResult] = []
        total = 0
        for rec in recs:
            assert rec is not None
            res = self._original(rec.id, rec.kind, rec.sha256, token) if max_side == 0 else \
                self._thumbnail(rec.id, rec.kind, rec.sha256, max_side, key, token)
            total += len(res.data)
            if total > self.max_reply_bytes:
                raise ResourceExhausted(f"the {len(out) + 1} first images already make {total / 2**20:.1f} MiB, more "
                                        f"than one reply message may carry ({self.max_reply_bytes / 2**20:.1f} "
                                        "MiB): ask for fewer ids per request, or for thumbnails (max_side)")
            out.append(res)
        return out

    def _blob(self, sample_id: str, digest: str) -> bytes | str:
        assert self.blobs is not None
        try:
            return self.blobs.get(digest)
        except OSError as e:
            why = "payload file missing" if isinstance(e, FileNotFoundError) else str(e)
            log.error("GetImages: sample %r has no readable payload: %s", sample_id, why)
            return f"no readable payload: {why}"

    def _original(self, sample_id: str, kind: str, digest: str, token: CancelToken | None = None) -> ImageResult:
        blob = self._blob(sample_id, digest)
        if isinstance(blob, str):
            return ImageResult(sample_id, sha256=digest, error=blob)
        try:
            if kind == "tensor":
                t = agent_pb2.Tensor.FromString(blob)
                pixels = tensor_pixels(t.dtype, tuple(t.shape), t.data, self.max_pixels)
                png = encode_png(pixels if pixels.shape[2] == 3 else pixels[:, :, 0])
                return ImageResult(sample_id, png, "image/png", int(pixels.shape[1]), int(pixels.shape[0]), digest)
            with open_image(io.BytesIO(blob)) as img:  # raster formats only: never EPS (Ghostscript)
                mime = BROWSER_FORMATS.get(img.format or "")
                width, height = img.size
                if mime and img.format not in ORIENTATION_SHOWN and img.getexif().get(ORIENTATION_TAG, 1) != 1:
                    mime = None  # browsers would show it unrotated: send the upright decode
            if mime:
                return ImageResult(sample_id, blob, mime, width, height, digest)
            width, height = image_header(blob, self.max_pixels)
            with large_decode_slot(self.decodes, width * height, self.large_image_pixels, token,
                                   f"the {width}x{height} image {quoted(sample_id)} as PNG"):
                pixels = decode_image(blob)
            return ImageResult(sample_id, encode_png(pixels), "image/png", int(pixels.shape[1]),
                               int(pixels.shape[0]), digest)
        except (ValueError, OSError, SyntaxError) as e:
            return ImageResult(sample_id, sha256=digest, error=f"cannot read the stored payload: {e}")

    def _thumbnail(self, sample_id: str, kind: str, digest: str, max_side: int, fmt: str,
                   token: CancelToken | None = None) -> ImageResult:
        cache_key = (digest, max_side, fmt)
        hit = self.cache.get(cache_key)
        if hit is not None:
            return ImageResult(sample_id, hit.data, hit.mime_type, hit.width, hit.height, digest)
        blob = self._blob(sample_id, digest)
        if isinstance(blob, str):
            return ImageResult(sample_id, sha256=digest, error=blob)
        try:
            width, height = image_header(blob, self.max_pixels) if kind == "image" else (0, 0)  # the header: cheap
            with large_decode_slot(self.decodes, width * height, self.large_image_pixels, token,
                                   f"a thumbnail of the {width}x{height} image {quoted(sample_id)}"):
                img = thumbnail(kind, blob, max_side, self.max_pixels)
        except ValueError as e:
            return ImageResult(sample_id, sha256=digest, error=f"cannot decode the stored payload: {e}")
        pil_format, mime = FORMATS[fmt]
        buf = io.BytesIO()
        img.save(buf, format=pil_format, quality=self.config.quality)
        res = ImageResult(sample_id, buf.getvalue(), mime, img.width, img.height, digest)
        self.cache.put(cache_key, res, weight=len(res.data))
        return res
