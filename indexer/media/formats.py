"""What counts as an image: the file's own bytes, as Pillow's format detection reads them.

A file whose extension names an image format (IMAGE_EXTENSIONS) goes straight to the decoder,
which identifies it by content anyway. Any other file is classified from its first
SNIFF_BYTES: Pillow's signature checks for the formats in PILLOW_FORMATS, plus the signatures of
the formats decoded through optional extras (HEIF, JPEG XL, camera RAW). Everything else is not
an image, and `not_image_reason` says what it looks like (a PDF, text, a video...).

The constants here are plain data, so the folder scan needs no imaging library; only the header
check imports Pillow.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Callable

# Pillow formats decoded as images, in the order Image.open tries them. Each one starts with a
# signature Pillow checks (MPO, the multi-picture JPEG of phones and 3D cameras, comes through
# the JPEG plugin). Left out on purpose: EPS (Pillow hands it to Ghostscript), plugins that
# identify a file but cannot decode it (BUFR, GRIB, HDF5, MPEG, WMF outside Windows), and
# formats that are data planes, brushes or game textures rather than pictures (FITS, SPIDER,
# MCIDAS, IPTC, GBR, FTEX, BLP, ...), or whose "signature" is ordinary text (XBM's "#define") or
# the start of a TGA header (Windows cursors, CUR).
PILLOW_FORMATS: tuple[str, ...] = (
    "JPEG",
    "PNG",
    "WEBP",
    "GIF",
    "TIFF",
    "AVIF",
    "JPEG2000",
    "QOI",
    "PSD",
    "ICNS",
    "DDS",
    "XPM",
    "SUN",
    "ICO",
    "BMP",
    "PPM",
    "PCX",
    "SGI",
    "DIB",
)
# Pillow formats without a signature (Pillow tries to parse any file as one): decoded only when
# the extension names them, so random bytes are never read as a picture. Extension -> format.
UNSIGNED_FORMAT_EXTENSIONS: dict[str, str] = {".tga": "TGA"}

# Extensions Pillow registers for PILLOW_FORMATS (plus MPO), minus generic names that other
# programs use too (SGI's .rgb/.bw, TGA's .vst): such files are still found by their content.
PILLOW_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".png", ".apng", ".webp", ".gif", ".tif",
        ".tiff", ".avif", ".avifs", ".jp2", ".j2k", ".jpc", ".jpf", ".jpx", ".j2c", ".qoi",
        ".psd", ".icns", ".dds", ".xpm", ".ras", ".ico", ".bmp", ".dib", ".ppm", ".pgm",
        ".pbm", ".pnm", ".pfm", ".pcx", ".sgi",
    }
)  # fmt: skip
HEIF_EXTENSIONS: frozenset[str] = frozenset({".heic", ".heif"})
JXL_EXTENSIONS: frozenset[str] = frozenset({".jxl"})
# Camera RAW files, decoded by LibRaw (the `raw` extra). Most are TIFF containers, so only the
# extension tells a NEF or an ARW from a plain TIFF.
RAW_EXTENSIONS: frozenset[str] = frozenset(
    {".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".raf", ".orf", ".rw2", ".pef", ".srw"}
)
IMAGE_EXTENSIONS: frozenset[str] = (
    PILLOW_EXTENSIONS
    | frozenset(UNSIGNED_FORMAT_EXTENSIONS)
    | HEIF_EXTENSIONS
    | JXL_EXTENSIONS
    | RAW_EXTENSIONS
)

# Enough for every signature below (Pillow itself looks at 16 bytes; RAF's is 16 long, and an
# ISO-BMFF brand ends at byte 12) and for telling text from binary data.
SNIFF_BYTES = 64

# ISO-BMFF major brands (bytes 8-12, after "ftyp") of HEIC/HEIF stills and sequences.
HEIF_BRANDS: frozenset[bytes] = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"heif", b"mif1", b"msf1"}
)
ISO_BMFF_BOX = b"ftyp"
AVIF_BRANDS: frozenset[bytes] = frozenset({b"avif", b"avis"})
# A JPEG XL file is a bare codestream or an ISO-BMFF style container.
JXL_SIGNATURES: tuple[bytes, ...] = (b"\xff\x0a", b"\x00\x00\x00\x0cJXL \x0d\x0a\x87\x0a")
# RAW files that carry a signature of their own (the TIFF-based rest are told by extension).
RAW_SIGNATURES: tuple[bytes, ...] = (
    b"FUJIFILMCCD-RAW ",  # RAF
    b"IIRO",  # Olympus ORF
    b"IIRS",  # Olympus ORF
    b"MMOR",  # Olympus ORF (big-endian)
    b"IIU\x00",  # Panasonic RW2
)
TIFF_SIGNATURES: tuple[bytes, ...] = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
CR2_MARK = b"CR\x02\x00"  # bytes 8-12 of a Canon CR2, after its TIFF header
CR3_BRAND = b"crx "  # the ISO-BMFF major brand of a Canon CR3

# What a few common non-images start with, to name them in the skip reason.
NON_IMAGE_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "PDF document"),
    (b"%!PS", "PostScript/EPS (not decoded: it would need Ghostscript)"),
    (b"PK\x03\x04", "zip archive or office document"),
    (b"\x1f\x8b", "gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "7-zip archive"),
    (b"Rar!", "rar archive"),
    (b"SQLite format 3\x00", "SQLite database"),
    (b"ID3", "audio"),
    (b"OggS", "audio or video"),
    (b"\x1a\x45\xdf\xa3", "video (Matroska/WebM)"),
)
TEXT_CONTROL_BYTES = frozenset(range(32)) - {9, 10, 12, 13}  # tab, newlines, form feed are text


def extension(path: str) -> str:
    """The lower-case extension with its dot, "" when there is none."""
    return os.path.splitext(path)[1].lower()


def has_image_extension(path: str) -> bool:
    """True when the name alone says image: the decoder gets it without a header check."""
    return extension(path) in IMAGE_EXTENSIONS


def pillow_formats_for(suffix: str) -> tuple[str, ...]:
    """Formats Image.open may try for a file with this extension (".tga" adds TGA, last)."""
    unsigned = UNSIGNED_FORMAT_EXTENSIONS.get(suffix.lower())
    return (*PILLOW_FORMATS, unsigned) if unsigned else PILLOW_FORMATS


def looks_like_heif(header: bytes) -> bool:
    """An ISO-BMFF file whose major brand is HEIC/HEIF (not AVIF, CR3 or MP4).

    The generic brands (mif1, msf1) head AVIF files too; those list an AVIF brand among their
    compatible brands and go to Pillow's own AVIF decoder.
    """
    if header[4:8] != ISO_BMFF_BOX or header[8:12] not in HEIF_BRANDS:
        return False
    box_end = min(len(header), int.from_bytes(header[:4], "big"))
    compatible = {header[i : i + 4] for i in range(16, box_end - 3, 4)}
    return not compatible & AVIF_BRANDS


def looks_like_jxl(header: bytes) -> bool:
    """A JPEG XL codestream or container."""
    return header.startswith(JXL_SIGNATURES)


def looks_like_raw(header: bytes) -> bool:
    """A camera RAW file that says so in its first bytes (RAF, ORF, RW2, CR2, CR3)."""
    if header.startswith(RAW_SIGNATURES):
        return True
    if header[4:8] == ISO_BMFF_BOX and header[8:12] == CR3_BRAND:
        return True
    return header[:2] in (b"II", b"MM") and header[8:12] == CR2_MARK


def looks_like_tiff(header: bytes) -> bool:
    """A classic or Big TIFF header, in either byte order."""
    return header.startswith(TIFF_SIGNATURES)


def looks_like_image(header: bytes, suffix: str = "") -> bool:
    """True when the first SNIFF_BYTES of a file are those of a format decoded here.

    suffix admits the formats only an extension can name (TGA).
    """
    if looks_like_heif(header) or looks_like_jxl(header) or looks_like_raw(header):
        return True
    if suffix.lower() in UNSIGNED_FORMAT_EXTENSIONS:
        return True
    return any(_accepts(accept, header) for accept in _pillow_signature_checks())


def _accepts(accept: Callable[[bytes], bool | str], header: bytes) -> bool:
    """One Pillow signature check, failing on a short header as Image.open lets it fail.

    A check may answer with a string, "this format, but its codec is not built in" (AVIF,
    WebP): that is still an image, and decoding it names the problem.
    """
    try:
        return bool(accept(header))
    except (IndexError, struct.error):  # fewer bytes than the check reads
        return False


@functools.cache
def _pillow_signature_checks() -> tuple[Callable[[bytes], bool | str], ...]:
    """Pillow's own signature check of each of PILLOW_FORMATS (Pillow is imported only here)."""
    from PIL import Image

    Image.init()  # registers every plugin
    return tuple(Image.OPEN[fmt][1] or _never for fmt in PILLOW_FORMATS if fmt in Image.OPEN)


def _never(header: bytes) -> bool:
    """Stands in for a signature check a plugin does not have."""
    return False


def not_image_reason(path: str, header: bytes) -> str:
    """One line saying why a file was not decoded, naming what it looks like."""
    return f"not an image file type ({extension(path) or 'no extension'}: {describe(header)})"


def describe(header: bytes) -> str:
    """What a non-image's first bytes look like: a known format, text, or unrecognised."""
    if not header:
        return "empty file"
    for signature, kind in NON_IMAGE_SIGNATURES:
        if header.startswith(signature):
            return kind
    if header[4:8] == ISO_BMFF_BOX:
        return "video or other ISO media"
    if header.startswith(b"RIFF"):
        return "RIFF media (video or audio)"
    if _is_text(header):
        return "text"
    return "unrecognised content"


def _is_text(header: bytes) -> bool:
    """UTF-8 (a character cut at the end allowed) without control bytes."""
    if any(byte in TEXT_CONTROL_BYTES for byte in header):
        return False
    try:
        header.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(header) - 3  # a multi-byte character cut by the header's end
    return True
