"""FAISS wrapper: inner product over L2-normalised float32 vectors, ids = SQLite primary keys.

One `VectorStore` holds any of the index types mmsearch builds (indexer.store.index_types):

| kind  | FAISS structure                         | search                              | deletion        |
|-------|-----------------------------------------|-------------------------------------|-----------------|
| flat  | IDMap2,FlatIP                           | exact scan                          | remove_ids      |
| ivf   | IVF{lists},Flat (hash-table direct map) | `nprobe` of the lists               | remove_ids      |
| sq8   | IVF{lists},SQ8                          | `nprobe` lists, 8-bit codes         | remove_ids      |
| ivfpq | [OPQ{m},]IVF{lists},PQ{m}x{bits}        | `nprobe` lists, PQ codes, re-ranked | remove_ids      |
| hnsw  | IDMap2,HNSW{M},Flat                     | graph walk of width `ef_search`     | tombstones      |

The compressed kinds (sq8, ivfpq) fetch `rerank` * k candidates and score them again exactly from
the full-precision vectors memory-mapped beside the FAISS file (indexer.store.raw_vectors), so their
scores are exact inner products and their full vectors never sit in RAM. The factor is tuned when
the index is built (the smallest that keeps its recall; 1 = no re-ranking, FAISS's own top-k and
approximate scores) and saved beside the FAISS file (PATH.search.json), since FAISS has no field
for it; a query may ask for another (SearchParams.rerank). HNSW cannot remove a vector:
a removed id's label becomes -1 in the IDMap2 (saved in the same FAISS file) and every search
skips labels below 0 through an IDSelector; the index is rebuilt once they pass a share
(index_types.TOMBSTONE_REBUILD_SHARE). Files are replaced atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from indexer.errors import UnavailableError, warn_once
from indexer.store.raw_vectors import RawVectors, VectorLookup, raw_path_for
from indexer.store.search_params import DEFAULT_SEARCH, SearchParams
from indexer.store.search_params import SearchParamsError as SearchParamsError  # re-exported

INDEX_TYPE = "IDMap2,FlatIP"
IndexKind = Literal["flat", "ivf", "sq8", "ivfpq", "hnsw"]
INDEX_KINDS: tuple[IndexKind, ...] = ("flat", "ivf", "sq8", "ivfpq", "hnsw")
LOSSY_KINDS: tuple[IndexKind, ...] = ("sq8", "ivfpq")
# A filtered search (--under) on an approximate store scores the allowed vectors exactly up to
# this many: with few allowed ids, the probed lists (or the graph walk) may meet none of them.
EXACT_FILTER_MAX = 50_000
# Compressed kinds fetch up to this many candidates per wanted hit and re-rank them from the full
# vectors: the largest factor build-time tuning tries, and the factor of an index saved without
# one (built before the factor was tuned). 8-bit codes keep the order well: 8x k gives recall@10
# 1.000 (FAISS's own top-10: 0.97). PQ codes rank coarsely (their own top-10: 0.44-0.48): at 10^6
# held-out synthetic vectors 8x reached 0.947, 16x 0.993, 32x 1.000, for +0.03 and +0.09 ms;
# nprobe 4-16 changed nothing (benchmarks/scale.py's vectors, measured on this machine).
RERANK_FACTORS: dict[str, int] = {"sq8": 8, "ivfpq": 16}
# The knobs FAISS cannot keep in its own file, saved beside it (PATH + this suffix).
SEARCH_DEFAULTS_SUFFIX = ".search.json"
# save() writes PATH.tmp-PID and renames it over PATH; a killed save leaves the temp file behind.
TEMP_MARK = ".tmp-"
# Labels at or above 0 are live; a tombstoned HNSW label is -1.
_LIVE = faiss.IDSelectorRange(0, 2**62)


class VectorStoreError(UnavailableError):
    """A FAISS file that cannot be read or does not match the index's dimension."""


