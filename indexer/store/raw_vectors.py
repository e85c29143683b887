"""Full-precision vectors beside a FAISS file, so any index type can be rebuilt without re-encoding.

PATH (e.g. INDEX_DIR/images.vectors) is a headerless array of records (id int64, vector float32
[dim]), little-endian, appended in increasing id order and memory-mapped for reading. A compressed
index (IVF-PQ, SQ8) re-ranks its candidates from here and never holds the full vectors in RAM;
a rebuild into another type streams them from here in chunks.

The FAISS file decides which ids are live; a record whose id is not live is dead weight (a removed
image, or the tail of a commit that crashed before its FAISS file was written). Records are
appended and fsynced before the FAISS file that makes them live is written, so every live id has
its record; the writer cuts a torn or dead tail when it opens the index (`trim`), and a rebuild
rewrites the file with only the live records (`rewrite`, atomic).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

RAW_SUFFIX = ".vectors"  # images.faiss -> images.vectors
# Records streamed per chunk by rebuilds and rewrites: 64 MiB of 128-d vectors, 16 MiB of ids.
CHUNK_ROWS = 131_072
TEMP_MARK = ".tmp-"
# positions() looks ids up in a table indexed by id while it costs no more RAM than the id column
# (two int32 slots per record) and positions fit int32.
DENSE_TABLE_SLOTS_PER_ID = 2
DENSE_TABLE_MAX_IDS = 2**31 - 1


class VectorLookup(Protocol):
    """Full-precision vectors by id: what compressed index kinds re-rank from."""

    def vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask (m,) bool, vectors (found, dim) float32) of ids (m,) int64, in their order."""
        ...


