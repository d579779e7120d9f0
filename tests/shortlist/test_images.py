"""decode_image on the kinds of files a new user's folders hold: each built here with Pillow/numpy, and the
decoded pixels checked (not only that something came out)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shortlist.images import (
    _RESAMPLE,
    decode_image,
    decode_payload,
    exif_metadata,
    image_header,
    raster_formats,
    thumbnail,
)
from shortlist.manifest import INTERPOLATIONS, Preprocess

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def close(pixels: np.ndarray, colour: tuple[int, int, int], tol: int = 8) -> bool:
    return bool(np.abs(pixels.reshape(-1, 3).astype(int) - colour).max() <= tol)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied(fmt: str) -> None:
    """A phone held upright stores the sensor's landscape pixels and EXIF Orientation 6 (rotate 90
    degrees clockwise to display): the decoded image is the upright one."""
    stored = Image.new("RGB", (64, 32), RED)
    stored.paste(Image.new("RGB", (32, 32), BLUE), (32, 0))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image(encode(stored, fmt, exif=exif.tobytes(), quality=100))
    assert out.shape == (64, 32, 3)  # portrait
    assert close(out[:24], RED) and close(out[40:], BLUE)  # the left of the sensor is the top of the photo
    plain = decode_image(encode(stored, fmt, quality=100))
    assert plain.shape == (32, 64, 3) and close(plain[:, :24], RED)


def test_16_bit_greyscale_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # 16-bit: black, 1/255, middle, white
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = decode_image(data)
    assert out.shape == (1, 4, 3) and out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (out == out[:, :, :1]).all()  # grey


def test_16_bit_tiff() -> None:
    values = np.array([[1000, 60000]], dtype=np.uint16)
    out = decode_image(encode(Image.fromarray(values), "TIFF"))
    assert out[0, :, 0].tolist() == [4, 233]


def test_float_tiff_mapping() -> None:
    """Floats in [0, 1] are scaled by 255; floats in [0, 255] are taken as they are; anything else (or
    NaN) is refused with the range it has."""
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    assert decode_image(encode(Image.fromarray(unit), "TIFF"))[0, :, 0].tolist() == [0, 128, 255]
    bytes_range = np.array([[0.0, 17.0, 200.0]], dtype=np.float32)
    assert decode_image(encode(Image.fromarray(bytes_range), "TIFF"))[0, :, 0].tolist() == [0, 17, 200]
    with pytest.raises(ValueError, match=r"float image with values in \[-1, 3000\]"):
        decode_image(encode(Image.fromarray(np.array([[-1.0, 3000.0]], dtype=np.float32)), "TIFF"))
    with pytest.raises(ValueError, match="NaN"):
        decode_image(encode(Image.fromarray(np.array([[np.nan, 1.0]], dtype=np.float32)), "TIFF"))


def test_transparency_is_composited_over_white() -> None:
    """Palette with a transparent index (GIF, PNG-8), RGBA and LA: a fully transparent pixel is white
    whatever colour it holds, an opaque one keeps its colour, a half transparent one is blended."""
    pal = Image.new("P", (2, 1))
    pal.putpalette([*RED, *BLUE] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    for fmt in ("PNG", "GIF"):
        out = decode_image(encode(pal, fmt, transparency=0))
        assert out[0, 0].tolist() == list(WHITE) and out[0, 1].tolist() == list(BLUE), fmt
    rgba = Image.fromarray(np.array([[[0, 0, 0, 0], [255, 0, 0, 255], [255, 0, 0, 128]]], dtype=np.uint8), "RGBA")
    out = decode_image(encode(rgba, "PNG"))
    assert out[0, 0].tolist() == list(WHITE) and out[0, 1].tolist() == list(RED)
    assert close(out[0, 2], (255, 127, 127), tol=2)
    la = Image.fromarray(np.array([[[0, 0], [40, 255]]], dtype=np.uint8), "LA")
    assert decode_image(encode(la, "PNG"))[0].tolist() == [list(WHITE), [40, 40, 40]]


def test_every_transparent_colour_goes_on_the_same_white() -> None:
    """Grey, 1-bit and RGB PNGs with a tRNS colour (and 16-bit grey) kept their transparent pixels black
    while palette and RGBA ones went on white: one rule for every image with transparency, in the embedding
    and the thumbnails alike."""
    from shortlist.images import thumbnail

    grey = Image.fromarray(np.array([[0, 128]], dtype=np.uint8), "L")
    bilevel = Image.new("1", (2, 1), 0)
    bilevel.putpixel((1, 0), 1)
    rgb = Image.fromarray(np.array([[[0, 0, 0], [0, 0, 255]]], dtype=np.uint8), "RGB")
    grey16 = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    cases = {"L": (encode(grey, "PNG", transparency=0), [128, 128, 128]),
             "1": (encode(bilevel, "PNG", transparency=0), list(WHITE)),
             "RGB": (encode(rgb, "PNG", transparency=(0, 0, 0)), [0, 0, 255]),
             "I;16": (encode(grey16, "PNG", transparency=0), list(WHITE))}
    for mode, (data, opaque) in cases.items():
        with Image.open(io.BytesIO(data)) as img:
            assert img.mode == mode and "transparency" in img.info, mode
        out = decode_image(data)
        assert out[0].tolist() == [list(WHITE), opaque], mode
        assert np.asarray(thumbnail("image", data, 64))[0].tolist() == [list(WHITE), opaque], mode


def test_16_bit_and_float_images_need_no_float64_temporaries() -> None:
    """An 8000x8000 16-bit PNG took 0.8 GB in the agent (three float64 copies): numpy's peak while decoding
    stays a few bytes per pixel (the 16-bit pixels themselves are 2)."""
    import tracemalloc

    side = 1000
    g16 = encode(Image.fromarray(np.arange(side * side, dtype=np.uint32).reshape(side, side).astype(np.uint16)),
                 "PNG")
    f32 = encode(Image.fromarray(np.linspace(0, 1, side * side, dtype=np.float32).reshape(side, side)), "TIFF")
    for data, bound in ((g16, 8), (f32, 12)):
        tracemalloc.start()
        try:
            out = decode_image(data)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert out.shape == (side, side, 3)
        assert peak < bound * side * side, f"{peak / side / side:.1f} bytes per pixel"


def test_cmyk_and_other_modes() -> None:
    cmyk = Image.new("CMYK", (2, 2), (255, 0, 0, 0))  # full cyan ink
    assert close(decode_image(encode(cmyk, "TIFF")), (0, 255, 255), tol=0)
    assert close(decode_image(encode(cmyk, "JPEG", quality=100)), (0, 255, 255))
    bilevel = Image.new("1", (3, 1), 1)
    assert decode_image(encode(bilevel, "PNG")).tolist() == [[list(WHITE)] * 3]
    grey = Image.new("L", (2, 1), 77)
    assert decode_image(encode(grey, "JPEG", quality=100))[0, 0].tolist() == [77, 77, 77]


def test_unreadable_bytes_get_a_clean_reason() -> None:
    """Pillow's message names a BytesIO object ('<_io.BytesIO object at 0x...>'): never shown to a user."""
    for decode in (lambda b: decode_image(b), lambda b: decode_payload("image", b, "", (), None)):
        with pytest.raises(ValueError) as e:
            decode(b"definitely not an image")
        text = str(e.value)
        assert "not a readable image" in text and "64 65 66 69" in text and "object at" not in text and "<" not in text


