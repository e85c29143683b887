"""Index types (flat, ivf, sq8, ivfpq, hnsw): answers checked against a NumPy brute-force
reference, the auto choice, rebuilds at the end of real incremental `mmsearch index` runs from the
stored full-precision vectors (never re-encoding), removals on HNSW, search knobs, `--under`
through an id selector, what `info` shows, and the crash safety of the new files."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest
from PIL import Image
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from indexer.indexing import pipeline
from indexer.models.encoder import NativeEncoder
from indexer.store import catalog, index_types, index_upkeep
from indexer.store.index_dir import IMAGES_FAISS, IndexWriter
from indexer.store.index_types import (
    ArraySource,
    BuildSpec,
    Fidelity,
    IndexTypeError,
    build_index,
    choose_kind,
    parse_size,
    resident_bytes,
)
from indexer.store.raw_vectors import InMemoryVectors, RawVectors, raw_path_for
from indexer.store.search_params import MAX_RERANK
from indexer.store.vectors import (
    RERANK_FACTORS,
    SearchParams,
    SearchParamsError,
    VectorStore,
    gpu_available,
    search_defaults_path,
)
from mmsearch import Engine
from mmsearch.cli import app
from mmsearch.query import Query, QueryTerm

DIM = 32
N = 3000
K = 10
MODEL_DIM = 32  # the colors_model fixture
Data = tuple[np.ndarray, np.ndarray, np.ndarray]  # ids (n,), vectors (n, DIM), queries (q, DIM)
Built = dict[str, index_types.BuildReport]


def _clustered(n: int = N, seed: int = 0, dim: int = DIM) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around 40 centres (embeddings cluster); ids start at 1000, like SQLite keys."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    vectors = centres[rng.integers(0, 40, n)] + 0.4 * rng.normal(size=(n, dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    return np.arange(1000, 1000 + n, dtype=np.int64), vectors


def _brute_force(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The NumPy reference: exact top-k ids (q, k) by inner product."""
    scores = queries @ vectors.T
    return ids[np.argsort(-scores, axis=1, kind="stable")[:, :k]]


