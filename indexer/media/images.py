"""Image files -> RGB images -> model tensors, defined once for index time and query time.

`open_image` and `decode_image_bytes` turn any file or upload into an upright 8-bit RGB image or
raise `ImageLoadError(path, reason)`; `preprocess` (indexer/media/preprocess.py) turns that image
into the tensor the image tower sees. Both sides of the search import these, so a query photo
is treated exactly like an indexed one.
"""

from __future__ import annotations

import functools
import io
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from indexer.errors import InvalidInputError
from indexer.media import formats
from indexer.media.formats import HEIF_EXTENSIONS, JXL_EXTENSIONS, RAW_EXTENSIONS
from indexer.media.formats import IMAGE_EXTENSIONS as IMAGE_EXTENSIONS  # re-exported, as before
from indexer.media.formats import PILLOW_FORMATS as PILLOW_FORMATS  # re-exported, as before

# Re-exported: preprocessing lived here before preprocess.py.
from indexer.media.preprocess import UINT8_MAX
from indexer.media.preprocess import model_input_image as model_input_image
from indexer.media.preprocess import normalise_uint8 as normalise_uint8
from indexer.media.preprocess import preprocess as preprocess
from indexer.media.preprocess import preprocess_batch as preprocess_batch

# Re-exported: these settings lived here before settings.py.
from indexer.media.settings import DECODE_PROCESSES_FLAG as DECODE_PROCESSES_FLAG
from indexer.media.settings import DECODE_TIMEOUT_FLAG as DECODE_TIMEOUT_FLAG
from indexer.media.settings import DEFAULT_DECODE_PROCESSES as DEFAULT_DECODE_PROCESSES
from indexer.media.settings import DEFAULT_DECODE_TIMEOUT_S as DEFAULT_DECODE_TIMEOUT_S
from indexer.media.settings import DEFAULT_MAX_MEGAPIXELS as DEFAULT_MAX_MEGAPIXELS
from indexer.media.settings import MAX_MEGAPIXELS_FLAG as MAX_MEGAPIXELS_FLAG
from indexer.media.settings import PIXELS_PER_MEGAPIXEL as PIXELS_PER_MEGAPIXEL
from indexer.media.settings import RESIZE_MODES as RESIZE_MODES
from indexer.media.settings import PreprocessConfig as PreprocessConfig

HEIF_EXTRA_REASON = "HEIC/HEIF needs the optional extra: pip install 'mmsearch[heif]'"
JXL_EXTRA_REASON = "JPEG XL needs the optional extra: pip install 'mmsearch[jxl]'"
RAW_EXTRA_REASON = "camera RAW needs the optional extra: pip install 'mmsearch[raw]'"

HEIF_FORMAT = "HEIF"  # registered by pillow_heif
JXL_FORMAT = "JXL"  # registered by pillow_jxl (the jxl extra)

# JPEG DCT scaling shrinks by 2, 4 or 8 only, so draft mode pays off from twice the target.
DRAFT_MIN_RATIO = 2
DRAFT_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO"})

# Cameras and phones store a ~160x120 JPEG preview in EXIF IFD1. When it has enough pixels for
# the model and the main image's shape, decoding it (~1 ms) replaces decoding the photo (~45 ms
# for 12 MP even at 1/8 scale). A preview whose aspect ratio differs by more than this fraction is
# letterboxed or stale (edited without updating it) and is not used.
THUMBNAIL_ASPECT_TOLERANCE = 0.02
FROM_EXIF_THUMBNAIL = "exif thumbnail"  # DecodedImage.source when the preview stood in
FROM_RAW_PREVIEW = "raw preview"  # a camera RAW's embedded preview stood in for its sensor data
FROM_RAW = "raw"  # a camera RAW demosaiced by LibRaw (at half size when that is big enough)
# LibRaw's sizes.flip -> the EXIF orientation with the same meaning (3: 180, 5: 90 CCW, 6: 90 CW).
RAW_FLIP_ORIENTATION: dict[int, int] = {3: 3, 5: 8, 6: 6}
EXIF_HEADER = b"Exif\x00\x00"  # APP1 payload prefix; IFD offsets count from just after it
# A file whose data does not end with the JPEG end-of-image marker (zero padding allowed) may be
# truncated: it is decoded in full, so that damage is reported, never hidden behind its preview.
JPEG_EOI = b"\xff\xd9"
TAIL_BYTES = 64
# EXIF orientation -> the transpose that makes the stored pixels upright (as ImageOps does).
ORIENTATION_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SIDEWAYS_ORIENTATIONS: frozenset[int] = frozenset({5, 6, 7, 8})