def test_heic_and_damaged_jpeg_are_named_as_such() -> None:
    """Over gRPC a HEIC (an iPhone photo) and a JPEG with broken markers were both "no image format Pillow reads
    starts like these bytes": the reason says what they are, and what to do."""
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200)
    jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x12\x34" * 50
    for decode in (lambda b: decode_image(b), lambda b: decode_payload("image", b, "", (), None)):
        with pytest.raises(ValueError, match=r"a HEIC/HEIF image \(brand heic; 224 bytes, first bytes 00 00 00 18 "
                           r"66 74 79 70\), which is not supported: convert it to JPEG or PNG$"):
            decode(heic)
        with pytest.raises(ValueError, match=r"^not a readable image: a damaged JPEG \(120 bytes, first bytes ff d8 "
                           r"ff e0 .*: a JPEG's signature, but its markers cannot be read\)"):
            decode(jpeg)


def test_exif_metadata_reads_time_camera_and_sequence_and_leaves_missing_tags_out() -> None:
    from shortlist.images import exif_metadata

    def jpeg(exif: Image.Exif | None = None) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (16, 12), (10, 200, 30)).save(buf, "JPEG", **({"exif": exif} if exif is not None else {}))
        return buf.getvalue()

    ex = Image.Exif()
    ex[0x010F], ex[0x0110] = "RECONYX\x00", "HC600 HYPERFIRE"  # Make (NUL-padded as cameras write it), Model
    ex.get_ifd(0x8769)[0x9003] = "2024:05:01 06:12:09"  # DateTimeOriginal
    ex.get_ifd(0x8769)[0x9211] = 3  # ImageNumber
    assert exif_metadata(jpeg(ex)) == {"taken_at": "2024-05-01T06:12:09", "camera": "RECONYX HC600 HYPERFIRE",
                                       "sequence": "3"}
    ex.get_ifd(0x8769)[0x9211] = 0  # the first frame of a burst is numbered 0 by some cameras
    assert exif_metadata(jpeg(ex))["sequence"] == "0"
    only = Image.Exif()
    only[0x0110] = "Canon EOS 5D"
    only[0x010F] = "Canon"
    only.get_ifd(0x8769)[0x9003] = "2024:05:01 06:12:09"
    only.get_ifd(0x8769)[0x9011] = "+02:00"  # OffsetTimeOriginal: the file's own zone, kept
    assert exif_metadata(jpeg(only)) == {"taken_at": "2024-05-01T06:12:09+02:00", "camera": "Canon EOS 5D"}
    bad = Image.Exif()
    bad.get_ifd(0x8769)[0x9003] = "    :  :     :  :  "  # an unset clock: absent, not invented
    assert exif_metadata(jpeg(bad)) == {} and exif_metadata(jpeg()) == {} and exif_metadata(b"not an image") == {}


