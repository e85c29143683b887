"""Which FAISS structure holds an index's image vectors, chosen by size and memory, and how to
build it (rebuilding an index in place when the choice changes: indexer/store/index_upkeep.py).

`choose_kind` is the `auto` rule, from measurements on this machine (benchmarks/scale.py,
benchmarks/RESULTS.md):
- exact (flat) while a scan stays under ~1 ms: count * dim <= EXACT_MAX_FLOATS;
- IVF-Flat above that, while full-precision vectors fit the memory budget;
- HNSW from HNSW_MIN_VECTORS (10^7) on, when its graph also fits in half the budget: a graph
  walk grows ~log(N) where IVF's scan grows ~sqrt(N), at the price of a slow build and removals
  kept as tombstones (below 10^7 IVF measured faster here);
- IVF-SQ8 (4x smaller) when full precision does not fit, IVF-PQ (with OPQ where it measurably
  lowers the quantisation error) when SQ8 does not fit either.

The index records its policy (`auto`, or the kind a user asked for), the optional memory budget,
and the recall@10 measured when it was built; the kind and parameters are read from the FAISS
file itself, so they can never disagree with it. Default search knobs (nprobe, ef_search) are
tuned at build time to reach recall@10 >= TUNE_TARGET on probe queries (Fidelity) and saved in
the FAISS file; so is the compressed kinds' re-rank factor (saved beside it, see
indexer.store.vectors): the smallest that keeps that recall with a margin on two kinds of probe
(1 or 2 for SQ8 in the runs so far, 1 meaning no re-ranking; 4-16 for IVF-PQ).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import faiss
import numpy as np

from indexer.errors import InvalidInputError, warn_once
from indexer.store.raw_vectors import CHUNK_ROWS, InMemoryVectors, RawVectors, VectorLookup
from indexer.store.vectors import (
    INDEX_KINDS,
    RERANK_FACTORS,
    IndexKind,
    SearchParams,
    VectorStore,
    VectorStoreError,
    gpu_available,
    warn_no_gpu,
)

AUTO = "auto"
POLICIES: tuple[str, ...] = (AUTO, *INDEX_KINDS)
# A flat scan of 6.4M floats (50,000 x 128-d) takes ~0.8 ms on one core here; past that an IVF
# at recall 0.95 answers faster (benchmarks/RESULTS.md, "Index types at scale").
EXACT_MAX_FLOATS = 50_000 * 128
# HNSW only from here: at 10^6 128-d vectors IVF answered at the tuned defaults in 0.08 ms p50
# against HNSW's 0.64 ms, built 2x faster and removes for real (benchmarks/RESULTS.md). IVF's
# scan grows ~sqrt(N) and HNSW's walk ~log(N), so HNSW can only pay off an order of magnitude up.
HNSW_MIN_VECTORS = 10_000_000
# HNSW only when its graph takes at most this share of the budget: it cannot shrink on removal.
HNSW_BUDGET_SHARE = 0.5
HNSW_M = 32  # graph neighbours per node: FAISS's usual choice for 0.95+ recall
HNSW_EF_CONSTRUCTION = 64  # build-time search width: recall ~ that of 2x the time at 40
# Default memory budget: half of this machine's RAM (the rest is for the model, the catalogue,
# and the page cache the compressed kinds re-rank from).
DEFAULT_BUDGET_SHARE = 0.5
# k-means: FAISS wants >= 39 training points per list and warns below. Training on 64 per list
# (FAISS samples up to 256) makes a 10^6-vector build 4x cheaper with lists as good for search.
MIN_POINTS_PER_LIST = 39
TRAIN_POINTS_PER_LIST = 64
PQ_DIMS_PER_CODE = 4  # 4 dims per byte: 128-d -> 32 bytes (16x smaller than float32)
PQ_BITS = 8
OPQ_MIN_GAIN = 0.05  # OPQ is used when it lowers PQ's (Gaussian) distortion bound by 5% or more
OPQ_SAMPLE = 20_000  # vectors whose covariance decides the OPQ rotation
TRAIN_SAMPLE_MIN = 65_536  # PQ / SQ codebooks train on at least this many (when there are)
# Build-time tuning: the smallest nprobe / ef_search whose recall@10 on the Fidelity probes
# (points between two stored vectors, harder than real queries) reaches this.
TUNE_TARGET = 0.95
RECALL_TARGET = 0.95
FIDELITY_QUERIES = 256  # probe queries used to measure recall (Fidelity)
FIDELITY_K = 10
SCORE_TOLERANCE = 1e-5  # float32 inner products of the same pair differ by a few ulps across BLAS paths
EF_SEARCH_STEPS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
# Re-rank factors tried, smallest first, up to the kind's RERANK_FACTORS: every re-ranked
# candidate costs a full-vector read, and factor 1 skips the re-ranking step altogether.
RERANK_STEPS = (1, 2, 4, 8, 16, 32)
# A factor below the kind's full one must reach TUNE_TARGET plus this on the probes: 256 probes
# measure recall to about +-0.01, and a factor chosen at exactly 0.95 on them answered held-out
# queries at 0.947 (IVF-PQ, 10^6 vectors, make bench-scale).
RERANK_MARGIN = 0.02
# An auto IVF-family index is rebuilt (lists re-chosen) when it has grown this much since built.
LIST_GROWTH_REBUILD = 4.0
# HNSW is rebuilt without its tombstones once they are this share of the graph: each costs
# memory and search time like a live vector.
TOMBSTONE_REBUILD_SHARE = 0.2
# The raw vector file is rewritten without dead records once they are this share of it.
RAW_COMPACT_SHARE = 0.5
# Index_info keys.
POLICY_KEY = "index_policy"
BUDGET_KEY = "memory_budget"
RECALL_KEY = "index_recall"
BUILT_KEY = "index_built_vectors"
TYPE_KEY = "index_type"
# The re-rank factor `mmsearch optimize --rerank` chose: automatic rebuilds keep it (empty: tuned).
RERANK_KEY = "index_rerank"

_SIZE_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


class IndexTypeError(InvalidInputError):
    """An index type, parameter or memory budget that cannot be used as given."""


def parse_size(text: str) -> int:
    """'8GiB' -> 8589934592, '500M' -> 500000000, '1234' -> 1234 bytes."""
    match = _SIZE_PATTERN.match(text)
    if not match:
        raise IndexTypeError(f"--memory-budget {text!r}: give a size such as 4GiB, 500MB or 2G")
    number, unit, binary = match.groups()
    power = "kmgt".index(unit.lower()) + 1 if unit else 0
    return int(float(number) * (1024 if binary else 1000) ** power)


def machine_memory() -> int:
    """Physical RAM of this machine, bytes."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def default_memory_budget() -> int:
    """DEFAULT_BUDGET_SHARE of this machine's RAM."""
    return int(machine_memory() * DEFAULT_BUDGET_SHARE)