# Transparent pixels are shown over white: most images with alpha are logos and icons drawn
# for light pages, and black (what dropping alpha gives) would turn them into dark blobs.
BACKGROUND_RGB = (255, 255, 255)
ALPHA_MODES: frozenset[str] = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
WIDE_INT_MODES: frozenset[str] = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "I;16S"})
UINT16_MAX = 65535


# What Pillow raises on bad bytes besides UnidentifiedImageError and the bomb checks: OSError for
# truncated or broken streams, plus the parse errors Pillow's own open() treats as "this plugin
# cannot read it" (SyntaxError, IndexError, TypeError, struct.error), which load() can also let
# escape: fuzzing found a TypeError from a corrupt TIFF directory.
DECODE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    ValueError,
    EOFError,
    SyntaxError,
    IndexError,
    TypeError,
    struct.error,
)

# pillow-heif and pillow-jxl-plugin raise RuntimeError for data their C library rejects.
EXTRA_PLUGIN_ERRORS: tuple[type[Exception], ...] = (RuntimeError,)


class ImageLoadError(InvalidInputError):
    """Raised for any file that cannot become an RGB image; carries path and a short reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        # Both go to Exception so the error pickles across worker processes.
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class MissingExtraError(ImageLoadError):
    """Raised when a file needs an optional dependency that is not installed; reason names it."""


@dataclass(frozen=True)
class DecodedImage:
    """An upright RGB image, possibly reduced for the model, and the file's full upright size.

    source says which pixels were decoded: "full", "draft" (libjpeg DCT scaling),
    "exif thumbnail" (the preview cameras embed), "raw preview" or "raw" (a camera RAW's
    embedded preview or its demosaiced sensor data); width and height are always the photo's own.
    """

    image: Image.Image
    width: int
    height: int
    source: str


def open_image(
    path: Path | str,
    *,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    target_size: int | None = None,
    embedded_thumbnail: bool = True,
) -> Image.Image:
    """Decode a file into an RGB image ready for preprocessing, or raise ImageLoadError.

    With target_size, a JPEG may be decoded at reduced scale or from its embedded EXIF preview
    (embedded_thumbnail) when either still has at least target_size pixels on the shorter side.
    """
    _check_arguments(max_megapixels, target_size)
    with _open_regular_file(path) as fp:
        return _decode(
            fp,
            path,
            suffix=Path(path).suffix,
            max_megapixels=max_megapixels,
            target_size=target_size,
            embedded_thumbnail=embedded_thumbnail,
        ).image


def decode_image_bytes(
    data: bytes,
    *,
    name: str = "<bytes>",
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    target_size: int | None = None,
    embedded_thumbnail: bool = True,
) -> Image.Image:
    """Same as open_image for uploaded bytes (used by the HTTP layer)."""
    return decode_bytes(
        data,
        name=name,
        max_megapixels=max_megapixels,
        target_size=target_size,
        embedded_thumbnail=embedded_thumbnail,
    ).image


def decode_bytes(
    data: bytes,
    *,
    name: str = "<bytes>",
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    target_size: int | None = None,
    embedded_thumbnail: bool = True,
    inspect: Callable[[ImageFile.ImageFile], None] | None = None,
) -> DecodedImage:
    """decode_image_bytes plus the file's full size, which a reduced decode no longer shows.

    inspect is called with the opened file before its pixels are decoded, so a metadata reader
    need not open it again; it must not raise.
    """
    _check_arguments(max_megapixels, target_size)
    if not data:
        raise ImageLoadError(name, "empty file")
    return _decode(
        io.BytesIO(data),
        name,
        suffix=os.path.splitext(name)[1],
        max_megapixels=max_megapixels,
        target_size=target_size,
        embedded_thumbnail=embedded_thumbnail,
        inspect=inspect,
    )


def _check_arguments(max_megapixels: float, target_size: int | None) -> None:
    """Refuse caller mistakes early, so they are not reported as bad files."""
    if not max_megapixels > 0:
        raise ValueError(f"max_megapixels must be positive, got {max_megapixels}")
    if target_size is not None and target_size <= 0:
        raise ValueError(f"target_size must be positive, got {target_size}")


def _open_regular_file(path: Path | str) -> BinaryIO:
    """Open for reading, turning every file-system failure into a one-line reason."""
    try:
        # stat first: opening a FIFO or device would block or read forever.
        status = os.stat(path)
        if stat.S_ISDIR(status.st_mode):
            raise ImageLoadError(path, "is a directory")
        if not stat.S_ISREG(status.st_mode):
            raise ImageLoadError(path, "not a regular file")
        if status.st_size == 0:
            raise ImageLoadError(path, "empty file")
        return open(path, "rb")  # the caller closes it
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ImageLoadError(path, "file not found") from exc
    except IsADirectoryError as exc:
        raise ImageLoadError(path, "is a directory") from exc
    except PermissionError as exc:
        raise ImageLoadError(path, "permission denied") from exc
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read file ({exc.strerror or exc})") from exc


def _decode(
    fp: BinaryIO,
    source: Path | str,
    *,
    suffix: str,
    max_megapixels: float,
    target_size: int | None,
    embedded_thumbnail: bool,
    inspect: Callable[[ImageFile.ImageFile], None] | None = None,
) -> DecodedImage:
    """Shared body of open_image and decode_bytes: sniff, guard, decode, convert."""
    header = fp.read(formats.SNIFF_BYTES)
    suffix = suffix.lower()
    fp.seek(0)
    if _raw_expected(header, suffix):
        return _decode_raw(
            fp,
            source,
            max_megapixels=max_megapixels,
            target_size=target_size,
            embedded_thumbnail=embedded_thumbnail,
        )
    complete = embedded_thumbnail and target_size is not None and _ends_with_eoi(fp)
    fp.seek(0)
    plugins, missing_extra = _pillow_plugins(header, suffix)
    try:
        with Image.open(fp, formats=plugins) as img:
            _check_pixels(img.size, source, max_megapixels)
            if inspect is not None:
                inspect(img)
            width, height = img.size
            orientation = _orientation(img)
            if orientation in SIDEWAYS_ORIENTATIONS:
                width, height = height, width
            preview = None
            if complete and target_size is not None and img.format in DRAFT_FORMATS:
                preview = _exif_thumbnail(img, target_size)
            if preview is not None:
                upright, kind = _transposed(preview, orientation), FROM_EXIF_THUMBNAIL
            else:
                kind = "full"
                if target_size is not None and img.format in DRAFT_FORMATS:
                    kind = _draft(img, target_size)
                img.load()  # full decode here, so truncation is reported now, not at preprocess
                upright = ImageOps.exif_transpose(img)
    except ImageLoadError:
        raise  # already names the file and the reason (a ValueError, as DECODE_ERRORS would catch)
    except UnidentifiedImageError as exc:
        if missing_extra is not None:
            raise MissingExtraError(source, missing_extra) from exc
        raise ImageLoadError(source, "not an image (unrecognised format)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(source, _pillow_bomb_reason(exc, max_megapixels)) from exc
    except (*DECODE_ERRORS, *EXTRA_PLUGIN_ERRORS) as exc:
        raise ImageLoadError(source, "truncated or corrupt image data") from exc
    return DecodedImage(_to_rgb(upright, source), width, height, kind)


# Anything a broken or oversized preview can raise (UnidentifiedImageError is an OSError).
PREVIEW_ERRORS: tuple[type[Exception], ...] = (
    *DECODE_ERRORS,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


def _ends_with_eoi(fp: BinaryIO) -> bool:
    """True when the stream's last bytes, zero padding aside, are a JPEG end-of-image marker."""
    try:
        size = fp.seek(0, os.SEEK_END)
        fp.seek(max(0, size - TAIL_BYTES))
        return fp.read(TAIL_BYTES).rstrip(b"\x00").endswith(JPEG_EOI)
    except OSError:
        return False