class InMemoryVectors:
    """A VectorLookup over arrays in RAM (a build from vectors handed over, e.g. a benchmark)."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        order = np.argsort(ids, kind="stable")
        self._ids = np.asarray(ids, np.int64)[order]
        self._vectors = np.asarray(vectors, np.float32)[order]

    def vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """By binary search over the sorted ids."""
        ids = np.asarray(ids, np.int64)
        if len(self._ids) == 0:
            return np.zeros(len(ids), bool), np.zeros((0, self._vectors.shape[1]), np.float32)
        at = np.minimum(np.searchsorted(self._ids, ids), len(self._ids) - 1)
        found = self._ids[at] == ids
        return found, self._vectors[at[found]]


def _position_table(ids: np.ndarray) -> np.ndarray:
    """What positions() looks ids up in: where ids are dense (ids are keys counted from 1, so only
    removals leave holes), an int32 table holding each record's position at slot id + 1, with
    -1 in the first slot (FAISS's padding id -1), the last one (any id past the last record)
    and every hole, so one clipped gather answers every id, FAISS's padding included, instead of
    a binary search's ~17 dependent reads (5,120 re-ranking candidates: ~0.5 ms -> ~0.03 ms),
    in no more RAM than the id column. Sparse ids keep the sorted int64 column."""
    last = int(ids.max())
    if last >= DENSE_TABLE_MAX_IDS or last + 1 > DENSE_TABLE_SLOTS_PER_ID * len(ids):
        return ids
    table = np.full(last + 3, -1, np.int32)
    table[ids + 1] = np.arange(len(ids), dtype=np.int32)
    return table


def raw_path_for(faiss_path: Path) -> Path:
    """Where the full-precision vectors of a FAISS file live."""
    return faiss_path.with_suffix(RAW_SUFFIX)


def record_dtype(dim: int) -> np.dtype:
    """One record: (id int64, vector float32[dim]), packed."""
    return np.dtype([("id", "<i8"), ("vector", "<f4", (dim,))])


class RawVectors:
    """The memory-mapped record file of one vector store (read side; `append` for the writer)."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = path
        self.dim = dim
        self.dtype = record_dtype(dim)
        self._records: np.ndarray = np.zeros(0, self.dtype)
        self._last_id = -1
        self._id_column: np.ndarray | None = None  # the ids in RAM, read once per mapping
        self.remap()

    def remap(self) -> None:
        """Map the whole records now in the file (a torn tail record is ignored)."""
        try:
            rows = os.path.getsize(self.path) // self.dtype.itemsize
        except FileNotFoundError:
            rows = 0
        if rows == 0:
            self._records = np.zeros(0, self.dtype)
        else:
            self._records = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(rows,))
        self._last_id = int(self._records["id"][-1]) if rows else -1
        self._id_column = None
        # The field view, made once per mapping, as a plain ndarray: np.memmap's Python-level
        # __getitem__ cost ~15 us per re-ranking query.
        self._vector_column = self._records["vector"].view(np.ndarray)

    def exists(self) -> bool:
        """True when the file is there (an index from before this file has none)."""
        return self.path.is_file()

    def __len__(self) -> int:
        return len(self._records)

    @property
    def nbytes(self) -> int:
        """Bytes of the mapped records."""
        return len(self._records) * self.dtype.itemsize

    def ids(self) -> np.ndarray:
        """Every record's id (n,) int64, in file order (increasing)."""
        return np.asarray(self._records["id"])

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Record index of each id (m,) int64, -1 where absent, from a lookup table the first call
        builds in RAM (a re-ranking query then costs microseconds, where bisecting the mapped file
        cost ~0.15 ms)."""
        wanted = np.asarray(ids, dtype=np.int64)
        if len(self._records) == 0 or len(wanted) == 0:
            return np.full(len(wanted), -1, np.int64)
        if self._id_column is None:
            self._id_column = _position_table(np.array(self._records["id"]))
        table = self._id_column
        if table.dtype == np.int64:  # sparse ids: the sorted id column itself, bisected
            at = np.minimum(np.searchsorted(table, wanted), len(table) - 1)
            return np.where(table[at] == wanted, at, -1)
        return np.take(table, wanted + 1, mode="clip").astype(np.int64)  # see _position_table

    def vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask (m,) bool, vectors (found, dim) float32) of the given ids, in their order."""
        rows = self.positions(ids)
        found = rows >= 0
        vectors = np.asarray(self._vector_column[rows[found]], dtype=np.float32)
        return found, vectors.reshape(-1, self.dim)

    def chunks(self, live: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids (c,) int64, vectors (c, dim) float32) chunks in id order; only `live` ids if given
        (sorted (n,) int64), so a rebuild never holds all vectors in RAM at once."""
        for start in range(0, len(self._records), CHUNK_ROWS):
            block = self._records[start : start + CHUNK_ROWS]
            ids = np.asarray(block["id"])
            keep = slice(None) if live is None else _member(ids, live)
            yield ids[keep], np.ascontiguousarray(block["vector"][keep], dtype=np.float32)

    def append(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add records durably (written and fsynced) before the FAISS file that uses them.

        Ids arrive increasing (SQLite's AUTOINCREMENT keys); ids at or below the last record
        (only possible after hand edits) make the file be rewritten in order, newest vector kept.
        """
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        records = np.zeros(len(ids), self.dtype)
        records["id"] = ids
        records["vector"] = vectors
        if ids[0] <= self._last_id or np.any(np.diff(ids) <= 0):
            self._rewrite_merged(records)
            return
        with open(self.path, "ab") as fh:
            fh.write(records.tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        self.remap()

    def _rewrite_merged(self, records: np.ndarray) -> None:
        old = np.asarray(self._records)
        merged = np.concatenate([old, records])
        # Stable sort then keep the last of each id: the newest record of an id wins.
        order = np.argsort(merged["id"], kind="stable")
        merged = merged[order]
        last = np.append(merged["id"][1:] != merged["id"][:-1], True)
        self._write_atomically(iter([merged[last]]))

    def trim(self, live: np.ndarray) -> int:
        """Drop a torn record and every record after the last live one (a crashed commit's tail,
        whose ids SQLite may hand out again); `live` is sorted (n,) int64. Returns the records
        dropped. The file is rewritten, never truncated in place: a reader may still have the
        old records mapped, and a page cut from under a mapping is a SIGBUS."""
        try:
            size = os.path.getsize(self.path)
        except FileNotFoundError:
            return 0
        ids = self.ids()
        alive = _member(ids, live) if len(ids) else np.zeros(0, bool)
        keep = int(np.flatnonzero(alive)[-1]) + 1 if alive.any() else 0
        if keep * self.dtype.itemsize == size:
            return 0
        self._write_atomically(iter([np.asarray(self._records[:keep])]))
        return len(ids) - keep

    def dead_share(self, live_count: int) -> float:
        """Share of records whose id is no longer live."""
        return 0.0 if not len(self) else max(0.0, 1.0 - live_count / len(self))

    def rewrite(self, live: np.ndarray) -> None:
        """Keep only the live records (sorted (n,) int64): temp file, fsync, rename."""
        records = np.asarray(self._records)
        chunks = (
            records[start : start + CHUNK_ROWS][_member(records["id"][start : start + CHUNK_ROWS], live)]
            for start in range(0, len(records), CHUNK_ROWS)
        )
        self._write_atomically(chunks)

    def write_all(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the file with these records (ids sorted (n,) int64, vectors (n, dim))."""
        records = np.zeros(len(ids), self.dtype)
        records["id"] = ids
        records["vector"] = vectors
        self._write_atomically(iter([records]))

    def _write_atomically(self, chunks: Iterator[np.ndarray]) -> None:
        tmp = self.path.with_name(f"{self.path.name}{TEMP_MARK}{os.getpid()}")
        with open(tmp, "wb") as fh:
            for chunk in chunks:
                fh.write(np.ascontiguousarray(chunk).tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.remap()


def _member(ids: np.ndarray, live: np.ndarray) -> np.ndarray:
    """ids (m,) in sorted `live` (n,) -> (m,) bool, by binary search."""
    if len(live) == 0:
        return np.zeros(len(ids), bool)
    at = np.minimum(np.searchsorted(live, ids), len(live) - 1)
    return live[at] == ids