def _recall(
    store: VectorStore, ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, **knobs: int
) -> float:
    truth = _brute_force(vectors, ids, queries, K)
    results = store.search(queries, K, params=SearchParams(**knobs) if knobs else None)
    return float(np.mean([len(np.intersect1d(r.ids, t)) / K for r, t in zip(results, truth, strict=True)]))


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread() -> Iterator[None]:
    """FAISS's OpenMP threads spin-wait: on a shared 2-core machine two of them made PQ training
    ~15x slower than one (measured); these tiny builds need no parallelism."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> Data:
    ids, vectors = _clustered()
    rng = np.random.default_rng(7)
    queries = vectors[rng.choice(N, 50, replace=False)] + 0.2 * rng.normal(size=(50, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return ids, vectors, queries.astype(np.float32)


@pytest.fixture(scope="module")
def built(data: Data) -> Built:
    """One store of each kind over the same vectors (built once: HNSW and OPQ take a moment)."""
    ids, vectors, _ = data
    source = ArraySource(ids, vectors)
    return {kind: build_index(source, DIM, BuildSpec(kind)) for kind in index_types.INDEX_KINDS}


# -- each kind against the NumPy reference ------------------------------------------------------


def test_flat_returns_exactly_the_brute_force_top_k(built: Built, data: Data) -> None:
    ids, vectors, queries = data
    store = built["flat"].store
    truth = _brute_force(vectors, ids, queries, K)
    for result, want, query in zip(store.search(queries, K), truth, queries, strict=True):
        assert result.ids.tolist() == want.tolist()
        np.testing.assert_allclose(result.scores, vectors[want - 1000] @ query, atol=1e-5)
    assert built["flat"].recall is None and store.describe() == "IDMap2,FlatIP"


def test_ivf_probing_every_list_is_exact_and_fewer_lists_lose_some(built: Built, data: Data) -> None:
    ids, vectors, queries = data
    store = built["ivf"].store
    lists = int(store.params()["lists"])
    truth = _brute_force(vectors, ids, queries, K)
    for result, want in zip(store.search(queries, K, params=SearchParams(nprobe=lists)), truth, strict=True):
        assert result.ids.tolist() == want.tolist()
    assert _recall(store, ids, vectors, queries, nprobe=1) < _recall(
        store, ids, vectors, queries, nprobe=lists
    )


def test_a_short_answer_has_no_padding_alone_or_in_a_batch(data: Data) -> None:
    """One probed list holds fewer than k vectors: FAISS pads the row with -1, and the plain
    search path (no knobs, no filter) drops the padding one query at a time and in a batch."""
    ids, vectors, queries = data
    store = build_index(ArraySource(ids, vectors), DIM, BuildSpec("ivf", lists=76, nprobe=1)).store
    assert store.params()["nprobe"] == 1
    k = 200  # 76 lists of ~40 vectors: one probed list cannot fill 200 slots
    alone = [store.search(query[None], k)[0] for query in queries[:4]]
    batch = store.search(queries[:4], k)
    for one, together in zip(alone, batch, strict=True):
        assert 0 < len(one.ids) < k and (one.ids >= 0).all() and len(one.scores) == len(one.ids)
        assert one.ids.tolist() == together.ids.tolist()
    full = store.search(queries[:1], 5)[0]  # a full row keeps all its hits
    assert len(full.ids) == 5


@pytest.mark.parametrize(("kind", "bound"), [("ivf", 0.95), ("sq8", 0.95), ("ivfpq", 0.95), ("hnsw", 0.95)])
def test_default_knobs_reach_the_recall_bound_against_brute_force(
    built: Built, data: Data, kind: str, bound: float
) -> None:
    ids, vectors, queries = data
    report = built[kind]
    assert report.recall is not None and report.recall >= index_types.RECALL_TARGET, report.recall
    assert _recall(report.store, ids, vectors, queries) >= bound
    assert report.store.kind == kind


@pytest.mark.parametrize("kind", ["sq8", "ivfpq"])
def test_compressed_kinds_rerank_to_exact_scores_from_the_full_vectors(
    built: Built, data: Data, kind: str
) -> None:
    _, vectors, queries = data
    store = built[kind].store
    reranked = SearchParams(rerank=8)
    for result, query in zip(store.search(queries[:5], K, params=reranked), queries[:5], strict=True):
        np.testing.assert_allclose(result.scores, vectors[result.ids - 1000] @ query, atol=1e-5)
        assert list(result.scores) == sorted(result.scores, reverse=True)
    one = store.search(queries[:1], K, params=reranked)[0]  # one query takes its own path
    np.testing.assert_allclose(one.scores, vectors[one.ids - 1000] @ queries[0], atol=1e-5)
    np.testing.assert_array_equal(store.reconstruct(1005), vectors[5])  # full precision, not codes


@pytest.mark.parametrize("kind", ["sq8", "ivfpq"])
def test_the_rerank_factor_is_the_smallest_that_keeps_the_recall_and_a_query_may_ask_for_more(
    built: Built, data: Data, kind: str
) -> None:
    """Tuned at build time on the recall probes: the chosen factor reaches the target plus its
    margin (or what the kind's full factor reaches), the next smaller one does not; factor 1 is
    FAISS's own top-k."""
    ids, vectors, queries = data
    source = ArraySource(ids, vectors)
    store = built[kind].store
    factor = store.default_search().rerank
    assert factor is not None and factor in index_types.RERANK_STEPS and store.params()["rerank"] == factor
    probes = [Fidelity.measure(source, DIM), Fidelity.measure_stored(source, DIM)]
    full = [probe.recall(store, SearchParams(rerank=RERANK_FACTORS[kind])) for probe in probes]
    goals = [min(index_types.TUNE_TARGET + index_types.RERANK_MARGIN, recall) for recall in full]
    assert all(probe.recall(store) >= goal for probe, goal in zip(probes, goals, strict=True))
    smaller = [step for step in index_types.RERANK_STEPS if step < factor]
    if smaller:
        at_smaller = [probe.recall(store, SearchParams(rerank=smaller[-1])) for probe in probes]
        assert any(recall < goal for recall, goal in zip(at_smaller, goals, strict=True))
    # FAISS's own answer at factor 1, with its approximate scores; more candidates never lose
    raw_scores, raw_ids = store.index.search(queries[:3], K)
    first = store.search(queries[:3], K, params=SearchParams(rerank=1))
    assert [r.ids.tolist() for r in first] == raw_ids.tolist()
    np.testing.assert_array_equal(first[0].scores, raw_scores[0])
    assert _recall(store, ids, vectors, queries, rerank=16) >= _recall(store, ids, vectors, queries, rerank=1)
    with pytest.raises(SearchParamsError, match="rerank must be at most"):
        SearchParams(rerank=MAX_RERANK + 1)


@pytest.mark.parametrize("kind", ["sq8", "ivfpq"])
def test_a_query_without_knobs_is_reranked_at_the_index_own_factor(
    built: Built, data: Data, kind: str
) -> None:
    """The knob-less query takes a short path (FAISS's call, then the re-rank): it must answer
    what the same factor asked for explicitly answers, exact scores included, alone and in a batch."""
    _, vectors, queries = data
    store = built[kind].store
    factor = store.default_search().rerank
    assert factor is not None
    explicit = SearchParams(rerank=factor)
    for batch in (queries[:1], queries[:6]):
        default, asked = store.search(batch, K), store.search(batch, K, params=explicit)
        assert [r.ids.tolist() for r in default] == [r.ids.tolist() for r in asked]
        for result, query in zip(default, batch, strict=True):
            assert len(result.ids) == K
            if factor > 1:  # re-ranked: exact inner products of the full vectors
                np.testing.assert_allclose(result.scores, vectors[result.ids - 1000] @ query, atol=1e-5)


def test_sq8_without_reranking_takes_faiss_own_call_and_keeps_its_recall() -> None:
    """Where 8-bit codes alone reach the target and its margin (as on these vectors, measured:
    0.975 at factor 1, goal 0.97), the tuned factor is 1: no full-vector read, the plain path,
    FAISS's answer as it is."""
    ids, vectors = _clustered(seed=4)
    report = build_index(ArraySource(ids, vectors), DIM, BuildSpec("sq8"))
    store = report.store
    assert store.default_search().rerank == 1 and "rerank=1" in store.describe()
    assert report.recall is not None and report.recall >= index_types.TUNE_TARGET
    queries = vectors[:5] + 0.1
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    _, raw_ids = store.index.search(queries, K)
    assert [r.ids.tolist() for r in store.search(queries, K)] == raw_ids.tolist()


@pytest.mark.parametrize(
    "stored_ids",
    [np.arange(1, 401), np.delete(np.arange(1, 401), np.s_[50:120]), np.arange(1, 401) * 7_919],
    ids=["dense", "with-holes", "sparse"],
)
def test_the_full_vectors_are_found_by_id_however_ids_are_spread(
    tmp_path: Path, stored_ids: np.ndarray
) -> None:
    """Re-ranking looks candidates up by id: present ids give their own vector, absent ones
    (removed, never stored, FAISS's -1 padding, past the last id) are reported missing."""
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(len(stored_ids), DIM)).astype(np.float32)
    raw = RawVectors(tmp_path / "images.vectors", DIM)
    raw.write_all(stored_ids.astype(np.int64), vectors)
    raw = RawVectors(tmp_path / "images.vectors", DIM)
    present = stored_ids[[0, 7, len(stored_ids) - 1, 3]]
    absent = np.array([-1, 0, 60, int(stored_ids[-1]) + 1, 10**12])
    absent = absent[~np.isin(absent, stored_ids)]
    asked = np.concatenate([present[:2], absent, present[2:]])
    found, got = raw.vectors(asked)
    assert found.tolist() == [True, True, *([False] * len(absent)), True, True]
    want = [vectors[int(np.flatnonzero(stored_ids == i)[0])] for i in asked[found]]
    np.testing.assert_array_equal(got, np.stack(want))