def _orientation(img: Image.Image) -> int:
    """EXIF orientation 1..8 (1 when absent or unreadable)."""
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except DECODE_ERRORS:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _transposed(image: Image.Image, orientation: int) -> Image.Image:
    method = ORIENTATION_TRANSPOSE.get(orientation)
    return image if method is None else image.transpose(method)


def _exif_thumbnail(img: Image.Image, target_size: int) -> Image.Image | None:
    """The decoded EXIF preview when it can stand in for the photo, else None (decode the photo).

    It stands in when it is a readable JPEG whose shorter side reaches target_size and whose
    aspect ratio matches the photo's (letterboxed and stale previews fail that check).
    """
    raw = img.info.get("exif")
    if not isinstance(raw, bytes) or not raw.startswith(EXIF_HEADER):
        return None
    try:
        ifd1 = img.getexif().get_ifd(ExifTags.IFD.IFD1)
        offset = ifd1.get(ExifTags.Base.JpegIFOffset)
        length = ifd1.get(ExifTags.Base.JpegIFByteCount)
        if not isinstance(offset, int) or not isinstance(length, int) or length <= 0:
            return None
        start = len(EXIF_HEADER) + offset
        data = raw[start : start + length]
        if len(data) != length:
            return None
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as preview:
            if not _can_stand_in(preview.size, img.size, target_size):
                return None
            preview.load()
            return preview.copy() if preview.mode in ("RGB", "L") else preview.convert("RGB")
    except PREVIEW_ERRORS:
        return None  # the photo may still be fine: decode it instead


