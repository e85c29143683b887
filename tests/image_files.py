"""Real image files of every format the indexer decodes, written by the libraries users' cameras
and tools use (Pillow, pillow-heif, pillow-jxl-plugin, tifffile), for tests/test_images.py and
tests/test_bad_files.py. Plain functions; fixtures stay in the test files."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
PICTURE_SIZE = (32, 24)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    """The bytes of image saved by Pillow in fmt."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def psd_bytes(image: Image.Image) -> bytes:
    """A flat 8-bit RGB Photoshop file (Pillow reads PSD but cannot write it)."""
    width, height = image.size
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    empty_sections = struct.pack(">III", 0, 0, 0)  # colour mode data, resources, layers
    planes = np.asarray(image.convert("RGB"))  # (H, W, 3)
    raw = struct.pack(">H", 0)  # uncompressed
    return header + empty_sections + raw + b"".join(planes[..., c].tobytes() for c in range(3))


def mpo_bytes(image: Image.Image) -> bytes:
    """A two-picture MPO, as phones and 3D cameras write; the first picture is the photo."""
    data = encode(image, "MPO", save_all=True, append_images=[Image.new("RGB", image.size, BLUE)])
    with Image.open(io.BytesIO(data)) as stored:
        assert stored.format == "MPO" and getattr(stored, "n_frames", 1) == 2
    return data


@dataclass(frozen=True)
class FormatCase:
    """A red PICTURE_SIZE picture in one format: how to write it and the colour it decodes to."""

    name: str
    suffix: str
    write: Callable[[], bytes]
    colour: tuple[int, int, int] = RED


_RED = Image.new("RGB", PICTURE_SIZE, RED)
# The formats Pillow decodes that an extension allowlist once skipped.
PILLOW_CASES: tuple[FormatCase, ...] = (
    FormatCase("AVIF", ".avif", lambda: encode(_RED, "AVIF", quality=90)),
    FormatCase("MPO", ".mpo", lambda: mpo_bytes(_RED)),
    FormatCase("JPEG2000", ".jp2", lambda: encode(_RED, "JPEG2000")),
    FormatCase("J2K-codestream", ".j2k", lambda: encode(_RED, "JPEG2000", no_jp2=True)),
    FormatCase("TGA", ".tga", lambda: encode(_RED, "TGA")),
    FormatCase("PPM", ".ppm", lambda: encode(_RED, "PPM")),
    FormatCase("PGM", ".pgm", lambda: encode(_RED.convert("L"), "PPM"), (76, 76, 76)),
    FormatCase("PBM", ".pbm", lambda: encode(Image.new("1", PICTURE_SIZE, 1), "PPM"), WHITE),
    FormatCase("ICO", ".ico", lambda: encode(_RED, "ICO", sizes=[PICTURE_SIZE])),
    FormatCase("QOI", ".qoi", lambda: encode(_RED, "QOI")),
    FormatCase("PSD", ".psd", lambda: psd_bytes(_RED)),
)


def written(case: FormatCase) -> bytes:
    """The case's bytes; the test is skipped, with the reason, if this Pillow cannot write it."""
    try:
        return case.write()
    except (KeyError, OSError) as exc:  # a Pillow built without that encoder
        pytest.skip(f"this Pillow cannot write {case.name}: {exc}")


def heic_bytes(size: tuple[int, int] = PICTURE_SIZE) -> bytes:
    """A red HEIC as an iPhone writes it (needs the heif extra)."""
    import pillow_heif

    buffer = io.BytesIO()
    pillow_heif.from_pillow(Image.new("RGB", size, RED)).save(buffer, format="HEIF", quality=90)
    return buffer.getvalue()


def jxl_bytes(size: tuple[int, int] = PICTURE_SIZE) -> bytes:
    """A red JPEG XL (needs the jxl extra, whose import registers the JXL format)."""
    import pillow_jxl  # noqa: F401

    return encode(Image.new("RGB", size, RED), "JXL", quality=90)


# A DNG is a TIFF: IFD0 holds the camera's preview (NewSubfileType 1) and a SubIFD the sensor's
# Bayer mosaic. The preview is blue and the sensor data red, so a test sees which was decoded.
RAW_SIZE = (512, 384)
DNG_TAGS = [
    (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
    (50708, "s", 0, "mmsearch test camera", True),  # UniqueCameraModel
    (50721, "2i", 9, (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1), True),  # ColorMatrix1
    (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True),  # AsShotNeutral
]
BAYER_TAGS = [
    (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
    (33422, "B", 4, (0, 1, 1, 2), True),  # CFAPattern: RGGB
    (50717, "I", 1, 4095, True),  # WhiteLevel (12-bit sensor)
]
CFA_PHOTOMETRIC = 32803
JPEG_COMPRESSION = 7
YCBCR_PHOTOMETRIC = 6


def write_dng(path: Path, preview_size: tuple[int, int]) -> Path:
    """A DNG whose sensor data is red and whose JPEG preview (preview_size) is blue."""
    import tifffile

    width, height = RAW_SIZE
    bayer = np.zeros((height, width), np.uint16)  # (H, W) RGGB mosaic
    bayer[0::2, 0::2] = 3000  # red sites
    bayer[0::2, 1::2] = bayer[1::2, 0::2] = 300  # green
    bayer[1::2, 1::2] = 150  # blue
    preview = Image.new("RGB", preview_size, BLUE)
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.asarray(preview), photometric="rgb", subfiletype=1, subifds=1,
                  rowsperstrip=preview_size[1], extratags=DNG_TAGS, metadata=None)  # fmt: skip
        tif.write(bayer, photometric=CFA_PHOTOMETRIC, subfiletype=0, extratags=BAYER_TAGS, metadata=None)
    # Cameras store the preview as a JPEG. tifffile writes JPEG only with imagecodecs, so the
    # preview is written uncompressed and its strip replaced by the JPEG bytes (which are smaller).
    jpeg = encode(preview, "JPEG", quality=90)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        page = tif.pages[0]
        tif.filehandle.seek(page.tags["StripOffsets"].value[0])
        tif.filehandle.write(jpeg)
        page.tags["StripByteCounts"].overwrite((len(jpeg),))
        page.tags["Compression"].overwrite(JPEG_COMPRESSION)
        page.tags["PhotometricInterpretation"].overwrite(YCBCR_PHOTOMETRIC)
    return path
