"""indexer.media.images: every file the scanner can meet becomes RGB or a one-line ImageLoadError."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import image_files
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from indexer.media import formats, images
from indexer.media.images import (
    DEFAULT_MAX_MEGAPIXELS,
    ImageLoadError,
    MissingExtraError,
    PreprocessConfig,
    decode_image_bytes,
    open_image,
    preprocess,
    preprocess_batch,
)

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
# JPEG and chroma subsampling move flat colours by a few levels.
LOSSY_TOLERANCE = 12
EXIF_ORIENTATION_TAG = 0x0112
ROTATE_90_CW = 6  # EXIF orientation: the camera was turned, display needs a clockwise turn
# An ISO-BMFF "ftyp" box with major brand heic, as every iPhone photo starts.
HEIC_HEADER = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Incompressible pixels, so a file cut in half really loses image data."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming width x height with almost no pixel data: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _pixel(image: Image.Image, xy: tuple[int, int] = (0, 0)) -> tuple[int, int, int]:
    value = image.getpixel(xy)
    assert isinstance(value, tuple)
    return (int(value[0]), int(value[1]), int(value[2]))


def _close(actual: tuple[int, int, int], expected: tuple[int, int, int], tol: int) -> bool:
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


# ---------------------------------------------------------------- modes -> RGB


def _palette_image(*, transparent: bool) -> tuple[Image.Image, dict[str, object]]:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([*RED, *BLUE])
    return image, ({"transparency": 0} if transparent else {})


def _grey16(value: int, mode: str = "I;16") -> Image.Image:
    return Image.new(mode, (4, 4), value)  # not .convert(): Pillow clips I;16 -> I;16B to 255


def _mode_cases() -> list[tuple[str, Image.Image, str, dict[str, object], tuple[int, int, int]]]:
    """(id, image, format, save params, expected RGB of pixel (0, 0))."""
    p_plain, p_plain_params = _palette_image(transparent=False)
    p_clear, p_clear_params = _palette_image(transparent=True)
    pa = Image.new("PA", (4, 4), (1, 0))
    pa.putpalette([*RED, *BLUE])
    pa_opaque = Image.new("PA", (4, 4), (1, 255))
    pa_opaque.putpalette([*RED, *BLUE])
    one = Image.new("1", (4, 4), 1)
    return [
        ("L", Image.new("L", (4, 4), 100), "PNG", {}, (100, 100, 100)),
        ("1-white", one, "PNG", {}, WHITE),
        ("1-black", Image.new("1", (4, 4), 0), "BMP", {}, (0, 0, 0)),
        ("P", p_plain, "PNG", p_plain_params, RED),
        ("P-transparent-png", p_clear, "PNG", p_clear_params, WHITE),
        ("P-transparent-gif", p_clear, "GIF", p_clear_params, WHITE),
        ("PA-clear", pa, "TIFF", {}, WHITE),
        ("PA-opaque", pa_opaque, "TIFF", {}, BLUE),
        ("LA-clear", Image.new("LA", (4, 4), (50, 0)), "PNG", {}, WHITE),
        ("LA-opaque", Image.new("LA", (4, 4), (50, 255)), "PNG", {}, (50, 50, 50)),
        ("RGBA-clear", Image.new("RGBA", (4, 4), (10, 20, 30, 0)), "PNG", {}, WHITE),
        ("RGBA-half", Image.new("RGBA", (4, 4), (255, 0, 0, 128)), "PNG", {}, (255, 127, 127)),
        ("RGBA-webp", Image.new("RGBA", (4, 4), (0, 0, 0, 0)), "WEBP", {"lossless": True}, WHITE),
        ("RGB-colour-key", Image.new("RGB", (4, 4), BLUE), "PNG", {"transparency": BLUE}, WHITE),
        ("CMYK-jpeg", Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", {}, RED),
        ("CMYK-tiff", Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "TIFF", {}, RED),
        ("I;16-png", _grey16(32768), "PNG", {}, (128, 128, 128)),
        ("I;16-white", _grey16(65535), "PNG", {}, WHITE),
        ("I;16B-tiff", _grey16(32768, "I;16B"), "TIFF", {}, (128, 128, 128)),
        ("I-tiff", _grey16(32768, "I"), "TIFF", {}, (128, 128, 128)),
        ("F-unit", Image.new("F", (4, 4), 0.5), "TIFF", {}, (128, 128, 128)),
        ("F-bytes", Image.new("F", (4, 4), 200.0), "TIFF", {}, (200, 200, 200)),
        ("YCbCr-tiff", Image.new("RGB", (4, 4), RED).convert("YCbCr"), "TIFF", {}, RED),
    ]


@pytest.mark.parametrize(
    ("image", "fmt", "params", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in _mode_cases()],
)
def test_every_mode_becomes_rgb_with_the_right_colour(
    tmp_path: Path,
    image: Image.Image,
    fmt: str,
    params: dict[str, object],
    expected: tuple[int, int, int],
) -> None:
    path = _write(tmp_path / f"img.{fmt.lower()}", _encode(image, fmt, **params))
    with Image.open(path) as stored:  # the file really holds the mode under test
        assert stored.mode == image.mode or (fmt, stored.mode) == ("GIF", "P")
    result = open_image(path)
    assert result.mode == "RGB"
    tolerance = LOSSY_TOLERANCE if fmt == "JPEG" else 1
    assert _close(_pixel(result), expected, tolerance), _pixel(result)


def test_wide_integer_data_outside_16_bit_is_stretched_not_clipped(tmp_path: Path) -> None:
    values = np.array([[-1000, 1000]], dtype=np.int32)
    path = _write(tmp_path / "signed.tif", _encode(Image.fromarray(values, "I"), "TIFF"))
    result = open_image(path)
    assert _pixel(result, (0, 0)) == (0, 0, 0)
    assert _pixel(result, (1, 0)) == WHITE


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), RED)
    image.paste(BLUE, (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = ROTATE_90_CW
    path = _write(tmp_path / "phone.jpg", _encode(image, "JPEG", exif=exif, quality=95))
    result = open_image(path)
    assert result.size == (20, 40)
    # A clockwise quarter turn puts the left (red) half on top.
    assert _close(_pixel(result, (10, 5)), RED, LOSSY_TOLERANCE)
    assert _close(_pixel(result, (10, 35)), BLUE, LOSSY_TOLERANCE)


@pytest.mark.parametrize(("fmt", "params"), [("GIF", {}), ("WEBP", {"lossless": True})])
def test_animation_gives_first_frame(tmp_path: Path, fmt: str, params: dict[str, object]) -> None:
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    data = _encode(frames[0], fmt, save_all=True, append_images=frames[1:], **params)
    path = _write(tmp_path / f"anim.{fmt.lower()}", data)
    with Image.open(path) as stored:
        assert getattr(stored, "n_frames", 1) == 2
    assert _pixel(open_image(path)) == RED


# ---------------------------------------------------------------- draft and size guard


def test_jpeg_draft_decodes_smaller_but_not_below_target(tmp_path: Path) -> None:
    path = _write(tmp_path / "big.jpg", _encode(Image.new("RGB", (2000, 1500), RED), "JPEG"))
    target = 224
    drafted = open_image(path, target_size=target)
    assert drafted.size[0] < 2000 and drafted.size[1] < 1500
    assert min(drafted.size) >= target
    assert open_image(path).size == (2000, 1500)


def test_target_size_leaves_other_formats_and_small_jpegs_alone(tmp_path: Path) -> None:
    png = _write(tmp_path / "big.png", _encode(Image.new("RGB", (600, 400), RED), "PNG"))
    jpeg = _write(tmp_path / "small.jpg", _encode(Image.new("RGB", (300, 250), RED), "JPEG"))
    assert open_image(png, target_size=100).size == (600, 400)
    assert open_image(jpeg, target_size=224).size == (300, 250)


def test_size_guard_reads_the_header_and_names_the_flag(tmp_path: Path) -> None:
    path = _write(tmp_path / "wide.png", _png_header_only(1500, 1000))
    with pytest.raises(ImageLoadError, match=r"exceeds --max-megapixels 1\b") as info:
        open_image(path, max_megapixels=1.0)
    assert "1500x1000" in info.value.reason


def test_bomb_beyond_pillows_own_limit_is_an_image_load_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "bomb.png", _png_header_only(20_000, 20_000))  # 400 MP
    pillow_limit = Image.MAX_IMAGE_PIXELS
    flag = f"exceeds --max-megapixels {DEFAULT_MAX_MEGAPIXELS:g}"
    with pytest.raises(ImageLoadError, match=flag):
        open_image(path)
    assert pillow_limit == Image.MAX_IMAGE_PIXELS  # no global left changed


def test_guard_holds_when_pillows_check_is_disabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = _write(tmp_path / "bomb.png", _png_header_only(20_000, 20_000))
    with pytest.raises(ImageLoadError, match="exceeds --max-megapixels"):
        open_image(path)


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pillow_bomb_warning_raised_as_error_is_an_image_load_error(tmp_path: Path) -> None:
    data = _png_header_only(10_000, 10_000)  # 100 MP: above Pillow's warning, below its error
    with pytest.raises(ImageLoadError, match="Pillow's decompression-bomb limit"):
        decode_image_bytes(data, max_megapixels=150.0)


# ---------------------------------------------------------------- broken files


def _truncated(fmt: str) -> bytes:
    data = _encode(_noise((64, 64)), fmt)
    return data[: len(data) // 2]


BROKEN_INPUTS = [
    pytest.param("empty.jpg", b"", "empty file", id="zero-bytes"),
    pytest.param("notes.jpg", b"shopping list\n", "not an image", id="text-as-jpg"),
    pytest.param("cut.jpg", _truncated("JPEG"), "truncated or corrupt", id="truncated-jpeg"),
    pytest.param("cut.png", _truncated("PNG"), "truncated or corrupt", id="truncated-png"),
    pytest.param("scan.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n", "not an image", id="eps-refused"),
]


@pytest.mark.parametrize(("name", "data", "reason"), BROKEN_INPUTS)
def test_broken_files_raise_with_a_short_reason(
    tmp_path: Path, name: str, data: bytes, reason: str
) -> None:
    path = _write(tmp_path / name, data)
    with pytest.raises(ImageLoadError) as info:
        open_image(path)
    assert reason in info.value.reason
    assert info.value.path == path
    assert str(info.value) == f"{path}: {info.value.reason}"


@pytest.mark.parametrize(("name", "data", "reason"), BROKEN_INPUTS)
def test_broken_bytes_raise_the_same_reasons(name: str, data: bytes, reason: str) -> None:
    with pytest.raises(ImageLoadError) as info:
        decode_image_bytes(data, name=name)
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{name}: ")


def test_permission_denied(tmp_path: Path) -> None:
    path = _write(tmp_path / "secret.png", _encode(Image.new("RGB", (4, 4)), "PNG"))
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user (root) who can read a mode-000 file")
        with pytest.raises(ImageLoadError, match="permission denied"):
            open_image(path)
    finally:
        path.chmod(0o600)


def test_file_vanished_between_scan_and_load(tmp_path: Path) -> None:
    path = _write(tmp_path / "gone.png", _encode(Image.new("RGB", (4, 4)), "PNG"))
    path.unlink()  # what a sync client or a user does after the scan listed the file
    with pytest.raises(ImageLoadError, match="file not found"):
        open_image(path)


def test_directory_named_like_an_image(tmp_path: Path) -> None:
    folder = tmp_path / "album.jpg"
    folder.mkdir()
    with pytest.raises(ImageLoadError, match="is a directory"):
        open_image(folder)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")
def test_named_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageLoadError, match="not a regular file"):
        open_image(fifo)


def test_error_carries_path_and_reason_and_pickles(tmp_path: Path) -> None:
    error = ImageLoadError(tmp_path / "x.jpg", "empty file")
    copy = pickle.loads(pickle.dumps(error))  # crosses DataLoader worker processes
    assert (copy.path, copy.reason, str(copy)) == (error.path, error.reason, str(error))


def test_bytes_and_file_decode_identically(tmp_path: Path) -> None:
    data = _encode(_noise((30, 20)), "PNG")
    path = _write(tmp_path / "same.png", data)
    config = PreprocessConfig(image_size=16)
    from_file = preprocess(open_image(path), config)
    from_upload = preprocess(decode_image_bytes(data, name="upload.png"), config)
    assert torch.equal(from_file, from_upload)


def test_rejects_nonsense_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_megapixels"):
        decode_image_bytes(b"x", max_megapixels=0)
    with pytest.raises(ValueError, match="target_size"):
        open_image(tmp_path / "x.jpg", target_size=0)


# ---------------------------------------------------------------- HEIC / HEIF


@pytest.fixture
def without_pillow_heif(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make `import pillow_heif` fail, as on an install without the [heif] extra."""
    monkeypatch.setitem(sys.modules, "pillow_heif", None)
    images._register_heif.cache_clear()
    yield
    images._register_heif.cache_clear()