def _can_stand_in(preview: tuple[int, int], photo: tuple[int, int], target_size: int) -> bool:
    """Enough pixels for the model, no more than the photo has, and the photo's shape."""
    (pw, ph), (w, h) = preview, photo
    if min(pw, ph) < target_size or ph <= 0 or h <= 0 or pw * ph > w * h:
        return False
    photo_aspect = w / h
    return abs(pw / ph - photo_aspect) <= THUMBNAIL_ASPECT_TOLERANCE * photo_aspect


def _raw_expected(header: bytes, suffix: str) -> bool:
    """A RAW by signature, or by extension unless the bytes are another format Pillow reads.

    NEF, ARW and DNG files are TIFF containers: their extension is what says RAW.
    """
    if formats.looks_like_raw(header):
        return True
    if suffix not in RAW_EXTENSIONS:
        return False
    return formats.looks_like_tiff(header) or not formats.looks_like_image(header)


def _decode_raw(
    fp: BinaryIO,
    source: Path | str,
    *,
    max_megapixels: float,
    target_size: int | None,
    embedded_thumbnail: bool,
) -> DecodedImage:
    """A camera RAW through LibRaw: its embedded preview when big enough, else demosaiced."""
    rawpy = _import_rawpy()
    if rawpy is None:
        raise MissingExtraError(source, RAW_EXTRA_REASON)
    try:
        with rawpy.imread(fp) as raw:
            stored = (raw.sizes.width, raw.sizes.height)
            _check_pixels(stored, source, max_megapixels)
            orientation = RAW_FLIP_ORIENTATION.get(raw.sizes.flip, 1)
            width, height = stored[::-1] if orientation in SIDEWAYS_ORIENTATIONS else stored
            preview = None
            if embedded_thumbnail and target_size is not None:
                preview = _raw_preview(raw, rawpy, stored, target_size)
            if preview is not None:
                return DecodedImage(
                    _to_rgb(_transposed(preview, orientation), source), width, height, FROM_RAW_PREVIEW
                )
            half = target_size is not None and min(stored) >= DRAFT_MIN_RATIO * target_size
            # (H, W, 3) uint8, already turned upright by LibRaw; half size skips demosaicing.
            pixels = raw.postprocess(half_size=half, use_camera_wb=True, output_bps=8)
    except ImageLoadError:
        raise
    except rawpy.LibRawFileUnsupportedError as exc:
        raise ImageLoadError(source, "not an image (unrecognised RAW format)") from exc
    except (rawpy.LibRawError, *DECODE_ERRORS) as exc:
        raise ImageLoadError(source, "truncated or corrupt RAW data") from exc
    return DecodedImage(Image.fromarray(pixels, "RGB"), width, height, FROM_RAW)


