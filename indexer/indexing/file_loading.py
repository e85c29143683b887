"""One file's journey to pixels: read, hash, sniff, decode, preprocess, own text.

This is what a decode worker runs, whichever kind it is (a thread of decode_pool, a process of
decode_processes, a Ray task of ray_encode), so the three share it without importing each other.
A failure becomes a Skipped with a reason, never an exception.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from indexer.media import formats
from indexer.media import own_text as doc_text
from indexer.media.content_id import content_id
from indexer.media.images import DEFAULT_MAX_MEGAPIXELS, ImageLoadError, MissingExtraError, decode_bytes
from indexer.media.scan import FileEntry

if TYPE_CHECKING:
    import torch

    from indexer.models.protocol import Encoder

# A file queued when the run stopped early (an error, Ctrl-C): never decoded, never remembered.
STOPPED_REASON = "not decoded: indexing stopped first"


@dataclass(frozen=True)
class LoadedImage:
    """A decoded, preprocessed file with what the catalogue records about it."""

    entry: FileEntry
    pixels: torch.Tensor  # (3, S, S) float32
    content_hash: str
    width: int
    height: int
    own_text: doc_text.OwnText | None = None  # read here, in the worker, from the bytes in hand
    decoded_from: str = "full"  # indexer.media.images.DecodedImage.source: full, draft or exif thumbnail


@dataclass(frozen=True)
class Skipped:
    """A file that was not indexed, and why (one line in the summary).

    retry: the failure is not about the file's bytes (a permission, a missing optional extra),
    so it may be gone next run without the file changing; such skips are not remembered.
    """

    path: str
    reason: str
    retry: bool = False


@dataclass(frozen=True)
class EncodedBatch:
    """Images that decoded, their vectors (n, dim) float32, and the files skipped in this batch."""

    images: list[LoadedImage]
    vectors: np.ndarray
    skipped: list[Skipped]


def load_file(
    entry: FileEntry,
    encoder: Encoder,
    *,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    embedded_thumbnail: bool = True,
    caption: str | None = None,
    sidecar: str | None = None,
) -> LoadedImage | Skipped:
    """Read, hash, decode and preprocess one file; any failure becomes a Skipped with a reason.

    A file without an image extension is first classified by its header bytes, and a non-image
    is skipped without reading the rest. caption: text given for this file at index time;
    sidecar: the caption file the scan found beside it (indexer.media.caption_files); without
    either, the image's own text comes from its metadata (indexer.media.own_text).

    The whole file is read, not memory-mapped: a file truncated by another program while mapped
    would kill the indexer with SIGBUS instead of becoming one skipped line.
    """
    if entry.problem is not None:
        return Skipped(entry.path, entry.problem, retry=True)
    try:
        # stat first: opening a FIFO blocks until a writer comes, reading a device never ends.
        if not stat.S_ISREG(os.stat(entry.path).st_mode):
            return Skipped(entry.path, "not a regular file")
        with open(entry.path, "rb") as fh:
            header = b"" if entry.image_extension else fh.read(formats.SNIFF_BYTES)
            if not entry.image_extension and not formats.looks_like_image(
                header, formats.extension(entry.path)
            ):
                return Skipped(entry.path, formats.not_image_reason(entry.path, header))
            data = header + fh.read()
    except FileNotFoundError:
        return Skipped(entry.path, "file vanished while indexing", retry=True)
    except PermissionError:
        return Skipped(entry.path, "permission denied", retry=True)
    except OSError as exc:
        return Skipped(entry.path, f"unreadable: {exc.strerror or exc}", retry=True)
    try:
        own = doc_text.caption_or_sidecar(caption=caption, sidecar=sidecar)
        metadata: list[str | None] = []
        decoded = decode_bytes(
            data,
            name=entry.path,
            max_megapixels=max_megapixels,
            target_size=encoder.preprocess_config.image_size,
            embedded_thumbnail=embedded_thumbnail,
            # Own text from metadata is read from the file decode opens anyway: one parse, not two.
            inspect=None if own else lambda img: metadata.append(doc_text.text_of_open_image(img)),
        )
        pixels = encoder.preprocess(decoded.image)
    except MissingExtraError as exc:
        return Skipped(entry.path, exc.reason, retry=True)
    except ImageLoadError as exc:
        return Skipped(entry.path, exc.reason)
    if own is None and metadata:
        own = doc_text.metadata_own_text(metadata[0])
    return LoadedImage(
        entry, pixels, content_id(data), decoded.width, decoded.height, own, decoded.source
    )


LoadResult = LoadedImage | Skipped


class FileRequest(NamedTuple):
    """One file to load and the text given for it (picklable: sent to worker processes)."""

    entry: FileEntry
    caption: str | None = None
    sidecar: str | None = None