def test_every_interpolation_a_manifest_may_name_has_a_filter() -> None:
    assert set(_RESAMPLE) == set(INTERPOLATIONS)  # Preprocess.from_dict refuses any other name


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (10, 20, 30)).save(buf, fmt)
    return buf.getvalue()


def test_a_damaged_png_gif_or_tiff_is_named_as_such() -> None:
    """A PNG with one bit flipped in its IHDR chunk was "no image format Pillow reads starts like these bytes
    (first bytes 89 50 4e 47 ...); send JPEG, PNG, ...": the reason names the format its signature says."""
    png_ihdr = bytearray(_encoded("PNG"))
    png_ihdr[16] ^= 1  # the width, so the chunk's CRC fails
    gif_cut = _encoded("GIF")[:32]
    tiff_ifd = bytearray(_encoded("TIFF"))
    tiff_ifd[10] ^= 1
    for data, fmt, first in ((bytes(png_ihdr), "PNG", "89 50 4e 47 0d 0a 1a 0a"),
                             (gif_cut, "GIF", "47 49 46 38 37 61 10 00"), (bytes(tiff_ifd), "TIFF", "49 49 2a 00")):
        for decode in (decode_image, lambda b: decode_payload("image", b, "", (), None)):
            with pytest.raises(ValueError, match=rf"^not a readable image: a damaged {fmt} \([\d,]+ bytes, first "
                               rf"bytes {first}.*: a {fmt}'s signature, but its header cannot be read\); copy or "
                               "export the file again$"):
                decode(data)