def _raw_preview(raw: Any, rawpy: Any, photo: tuple[int, int], target_size: int) -> Image.Image | None:
    """The camera's embedded preview when it can stand in for the photo (as _exif_thumbnail)."""
    try:
        thumb = raw.extract_thumb()
        if thumb.format == rawpy.ThumbFormat.BITMAP:  # (H, W, 3) uint8
            bitmap = Image.fromarray(thumb.data)
            return bitmap if _can_stand_in(bitmap.size, photo, target_size) else None
        with Image.open(io.BytesIO(thumb.data), formats=("JPEG",)) as preview:
            if not _can_stand_in(preview.size, photo, target_size):
                return None
            _draft(preview, target_size)  # full-size previews (most CR2, ARW) decode at 1/2-1/8
            preview.load()
            return preview.copy() if preview.mode in ("RGB", "L") else preview.convert("RGB")
    except (rawpy.LibRawError, *PREVIEW_ERRORS):
        return None  # no preview, or a broken one: demosaic the RAW data instead


@functools.cache
def _import_rawpy() -> Any:
    """The rawpy module (the raw extra), or None when it is not installed."""
    try:
        import rawpy  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    return rawpy


def _pillow_plugins(header: bytes, suffix: str) -> tuple[tuple[str, ...], str | None]:
    """Pillow formats to try, and the reason to give if the file needs an extra that is missing.

    HEIF and JPEG XL are tried only once their plugin is registered (Pillow raises otherwise).
    """
    tried = formats.pillow_formats_for(suffix)
    if formats.looks_like_heif(header) or suffix in HEIF_EXTENSIONS:
        return ((HEIF_FORMAT, *tried), None) if _register_heif() else (tried, HEIF_EXTRA_REASON)
    if formats.looks_like_jxl(header) or suffix in JXL_EXTENSIONS:
        return ((JXL_FORMAT, *tried), None) if _register_jxl() else (tried, JXL_EXTRA_REASON)
    return tried, None


@functools.cache
def _register_heif() -> bool:
    """Register pillow_heif with Pillow on first HEIF file; False when the extra is missing."""
    try:
        import pillow_heif  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


