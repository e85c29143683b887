"""FAISS wrapper: inner product over L2-normalised float32 vectors, ids = SQLite primary keys.

`IndexIDMap2(IndexFlatIP)` is exact, supports real deletion (`remove_ids`) and reconstruction by
id, which is what an editable personal photo index needs. For collections large enough that an
exhaustive scan is slow, `build_ivf` turns a store into `IndexIVFFlat` (k-means lists, searched
`nprobe` at a time; ids, deletion and reconstruction kept through a hash-table direct map), and
`build_flat` turns it back. Files are replaced atomically.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexer.errors import UnavailableError, warn_once

INDEX_TYPE = "IDMap2,FlatIP"
# k-means: FAISS wants >= 39 training points per list and warns below; 20 iterations is its
# own default and converges on embeddings.
MIN_POINTS_PER_LIST = 39
KMEANS_ITERATIONS = 20
# A filtered search (--under) on an IVF store scores the allowed vectors exactly up to this many:
# with few allowed ids, the probed lists may hold none of them.
EXACT_FILTER_MAX = 50_000
FIDELITY_QUERIES = 256  # stored vectors used as queries to measure an IVF's recall
FIDELITY_K = 10
# save() writes PATH.tmp-PID and renames it over PATH; a killed save leaves the temp file behind.
TEMP_MARK = ".tmp-"


class VectorStoreError(UnavailableError):
    """A FAISS file that cannot be read or does not match the index's dimension."""


@dataclass(frozen=True)
class SearchResult:
    """Parallel arrays for one query, best first: scores (k,) float32, ids (k,) int64."""

    scores: np.ndarray
    ids: np.ndarray


def set_search_threads(count: int) -> None:
    """OpenMP threads for FAISS searches made from the calling thread from now on. OpenMP keeps
    this per thread: threads started later get FAISS's default (one per core)."""
    if count < 1:
        raise ValueError(f"search threads must be at least 1, got {count}")
    faiss.omp_set_num_threads(count)


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

    @property
    def is_ivf(self) -> bool:
        """True for an inverted-file (approximate) store."""
        return isinstance(self._cpu_index(), faiss.IndexIVF)

    def describe(self) -> str:
        """The FAISS structure, as `mmsearch info` shows it."""
        index = self._cpu_index()
        if isinstance(index, faiss.IndexIVF):
            return f"IVF{index.nlist},FlatIP nprobe={index.nprobe}"
        return INDEX_TYPE

    def _cpu_index(self) -> Any:
        return self.cpu.index if self.cpu is not None else self.index

    def ids(self) -> np.ndarray:
        """All stored ids, (n,) int64."""
        index = self._cpu_index()
        if isinstance(index, faiss.IndexIVF):
            lists: Any = index.invlists
            chunks = [
                faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                for i in range(index.nlist)
                if lists.list_size(i)
            ]
            return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, np.int64)
        return faiss.vector_to_array(index.id_map).astype(np.int64)

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n,) int64, vectors (n, dim) float32) of everything stored."""
        ids = self.ids()
        index = self._cpu_index()
        if len(ids) == 0:
            return ids, np.zeros((0, self.dim), np.float32)
        if isinstance(index, faiss.IndexIVF):
            return ids, np.asarray(index.reconstruct_batch(ids), dtype=np.float32)
        return ids, np.asarray(index.index.reconstruct_n(0, len(ids)), dtype=np.float32)

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
        if allowed_ids is not None and self.is_ivf and len(allowed_ids) <= EXACT_FILTER_MAX:
            return self._search_among(queries, k, allowed_ids)
        params: Any = None
        if allowed_ids is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
            if self.is_ivf:
                params = faiss.SearchParametersIVF(sel=selector, nprobe=self.index.nprobe)  # type: ignore[call-arg]
            else:
                params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
        scores, ids = self.index.search(queries, min(k, len(self)), params=params)  # (q, k) each
        return [SearchResult(s[i >= 0], i[i >= 0]) for s, i in zip(scores, ids, strict=True)]

    def _search_among(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray) -> list[SearchResult]:
        """Exact top-k over the stored vectors among allowed_ids (queries (q, dim))."""
        ids = np.intersect1d(np.asarray(allowed_ids, dtype=np.int64), self.ids())
        if len(ids) == 0:
            return [SearchResult(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in queries]
        vectors = np.asarray(self.index.reconstruct_batch(ids), dtype=np.float32)  # (n, dim)
        scores = queries @ vectors.T  # (q, n)
        k = min(k, len(ids))
        results = []
        for row in scores:
            top = np.argpartition(-row, k - 1)[:k]
            top = top[np.argsort(-row[top], kind="stable")]
            results.append(SearchResult(row[top].astype(np.float32), ids[top]))
        return results

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


@dataclass(frozen=True)
class BuildReport:
    """What build_ivf / build_flat did, for the command's summary line."""

    store: VectorStore
    vectors: int
    seconds: float
    device: str  # where k-means and list assignment ran: "cpu" or "gpu"
    recall: float | None  # recall@FIDELITY_K of the new store against exact search, IVF only