def test_corrupt_image_reasons_name_no_python_exception_class() -> None:
    """Reasons read "corrupt image data (OSError: Truncated File Read)": a Node client has no use for Python's
    exception classes; the library's detail stays, with the format."""
    png_data = bytearray(_encoded("PNG"))
    png_data[10] ^= 1  # the IHDR chunk's length
    with pytest.raises(ValueError) as e:
        decode_image(bytes(png_data))
    assert str(e.value) == "corrupt PNG image data (Truncated File Read)"
    with pytest.raises(ValueError) as e:
        decode_image(_encoded("BMP")[:40])
    assert str(e.value).startswith("corrupt BMP image data (") and "Error" not in str(e.value)


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A random RGB image of width x height pixels (a field photo's aspect ratio)."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize(("width", "height"), [(400, 300), (300, 400)])
def test_crop_of_a_4_3_image_is_pillows_resize_shorter_side_then_centre_crop(width: int, height: int) -> None:
    img = _photo(width, height)
    pre = Preprocess(size=(224, 224), resize="crop", crop_fraction=0.875)
    # by hand, as torchvision's Resize(256) + CenterCrop(224): shorter side 256, the longer int(256 * 4 / 3) = 341,
    # then the centre 224 x 224 (offsets round((341 - 224) / 2) = 58 and round((256 - 224) / 2) = 16)
    if width > height:
        want = img.resize((341, 256), Image.Resampling.BILINEAR).crop((58, 16, 58 + 224, 16 + 224))
    else:
        want = img.resize((256, 341), Image.Resampling.BILINEAR).crop((16, 58, 16 + 224, 58 + 224))
    pixels = np.asarray(img)
    got_image = decode_payload("image", encode(img, "PNG"), "", (), pre)
    got_tensor = decode_payload("tensor", pixels.tobytes(), "uint8", pixels.shape, pre)
    np.testing.assert_array_equal(got_image, np.asarray(want))
    np.testing.assert_array_equal(got_tensor, np.asarray(want))  # a raw tensor goes the same way


def test_crop_applies_to_an_image_already_at_the_model_size_and_to_a_non_square_target() -> None:
    img = _photo(8, 8)
    pre = Preprocess(size=(8, 8), resize="crop", crop_fraction=0.5)  # as the model's evaluation did: 16, centre 8
    want = img.resize((16, 16), Image.Resampling.BILINEAR).crop((4, 4, 12, 12))
    np.testing.assert_array_equal(decode_payload("tensor", np.asarray(img).tobytes(), "uint8", (8, 8, 3), pre),
                                  np.asarray(want))
    wide = Preprocess(size=(10, 20), resize="crop", crop_fraction=1.0)  # a square image to a 1:2 target
    want = _photo(30, 30).resize((20, 20), Image.Resampling.BILINEAR).crop((0, 5, 20, 15))
    np.testing.assert_array_equal(decode_payload("image", encode(_photo(30, 30), "PNG"), "", (), wide),
                                  np.asarray(want))


def test_squash_and_a_manifest_without_a_resize_mode_resize_to_exactly_h_x_w_as_before() -> None:
    img = _photo(40, 30)
    old = Preprocess.from_dict({"size": [16, 16], "mean": [0, 0, 0], "std": [1, 1, 1], "interpolation": "bicubic"})
    assert old.resize == "squash"
    want = np.asarray(img.resize((16, 16), Image.Resampling.BICUBIC))  # what every version did before the field
    np.testing.assert_array_equal(decode_payload("image", encode(img, "PNG"), "", (), old), want)
    pixels = np.asarray(img)
    np.testing.assert_array_equal(decode_payload("tensor", pixels.tobytes(), "uint8", pixels.shape, old), want)
    same = np.asarray(_photo(16, 16))  # already at the size: left as is
    np.testing.assert_array_equal(decode_payload("tensor", same.tobytes(), "uint8", same.shape, old), same)


# A minimal EPS (PostScript) file: what Pillow's EpsImagePlugin would hand to Ghostscript.
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
       b"0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")


def fake_ghostscript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake ``gs`` first on PATH that leaves a marker file when anything runs it; the marker's path."""
    from PIL import EpsImagePlugin

    marker = tmp_path / "gs_ran"
    fake = tmp_path / "bin" / "gs"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {marker}\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # Pillow caches whether gs exists: look again
    return marker


def test_an_eps_payload_is_refused_without_running_ghostscript(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Image.open without ``formats=`` let Pillow's EPS plugin start Ghostscript (``gs``) on any PostScript a
    client sent, even named .jpg: untrusted PostScript interpreted inside the agent. Every way Shortlist opens
    an image refuses it with a reason that says what to do, and no ``gs`` (a fake one first on PATH that
    leaves a marker) is ever started."""
    marker = fake_ghostscript(tmp_path, monkeypatch)
    for call in (lambda: decode_image(EPS), lambda: image_header(EPS),
                 lambda: decode_payload("image", EPS, "", (), Preprocess(size=(8, 8))),
                 lambda: thumbnail("image", EPS, 32)):
        with pytest.raises(ValueError, match=r"EPS/PostScript is not read \(.*\): convert to PNG"):
            call()
    assert exif_metadata(EPS) == {}
    assert not marker.exists()
    assert "EPS" not in raster_formats() and "JPEG" in raster_formats()



def test_a_folder_with_eps_files_skips_them_and_reads_the_rest(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """.eps and .ps are no image extensions (a folder's EPS files are counted among the skipped ones, with what
    to do); one named .jpg is left out of training with its reason, the folder's other images read."""
    from shortlist.datasets import IMAGE_EXTENSIONS, iter_images, load_array

    assert ".eps" not in IMAGE_EXTENSIONS and ".ps" not in IMAGE_EXTENSIONS
    (tmp_path / "a.eps").write_bytes(EPS)
    (tmp_path / "looks_like.jpg").write_bytes(EPS)
    Image.new("RGB", (8, 8), RED).save(tmp_path / "ok.png")
    with caplog.at_level("WARNING", logger="shortlist.datasets"):
        assert [it.id for it in iter_images(tmp_path)] == ["looks_like.jpg", "ok.png"]
    assert "1 .eps; EPS/PostScript is not read: convert to PNG" in caplog.text
    arr = load_array(tmp_path, size=None)
    assert arr.ids == ["ok.png"]
    assert [uri for uri, _ in arr.skipped] == [str(tmp_path / "looks_like.jpg")]
    assert "EPS/PostScript is not read" in arr.skipped[0][1]