@pytest.mark.parametrize("lookup", ["memory", "file"])
@pytest.mark.parametrize("kind", ["sq8", "ivfpq"])
def test_a_batch_reranks_like_its_queries_one_by_one_and_skips_ids_without_vectors(
    data: Data, kind: str, lookup: str, tmp_path: Path
) -> None:
    """One batched re-ranking answers each query as it would alone (a query alone takes its own
    path through the mapped file); a candidate whose full vector is gone is left out, never
    scored from nothing."""
    ids, vectors, queries = data
    missing = ids[::3]
    keep = ~np.isin(ids, missing)
    built = build_index(ArraySource(ids, vectors), DIM, BuildSpec(kind))  # type: ignore[arg-type]
    if lookup == "memory":
        raw: InMemoryVectors | RawVectors = InMemoryVectors(ids[keep], vectors[keep])
    else:
        raw = RawVectors(tmp_path / "images.vectors", DIM)
        raw.write_all(ids[keep], vectors[keep])
    store = VectorStore(built.store.index, raw=raw)
    # The last record's own vector asks too: a missing candidate read from a wrong position (the
    # last one, say) would score 1.0 and show at the top.
    asked = np.vstack([queries[:7], vectors[keep][-1:]])
    batch = store.search(asked, K)
    for query, together in zip(asked, batch, strict=True):
        alone = store.search(query[None], K)[0]
        assert together.ids.tolist() == alone.ids.tolist()
        np.testing.assert_allclose(together.scores, alone.scores, atol=1e-6)
        assert not np.isin(together.ids, missing).any() and len(together.ids) == K
        np.testing.assert_allclose(together.scores, vectors[together.ids - 1000] @ query, atol=1e-5)


def test_more_search_width_never_hurts_and_bad_knobs_are_refused(built: Built, data: Data) -> None:
    ids, vectors, queries = data
    hnsw = built["hnsw"].store
    assert _recall(hnsw, ids, vectors, queries, ef_search=4) <= _recall(
        hnsw, ids, vectors, queries, ef_search=256
    )
    assert hnsw.default_search().ef_search in index_types.EF_SEARCH_STEPS
    with pytest.raises(SearchParamsError, match="nprobe must be at least 1"):
        SearchParams(nprobe=0)


def test_every_kind_survives_a_save_and_load_with_its_tuned_knobs(
    built: Built, tmp_path: Path, data: Data
) -> None:
    _, _, queries = data
    for kind, report in built.items():
        path = tmp_path / f"{kind}.faiss"
        report.store.save(path)
        loaded = VectorStore.load(path, dim=DIM)
        assert loaded.kind == kind and loaded.describe() == report.store.describe()
        assert loaded.default_search() == report.store.default_search()
        assert search_defaults_path(path).exists() == (kind in ("sq8", "ivfpq"))  # the re-rank factor
        if kind not in ("sq8", "ivfpq"):  # those re-rank from their raw file (not saved here)
            assert (
                loaded.search(queries[:3], K)[0].ids.tolist()
                == report.store.search(queries[:3], K)[0].ids.tolist()
            )


