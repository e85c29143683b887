"""Load and encode stages: decode files in worker threads while the model encodes earlier batches.

Decoding (Pillow releases the GIL) overlaps encoding through a bounded look-ahead queue, so
memory stays flat however large the folder is. Bad files are skipped and reported, never fatal.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from indexer.media import own_text as doc_text
from indexer.media.content_id import content_id
from indexer.media.images import (
    DEFAULT_MAX_MEGAPIXELS,
    ImageLoadError,
    MissingExtraError,
    decode_bytes,
)
from indexer.media.scan import FileEntry
from indexer.models.encoder import Encoder

# Batches decoded ahead of the encoder: enough to hide decode latency, bounded for memory.
LOOKAHEAD_BATCHES = 2


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
) -> LoadedImage | Skipped:
    """Read, hash, decode and preprocess one file; any failure becomes a Skipped with a reason.

    caption: text given for this file at index time; without it the image's own text comes from
    a sidecar or its metadata (indexer.media.own_text).

    The whole file is read, not memory-mapped: a file truncated by another program while mapped
    would kill the indexer with SIGBUS instead of becoming one skipped line.
    """
    if not entry.image_type:
        return Skipped(
            entry.path,
            f"not an image file type ({os.path.splitext(entry.path)[1] or 'no extension'})",
        )
    try:
        # stat first: opening a FIFO blocks until a writer comes, reading a device never ends.
        if not stat.S_ISREG(os.stat(entry.path).st_mode):
            return Skipped(entry.path, "not a regular file")
        with open(entry.path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return Skipped(entry.path, "file vanished while indexing", retry=True)
    except PermissionError:
        return Skipped(entry.path, "permission denied", retry=True)
    except OSError as exc:
        return Skipped(entry.path, f"unreadable: {exc.strerror or exc}", retry=True)
    try:
        own = doc_text.caption_or_sidecar(entry.path, caption=caption)
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


def _chunks(entries: Iterable[FileEntry], size: int) -> Iterator[list[FileEntry]]:
    chunk: list[FileEntry] = []
    for entry in entries:
        chunk.append(entry)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def encode_files(
    entries: Iterable[FileEntry],
    encoder: Encoder,
    *,
    batch_size: int,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    embedded_thumbnail: bool = True,
    captions: Mapping[str, str] | None = None,
    workers: int | None = None,
) -> Iterator[EncodedBatch]:
    """Yield encoded batches in input order; decoding runs `LOOKAHEAD_BATCHES` ahead in threads."""
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque[list[Future[LoadedImage | Skipped]]] = deque()
        chunks = _chunks(entries, batch_size)
        for chunk in chunks:
            pending.append(
                [
                    pool.submit(
                        load_file,
                        e,
                        encoder,
                        max_megapixels=max_megapixels,
                        embedded_thumbnail=embedded_thumbnail,
                        caption=captions.get(e.path) if captions else None,
                    )
                    for e in chunk
                ]
            )
            if len(pending) > LOOKAHEAD_BATCHES:
                yield _encode_ready(pending.popleft(), encoder)
        while pending:
            yield _encode_ready(pending.popleft(), encoder)


def _encode_ready(futures: list[Future[LoadedImage | Skipped]], encoder: Encoder) -> EncodedBatch:
    results = [f.result() for f in futures]
    images = [r for r in results if isinstance(r, LoadedImage)]
    skipped = [r for r in results if isinstance(r, Skipped)]
    if images:
        vectors = encoder.encode_pixels(torch.stack([img.pixels for img in images]))
    else:
        vectors = np.zeros((0, encoder.info.dim), dtype=np.float32)
    return EncodedBatch(images, vectors, skipped)