@pytest.mark.usefixtures("without_pillow_heif")
@pytest.mark.parametrize(
    ("name", "data"),
    [
        pytest.param("IMG_0001.HEIC", HEIC_HEADER + b"\x00" * 64, id="heic-name-and-magic"),
        pytest.param("upload.bin", HEIC_HEADER + b"\x00" * 64, id="magic-only"),
        pytest.param("odd.heif", b"not really anything", id="extension-only"),
    ],
)
def test_heic_without_extra_names_the_extra(tmp_path: Path, name: str, data: bytes) -> None:
    with pytest.raises(MissingExtraError, match=r"mmsearch\[heif\]"):
        open_image(_write(tmp_path / name, data))
    with pytest.raises(MissingExtraError, match=r"mmsearch\[heif\]"):
        decode_image_bytes(data, name=name)


@pytest.mark.usefixtures("without_pillow_heif")
def test_jpeg_misnamed_heic_still_decodes_without_extra(tmp_path: Path) -> None:
    path = _write(tmp_path / "export.heic", _encode(Image.new("RGB", (8, 8), RED), "JPEG"))
    assert _close(_pixel(open_image(path)), RED, LOSSY_TOLERANCE)


def test_heic_decodes_when_extra_installed(tmp_path: Path) -> None:
    import pillow_heif  # the heif extra is part of the dev environment (make install)

    path = tmp_path / "photo.heic"
    pillow_heif.from_pillow(Image.new("RGB", (64, 48), RED)).save(path, quality=90)
    assert path.read_bytes()[4:12] == b"ftypheic"  # a real HEIC, as an iPhone writes it
    result = open_image(path)
    assert result.mode == "RGB" and result.size == (64, 48)
    assert _close(_pixel(result, (32, 24)), RED, 2 * LOSSY_TOLERANCE)
    uploaded = decode_image_bytes(path.read_bytes(), name="upload.bin")  # found by its bytes
    assert _close(_pixel(uploaded, (32, 24)), RED, 2 * LOSSY_TOLERANCE)