def test_the_saved_rerank_factor_follows_its_faiss_file(built: Built, tmp_path: Path) -> None:
    """A rebuild into an uncompressed kind takes the factor away; an unreadable factor file
    leaves the index searchable with its kind's fixed factor (the one before factors were tuned)."""
    path = tmp_path / "images.faiss"
    built["sq8"].store.save(path)
    sq8 = VectorStore.load(path, dim=DIM)  # a copy: the module's stores stay as built
    sq8.set_default_search(SearchParams(rerank=4))
    sq8.save(path)
    assert VectorStore.load(path, dim=DIM).params()["rerank"] == 4
    search_defaults_path(path).write_text("{not json", encoding="utf-8")
    with pytest.warns(UserWarning, match="unreadable search defaults"):
        assert VectorStore.load(path, dim=DIM).params()["rerank"] == RERANK_FACTORS["sq8"]
    built["flat"].store.save(path)
    assert not search_defaults_path(path).exists()
    assert VectorStore.load(path, dim=DIM).kind == "flat"


@pytest.mark.parametrize(
    "text",
    ['{"rerank": Infinity}', '{"rerank": 1e400}', '{"rerank": true}', '{"rerank": 2.9}', '{"rerank": "4"}',
     '{"rerank": 1000}', '[4]', '{}', "\xff\xfe"],
)  # fmt: skip
def test_a_damaged_factor_file_never_stops_the_index_from_opening(
    built: Built, tmp_path: Path, text: str
) -> None:
    """Whatever the factor file holds, the index opens and searches with its kind's fixed factor;
    only a whole number in range counts (true would silently turn re-ranking off)."""
    path = tmp_path / "images.faiss"
    built["sq8"].store.save(path)
    search_defaults_path(path).write_bytes(text.encode("latin-1"))
    with pytest.warns(UserWarning, match="unreadable search defaults"):
        store = VectorStore.load(path, dim=DIM)
    assert store.params()["rerank"] == RERANK_FACTORS["sq8"]
    assert len(store.search(np.ones((1, DIM), np.float32), K)[0].ids) == K


def test_search_knobs_take_whole_numbers_only() -> None:
    """NumPy integers are whole numbers (FAISS gets a Python int); floats and booleans are refused
    with the knob's name, as out-of-range values are."""
    knobs = SearchParams(nprobe=np.int64(4), rerank=np.int32(2))
    assert (knobs.nprobe, knobs.rerank) == (4, 2) and type(knobs.nprobe) is int
    for bad in (2.0, True, "2", np.True_, np.float64(2)):
        with pytest.raises(SearchParamsError, match="rerank must be a whole number"):
            SearchParams(rerank=bad)  # type: ignore[arg-type]


def test_removal_works_on_every_kind_and_hnsw_keeps_tombstones(data: Data) -> None:
    ids, vectors, _ = data
    source = ArraySource(ids[:800], vectors[:800])
    for kind in index_types.INDEX_KINDS:
        store = build_index(source, DIM, BuildSpec(kind, nprobe=64, ef_search=128), tune=False).store
        gone = ids[:40]
        assert store.remove(gone) == 40 and len(store) == 760
        assert not store.contains(gone).any() and store.contains(ids[40:50]).all()
        hits = {int(i) for r in store.search(vectors[:40], K) for i in r.ids}
        assert not hits & set(gone.tolist()), kind
        with pytest.raises(KeyError):
            store.reconstruct(int(gone[0]))
        assert store.tombstones == (40 if kind == "hnsw" else 0)


# -- the auto rule --------------------------------------------------------------------------------


