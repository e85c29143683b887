"""An image's own text: a caption given at add time, a sidecar .txt, or embedded metadata.

Precedence, first found wins: the given caption, then a sidecar (`photo.txt`, or `photo.jpg.txt`,
beside `photo.jpg`: indexer.media.caption_files), then what the file itself says (EXIF
ImageDescription / XPComment / XPKeywords, XMP dc:description / dc:subject, IPTC caption /
keywords), descriptions first and keywords after. The text is embedded with the text tower and
fused with the image at query time.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Container, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageFile, IptcImagePlugin, UnidentifiedImageError

from indexer.media import caption_files
from indexer.media.caption_files import SIDECAR_SUFFIX as SIDECAR_SUFFIX  # re-exported, as before
from indexer.media.caption_files import CaptionFileError, Line
from indexer.media.formats import PILLOW_FORMATS
from indexer.media.images import DECODE_ERRORS

# Captions longer than this say nothing more to a text tower that reads a few dozen tokens.
MAX_OWN_TEXT_CHARS = 1000
MAX_SIDECAR_BYTES = 64 * 1024
# XMP packets are a few KB; a huge one is not worth parsing (and keeps the parser bounded).
MAX_XMP_BYTES = 1 << 20
CAPTION_SOURCES = ("caption", "sidecar", "metadata")

EXIF_IMAGE_DESCRIPTION = 0x010E
EXIF_XP_COMMENT = 0x9C9C
EXIF_XP_KEYWORDS = 0x9C9E
TIFF_XMP_TAG = 700
IPTC_CAPTION = (2, 120)
IPTC_KEYWORDS = (2, 25)
XMP_NS = {
    "dc": "http://purl.org/dc/elements/1.1/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
}
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
# What cameras write into ImageDescription when the owner wrote nothing: not a description.
CAMERA_PLACEHOLDERS = frozenset(
    {
        "olympus digital camera",
        "sony dsc",
        "digital camera",
        "konica minolta digital camera",
        "leica digital camera",
        "minolta digital camera",
        "default",
        "image",
        "created with gimp",
    }
)
# Anything Pillow raises on a header it cannot parse: no embedded text, not an error here.
METADATA_ERRORS: tuple[type[Exception], ...] = (
    UnidentifiedImageError,
    Image.DecompressionBombError,
    *DECODE_ERRORS,
)
CAPTION_PATH_KEYS = ("image", "path", "file")
CAPTION_TEXT_KEYS = ("caption", "text")


CaptionsFileError = CaptionFileError  # the name --captions errors had before the shared reader


@dataclass(frozen=True)
class OwnText:
    """Text that belongs to one image, where it came from, and the sidecar's mtime if any."""

    text: str
    source: str  # one of CAPTION_SOURCES
    sidecar_mtime_ns: int | None = None


def sidecar_paths(image_path: str) -> tuple[str, str]:
    """Where a sidecar of `photo.jpg` may be: `photo.txt`, then `photo.jpg.txt`."""
    return caption_files.sidecar_paths(image_path)


def own_text(
    image_path: str, *, caption: str | None = None, sidecars: Container[str] | None = None
) -> OwnText | None:
    """The image's own text by precedence (given caption, sidecar, metadata), or None.

    sidecars: the sidecar files a folder scan listed, so none is looked for on disk; None looks.
    """
    if sidecars is None:
        sidecar = caption_files.find_sidecar(image_path)
    else:
        sidecar = caption_files.sidecar_among(image_path, sidecars)
    found = caption_or_sidecar(caption=caption, sidecar=sidecar)
    if found is not None:
        return found
    return metadata_own_text(embedded_text(image_path))


def caption_or_sidecar(*, caption: str | None, sidecar: str | None) -> OwnText | None:
    """The first two sources of own text; the indexer reads the third (metadata) while decoding."""
    if caption is not None and (text := clean_text(caption)):
        return OwnText(text, "caption")
    return read_sidecar(sidecar) if sidecar is not None else None


def metadata_own_text(text: str | None) -> OwnText | None:
    """Own text from embedded metadata, or None when there is none."""
    return OwnText(text, "metadata", None) if text else None


def read_sidecar(sidecar: str) -> OwnText | None:
    """A sidecar's captions as one own text (its lines joined), or None when empty or unreadable.

    Undecodable bytes are replaced, not refused: a stray Latin-1 byte must not cost a photo
    its description, and an indexing run never stops over a sidecar.
    """
    try:
        mtime_ns = os.stat(sidecar).st_mtime_ns  # before reading: an edit after it shows next run
        lines = caption_files.sidecar_captions(sidecar, strict=False, max_bytes=MAX_SIDECAR_BYTES)
    except (OSError, CaptionFileError):
        return None  # vanished or unreadable since the scan: no sidecar text this run
    text = clean_text(" ".join(lines))
    return OwnText(text, "sidecar", mtime_ns) if text else None


def sidecar_state(image_path: str, mtimes: dict[str, int]) -> int | None:
    """The mtime of the image's sidecar among scanned files (`mtimes`: path -> mtime_ns)."""
    sidecar = caption_files.sidecar_among(image_path, mtimes)
    return mtimes[sidecar] if sidecar is not None else None


def embedded_text(source: str | BinaryIO) -> str | None:
    """Descriptions and keywords from EXIF, XMP and IPTC, joined; None if the file has none.

    source: a path, or the file's bytes as a binary stream.
    """
    try:
        with Image.open(source, formats=PILLOW_FORMATS) as image:
            return text_of_open_image(image)
    except METADATA_ERRORS:
        return None  # the image pipeline reports unreadable files; no text is all we lose here