@dataclass(slots=True)
class SearchResult:
    """Parallel arrays for one query, best first: scores (k,) float32, ids (k,) int64.

    Not frozen: one is made per query on the search path, and a frozen dataclass's __init__
    (object.__setattr__ per field) cost 3x a slotted one: ~45 us of a 64-query batch's ~1.2 ms."""

    scores: np.ndarray
    ids: np.ndarray


def _empty_result() -> SearchResult:
    return SearchResult(np.zeros(0, np.float32), np.zeros(0, np.int64))


def set_search_threads(count: int) -> None:
    """OpenMP threads for FAISS searches made from the calling thread from now on. OpenMP keeps
    this per thread: threads started later get FAISS's default (one per core)."""
    if count < 1:
        raise ValueError(f"search threads must be at least 1, got {count}")
    faiss.omp_set_num_threads(count)


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees a device."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def kind_of(index: Any) -> IndexKind:
    """Which of INDEX_KINDS a FAISS index is (read from its structure, so never stale)."""
    if isinstance(index, faiss.IndexIDMap):
        inner = faiss.downcast_index(index.index)
        return "hnsw" if isinstance(inner, faiss.IndexHNSW) else "flat"
    found = faiss.try_extract_index_ivf(index)
    if found is None:
        raise VectorStoreError(f"unsupported FAISS index {type(index).__name__}")
    ivf: Any = faiss.downcast_index(found)
    if isinstance(ivf, faiss.IndexIVFPQ):
        return "ivfpq"
    if isinstance(ivf, faiss.IndexIVFScalarQuantizer):
        return "sq8"
    return "ivf"


@dataclass(frozen=True)
class SavedKnobs:
    """Default search knobs a FAISS file cannot hold, as saved beside it (compressed kinds only)."""

    rerank: int

    @classmethod
    def read(cls, path: Path) -> SavedKnobs | None:
        """The knobs saved beside FAISS file `path`; None when there are none (or unreadable: the
        index then searches with its kind's fixed factor, as before factors were tuned)."""
        knobs_path = search_defaults_path(path)
        try:
            rerank = json.loads(knobs_path.read_text(encoding="utf-8"))["rerank"]
            if type(rerank) is not int:  # not true, 2.9, "4" or Infinity: a file nobody wrote
                raise ValueError(f"rerank must be a whole number, got {rerank!r}")
            SearchParams(rerank=rerank)  # in range
            return cls(rerank=rerank)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warn_once(f"{knobs_path}: unreadable search defaults ({exc}); using the index type's own")
            return None


def search_defaults_path(path: Path) -> Path:
    """Where the knobs of FAISS file `path` are saved."""
    return path.with_name(path.name + SEARCH_DEFAULTS_SUFFIX)