def pq_subquantizers(dim: int) -> int:
    """PQ code bytes for a dimension: dim / PQ_DIMS_PER_CODE, a divisor of dim."""
    m = max(1, dim // PQ_DIMS_PER_CODE)
    while dim % m:
        m -= 1
    return m


def resident_bytes(kind: IndexKind, count: int, dim: int) -> int:
    """Estimated RAM of an index (measured per vector in benchmarks/RESULTS.md): codes, ids and
    the id lookups (IDMap2's reverse map, IVF's hash-table direct map ~40 B each)."""
    per_vector = {
        "flat": 4 * dim + 8 + 40,
        "ivf": 4 * dim + 8 + 40,
        "sq8": dim + 8,
        "ivfpq": pq_subquantizers(dim) + 8,
        "hnsw": 4 * dim + 8 * HNSW_M + 24 + 8 + 40,
    }[kind]
    return count * per_vector


@dataclass(frozen=True)
class Choice:
    """What `auto` picked for a count and budget, and why (shown by optimize and index)."""

    kind: IndexKind
    reason: str


def choose_kind(count: int, dim: int, *, memory_budget: int) -> Choice:
    """The `auto` rule (module docstring)."""
    full = resident_bytes("flat", count, dim)
    mib = f"{memory_budget / 2**20:,.0f} MiB budget"
    if count * dim <= EXACT_MAX_FLOATS and full <= memory_budget:
        return Choice("flat", f"{count:,} vectors: an exact scan is fast enough")
    if full <= memory_budget:
        hnsw = resident_bytes("hnsw", count, dim)
        if count >= HNSW_MIN_VECTORS and hnsw <= memory_budget * HNSW_BUDGET_SHARE:
            return Choice("hnsw", f"{count:,} vectors, graph fits the {mib}: lowest latency")
        return Choice("ivf", f"{count:,} vectors: IVF, full vectors fit the {mib}")
    if resident_bytes("sq8", count, dim) <= memory_budget:
        return Choice("sq8", f"full vectors ({full / 2**20:,.0f} MiB) exceed the {mib}: 8-bit codes")
    return Choice("ivfpq", f"8-bit codes exceed the {mib}: product quantisation")


def default_lists(count: int) -> int:
    """FAISS's rule of thumb, 4 * sqrt(n) lists, capped so each list gets enough training points."""
    return max(1, min(int(4 * math.sqrt(count)), count // MIN_POINTS_PER_LIST))


def default_nprobe(lists: int) -> int:
    """Lists searched per query before tuning: 1/8 of them."""
    return max(1, math.ceil(lists / 8))


def min_vectors(kind: IndexKind) -> int:
    """Fewest vectors a kind can be trained on."""
    return MIN_POINTS_PER_LIST if kind in ("ivf", "sq8", "ivfpq") else 0


# -- vector sources ------------------------------------------------------------------------------


class VectorSource(Protocol):
    """Where a build reads full-precision vectors: RAM arrays or the memory-mapped raw file."""

    def __len__(self) -> int: ...

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids (c,) int64, vectors (c, dim) float32) in id order."""
        ...

    def sample(self, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of `count` random vectors, id order."""
        ...

    def lookup(self) -> VectorLookup:
        """Full vectors by id (what compressed kinds re-rank from)."""
        ...


@dataclass(frozen=True)
class ArraySource:
    """Vectors already in RAM: ids (n,) int64, vectors (n, dim) float32."""

    ids: np.ndarray
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """CHUNK_ROWS rows at a time."""
        for start in range(0, len(self.ids), CHUNK_ROWS):
            rows = slice(start, start + CHUNK_ROWS)
            yield self.ids[rows], np.ascontiguousarray(self.vectors[rows], dtype=np.float32)

    def lookup(self) -> VectorLookup:
        """Vectors by id, for re-ranking a compressed build."""
        return InMemoryVectors(self.ids, self.vectors)

    def sample(self, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Random rows without replacement."""
        rows = _sample_rows(len(self.ids), count, seed)
        return self.ids[rows], np.ascontiguousarray(self.vectors[rows], dtype=np.float32)


@dataclass(frozen=True)
class RawSource:
    """The live records of a raw vector file, streamed (never all in RAM)."""

    raw: RawVectors
    live: np.ndarray  # sorted (n,) int64

    def __len__(self) -> int:
        return len(self.live)

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Live records in file (= id) order."""
        return self.raw.chunks(self.live)

    def lookup(self) -> VectorLookup:
        """The raw file itself."""
        return self.raw

    def sample(self, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Random live ids, read by bisection."""
        ids = self.live[_sample_rows(len(self.live), count, seed)]
        found, vectors = self.raw.vectors(ids)
        return ids[found], vectors


def _sample_rows(total: int, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=min(count, total), replace=False))


def source_of(store: VectorStore) -> VectorSource:
    """A store's full-precision vectors: its raw file when that covers every live id, else RAM."""
    live = store.ids()
    raw = store.raw
    if isinstance(raw, RawVectors) and len(live) and raw.positions(live[[0, -1]]).min() >= 0:
        return RawSource(raw, live)
    ids, vectors = store.all_vectors()
    return ArraySource(ids, vectors)


# -- building ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildSpec:
    """A kind and its parameters; None picks the default for the vector count."""

    kind: IndexKind
    lists: int | None = None
    nprobe: int | None = None  # None: tuned to TUNE_TARGET
    ef_search: int | None = None  # None: tuned to TUNE_TARGET
    rerank: int | None = None  # sq8, ivfpq; None: the smallest factor that keeps the tuned recall
    hnsw_m: int = HNSW_M
    pq_m: int | None = None
    pq_bits: int | None = None
    opq: bool | None = None  # None: measured (OPQ_MIN_GAIN)


@dataclass(frozen=True)
class BuildReport:
    """What a build did, for the command's summary line."""

    store: VectorStore
    vectors: int
    seconds: float
    device: str  # where training and adding ran: "cpu" or "gpu"
    recall: float | None  # recall@10 against exact search at the default knobs; None for flat


def build_index(
    source: VectorSource, dim: int, spec: BuildSpec, *, use_gpu: bool = False, tune: bool = True
) -> BuildReport:
    """A new store of spec.kind holding every vector of `source`, knobs tuned, recall measured."""
    started = time.perf_counter()
    count = len(source)
    if count < min_vectors(spec.kind):
        raise VectorStoreError(
            f"an {spec.kind} index needs at least {min_vectors(spec.kind)} vectors to train on, "
            f"the index has {count}: keep the exact index (fast enough at this size)"
        )
    factory, lists = _factory_string(spec, count, dim, source)
    index: Any = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    rotation = None
    if spec.kind == "ivfpq" and spec.opq is not False:
        rotation = opq_rotation(source, dim, int(index.pq.M))
        if rotation is None and spec.opq:
            rotation = np.eye(dim, dtype=np.float32)  # asked for: kept as the identity
    if spec.kind == "hnsw":
        hnsw: Any = faiss.downcast_index(index.index)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    if spec.kind == "ivfpq":
        ivfpq: Any = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivfpq.do_polysemous_training = False  # index_factory's default: minutes of training for
        # Hamming-distance filtering that re-ranking from the full vectors makes pointless
    if rotation is not None:
        index = _with_rotation(index, rotation)
    gpu = use_gpu and gpu_available() and spec.kind != "hnsw"
    if use_gpu and not gpu_available():
        warn_no_gpu()
    elif use_gpu and spec.kind == "hnsw":
        warn_once("FAISS builds HNSW graphs on the CPU only; building it there")
    index, device = _train_and_add(index, source, lists, gpu=gpu)
    if spec.kind == "ivf":
        ivf: Any = faiss.extract_index_ivf(index)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]  # by-id access
    store = VectorStore(index)
    if lists:
        nprobe = default_nprobe(lists) if spec.nprobe is None else min(spec.nprobe, lists)
        store.set_default_search(SearchParams(nprobe=nprobe))
    elif spec.kind == "hnsw" and spec.ef_search is not None:
        store.set_default_search(SearchParams(ef_search=spec.ef_search))
    if spec.rerank is not None:
        store.set_default_search(SearchParams(rerank=spec.rerank))
    recall: float | None = None
    if spec.kind != "flat" and count > 1:
        probe = Fidelity.measure(source, dim)
        store.raw = source.lookup()
        if tune and (spec.nprobe is None and spec.ef_search is None):
            recall = _tune(store, probe, lists)
        if tune and store.is_lossy and spec.rerank is None:
            recall = _tune_rerank(store, [probe, Fidelity.measure_stored(source, dim)])
        if recall is None:
            recall = probe.recall(store)
    return BuildReport(store, count, time.perf_counter() - started, device, recall)


def _factory_string(spec: BuildSpec, count: int, dim: int, source: VectorSource) -> tuple[str, int]:
    """index_factory words for the spec, and the number of lists (0 for flat and hnsw)."""
    if spec.kind == "flat":
        return "IDMap2,Flat", 0
    if spec.kind == "hnsw":
        return f"IDMap2,HNSW{spec.hnsw_m},Flat", 0
    lists = spec.lists or default_lists(count)
    if lists < 1 or count < lists * MIN_POINTS_PER_LIST:
        raise VectorStoreError(
            f"{lists} lists need at least {lists * MIN_POINTS_PER_LIST} vectors to train on, the "
            f"index has {count}: use fewer lists, or keep the exact index (fast enough at this size)"
        )
    if spec.kind == "ivf":
        return f"IVF{lists},Flat", lists
    if spec.kind == "sq8":
        return f"IVF{lists},SQ8", lists
    m = spec.pq_m or pq_subquantizers(dim)
    if dim % m:
        raise IndexTypeError(f"PQ needs a number of sub-quantisers that divides {dim}, got {m}")
    bits = spec.pq_bits or max(1, min(PQ_BITS, int(math.log2(max(2, count // MIN_POINTS_PER_LIST)))))
    return f"IVF{lists},PQ{m}x{bits}", lists


def _train_and_add(index: Any, source: VectorSource, lists: int, *, gpu: bool) -> tuple[Any, str]:
    """Train on a sample (TRAIN_POINTS_PER_LIST points per list) and add every
    vector in chunks; on the GPU when asked and FAISS can, the result always the CPU form."""
    sample = None
    if not index.is_trained:
        _, sample = source.sample(max(lists * TRAIN_POINTS_PER_LIST, TRAIN_SAMPLE_MIN), seed=0)
    if gpu:
        try:
            return _on_gpu(index, sample, source), "gpu"
        except RuntimeError as exc:  # e.g. a PQ code size the GPU kernels lack
            warn_once(f"FAISS could not build this index on the GPU ({exc}); using the CPU")
    if sample is not None:
        index.train(sample)
    for ids, vectors in source.chunks():
        index.add_with_ids(vectors, ids)
    return index, "cpu"


def _on_gpu(index: Any, sample: np.ndarray | None, source: VectorSource) -> Any:
    resources = faiss.StandardGpuResources()
    on_gpu = faiss.index_cpu_to_gpu(resources, 0, index)
    if sample is not None:
        on_gpu.train(sample)  # k-means and codebooks: the (n, lists) products run on the GPU
    for ids, vectors in source.chunks():
        on_gpu.add_with_ids(vectors, ids)  # list assignment and encoding on the GPU
    return faiss.index_gpu_to_cpu(on_gpu)  # the saved form is always the CPU one


def opq_rotation(source: VectorSource, dim: int, m: int) -> np.ndarray | None:
    """The OPQ rotation (dim, dim) when it helps, else None.

    Parametric OPQ (Ge et al., "Optimized Product Quantization", 2013) in closed form: principal
    axes dealt to the m sub-spaces so that their variance products balance (eigenvalue
    allocation). Under a Gaussian model PQ's distortion is proportional to the sum over
    sub-spaces of det(covariance)^(1/sub-dim); the rotation is used when it lowers that bound
    by OPQ_MIN_GAIN or more. It costs one eigendecomposition, where FAISS's iterative OPQ took
    29 s for 4,000 128-d vectors here (measured).
    """
    _, sample = source.sample(OPQ_SAMPLE, seed=1)
    sub = dim // m
    if len(sample) <= dim or sub < 2:
        return None
    covariance = np.cov(sample.astype(np.float64), rowvar=False)  # (dim, dim)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    eigenvalues = np.maximum(eigenvalues, 1e-12)
    buckets: list[list[int]] = [[] for _ in range(m)]
    log_products = np.zeros(m)
    descending = np.argsort(eigenvalues)[::-1]
    for start in range(0, dim, m):  # one axis per sub-space per round, so fill levels stay equal
        for axis, j in zip(descending[start : start + m], np.argsort(log_products), strict=True):
            buckets[int(j)].append(int(axis))  # the largest left to the smallest product so far
            log_products[j] += math.log(eigenvalues[axis])
    rotated_bound = float(np.sum(np.exp(log_products / sub)))
    plain_bound = 0.0
    for j in range(m):
        block = covariance[j * sub : (j + 1) * sub, j * sub : (j + 1) * sub]
        plain_bound += math.exp(np.linalg.slogdet(block + 1e-12 * np.eye(sub))[1] / sub)
    if rotated_bound > plain_bound * (1 - OPQ_MIN_GAIN):
        return None
    order = [axis for bucket in buckets for axis in bucket]
    return np.ascontiguousarray(eigenvectors[:, order].T, dtype=np.float32)  # rows: new axes


def _with_rotation(index: Any, rotation: np.ndarray) -> Any:
    """IndexPreTransform(rotation, index): vectors are rotated before the IVF-PQ sees them
    (orthogonal, so inner products are unchanged)."""
    dim = rotation.shape[0]
    transform: Any = faiss.LinearTransform(dim, dim, False)
    faiss.copy_array_to_vector(rotation.ravel(), transform.A)
    faiss.copy_array_to_vector(np.zeros(dim, np.float32), transform.b)
    transform.is_trained = True
    wrapped: Any = faiss.IndexPreTransform(transform, index)
    wrapped.own_fields = True  # the C++ object owns both (SWIG would free them with Python's)
    transform.this.disown()
    index.this.disown()
    return wrapped


# -- recall ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fidelity:
    """Recall probes with their exact top-k. `measure`: each query is the normalised sum of two
    random stored vectors (a point between two images); measured on the sample corpus's real
    vectors, such queries are harder for IVF and HNSW than caption queries (what a sentence
    search sends) and than stored vectors, so knobs tuned on them hold for real queries
    (benchmarks/RESULTS.md). They are easy for compressed codes, though (their two sources
    score far above the rest): `measure_stored` asks with stored vectors themselves, each left
    out of its own answer, queries from the collection's own distribution, which is what
    exposes a re-rank factor too small for PQ codes."""

    queries: np.ndarray  # (q, dim) float32
    truth: np.ndarray  # (q, k) int64
    kth_scores: np.ndarray  # (q,) float32: the exact k-th best score of each query
    own_ids: np.ndarray | None = None  # (q,) int64: each query's own id, left out of its answer

    @classmethod
    def measure(cls, source: VectorSource, dim: int, *, k: int = FIDELITY_K) -> Fidelity:
        """Points between two stored vectors; exact top-k by streaming every chunk once."""
        _, first = source.sample(FIDELITY_QUERIES, seed=2)
        _, second = source.sample(FIDELITY_QUERIES, seed=3)
        rng = np.random.default_rng(4)
        second = second[rng.permutation(len(second))]  # pair each with a random other
        sums = first + second
        queries = (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)
        truth, kth = _exact_top(source, queries, min(k, len(source)), own_ids=None)
        return cls(queries, truth, kth)

    @classmethod
    def measure_stored(cls, source: VectorSource, dim: int, *, k: int = FIDELITY_K) -> Fidelity:
        """Stored vectors as queries, each one's exact top-k among the others."""
        own_ids, queries = source.sample(FIDELITY_QUERIES, seed=5)
        truth, kth = _exact_top(source, queries, min(k, len(source) - 1), own_ids=own_ids)
        return cls(queries, truth, kth, own_ids)

    def recall(self, store: VectorStore, params: SearchParams | None = None) -> float:
        """recall@k of the store at these knobs: the share of its k hits whose exact score is at
        least the exact k-th score (ties at rank k count either way). A compressed store that does
        not re-rank answers with approximate scores: its hits are scored again from the full
        vectors here."""
        k = self.truth.shape[1]
        if k == 0:
            return 1.0
        own = self.own_ids
        results = store.search(self.queries, k if own is None else k + 1, params=params)
        found = 0
        for row, (query, result, kth) in enumerate(zip(self.queries, results, self.kth_scores, strict=True)):
            ids, scores = result.ids, result.scores
            if own is not None:
                others = ids != own[row]
                ids, scores = ids[others], scores[others]
            ids, scores = ids[:k], scores[:k]
            if store.is_lossy and store.raw is not None:
                _, vectors = store.raw.vectors(ids)
                scores = vectors @ query
            found += int((scores >= kth - SCORE_TOLERANCE).sum())
        return found / self.truth.size


def _exact_top(
    source: VectorSource, queries: np.ndarray, want: int, *, own_ids: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(ids (q, want) int64, k-th best scores (q,) float32) of the exact top-`want` of queries
    (q, dim) over every chunk of the source, each query's own id (own_ids (q,)) left out."""
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), 0), np.int64)
    if want <= 0:
        return best_ids, np.full(len(queries), -np.inf, np.float32)
    for ids, vectors in source.chunks():
        if len(ids) == 0:  # a chunk of the raw file with no live record
            continue
        scores = queries @ vectors.T  # (q, c)
        if own_ids is not None:  # chunks come in id order: each query's own column, if here
            at = np.minimum(np.searchsorted(ids, own_ids), len(ids) - 1)
            here = ids[at] == own_ids
            scores[np.flatnonzero(here), at[here]] = -np.inf
        keep = min(want, scores.shape[1])
        part = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, part, axis=1)], axis=1)
        best_ids = np.concatenate([best_ids, ids[part]], axis=1)
        top = np.argsort(-best_scores, axis=1, kind="stable")[:, :want]
        best_scores = np.take_along_axis(best_scores, top, axis=1)
        best_ids = np.take_along_axis(best_ids, top, axis=1)
    return best_ids, best_scores[:, -1]


def _tune(store: VectorStore, probe: Fidelity, lists: int) -> float:
    """Set the smallest nprobe / ef_search reaching TUNE_TARGET (or the largest tried) as the
    store's default; returns the recall at that default."""
    if store.kind == "hnsw":
        steps = [SearchParams(ef_search=ef) for ef in EF_SEARCH_STEPS]
    else:
        probes = sorted({min(lists, 2**i) for i in range(int(math.log2(max(1, lists))) + 2)})
        steps = [SearchParams(nprobe=n) for n in probes]
    recall = 0.0
    for params in steps:
        recall = probe.recall(store, params)
        if recall >= TUNE_TARGET:
            break
    store.set_default_search(params)
    return recall


def _tune_rerank(store: VectorStore, probes: Sequence[Fidelity]) -> float:
    """Set the smallest re-rank factor whose recall reaches TUNE_TARGET + RERANK_MARGIN on every
    probe set, or on a set where the kind's full factor reaches less, what it reaches there.
    Returns the lowest recall of the sets at the factor set."""
    full = store.default_search().rerank or RERANK_FACTORS[store.kind]
    at_full = [probe.recall(store) for probe in probes]
    goals = [min(TUNE_TARGET + RERANK_MARGIN, recall) for recall in at_full]
    for factor in (step for step in RERANK_STEPS if step < full):
        params = SearchParams(rerank=factor)
        at_factor = [probe.recall(store, params) for probe in probes]
        if all(recall >= goal for recall, goal in zip(at_factor, goals, strict=True)):
            store.set_default_search(params)
            return min(at_factor)
    return min(at_full)


def build_ivf(
    store: VectorStore, *, lists: int, nprobe: int, use_gpu: bool, seed: int = 0
) -> BuildReport:
    """An IVF-Flat copy of `store` with exactly these lists and nprobe (no tuning)."""
    del seed  # k-means is seeded by FAISS's own fixed seed
    spec = BuildSpec("ivf", lists=lists, nprobe=nprobe)
    return build_index(source_of(store), store.dim, spec, use_gpu=use_gpu, tune=False)


def build_flat(store: VectorStore) -> BuildReport:
    """The exact IDMap2(FlatIP) form of `store`."""
    return build_index(source_of(store), store.dim, BuildSpec("flat"))
