"""FAISS wrapper: inner product over L2-normalised float32 vectors, ids = SQLite primary keys.

`IndexIDMap2(IndexFlatIP)` is exact, supports real deletion (`remove_ids`) and reconstruction by
id, which is what an editable personal photo index needs. Files are replaced atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexer.devices import warn_once

INDEX_TYPE = "IDMap2,FlatIP"
# save() writes PATH.tmp-PID and renames it over PATH; a killed save leaves the temp file behind.
TEMP_MARK = ".tmp-"


class VectorStoreError(RuntimeError):
    """A FAISS file that cannot be read or does not match the index's dimension."""


@dataclass(frozen=True)
class SearchResult:
    """Parallel arrays for one query, best first: scores (k,) float32, ids (k,) int64."""

    scores: np.ndarray
    ids: np.ndarray


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees a device."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class VectorStore:
    """An editable exact inner-product index keyed by int64 ids.

    `cpu` is set on a GPU copy (see `to_search_device`): the CPU store it came from, which
    answers id-restricted searches (FAISS's GPU indexes take no IDSelector) and is what is saved.
    """

    def __init__(self, index: faiss.Index, *, cpu: VectorStore | None = None) -> None:
        self.cpu = cpu
        self.gpu_resources: Any = None  # kept alive beside a GPU index that uses them
        # faiss's SWIG stubs know only the base Index; IDMap2 methods are typed as Any here.
        self.index: Any = index

    @classmethod
    def create(cls, dim: int) -> VectorStore:
        """An empty store for `dim`-dimensional vectors."""
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))

    @classmethod
    def load(cls, path: Path, *, dim: int) -> VectorStore:
        """Read a FAISS file; a missing file is an empty store (nothing committed yet)."""
        if not path.is_file():
            return cls.create(dim)
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise VectorStoreError(f"{path}: unreadable FAISS index: {exc}") from exc
        if index.d != dim:
            raise VectorStoreError(f"{path}: vectors have dimension {index.d}, index expects {dim}")
        return cls(index)

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        """All stored ids, (n,) int64."""
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors (n, dim) float32 under ids (n,) int64."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise VectorStoreError(
                f"expected vectors of shape (n, {self.dim}), got {vectors.shape}"
            )
        self.index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Delete vectors by id; returns how many were removed."""
        if len(ids) == 0:
            return 0
        return int(self.index.remove_ids(np.asarray(ids, dtype=np.int64)))

    def reconstruct(self, id_: int) -> np.ndarray:
        """The stored vector (dim,) of one id; KeyError if absent."""
        try:
            return np.asarray(self.index.reconstruct(int(id_)), dtype=np.float32)
        except RuntimeError as exc:
            raise KeyError(id_) from exc

    def search(
        self, queries: np.ndarray, k: int, *, allowed_ids: np.ndarray | None = None
    ) -> list[SearchResult]:
        """Top-k by inner product for queries (q, dim); FAISS's -1 padding is dropped.

        allowed_ids (n,) int64 restricts the search to those ids (e.g. files under one folder).
        """
        empty = allowed_ids is not None and len(allowed_ids) == 0
        if len(self) == 0 or k <= 0 or empty:
            return [SearchResult(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in queries]
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if allowed_ids is not None and self.cpu is not None:
            return self.cpu.search(queries, k, allowed_ids=allowed_ids)
        params = None
        if allowed_ids is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
            params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
        scores, ids = self.index.search(queries, min(k, len(self)), params=params)  # (q, k) each
        return [SearchResult(s[i >= 0], i[i >= 0]) for s, i in zip(scores, ids, strict=True)]

    def save(self, path: Path) -> None:
        """Write atomically: temp file, fsync, rename, fsync the folder."""
        if self.cpu is not None:
            raise VectorStoreError("a GPU search copy is never saved: save its CPU store")
        tmp = path.with_name(f"{path.name}{TEMP_MARK}{os.getpid()}")
        faiss.write_index(self.index, str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def remove_temp_files(path: Path) -> int:
    """Delete what interrupted saves of `path` left; only safe while no save can be running."""
    stale = list(path.parent.glob(f"{path.name}{TEMP_MARK}*"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


def to_search_device(store: VectorStore, *, use_gpu: bool) -> VectorStore:
    """A GPU copy for searching when asked and possible; the saved form always stays on the CPU.

    Building needs no GPU: adding to a flat index is a memory copy, the cost of building is the
    encoding (which `--device cuda` runs on the GPU), and the file written is the CPU form.
    """
    if not use_gpu or store.cpu is not None:
        return store
    if not gpu_available():
        warn_once("FAISS GPU not available (install mmsearch[gpu] on a CUDA machine); using the CPU")
        return store
    resources = faiss.StandardGpuResources()
    gpu = VectorStore(faiss.index_cpu_to_gpu(resources, 0, store.index), cpu=store)
    gpu.gpu_resources = resources  # the GPU index must not outlive the memory it was given
    return gpu
