"""Content ids of files: how re-indexing tells a changed file from a touched one, and a moved file
from a new one, without trusting names or mtimes.

XXH3-128 hashes a 3 MB photo in ~0.3 ms (BLAKE2b took ~4 ms, more than decoding the photo's
embedded thumbnail), so it no longer bounds indexing speed. It is not cryptographic: it guards
against accidental collisions, which is what the catalogue needs; someone who can write into
the photo folder can change what gets indexed anyway.

Ids carry their algorithm ("xxh3:..."). Catalogues written before the switch hold bare BLAKE2b
hex; those ids stay valid and are compared with the algorithm that produced them.
"""

from __future__ import annotations

import hashlib

import xxhash

CURRENT_PREFIX = "xxh3:"
LEGACY_BLAKE2B_DIGEST_BYTES = 16


def content_id(data: bytes) -> str:
    """Id of these bytes with the current algorithm."""
    return CURRENT_PREFIX + xxhash.xxh3_128_hexdigest(data)


def content_id_like(data: bytes, stored: str) -> str:
    """Id of these bytes with the algorithm that produced `stored`, so the two can be compared."""
    if stored.startswith(CURRENT_PREFIX):
        return content_id(data)
    return hashlib.blake2b(data, digest_size=LEGACY_BLAKE2B_DIGEST_BYTES).hexdigest()


def file_content_id(path: str, like: str | None = None) -> str:
    """Id of a file on disk; with `like`, in the algorithm of that stored id. Raises OSError."""
    with open(path, "rb") as fh:
        data = fh.read()
    return content_id(data) if like is None else content_id_like(data, like)


def algorithm_key(stored: str) -> str:
    """A label that is equal for ids made by the same algorithm."""
    return CURRENT_PREFIX if stored.startswith(CURRENT_PREFIX) else "blake2b"