@functools.cache
def _register_jxl() -> bool:
    """Register the JPEG XL plugin (importing it does) on first JXL file; False when missing."""
    try:
        import pillow_jxl  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def _check_pixels(size: tuple[int, int], source: Path | str, max_megapixels: float) -> None:
    """Refuse from the header alone, before any pixel memory is allocated."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageLoadError(source, f"image has no pixels ({width}x{height})")
    megapixels = width * height / PIXELS_PER_MEGAPIXEL
    if megapixels > max_megapixels:
        raise ImageLoadError(
            source,
            f"{width}x{height} ({megapixels:.1f} MP) exceeds {MAX_MEGAPIXELS_FLAG} "
            f"{max_megapixels:g} (decompression-bomb guard)",
        )


def _pillow_bomb_reason(exc: Exception, max_megapixels: float) -> str:
    """Say which limit refused the image: ours when it is the lower one, else Pillow's."""
    pillow_limit = Image.MAX_IMAGE_PIXELS or 0
    if isinstance(exc, Image.DecompressionBombError):
        pillow_limit *= 2  # Pillow warns above its limit and raises above twice that
    if pillow_limit / PIXELS_PER_MEGAPIXEL >= max_megapixels:
        return f"image exceeds {MAX_MEGAPIXELS_FLAG} {max_megapixels:g} (decompression-bomb guard)"
    return (
        f"image exceeds Pillow's decompression-bomb limit of {pillow_limit} pixels, "
        f"which {MAX_MEGAPIXELS_FLAG} cannot raise (PIL.Image.MAX_IMAGE_PIXELS)"
    )


def _draft(img: ImageFile.ImageFile, target_size: int) -> str:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale; Pillow keeps both sides >= target_size."""
    if min(img.size) >= DRAFT_MIN_RATIO * target_size:
        img.draft("RGB", (target_size, target_size))
        return "draft"
    return "full"


def _to_rgb(image: Image.Image, source: Path | str) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, compositing transparency over white."""
    if image.mode in WIDE_INT_MODES:
        image = _wide_int_to_l(image)
    elif image.mode == "F":
        image = _float_to_l(image)
    try:
        if _has_alpha(image):
            return _over_background(image.convert("RGBA"))
        return image if image.mode == "RGB" else image.convert("RGB")
    except ValueError as exc:
        raise ImageLoadError(source, f"unsupported colour mode {image.mode}") from exc


def _has_alpha(image: Image.Image) -> bool:
    """Alpha channel, transparent palette entry or colour key (tRNS) all count."""
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        return True
    return image.mode == "P" and image.palette is not None and image.palette.mode == "RGBA"


def _over_background(rgba: Image.Image) -> Image.Image:
    """Flatten onto BACKGROUND_RGB instead of dropping alpha (which exposes hidden colours)."""
    background = Image.new("RGBA", rgba.size, (*BACKGROUND_RGB, UINT8_MAX))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _wide_int_to_l(image: Image.Image) -> Image.Image:
    """16/32-bit grey -> 8-bit by scaling, where Pillow's convert would clip to white."""
    pixels = np.asarray(image).astype(np.float32)  # (H, W); float32 halves a 100 MP scan's peak
    # Pillow stores 16-bit PNG/TIFF/PPM samples in "I" too, so 0..65535 reads as 16-bit.
    if image.mode.startswith("I;16") or (pixels.min() >= 0 and pixels.max() <= UINT16_MAX):
        pixels /= UINT16_MAX
        return _l_from_unit(pixels)
    return _l_from_unit(_stretch(pixels))


def _float_to_l(image: Image.Image) -> Image.Image:
    """Float grey -> 8-bit: [0, 1] and [0, 255] data keep their scale, other ranges stretch."""
    pixels = np.asarray(image).astype(np.float32)  # (H, W)
    np.nan_to_num(pixels, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(pixels.min()), float(pixels.max())
    if low >= 0 and high <= 1:
        return _l_from_unit(pixels)
    if low >= 0 and high <= UINT8_MAX:
        pixels /= UINT8_MAX
        return _l_from_unit(pixels)
    return _l_from_unit(_stretch(pixels))


def _stretch(pixels: np.ndarray) -> np.ndarray:
    """Map the data's own min..max onto 0..1 in place: such data has no fixed white point."""
    low, high = float(pixels.min()), float(pixels.max())
    pixels -= low
    if high > low:
        pixels /= high - low
    return pixels


def _l_from_unit(unit: np.ndarray) -> Image.Image:
    """Float values in [0, 1] -> mode L image (the array is overwritten)."""
    np.clip(unit, 0, 1, out=unit)
    unit *= UINT8_MAX
    np.rint(unit, out=unit)
    return Image.fromarray(unit.astype(np.uint8))