def default_lists(count: int) -> int:
    """FAISS's rule of thumb, 4 * sqrt(n) lists, capped so each list gets enough training points."""
    return max(1, min(int(4 * math.sqrt(count)), count // MIN_POINTS_PER_LIST))


def default_nprobe(lists: int) -> int:
    """Lists searched per query: 1/8 of them keeps recall@10 near 0.95 on embeddings."""
    return max(1, math.ceil(lists / 8))


def build_ivf(
    store: VectorStore, *, lists: int, nprobe: int, use_gpu: bool, seed: int = 0
) -> BuildReport:
    """An IVF copy of `store`: k-means (spherical, on the GPU when asked and possible) picks
    `lists` centroids, then every vector is assigned to its list (also on the GPU)."""
    started = time.perf_counter()
    ids, vectors = store.all_vectors()
    if lists < 1 or nprobe < 1:
        raise VectorStoreError(f"lists and nprobe must be at least 1, got {lists} and {nprobe}")
    if len(ids) < lists * MIN_POINTS_PER_LIST:
        raise VectorStoreError(
            f"{lists} lists need at least {lists * MIN_POINTS_PER_LIST} vectors to train on, the "
            f"index has {len(ids)}: use fewer lists, or keep the exact index (fast enough at this size)"
        )
    gpu = use_gpu and gpu_available()
    if use_gpu and not gpu:
        warn_once("FAISS GPU not available (install mmsearch[gpu] on a CUDA machine); using the CPU")
    kmeans = faiss.Kmeans(
        store.dim, lists, niter=KMEANS_ITERATIONS, spherical=True, seed=seed, gpu=gpu, verbose=False
    )
    kmeans.train(vectors)
    quantizer = faiss.IndexFlatIP(store.dim)
    centroids = kmeans.centroids  # (lists, dim)
    assert centroids is not None
    quantizer.add(centroids)
    ivf: Any = faiss.IndexIVFFlat(quantizer, store.dim, lists, faiss.METRIC_INNER_PRODUCT)
    ivf.is_trained = True
    if gpu:
        resources = faiss.StandardGpuResources()
        on_gpu = faiss.index_cpu_to_gpu(resources, 0, ivf)
        on_gpu.add_with_ids(vectors, ids)  # assigning n vectors to lists: an (n, lists) product
        ivf = faiss.index_gpu_to_cpu(on_gpu)  # the saved form is always the CPU one
    else:
        ivf.add_with_ids(vectors, ids)
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]  # by-id access
    ivf.nprobe = min(nprobe, lists)
    built = VectorStore(ivf)
    recall = _recall_against_exact(store, built, vectors)
    return BuildReport(built, len(ids), time.perf_counter() - started, "gpu" if gpu else "cpu", recall)


def build_flat(store: VectorStore) -> BuildReport:
    """The exact IDMap2(FlatIP) form of `store`, e.g. to undo build_ivf."""
    started = time.perf_counter()
    ids, vectors = store.all_vectors()
    flat = VectorStore.create(store.dim)
    if len(ids):
        flat.add(ids, vectors)
    return BuildReport(flat, len(ids), time.perf_counter() - started, "cpu", None)


def _recall_against_exact(exact: VectorStore, approximate: VectorStore, vectors: np.ndarray) -> float:
    """Share of the exact top-k that the approximate store also returns, over sampled vectors."""
    rng = np.random.default_rng(0)
    sample = vectors[rng.choice(len(vectors), size=min(FIDELITY_QUERIES, len(vectors)), replace=False)]
    k = min(FIDELITY_K, len(vectors))
    want = exact.search(sample, k)
    got = approximate.search(sample, k)
    found = sum(len(set(w.ids.tolist()) & set(g.ids.tolist())) for w, g in zip(want, got, strict=True))
    return found / (k * len(sample))