def text_of_open_image(image: ImageFile.ImageFile) -> str | None:
    """embedded_text of an image the caller has opened already (the decoder does, once)."""
    try:
        descriptions, keywords = _exif_text(image)
        xmp_descriptions, xmp_keywords = _xmp_text(_xmp_packet(image))
        iptc_descriptions, iptc_keywords = _iptc_text(image)
    except METADATA_ERRORS:
        return None
    return _join(
        descriptions + xmp_descriptions + iptc_descriptions,
        keywords + xmp_keywords + iptc_keywords,
    )


def _exif_text(image: Image.Image) -> tuple[list[str], list[str]]:
    exif = image.getexif()
    description = exif.get(EXIF_IMAGE_DESCRIPTION)
    descriptions = [description] if isinstance(description, str) else []
    descriptions = [d for d in descriptions if d.strip().lower() not in CAMERA_PLACEHOLDERS]
    descriptions += _utf16_values([exif.get(EXIF_XP_COMMENT)])
    keywords = [k for value in _utf16_values([exif.get(EXIF_XP_KEYWORDS)]) for k in value.split(";")]
    return descriptions, keywords


def _utf16_values(values: Iterable[object]) -> list[str]:
    """Windows XP* tags hold UTF-16LE bytes (Pillow gives bytes, or a tuple of ints)."""
    texts = []
    for value in values:
        if isinstance(value, tuple):
            value = bytes(v for v in value if isinstance(v, int) and 0 <= v < 256)
        if isinstance(value, bytes):
            texts.append(value.decode("utf-16-le", errors="replace").replace("\x00", ""))
    return texts


def _xmp_packet(image: Image.Image) -> bytes | None:
    """Raw XMP: JPEG, PNG and WebP put it in info["xmp"]; TIFF in tag 700."""
    packet = image.info.get("xmp")
    if packet is None and hasattr(image, "tag_v2"):
        packet = image.tag_v2.get(TIFF_XMP_TAG)
    if isinstance(packet, str):
        packet = packet.encode("utf-8")
    if not isinstance(packet, bytes) or len(packet) > MAX_XMP_BYTES:
        return None
    return packet


def _xmp_text(packet: bytes | None) -> tuple[list[str], list[str]]:
    if not packet:
        return [], []
    try:
        root = ET.fromstring(packet.strip(b"\x00 \r\n\t"))
    except ET.ParseError:
        return [], []
    descriptions = []
    for node in root.iter(f"{{{XMP_NS['dc']}}}description"):
        items = node.findall(".//rdf:li", XMP_NS)
        default = [li for li in items if li.get(XML_LANG) == "x-default"]
        chosen = (default or items)[:1]
        descriptions += [li.text or "" for li in chosen] if chosen else [node.text or ""]
    keywords = [
        li.text or "" for node in root.iter(f"{{{XMP_NS['dc']}}}subject")
        for li in node.findall(".//rdf:li", XMP_NS)
    ]
    return descriptions, keywords


def _iptc_text(image: ImageFile.ImageFile) -> tuple[list[str], list[str]]:
    try:
        info = IptcImagePlugin.getiptcinfo(image) or {}
    except (SyntaxError, ValueError, OSError, IndexError):
        return [], []  # a malformed IPTC block: ignore it, the image itself may be fine
    return _iptc_values(info.get(IPTC_CAPTION)), _iptc_values(info.get(IPTC_KEYWORDS))


def _iptc_values(value: object) -> list[str]:
    values = value if isinstance(value, list) else [value]
    texts = []
    for item in values:
        if isinstance(item, bytes):
            try:
                texts.append(item.decode("utf-8"))
            except UnicodeDecodeError:
                texts.append(item.decode("latin-1"))  # legacy IPTC without a charset marker
    return texts


def _join(descriptions: list[str], keywords: list[str]) -> str | None:
    parts = _unique(descriptions)
    tags = _unique(keywords)
    if tags:
        parts.append(", ".join(tags))
    return clean_text("; ".join(parts)) or None


def _unique(texts: Iterable[str]) -> list[str]:
    seen: dict[str, str] = {}
    for text in texts:
        cleaned = clean_text(text)
        if cleaned and cleaned.lower() not in seen:
            seen[cleaned.lower()] = cleaned
    return list(seen.values())


def clean_text(text: str) -> str:
    """One line, single spaces, capped at MAX_OWN_TEXT_CHARS."""
    return " ".join(text.replace("\x00", " ").split())[:MAX_OWN_TEXT_CHARS]


def read_captions(path: Path) -> dict[str, str]:
    """A --captions JSONL file -> {absolute image path: caption}.

    Each line is an object with the image ("image", "path" or "file"; relative paths are
    relative to the JSONL file's folder) and its text ("caption" or "text"). Several lines for
    one image are joined with "; ".
    """
    base = path.resolve().parent
    captions: dict[str, list[str]] = {}
    for line, record in caption_files.iter_records(path):
        image, text = _caption_of(record, path, line)
        captions.setdefault(os.path.abspath(base / image), []).append(text)
    if not captions:
        raise CaptionFileError(
            f'{path}: no captions (expected JSONL lines {{"image": ..., "caption": ...}})'
        )
    return {image: clean_text("; ".join(_unique(texts))) for image, texts in captions.items()}


def _caption_of(record: dict[str, object], path: Path, line: Line) -> tuple[str, str]:
    image = next((record[k] for k in CAPTION_PATH_KEYS if isinstance(record.get(k), str)), None)
    text = next((record[k] for k in CAPTION_TEXT_KEYS if isinstance(record.get(k), str)), None)
    if not isinstance(image, str) or not image or not isinstance(text, str) or not text.strip():
        raise CaptionFileError(
            f'{path}:{line.number}: needs an "image" (or "path") and a "caption" (or "text") field'
        )
    return os.path.expanduser(image), text