class VectorStore:
    """An inner-product index keyed by int64 ids, of any kind in INDEX_KINDS.

    `raw` (the full-precision record file) is attached to the image store: compressed kinds
    re-rank and reconstruct from it, and the writer appends to it. `cpu` is set on a GPU copy
    (see `to_search_device`): the CPU store it came from, which answers id-restricted searches
    (FAISS's GPU indexes take no IDSelector) and is what is saved.
    """

    def __init__(
        self,
        index: faiss.Index,
        *,
        raw: VectorLookup | None = None,
        cpu: VectorStore | None = None,
        rerank: int | None = None,
    ) -> None:
        self.cpu = cpu
        self.raw = raw
        self.gpu_resources: Any = None  # kept alive beside a GPU index that uses them
        # faiss's SWIG stubs know only the base Index; the subclasses' methods are Any here.
        self.index: Any = index
        self._sorted_ids: np.ndarray | None = None  # live ids, computed once per loaded snapshot
        self._tombstones: int | None = None
        # Fixed for the life of a store: looked up once, not on every query.
        self._kind: IndexKind = kind_of(self._cpu_index())
        self._inner: Any = self._inner_index()
        # Candidates per wanted hit re-ranked from the full vectors (compressed kinds; 1: none).
        self._rerank_factor = rerank or RERANK_FACTORS.get(self._kind, 1)
        self._ntotal = 0
        self._plain = False
        self._plain_rerank = False
        self._refresh_plain()

    @classmethod
    def create(cls, dim: int, *, raw: RawVectors | None = None) -> VectorStore:
        """An empty exact store for `dim`-dimensional vectors."""
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), raw=raw)

    @classmethod
    def load(cls, path: Path, *, dim: int, with_raw: bool = False) -> VectorStore:
        """Read a FAISS file (a missing file is an empty exact store: nothing committed yet);
        with_raw maps the full-precision vectors beside it."""
        raw = RawVectors(raw_path_for(path), dim) if with_raw else None
        if not path.is_file():
            return cls.create(dim, raw=raw)
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise VectorStoreError(f"{path}: unreadable FAISS index: {exc}") from exc
        if index.d != dim:
            raise VectorStoreError(f"{path}: vectors have dimension {index.d}, index expects {dim}")
        kind_of(index)  # refuse a structure this code cannot search
        knobs = SavedKnobs.read(path)
        return cls(index, raw=raw, rerank=knobs.rerank if knobs else None)

    # -- what it is ------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self.index.d)

    def __len__(self) -> int:
        """Live vectors (tombstoned HNSW entries excluded)."""
        return int(self._cpu_index().ntotal) - self.tombstones

    @property
    def kind(self) -> IndexKind:
        """flat, ivf, sq8, ivfpq or hnsw."""
        return self._kind

    @property
    def is_ivf(self) -> bool:
        """True for an inverted-file (approximate) store of any code type."""
        return self.kind in ("ivf", "sq8", "ivfpq")

    @property
    def is_lossy(self) -> bool:
        """True when the index holds compressed codes (scores re-ranked from the raw vectors)."""
        return self.kind in LOSSY_KINDS

    @property
    def tombstones(self) -> int:
        """Removed HNSW entries still in the graph (0 for every other kind)."""
        if self._tombstones is None:
            index = self._cpu_index()
            if isinstance(index, faiss.IndexIDMap):
                self._tombstones = int((faiss.vector_to_array(index.id_map) < 0).sum())
            else:
                self._tombstones = 0
        return self._tombstones

    @property
    def tombstone_share(self) -> float:
        """Share of the graph's entries that are removed ones."""
        total = int(self._cpu_index().ntotal)
        return self.tombstones / total if total else 0.0

    def _cpu_index(self) -> Any:
        return self.cpu.index if self.cpu is not None else self.index

    def _inner_index(self) -> Any:
        """The IndexIVF (ivf, sq8, ivfpq) or IndexHNSW (hnsw) inside, downcast; None for flat."""
        if self._kind == "flat":
            return None
        if self._kind == "hnsw":
            return faiss.downcast_index(self._cpu_index().index)
        return faiss.downcast_index(faiss.extract_index_ivf(self._cpu_index()))

    def _ivf(self) -> Any:
        return self._inner

    def _hnsw(self) -> Any:
        return self._inner

    def params(self) -> dict[str, int | bool]:
        """The structure's parameters, as `mmsearch info` shows them."""
        kind = self.kind
        if kind == "hnsw":
            hnsw = self._hnsw().hnsw
            out: dict[str, int | bool] = {
                "M": int(hnsw.nb_neighbors(1)),
                "ef_construction": int(hnsw.efConstruction),
                "ef_search": int(hnsw.efSearch),
            }
            return {**out, "tombstones": self.tombstones} if self.tombstones else out
        if kind == "flat":
            return {}
        ivf = self._ivf()
        out = {"lists": int(ivf.nlist), "nprobe": int(ivf.nprobe)}
        if kind == "ivfpq":
            out |= {"pq_m": int(ivf.pq.M), "pq_bits": int(ivf.pq.nbits), "opq": self._has_opq()}
        if kind in LOSSY_KINDS:
            out["rerank"] = self._rerank_factor
        return out

    def _has_opq(self) -> bool:
        return isinstance(self._cpu_index(), faiss.IndexPreTransform)

    def describe(self) -> str:
        """The FAISS structure in index_factory words, as `mmsearch info` shows it."""
        kind, p = self.kind, self.params()
        if kind == "flat":
            return INDEX_TYPE
        if kind == "hnsw":
            return f"IDMap2,HNSW{p['M']},FlatIP efSearch={p['ef_search']}"
        lists = f"IVF{p['lists']}"
        if kind == "ivf":
            return f"{lists},FlatIP nprobe={p['nprobe']}"
        if kind == "sq8":
            return f"{lists},SQ8 nprobe={p['nprobe']} rerank={p['rerank']}"
        opq = f"OPQ{p['pq_m']}," if p["opq"] else ""
        return f"{opq}{lists},PQ{p['pq_m']}x{p['pq_bits']} nprobe={p['nprobe']} rerank={p['rerank']}"

    def default_search(self) -> SearchParams:
        """The knobs the index answers with when a query gives none."""
        kind = self.kind
        if kind == "hnsw":
            return SearchParams(ef_search=int(self._hnsw().hnsw.efSearch))
        if kind == "flat":
            return DEFAULT_SEARCH
        rerank = self._rerank_factor if self.is_lossy else None
        return SearchParams(nprobe=int(self._ivf().nprobe), rerank=rerank)

    def set_default_search(self, params: SearchParams) -> None:
        """Make knobs the index's own (saved with it), e.g. the tuned ones."""
        kind = self.kind
        if kind == "hnsw":
            if params.ef_search is not None:
                self._hnsw().hnsw.efSearch = params.ef_search
        elif kind != "flat" and params.nprobe is not None:
            ivf = self._ivf()
            ivf.nprobe = min(params.nprobe, ivf.nlist)
        if self.is_lossy and params.rerank is not None:
            self._rerank_factor = params.rerank
            self._refresh_plain()

    # -- ids ----------------------------------------------------------------------------------

    def ids(self) -> np.ndarray:
        """All live ids, sorted (n,) int64; computed once per loaded store (the per-snapshot id set)."""
        if self._sorted_ids is None:
            self._sorted_ids = np.sort(self._collect_ids())
        return self._sorted_ids

    def _collect_ids(self) -> np.ndarray:
        index = self._cpu_index()
        if isinstance(index, faiss.IndexIDMap):
            labels = faiss.vector_to_array(index.id_map).astype(np.int64)
            return labels[labels >= 0]
        ivf = self._ivf()
        lists: Any = ivf.invlists
        chunks = [
            faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
            for i in range(ivf.nlist)
            if lists.list_size(i)
        ]
        return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, np.int64)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Which of ids (m,) are live -> (m,) bool; O(m log n) against the cached id set."""
        live = self.ids()
        ids = np.asarray(ids, dtype=np.int64)
        if len(live) == 0:
            return np.zeros(len(ids), bool)
        at = np.minimum(np.searchsorted(live, ids), len(live) - 1)
        return live[at] == ids

    def _changed(self) -> None:
        self._sorted_ids = None
        self._tombstones = None
        self._refresh_plain()

    def _refresh_plain(self) -> None:
        """Whether a query without filter or knobs can go straight to FAISS (non-empty, no
        tombstones to skip), with (`_plain_rerank`) or without (`_plain`) a re-rank of its
        candidates, and the vector count: checked per change, not per query."""
        self._ntotal = int(self.index.ntotal)
        reranks = self.is_lossy and self._rerank_factor > 1
        direct = self._ntotal > 0 and self.tombstones == 0
        self._plain = direct and not reranks
        self._plain_rerank = direct and reranks

    # -- vectors ------------------------------------------------------------------------------

    def reconstruct(self, id_: int) -> np.ndarray:
        """The stored vector (dim,) of one live id, full precision; KeyError if absent."""
        found, vectors = self.vectors_of(np.array([int(id_)], dtype=np.int64))
        if not found[0]:
            raise KeyError(id_)
        return vectors[0]

    def vectors_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask (m,) bool, vectors (found, dim) float32) of live ids, full precision:
        from the raw file for compressed kinds, else from the index."""
        ids = np.asarray(ids, dtype=np.int64)
        live = self.contains(ids)
        if self.raw is not None and self.is_lossy:
            found, vectors = self.raw.vectors(ids[live])
            mask = live.copy()
            mask[live] = found
            return mask, vectors
        if not live.any():
            return live, np.zeros((0, self.dim), np.float32)
        vectors = self._cpu_index().reconstruct_batch(ids[live])
        return live, np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)

    def index_vectors(self, ids: np.ndarray) -> np.ndarray:
        """Vectors (n, dim) float32 of live ids as the FAISS index itself holds them (decoded
        codes for compressed kinds): the last resort when the raw file is gone."""
        if self.is_ivf and self._ivf().direct_map.type == faiss.DirectMap.NoMap:  # type: ignore[attr-defined]
            self._ivf().make_direct_map(True)
        vectors = self._cpu_index().reconstruct_batch(np.asarray(ids, dtype=np.int64))
        return np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n,) int64 sorted, vectors (n, dim) float32) of everything stored, in RAM."""
        ids = self.ids()
        _, vectors = self.vectors_of(ids)
        return ids, vectors

    # -- edits --------------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors (n, dim) float32 under ids (n,) int64; the raw record first, when attached."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise VectorStoreError(
                f"expected vectors of shape (n, {self.dim}), got {vectors.shape}"
            )
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if isinstance(self.raw, RawVectors):
            self.raw.append(ids, vectors)
        self.index.add_with_ids(vectors, ids)
        self._changed()

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Delete vectors by id (HNSW: tombstone them); returns how many were removed."""
        if len(ids) == 0:
            return 0
        wanted = np.asarray(ids, dtype=np.int64)
        removed = self._tombstone(wanted) if self.kind == "hnsw" else int(self.index.remove_ids(wanted))
        self._changed()
        return removed

    def _tombstone(self, ids: np.ndarray) -> int:
        """HNSW has no removal: relabel the entries -1 (saved with the file, skipped by search)."""
        index = self.index
        labels = faiss.vector_to_array(index.id_map)
        hit = np.isin(labels, ids) & (labels >= 0)
        if not hit.any():
            return 0
        labels[hit] = -1
        faiss.copy_array_to_vector(labels, index.id_map)
        index.construct_rev_map()
        return int(hit.sum())

    # -- search -------------------------------------------------------------------------------

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed_ids: np.ndarray | None = None,
        params: SearchParams | None = None,
    ) -> list[SearchResult]:
        """Top-k by inner product for queries (q, dim); FAISS's -1 padding is dropped.

        allowed_ids (n,) int64 restricts the search to those ids (e.g. files under one folder);
        params overrides the index's nprobe / ef_search for these queries.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if params is not None and params.is_default:
            params = None
        if self._plain and allowed_ids is None and params is None and k > 0:
            # The common query, with nothing to add to FAISS's own call: what raw FAISS costs.
            scores, ids = self.index.search(queries, min(k, self._ntotal))  # (q, k) each
            # FAISS pads a short answer with -1 at the end of its row: the last column tells.
            if len(ids) == 1 and ids[0, -1] >= 0:  # one query: no NumPy reduction, no zip
                return [SearchResult(scores[0], ids[0])]
            if len(ids) > 1 and (ids[:, -1] >= 0).all():
                return [SearchResult(s, i) for s, i in zip(scores, ids, strict=True)]
            return [SearchResult(s[i >= 0], i[i >= 0]) for s, i in zip(scores, ids, strict=True)]
        if self._plain_rerank and allowed_ids is None and params is None and k > 0 and self.raw is not None:
            # The compressed kinds' common query: FAISS's call, then the exact re-rank, nothing else.
            _, ids = self.index.search(queries, min(k * self._rerank_factor, self._ntotal))
            return self._rerank(queries, ids, k)
        empty = allowed_ids is not None and len(allowed_ids) == 0
        if len(self) == 0 or k <= 0 or empty:
            return [_empty_result() for _ in queries]
        if allowed_ids is not None and self.cpu is not None:
            return self.cpu.search(queries, k, allowed_ids=allowed_ids, params=params)
        if allowed_ids is not None and self.kind != "flat" and len(allowed_ids) <= EXACT_FILTER_MAX:
            return self._search_among(queries, k, allowed_ids)
        factor = self._rerank_factor if params is None or params.rerank is None else params.rerank
        lossy = self.is_lossy and self.raw is not None and factor > 1
        fetch = min(k * factor if lossy else k, int(self.index.ntotal))
        scores, ids = self._faiss_search(queries, fetch, allowed_ids, params)  # (q, fetch) each
        if lossy:
            return self._rerank(queries, ids, k)
        return [SearchResult(s[i >= 0], i[i >= 0]) for s, i in zip(scores, ids, strict=True)]

    def _faiss_search(
        self,
        queries: np.ndarray,
        k: int,
        allowed_ids: np.ndarray | None,
        params: SearchParams | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The FAISS call with knobs and selector; no parameter object when none is needed, so
        a plain query costs what raw FAISS costs."""
        selector: Any = None
        if allowed_ids is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
        elif self.tombstones:
            selector = _LIVE
        knobs = params or DEFAULT_SEARCH
        kind = self.kind
        if kind == "flat":
            faiss_params = None if selector is None else faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
            return self.index.search(queries, k, params=faiss_params)
        if kind == "hnsw":
            if selector is None and knobs.ef_search is None:
                return self.index.search(queries, k)
            ef = knobs.ef_search or int(self._hnsw().hnsw.efSearch)
            hnsw_params = faiss.SearchParametersHNSW(efSearch=ef)  # type: ignore[attr-defined]
            if selector is not None:
                hnsw_params.sel = selector
            return self.index.search(queries, k, params=hnsw_params)
        if selector is None and knobs.nprobe is None:
            return self.index.search(queries, k)
        ivf_params = faiss.SearchParametersIVF(nprobe=knobs.nprobe or int(self._ivf().nprobe))  # type: ignore[call-arg]
        if selector is not None:
            ivf_params.sel = selector
        return self.index.search(queries, k, params=ivf_params)

    def _rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> list[SearchResult]:
        """Exact inner products of the candidates (q, c) from the raw vectors, top-k of each.

        One gather, one product and one sort for the whole batch: a loop per query cost a batch
        of 64 about 2.5x its FAISS call, all of it Python and small-array overhead."""
        assert self.raw is not None
        count, fetched = candidates.shape
        if count == 1:
            return [self._rerank_one(queries[0], candidates[0], k)]
        found, vectors = self.raw.vectors(candidates.ravel())  # (q*c,) mask; (found, dim)
        if not found.all():  # FAISS's -1 padding, or an id whose record is gone: scored -inf
            every = np.zeros((len(found), vectors.shape[1]), np.float32)
            every[found] = vectors
            vectors = every
        # (q, c, dim) @ (q, dim, 1): one batched product
        scores = np.matmul(vectors.reshape(count, fetched, -1), queries[:, :, None])[..., 0]
        scores[~found.reshape(count, fetched)] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # ties keep FAISS's order
        rows = np.arange(count)[:, None]
        top_scores, top_ids = scores[rows, order], candidates[rows, order]
        keep = top_scores > -np.inf
        if keep.all():
            return [SearchResult(s, i) for s, i in zip(top_scores, top_ids, strict=True)]
        return [SearchResult(s[m], i[m]) for s, i, m in zip(top_scores, top_ids, keep, strict=True)]

    def _rerank_one(self, query: np.ndarray, candidates: np.ndarray, k: int) -> SearchResult:
        """_rerank for one query (dim,) in a handful of NumPy calls: a query at a time is the
        common case, and there every call's fixed cost shows."""
        assert self.raw is not None
        found, vectors = self.raw.vectors(candidates)  # (c,) mask; (found, dim)
        if not found.all():  # FAISS's -1 padding, or an id whose record is gone: left out
            candidates = candidates[found]
        scores = vectors @ query  # (found,)
        order = np.argsort(-scores, kind="stable")[:k]  # ties keep FAISS's order
        return SearchResult(scores[order], candidates[order])

    def _search_among(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray) -> list[SearchResult]:
        """Exact top-k over the stored vectors among allowed_ids (queries (q, dim))."""
        wanted = np.unique(np.asarray(allowed_ids, dtype=np.int64))
        found, vectors = self.vectors_of(wanted)  # (n, dim)
        ids = wanted[found]
        if len(ids) == 0:
            return [_empty_result() for _ in queries]
        scores = queries @ vectors.T  # (q, n)
        k = min(k, len(ids))
        results = []
        for row in scores:
            top = np.argpartition(-row, k - 1)[:k]
            top = top[np.argsort(-row[top], kind="stable")]
            results.append(SearchResult(row[top].astype(np.float32), ids[top]))
        return results

    # -- files --------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write atomically (temp file, fsync, rename, fsync the folder), the knobs FAISS cannot
        hold first: a reader that meets the new FAISS file then also meets its knobs."""
        if self.cpu is not None:
            raise VectorStoreError("a GPU search copy is never saved: save its CPU store")
        knobs_path = search_defaults_path(path)
        if self.is_lossy:
            text = json.dumps(asdict(SavedKnobs(rerank=self._rerank_factor)))
            _replace_atomically(knobs_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        _replace_atomically(path, lambda tmp: faiss.write_index(self.index, str(tmp)))
        if not self.is_lossy:
            knobs_path.unlink(missing_ok=True)  # a compressed index's, now replaced


def _replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """write(temp file), fsync it, rename it over path, fsync the folder."""
    tmp = path.with_name(f"{path.name}{TEMP_MARK}{os.getpid()}")
    write(tmp)
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
    knobs = search_defaults_path(path)
    stale = [*path.parent.glob(f"{path.name}{TEMP_MARK}*"), *path.parent.glob(f"{knobs.name}{TEMP_MARK}*")]
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


def warn_no_gpu() -> None:
    """The one warning a --device cuda run without faiss-gpu gets."""
    warn_once("FAISS GPU not available (install mmsearch[gpu] on a CUDA machine); using the CPU")


def to_search_device(store: VectorStore, *, use_gpu: bool) -> VectorStore:
    """A GPU copy for searching when asked and possible; the saved form always stays on the CPU.

    FAISS has GPU forms of the flat and IVF kinds (flat, ivf, sq8, ivfpq); an HNSW graph is
    searched on the CPU (FAISS's GPU graph index, CAGRA, is a different structure).
    """
    if not use_gpu or store.cpu is not None:
        return store
    if not gpu_available():
        warn_no_gpu()
        return store
    if store.kind == "hnsw":
        warn_once("FAISS has no GPU search for an HNSW index; searching it on the CPU")
        return store
    resources = faiss.StandardGpuResources()
    try:
        on_gpu = faiss.index_cpu_to_gpu(resources, 0, store.index)
    except RuntimeError as exc:  # e.g. a PQ code size the GPU kernels do not support
        warn_once(f"FAISS could not copy this {store.kind} index to the GPU ({exc}); using the CPU")
        return store
    gpu = VectorStore(on_gpu, raw=store.raw, cpu=store, rerank=store._rerank_factor)
    gpu.gpu_resources = resources  # the GPU index must not outlive the memory it was given
    return gpu