# ---------------------------------------------------------------- every format Pillow decodes


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in image_files.PILLOW_CASES])
def test_every_format_pillow_decodes_is_an_image(tmp_path: Path, case: image_files.FormatCase) -> None:
    data = image_files.written(case)
    path = _write(tmp_path / f"picture{case.suffix}", data)
    assert formats.has_image_extension(str(path))
    result = open_image(path)
    assert result.mode == "RGB" and result.size == image_files.PICTURE_SIZE
    assert _close(_pixel(result, (16, 12)), case.colour, LOSSY_TOLERANCE), _pixel(result, (16, 12))
    if case.name == "TGA":  # no signature: only its extension says TGA, other names never do
        assert not formats.looks_like_image(data[: formats.SNIFF_BYTES])
        with pytest.raises(ImageLoadError, match="not an image"):
            decode_image_bytes(data, name="export.bin")
        return
    # Under a name that says nothing, the bytes alone make it an image, as for an upload.
    assert formats.looks_like_image(data[: formats.SNIFF_BYTES])
    unnamed = decode_image_bytes(data, name="export.bin")
    assert _close(_pixel(unnamed, (16, 12)), case.colour, LOSSY_TOLERANCE)


NON_IMAGES = [
    pytest.param("manual.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF document", id="pdf"),
    pytest.param("look.cube", b'TITLE "warm"\nLUT_3D_SIZE 2\n0.0 0.0 0.0\n', "text", id="lut"),
    pytest.param("sea.gpl", b"GIMP Palette\nName: sea\n 12 34 56 deep\n", "text", id="palette"),
    pytest.param("sea.aco", b"\x00\x01\x00\x02\x00\x00\x0c\x22" + bytes(24), "unrecognised", id="aco"),
    pytest.param("notes", "café ☕ notes\n".encode(), "text", id="utf8-text"),
    pytest.param("clip.mp4", b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", "video", id="mp4"),
    pytest.param("fig.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n", "PostScript/EPS", id="eps"),
    pytest.param("empty.bin", b"", "empty file", id="empty"),
]


@pytest.mark.parametrize(("name", "data", "kind"), NON_IMAGES)
def test_non_images_are_named_by_what_they_are(name: str, data: bytes, kind: str) -> None:
    header = data[: formats.SNIFF_BYTES]
    assert not formats.looks_like_image(header, formats.extension(name))
    reason = formats.not_image_reason(name, header)
    assert reason.startswith(f"not an image file type ({formats.extension(name) or 'no extension'}: ")
    assert kind in reason and "\n" not in reason


def test_known_extensions_are_the_ones_pillow_registers_for_the_formats_decoded() -> None:
    # The scan uses a plain list (no Pillow import); it must not drift from Pillow's own.
    registered = Image.registered_extensions()
    for ext in formats.PILLOW_EXTENSIONS | set(formats.UNSIGNED_FORMAT_EXTENSIONS):
        fmt = registered.get(ext)
        assert fmt in {*formats.PILLOW_FORMATS, "MPO", "TGA"}, (ext, fmt)
    # Every format decoded has at least one extension that names it.
    named = {registered[ext] for ext in formats.PILLOW_EXTENSIONS}
    assert set(formats.PILLOW_FORMATS) <= named


# ---------------------------------------------------------------- JPEG XL and camera RAW


def test_jpeg_xl_decodes_when_extra_installed(tmp_path: Path) -> None:
    path = _write(tmp_path / "photo.jxl", image_files.jxl_bytes((64, 48)))
    assert formats.looks_like_jxl(path.read_bytes())
    result = open_image(path)
    assert result.mode == "RGB" and result.size == (64, 48)
    assert _close(_pixel(result, (32, 24)), RED, LOSSY_TOLERANCE)
    uploaded = decode_image_bytes(path.read_bytes(), name="upload.bin")
    assert _close(_pixel(uploaded, (32, 24)), RED, LOSSY_TOLERANCE)


@pytest.mark.parametrize(
    ("name", "write"),
    [("cut.heic", image_files.heic_bytes), ("cut.jxl", image_files.jxl_bytes)],
)
@pytest.mark.parametrize("keep", [40, 0.5])
def test_broken_heic_and_jxl_are_image_load_errors(
    name: str, write: Callable[[tuple[int, int]], bytes], keep: float
) -> None:
    data = write((64, 48))
    cut = data[: int(keep if keep >= 1 else len(data) * keep)]
    with pytest.raises(ImageLoadError) as info:  # their plugins raise RuntimeError: not a crash
        decode_image_bytes(cut, name=name)
    assert not isinstance(info.value, MissingExtraError)


def test_avif_with_a_generic_heif_brand_goes_to_the_avif_decoder() -> None:
    data = image_files.encode(Image.new("RGB", (32, 24), RED), "AVIF")
    assert data[8:12] == b"avif"
    generic = data[:8] + b"mif1" + data[12:]  # what some encoders write; "avif" stays compatible
    assert not formats.looks_like_heif(generic)
    assert formats.looks_like_heif(image_files.heic_bytes())
    for name in ("photo.avif", "upload.bin"):  # with the heif extra installed, as here
        assert _close(_pixel(decode_image_bytes(generic, name=name)), RED, LOSSY_TOLERANCE)


@pytest.fixture
def without_extra(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make the optional extras' imports fail, as on an install without them."""
    for module in ("pillow_heif", "pillow_jxl", "rawpy"):
        monkeypatch.setitem(sys.modules, module, None)
    caches = (images._register_heif, images._register_jxl, images._import_rawpy)
    for cache in caches:
        cache.cache_clear()
    yield
    for cache in caches:
        cache.cache_clear()


@pytest.mark.usefixtures("without_extra")
@pytest.mark.parametrize(
    ("name", "data", "extra"),
    [
        pytest.param("photo.jxl", b"\xff\x0a" + bytes(64), "jxl", id="jxl-codestream"),
        pytest.param("x.bin", b"\x00\x00\x00\x0cJXL \r\n\x87\n" + bytes(64), "jxl", id="jxl-box"),
        pytest.param("IMG_1.DNG", b"II*\x00\x08\x00\x00\x00" + bytes(64), "raw", id="dng"),
        pytest.param("x.bin", b"FUJIFILMCCD-RAW 0201" + bytes(64), "raw", id="raf-magic"),
        pytest.param("x.bin", b"II*\x00\x10\x00\x00\x00CR\x02\x00" + bytes(64), "raw", id="cr2"),
    ],
)
def test_jxl_and_raw_without_extra_name_the_extra(name: str, data: bytes, extra: str) -> None:
    with pytest.raises(MissingExtraError, match=rf"pip install 'mmsearch\[{extra}\]'"):
        decode_image_bytes(data, name=name)
    assert formats.looks_like_image(data[: formats.SNIFF_BYTES], formats.extension(name))


def _decoded_raw(path: Path, **kwargs: Any) -> images.DecodedImage:
    return images.decode_bytes(path.read_bytes(), name=path.name, **kwargs)


def test_raw_uses_its_embedded_preview_when_it_is_big_enough(tmp_path: Path) -> None:
    dng = image_files.write_dng(tmp_path / "IMG_0001.dng", preview_size=(256, 192))
    decoded = _decoded_raw(dng, target_size=128)
    assert decoded.source == images.FROM_RAW_PREVIEW
    assert (decoded.width, decoded.height) == image_files.RAW_SIZE  # the photo's size, not the preview's
    assert _close(_pixel(decoded.image, (64, 48)), BLUE, LOSSY_TOLERANCE)
    assert _close(_pixel(open_image(dng, target_size=128), (64, 48)), BLUE, LOSSY_TOLERANCE)


@pytest.mark.parametrize(
    ("target_size", "embedded_thumbnail", "size"),
    [
        pytest.param(160, True, (256, 192), id="preview-too-small-half-size"),
        pytest.param(64, False, (256, 192), id="previews-turned-off"),
        pytest.param(None, True, image_files.RAW_SIZE, id="full-size-wanted"),
    ],
)
def test_raw_is_demosaiced_when_the_preview_cannot_stand_in(
    tmp_path: Path, target_size: int | None, embedded_thumbnail: bool, size: tuple[int, int]
) -> None:
    dng = image_files.write_dng(tmp_path / "IMG_0002.dng", preview_size=(128, 96))
    decoded = _decoded_raw(dng, target_size=target_size, embedded_thumbnail=embedded_thumbnail)
    assert decoded.source == images.FROM_RAW
    assert decoded.image.mode == "RGB" and decoded.image.size == size
    red, green, blue = _pixel(decoded.image, (size[0] // 2, size[1] // 2))
    assert red > 200 and red > 3 * max(green, blue), (red, green, blue)  # the sensor's red


def test_raw_over_the_pixel_cap_or_broken_is_an_image_load_error(tmp_path: Path) -> None:
    dng = image_files.write_dng(tmp_path / "big.dng", preview_size=(256, 192))
    with pytest.raises(ImageLoadError, match=r"exceeds --max-megapixels 0\.1"):
        _decoded_raw(dng, max_megapixels=0.1, target_size=64)
    broken = dng.read_bytes()[:600]  # the header survives, the sensor data does not
    with pytest.raises(ImageLoadError) as info:
        decode_image_bytes(broken, name="cut.dng", target_size=64)
    assert not isinstance(info.value, MissingExtraError)
    assert "RAW" in info.value.reason or "not an image" in info.value.reason


# ---------------------------------------------------------------- preprocess


def test_preprocess_shape_dtype_and_normalisation() -> None:
    config = PreprocessConfig(image_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    tensor = preprocess(Image.new("RGB", (40, 30), (255, 0, 128)), config)
    assert tensor.shape == (3, 16, 16) and tensor.dtype == torch.float32
    assert tensor.is_contiguous()
    expected = torch.tensor([(1.0 - 0.5) / 0.25, (0.0 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.25])
    assert torch.allclose(tensor.mean(dim=(1, 2)), expected, atol=1e-5)


def _three_stripes() -> Image.Image:
    image = Image.new("RGB", (60, 20), RED)
    image.paste((0, 255, 0), (20, 0, 40, 20))
    image.paste(BLUE, (40, 0, 60, 20))
    return image


def _channel_at(tensor: torch.Tensor, column: int) -> int:
    return int(tensor[:, :, column].mean(dim=1).argmax())


def test_center_crop_keeps_the_middle_and_squash_keeps_everything() -> None:
    cropped = preprocess(_three_stripes(), PreprocessConfig(image_size=8))
    assert {_channel_at(cropped, c) for c in range(8)} == {1}  # only the green middle
    squashed = preprocess(_three_stripes(), PreprocessConfig(image_size=9, resize="squash"))
    assert [_channel_at(squashed, c) for c in (0, 4, 8)] == [0, 1, 2]


def test_preprocess_refuses_non_rgb() -> None:
    with pytest.raises(ValueError, match="RGB"):
        preprocess(Image.new("RGBA", (8, 8)), PreprocessConfig())


def test_preprocess_batch_stacks() -> None:
    config = PreprocessConfig(image_size=12)
    batch = [Image.new("RGB", (20, 10), RED), _noise((15, 25))]
    stacked = preprocess_batch(batch, config)
    assert stacked.shape == (2, 3, 12, 12) and stacked.dtype == torch.float32
    assert torch.equal(stacked[1], preprocess(batch[1], config))
    assert preprocess_batch([], config).shape == (0, 3, 12, 12)


def test_preprocess_config_round_trips_through_json() -> None:
    config = PreprocessConfig(image_size=32, mean=(0.4, 0.45, 0.5), resize="squash")
    assert PreprocessConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert PreprocessConfig.from_dict({"image_size": 32}) == PreprocessConfig(image_size=32)


@pytest.mark.parametrize(
    "data",
    [{"imagesize": 32}, {"resize": "stretch"}, {"std": [0.5, 0.0, 0.5]}, {"mean": [0.5]}],
)
def test_preprocess_config_refuses_bad_values(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        PreprocessConfig.from_dict(data)


# ---------------------------------------------------------------- fuzzing


def _seed_files() -> dict[str, bytes]:
    small = _noise((12, 9), seed=1)
    frames = [small.convert("P"), Image.new("RGB", (12, 9), BLUE).convert("P")]
    return {
        "png": _encode(small, "PNG"),
        "jpg": _encode(small, "JPEG", quality=80),
        "gif": _encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
    }


SEED_FILES = _seed_files()
POSITION = st.floats(min_value=0.0, max_value=1.0)
MUTATION = st.one_of(
    st.tuples(st.just("truncate"), POSITION, st.just(b"")),
    st.tuples(st.just("flip"), POSITION, st.binary(min_size=1, max_size=1)),
    st.tuples(st.just("insert"), POSITION, st.binary(min_size=1, max_size=16)),
)


def _mangle(data: bytes, mutations: list[tuple[str, float, bytes]]) -> bytes:
    mangled = bytearray(data)
    for kind, position, payload in mutations:
        at = int(position * len(mangled))
        if kind == "truncate":
            del mangled[at:]
        elif kind == "flip" and at < len(mangled):
            mangled[at] ^= payload[0] or 1
        elif kind == "insert":
            mangled[at:at] = payload
    return bytes(mangled)


@settings(
    max_examples=150,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    kind=st.sampled_from(sorted(SEED_FILES)),
    mutations=st.lists(MUTATION, min_size=1, max_size=5),
    target_size=st.sampled_from([None, 4]),
)
def test_mangled_bytes_give_rgb_or_image_load_error(
    kind: str, mutations: list[tuple[str, float, bytes]], target_size: int | None
) -> None:
    data = _mangle(SEED_FILES[kind], mutations)
    try:
        result = decode_image_bytes(data, name=f"fuzz.{kind}", target_size=target_size)
    except ImageLoadError:
        return
    assert result.mode == "RGB" and min(result.size) > 0