def test_auto_chooses_by_count_and_memory_budget() -> None:
    big = 10 * 2**30
    assert choose_kind(10_000, 128, memory_budget=big).kind == "flat"
    assert choose_kind(200_000, 128, memory_budget=big).kind == "ivf"
    assert choose_kind(5_000_000, 128, memory_budget=big).kind == "ivf"
    huge = 100 * 2**30
    assert choose_kind(20_000_000, 128, memory_budget=huge).kind == "hnsw"
    # HNSW's graph must fit in half the budget; full vectors still fit: IVF.
    hnsw = resident_bytes("hnsw", 20_000_000, 128)
    assert choose_kind(20_000_000, 128, memory_budget=int(hnsw * 1.5)).kind == "ivf"
    # Full vectors do not fit: 8-bit codes, then PQ codes.
    full = resident_bytes("flat", 5_000_000, 128)
    assert choose_kind(5_000_000, 128, memory_budget=full // 2).kind == "sq8"
    assert choose_kind(5_000_000, 128, memory_budget=full // 10).kind == "ivfpq"
    # Even a small collection goes compressed when its full vectors exceed the budget.
    assert choose_kind(10_000, 128, memory_budget=2_000_000).kind == "sq8"


def test_opq_rotates_only_where_variance_is_uneven_and_then_lifts_pq_codes() -> None:
    rng = np.random.default_rng(3)
    ids = np.arange(1, 2001, dtype=np.int64)
    uneven = (rng.normal(size=(2000, DIM)) * np.exp(-np.arange(DIM) / 4.0)).astype(np.float32)
    uneven /= np.linalg.norm(uneven, axis=1, keepdims=True)
    even = rng.normal(size=(2000, DIM)).astype(np.float32)
    even /= np.linalg.norm(even, axis=1, keepdims=True)
    rotation = index_types.opq_rotation(ArraySource(ids, uneven), DIM, 8)
    assert rotation is not None
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(DIM), atol=1e-4)  # orthogonal: same scores
    assert index_types.opq_rotation(ArraySource(ids, even), DIM, 8) is None
    with_opq = build_index(ArraySource(ids, uneven), DIM, BuildSpec("ivfpq", nprobe=64), tune=False).store
    without = build_index(
        ArraySource(ids, uneven), DIM, BuildSpec("ivfpq", nprobe=64, opq=False), tune=False
    ).store
    assert with_opq.describe().startswith("OPQ8,") and with_opq.params()["opq"] is True
    queries = uneven[:100]
    truth = _brute_force(uneven, ids, queries, K)

    def codes_recall(store: VectorStore) -> float:  # FAISS's own top-k, before re-ranking
        _, found = store.index.search(queries, K)
        return float(np.mean([len(np.intersect1d(f, t)) / K for f, t in zip(found, truth, strict=True)]))

    assert codes_recall(with_opq) > codes_recall(without)


def test_memory_sizes_parse_in_both_units() -> None:
    assert parse_size("4GiB") == 4 * 2**30 and parse_size("500MB") == 500_000_000
    assert parse_size("2g") == 2_000_000_000 and parse_size("1234") == 1234
    with pytest.raises(IndexTypeError, match="--memory-budget"):
        parse_size("lots")


def test_recall_probes_lie_between_stored_vectors_and_score_exact_search_perfectly(data: Data) -> None:
    ids, vectors, _ = data
    fidelity = Fidelity.measure(ArraySource(ids, vectors), DIM)
    np.testing.assert_allclose(np.linalg.norm(fidelity.queries, axis=1), 1.0, atol=1e-5)
    want = _brute_force(vectors, ids, fidelity.queries, K)
    same = np.mean([len(np.intersect1d(a, b)) for a, b in zip(fidelity.truth, want, strict=True)]) / K
    assert same > 0.999  # chunked float32 products may swap a near-tie at rank 10
    flat = build_index(ArraySource(ids, vectors), DIM, BuildSpec("flat")).store
    assert fidelity.recall(flat) > 0.99  # exact search, up to those near-ties


def test_stored_vector_probes_leave_each_query_out_of_its_own_answer(data: Data) -> None:
    """The probes a re-rank factor must also pass: stored vectors asked for their neighbours,
    themselves excluded (found first by any index, they would make every factor look good)."""
    ids, vectors, _ = data
    fidelity = Fidelity.measure_stored(ArraySource(ids, vectors), DIM)
    assert fidelity.own_ids is not None
    np.testing.assert_array_equal(fidelity.queries, vectors[fidelity.own_ids - 1000])
    assert not (fidelity.truth == fidelity.own_ids[:, None]).any()
    want = _brute_force(vectors, ids, fidelity.queries, K + 1)[:, 1:]  # the query itself is first
    same = np.mean([len(np.intersect1d(a, b)) for a, b in zip(fidelity.truth, want, strict=True)]) / K
    assert same > 0.999
    flat = build_index(ArraySource(ids, vectors), DIM, BuildSpec("flat")).store
    assert fidelity.recall(flat) > 0.99
    # PQ codes fetched without re-ranking miss neighbours that these probes see and exact search does not
    pq = build_index(ArraySource(ids, vectors), DIM, BuildSpec("ivfpq", rerank=1)).store
    assert fidelity.recall(pq) < 0.9


# -- through real index runs ---------------------------------------------------------------------


def _photos(folder: Path, count: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"noise_{seed}_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _ok(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def _info(db: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(_ok("info", "--db", db, "--json"))


@pytest.fixture
def encoded_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows passed to the image encoder, batch by batch (a spy on the real encoder)."""
    calls: list[int] = []
    original = NativeEncoder.encode_pixels

    def spy(self, pixels):  # type: ignore[no-untyped-def]
        calls.append(len(pixels))
        return original(self, pixels)

    monkeypatch.setattr(NativeEncoder, "encode_pixels", spy)
    return calls


def test_growing_past_the_exact_threshold_rebuilds_as_ivf_without_re_encoding(
    tmp_path: Path, colors_model: Path, encoded_rows: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, photos = tmp_path / "db", tmp_path / "photos"
    first = _photos(photos, 60, seed=1)
    monkeypatch.setattr(index_types, "EXACT_MAX_FLOATS", 100 * MODEL_DIM)  # exact up to 100 vectors
    _ok("index", photos, "--db", db, "--model", colors_model, "--device", "cpu")
    info = _info(db)
    assert (info["index_kind"], info["index_policy"], info["index_recall"]) == ("flat", "auto", None)
    assert sum(encoded_rows) == 60
    with Engine.open(db, device="cpu") as engine:
        before = [h.id for h in engine.search_image(first[3], k=5)]

    encoded_rows.clear()
    _photos(photos, 60, seed=2)
    out = json.loads(_ok("index", photos, "--db", db, "--device", "cpu", "--json"))
    assert sum(encoded_rows) == 60, "unchanged files were encoded again"
    assert out["rebuilt"]["after"].startswith("IVF3,FlatIP") and "flat -> ivf" in out["rebuilt"]["reason"]
    info = _info(db)
    assert info["index_kind"] == "ivf" and info["index_params"]["lists"] == 3
    assert info["index_recall"] >= index_types.RECALL_TARGET and info["image_vectors"] == 120
    raw = RawVectors(raw_path_for(db / IMAGES_FAISS), MODEL_DIM)
    assert len(raw) == 120
    with Engine.open(db, device="cpu") as engine:
        query = Query((QueryTerm("image", first[3]),), k=5, search_params=SearchParams(nprobe=3))
        after = [h.id for h in engine.search(query).hits]
    assert after[0] == before[0]


def test_a_chosen_rerank_factor_survives_the_rebuild_growth_triggers(
    tmp_path: Path, colors_model: Path
) -> None:
    """`optimize --rerank N` makes N the index's own: the rebuild an indexing run starts when the
    index has outgrown its lists keeps it (it used to retune it); optimize without --rerank
    hands the factor back to tuning."""
    db, photos = tmp_path / "db", tmp_path / "photos"
    _photos(photos, 80, seed=6)
    _ok("index", photos, "--db", db, "--model", colors_model, "--device", "cpu")
    out = _ok("optimize", "--db", db, "--index-type", "auto", "--rerank", "4")
    assert _info(db)["index_kind"] == "flat" and "--rerank 4 is recorded" in out
    _ok("optimize", "--db", db, "--index-type", "sq8", "--rerank", "4")
    assert _info(db)["index_params"]["rerank"] == 4
    _photos(photos, 250, seed=7)
    out = json.loads(_ok("index", photos, "--db", db, "--device", "cpu", "--json"))
    assert "new lists" in out["rebuilt"]["reason"]
    info = _info(db)
    assert (info["index_kind"], info["image_vectors"], info["index_params"]["rerank"]) == ("sq8", 330, 4)
    _ok("optimize", "--db", db, "--index-type", "sq8")
    with IndexWriter(db, None) as writer:
        assert index_upkeep.read_record(writer).rerank is None


def test_a_memory_budget_crossed_by_growth_switches_to_compressed_codes(
    tmp_path: Path, colors_model: Path, encoded_rows: list[int]
) -> None:
    db, photos = tmp_path / "db", tmp_path / "photos"
    _photos(photos, 50, seed=3)
    budget = resident_bytes("flat", 80, MODEL_DIM)  # 50 full vectors fit, 100 do not
    _ok("index", photos, "--db", db, "--model", colors_model, "--device", "cpu", "--memory-budget", budget)
    assert _info(db)["index_kind"] == "flat"
    encoded_rows.clear()
    added = _photos(photos, 50, seed=4)
    _ok("index", photos, "--db", db, "--device", "cpu")
    assert sum(encoded_rows) == 50
    info = _info(db)
    assert info["index_kind"] == "sq8" and info["memory_budget"] == budget
    with Engine.open(db, device="cpu") as engine:
        hit = engine.search_image(added[0], k=1)[0]
        assert hit.path == str(added[0].resolve()) and hit.score == pytest.approx(1.0, abs=1e-3)


def test_hnsw_removals_are_filtered_then_rebuilt_past_the_share(tmp_path: Path, colors_model: Path) -> None:
    db, photos = tmp_path / "db", tmp_path / "photos"
    paths = _photos(photos, 40, seed=5)
    _ok("index", photos, "--db", db, "--model", colors_model, "--device", "cpu", "--index-type", "hnsw")
    info = _info(db)
    assert info["index_kind"] == "hnsw" and info["index_policy"] == "hnsw"
    assert info["index_recall"] >= index_types.RECALL_TARGET

    few = paths[:4]  # 10%: below TOMBSTONE_REBUILD_SHARE, kept as tombstones
    _ok("remove", *few, "--db", db)
    store = VectorStore.load(db / IMAGES_FAISS, dim=MODEL_DIM)
    assert store.tombstones == 4 and len(store) == 36
    with Engine.open(db, device="cpu") as engine:
        found = {h.path for h in engine.search_image(few[0], k=40)}
    assert len(found) == 36 and not found & {str(p.resolve()) for p in few}

    _ok("remove", *paths[4:10], "--db", db)  # 10 of 40 = 25%: rebuilt without them
    store = VectorStore.load(db / IMAGES_FAISS, dim=MODEL_DIM)
    assert store.kind == "hnsw" and store.tombstones == 0 and len(store) == 30
    assert len(RawVectors(raw_path_for(db / IMAGES_FAISS), MODEL_DIM)) == 30  # compacted too


def test_index_type_and_knobs_on_the_command_line(tmp_path: Path, colors_model: Path) -> None:
    db, photos = tmp_path / "db", tmp_path / "photos"
    paths = _photos(photos, 2 * index_types.MIN_POINTS_PER_LIST + 2, seed=6)
    _ok("index", photos, "--db", db, "--model", colors_model, "--device", "cpu", "--index-type", "flat")
    result = CliRunner().invoke(app, ["index", str(photos), "--db", str(db), "--index-type", "hnsw"])
    assert result.exit_code == 1 and "optimize --index-type hnsw" in result.stderr

    out = json.loads(_ok("optimize", "--index-type", "ivfpq", "--lists", 2, "--db", db, "--json"))
    assert out["kind"] == "ivfpq" and out["params"]["lists"] == 2 and out["recall"] >= 0.9
    args = ["search", "--db", db, "--image", paths[0], "--json", "-k", 3, "--device", "cpu"]
    hits = json.loads(_ok(*args, "--nprobe", 2))["results"]
    assert hits[0]["path"] == str(paths[0].resolve())
    assert json.loads(_ok(*args))["results"] == hits  # default nprobe tuned to the same answer here
    assert json.loads(_ok(*args, "--rerank", 32))["results"][0] == hits[0]

    out = json.loads(_ok("optimize", "--index-type", "sq8", "--rerank", 3, "--db", db, "--json"))
    assert out["params"]["rerank"] == 3 and _info(db)["index_params"]["rerank"] == 3
    for bad in (["--rerank", "0"], ["--rerank", "65"]):
        result = CliRunner().invoke(app, ["search", "a red image", "--db", str(db), *bad])
        assert result.exit_code == 2, result.output
    result = CliRunner().invoke(app, ["optimize", "--db", str(db), "--index-type", "ivf", "--rerank", "2"])
    assert result.exit_code == 2 and "--rerank belongs to" in result.stderr

    out = json.loads(_ok("optimize", "--index-type", "auto", "--db", db, "--json"))
    assert out["kind"] == "flat" and _info(db)["index_policy"] == "auto"
    for bad in (["--index-type", "annoy"], ["--index-type", "flat", "--ivf"], ["--flat", "--ef-search", "5"]):
        result = CliRunner().invoke(app, ["optimize", "--db", str(db), *bad])
        assert result.exit_code == 2 and "error:" in result.stderr


def test_under_a_folder_answers_as_a_filtered_brute_force_on_every_kind(
    tmp_path: Path, colors_model: Path
) -> None:
    db, photos = tmp_path / "db", tmp_path / "photos"
    inside = _photos(photos / "keep", 50, seed=7)
    _photos(photos / "other", 50, seed=8)
    _photos(tmp_path / "photos" / "keeper", 5, seed=9)  # a sibling whose name starts the same
    _ok("index", photos, "--db", db, "--model", colors_model, "--device", "cpu")
    with Engine.open(db, device="cpu") as engine:
        exact = engine.search_image(inside[0], k=100, under=photos / "keep")
    assert {h.path for h in exact} == {str(p.resolve()) for p in inside}
    for kind in ("ivf", "hnsw", "ivfpq"):
        _ok("optimize", "--index-type", kind, "--db", db)
        with Engine.open(db, device="cpu") as engine:
            got = engine.search_image(inside[0], k=100, under=photos / "keep")
        assert [h.id for h in got] == [h.id for h in exact], kind
        np.testing.assert_allclose([h.score for h in got], [h.score for h in exact], atol=2e-4)


def test_http_search_takes_the_knobs(tmp_path: Path, colors_model: Path) -> None:
    from fastapi.testclient import TestClient

    from mmsearch.service import create_app

    db, photos = tmp_path / "db", tmp_path / "photos"
    _photos(photos, 2 * index_types.MIN_POINTS_PER_LIST, seed=10)
    _ok("index", photos, "--db", db, "--model", colors_model, "--device", "cpu", "--index-type", "ivf")
    with Engine.open(db, device="cpu") as engine:
        client = TestClient(create_app(engine))
        wide = client.get("/search", params={"q": "a red image", "k": 5, "nprobe": 2})
        assert wide.status_code == 200 and len(wide.json()["results"]) == 5
        assert client.get("/search", params={"q": "a red image", "nprobe": 0}).status_code == 422
        for rerank in (0, MAX_RERANK + 1):
            assert client.get("/search", params={"q": "a red image", "rerank": rerank}).status_code == 422
        reranked = client.get("/search", params={"q": "a red image", "k": 5, "rerank": 4})
        assert reranked.status_code == 200 and reranked.json()["results"] == wide.json()["results"]
        assert client.get("/stats").json()["index_kind"] == "ivf"


# -- crash safety of images.vectors ---------------------------------------------------------------


def test_reconcile_cuts_a_crashed_tail_and_repairs_a_missing_record(
    tmp_path: Path, colors_model: Path
) -> None:
    db, photos = tmp_path / "db", tmp_path / "photos"
    _photos(photos, 20, seed=11)
    _ok("index", photos, "--db", db, "--model", colors_model, "--device", "cpu")
    raw_path = raw_path_for(db / IMAGES_FAISS)
    raw = RawVectors(raw_path, MODEL_DIM)
    live = raw.ids().copy()
    # A commit that appended records (ids SQLite will hand out again) then died, mid-record.
    raw.append(np.array([live[-1] + 1, live[-1] + 2]), np.ones((2, MODEL_DIM), np.float32))
    with open(raw_path, "ab") as fh:
        fh.write(b"\x01\x02\x03")
    with IndexWriter(db, None) as writer:
        assert writer.repaired == 0
        assert np.array_equal(RawVectors(raw_path, MODEL_DIM).ids(), live)
    assert os.path.getsize(raw_path) == len(live) * raw.dtype.itemsize

    # A record lost by hand: its image is dropped (so the next run encodes it again).
    kept = RawVectors(raw_path, MODEL_DIM)
    kept.rewrite(live[1:])
    with IndexWriter(db, None) as writer, writer.session() as session:
        assert writer.repaired == 1
        assert live[0] not in catalog.all_ids(session, catalog.ImageRow)
    out = json.loads(_ok("index", photos, "--db", db, "--device", "cpu", "--json"))
    assert (out["new"], out["unchanged"]) == (1, 19)


def test_an_index_from_before_the_vector_file_gets_one_from_its_faiss_file(
    tmp_path: Path, colors_model: Path
) -> None:
    db, photos = tmp_path / "db", tmp_path / "photos"
    _photos(photos, 12, seed=12)
    _ok("index", photos, "--db", db, "--model", colors_model, "--device", "cpu")
    raw_path = raw_path_for(db / IMAGES_FAISS)
    before = RawVectors(raw_path, MODEL_DIM)
    ids, vectors = before.ids().copy(), np.asarray(before.vectors(before.ids())[1])
    raw_path.unlink()
    with IndexWriter(db, None) as writer:
        assert writer.repaired == 0
    after = RawVectors(raw_path, MODEL_DIM)
    assert np.array_equal(after.ids(), ids)
    np.testing.assert_array_equal(after.vectors(ids)[1], vectors)


def test_a_rebuild_killed_after_the_vector_file_leaves_a_consistent_index(
    tmp_path: Path, colors_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, photos = tmp_path / "db", tmp_path / "photos"
    paths = _photos(photos, 60, seed=13)
    _ok("index", photos, "--db", db, "--model", colors_model, "--device", "cpu", "--index-type", "hnsw")
    _ok("remove", *paths[:5], "--db", db)  # dead records for the rebuild to compact away

    def die(self, path):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt("killed between the vector file and the FAISS file")

    monkeypatch.setattr(VectorStore, "save", die)
    with pytest.raises(KeyboardInterrupt):
        index_upkeep.use_index_type(db, "ivf")
    monkeypatch.undo()
    assert len(RawVectors(raw_path_for(db / IMAGES_FAISS), MODEL_DIM)) == 55  # compacted
    with Engine.open(db, device="cpu") as engine:
        assert engine.stats().index_kind == "hnsw"
        assert engine.search_image(paths[10], k=1)[0].path == str(paths[10].resolve())
    with IndexWriter(db, None) as writer, Session(writer.engine) as session:
        assert writer.repaired == 0 and len(writer.images) == 55
        assert catalog.count(session, catalog.ImageRow) == 55
    report = pipeline.index_folders([photos], db, _encoder(colors_model))
    assert (report.new, report.unchanged) == (5, 55)  # the removed files are still in the folder
    # The killed optimize recorded nothing: the index keeps its policy and type until asked again.
    assert report.rebuilt is None and _info(db)["index_policy"] == "hnsw"


def _encoder(model: Path) -> NativeEncoder:
    from indexer.models.encoder import load_encoder

    encoder = load_encoder(str(model), device="cpu")
    assert isinstance(encoder, NativeEncoder)
    return encoder


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs faiss-gpu and a CUDA device")
@pytest.mark.parametrize("kind", ["flat", "ivf", "sq8", "ivfpq"])
def test_gpu_builds_match_the_cpu_builds(data: Data, kind: str) -> None:
    ids, vectors, queries = data
    on_gpu = build_index(ArraySource(ids, vectors), DIM, BuildSpec(kind), use_gpu=True)
    assert on_gpu.device == "gpu" and on_gpu.store.cpu is None  # the saved form is the CPU one
    assert _recall(on_gpu.store, ids, vectors, queries) >= 0.9


def test_an_optimize_that_fails_leaves_the_index_type_and_policy_as_they_were(
    tmp_path: Path, colors_model: Path
) -> None:
    """Too few vectors for IVF: the command fails with the reason, and the index keeps answering
    as before; it must not record the policy it could not build (the next run would obey it)."""
    db, photos = tmp_path / "db", tmp_path / "photos"
    _photos(photos, 4, seed=21)
    _ok("index", photos, "--db", db, "--model", colors_model, "--device", "cpu")
    before = _info(db)
    result = CliRunner().invoke(app, ["optimize", "--index-type", "ivf", "--db", str(db)])
    assert result.exit_code != 0 and "error:" in result.stderr
    after = _info(db)
    for key in ("index_kind", "index_type", "index_policy", "memory_budget", "images"):
        assert after[key] == before[key], key
    assert before["index_policy"] == "auto"
    with Engine.open(db, device="cpu") as engine:
        assert len(engine.search_image(next(photos.iterdir()), k=4)) == 4
