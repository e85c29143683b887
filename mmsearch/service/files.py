"""Serving indexed files and their thumbnails, and nothing else.

Files are served by integer id only, and only when the file on disk is still the one that was
indexed (same size and mtime, read through one descriptor), so neither a crafted id nor a
symlink swapped in after indexing can reach another file.
"""

from __future__ import annotations

import io
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import BinaryIO

from PIL import Image
from starlette.exceptions import HTTPException

from indexer.media.images import decode_image_bytes
from mmsearch.engine import IndexedImage

IMAGE_MEDIA_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".heic": "image/heic",
    ".heif": "image/heif",
}
THUMBNAIL_SIZE = 256  # the web page's grid cell, at 1x
THUMBNAIL_MIN, THUMBNAIL_MAX = 32, 512
THUMBNAIL_QUALITY = 85
FILE_CHUNK_BYTES = 256 * 1024


class ThumbnailCache:
    """A thread-safe LRU of encoded thumbnails, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[object, ...]) -> bytes | None:
        """The cached bytes, marked as recently used."""
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: tuple[object, ...], data: bytes) -> None:
        """Store, evicting the least recently used entries beyond the budget."""
        with self._lock:
            if key in self._items:
                return
            self._items[key] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)


def make_thumbnail(data: bytes, *, name: str, size: int) -> bytes:
    """Image bytes -> a JPEG no larger than size x size (aspect kept, EXIF orientation applied)."""
    image = decode_image_bytes(data, name=name, target_size=size)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return out.getvalue()


def display(path: str) -> str:
    """A path as valid UTF-8 for JSON (undecodable file-name bytes become U+FFFD)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def open_indexed(image: IndexedImage) -> tuple[BinaryIO, os.stat_result]:
    """Open the row's own path, and only if it is still the regular file that was indexed.

    The checks run on the opened descriptor, so nothing can be swapped in between check and
    read; O_NONBLOCK keeps a FIFO planted at the path from hanging the worker.
    """
    gone = HTTPException(404, f"image {image.id} is indexed but its file is gone; re-index to drop it")
    try:
        fd = os.open(image.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise gone from None
    except OSError as exc:
        raise HTTPException(404, f"image {image.id}: file cannot be read ({exc.strerror})") from None
    fh = os.fdopen(fd, "rb")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (image.size, image.mtime_ns):
        fh.close()
        raise HTTPException(
            404,
            f"image {image.id}: the file changed since it was indexed; re-index "
            "(POST /index or `mmsearch index`) to serve it",
        )
    return fh, st


def stream(fh: BinaryIO) -> Iterator[bytes]:
    """The open file in chunks, closed at the end."""
    with fh:
        while chunk := fh.read(FILE_CHUNK_BYTES):
            yield chunk
