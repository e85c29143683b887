"""Index types at scale, in one run: build time, bytes per vector, latency, recall, and mmsearch's
overhead over raw FAISS doing the same searches on the same index.

    .venv/bin/python benchmarks/scale.py                       # N = 1e4, 1e5, 1e6 (128-d) + 1e5 (512-d)
    .venv/bin/python benchmarks/scale.py --quick               # N = 2e3, 1e4 (harness check, ~2 min)
    .venv/bin/python benchmarks/scale.py --real-corpus /tmp/sc # + recall on the bundled model's vectors
    .venv/bin/python benchmarks/scale.py --real-only --real-corpus sample_corpus/build \
        --real-emoji .cache/emoji --emoji-model .cache/models/emoji   # only that table (minutes)

For every N and index kind: `build_index` on synthetic clustered unit vectors (the build an
`mmsearch optimize --index-type KIND` runs, knob tuning included); bytes per vector of the FAISS
file and of the full-precision file on disk, and resident (RSS growth of a fresh process that
loads the index); query latency p50/p99 one at a time and in batches of 64, through
`VectorStore.search` (mmsearch) and through `index.search` with the same parameters (raw
FAISS); recall@10 against exact search on held-out queries. Sentence queries and searches by
vector through the `Engine` are timed on an index folder with a catalogue of N rows, against text
encoding + raw FAISS. Build time and latency are fitted as a power of N per kind.

The section is written between markers into benchmarks/RESULTS.md (benchmarks/run.py keeps it),
and the plot to benchmarks/scale.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import torch
from sqlalchemy import insert

from indexer.models.encoder import Encoder, load_encoder
from indexer.store import catalog
from indexer.store.catalog import ImageRow
from indexer.store.index_dir import IMAGES_FAISS, IndexWriter
from indexer.store.index_types import ArraySource, BuildSpec, build_index
from indexer.store.raw_vectors import RawVectors, raw_path_for
from indexer.store.vectors import INDEX_KINDS, SearchParams, VectorStore
from mmsearch.engine import Engine

# isort: split
import report

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
BEGIN, END = "<!-- bench-scale:begin -->", "<!-- bench-scale:end -->"
# Opens the real-embeddings recall paragraph; `--real-only` finds the block to rewrite by it.
REAL_INTRO = "Recall@10 of each kind's tuned defaults on real embeddings"
# Marks a row group kept from an earlier run in its header; the patterns read render_real's rows.
CARRIED_MARK = "; measured in an earlier run"
_GROUP_HEAD = re.compile(
    rf"^\| \*\*(?P<label>.+?)\*\* \((?P<n>[\d,]+) images, (?P<dim>\d+)-d(?:{re.escape(CARRIED_MARK)})?\) \|"
)
_GROUP_ROW = re.compile(r"^\| (?P<kind>[^|*]+?) \| (?P<t>[\d.]+) \| (?P<i>[\d.]+) \| (?P<s>[\d.]+) \|$")
SEED = 0
K = 10
BATCH = 64
SINGLE_QUERIES = 200
# Batches of 64 timed per side: at least BATCHES, more for fast kinds, up to about BATCH_SECONDS
# each side (8 batches of a 1 ms IVF search moved its ratio by +-0.07 between runs).
BATCHES = 8
MAX_BATCHES = 96
BATCH_SECONDS = 1.0
WARMUP = 10
RECALL_QUERIES = 500
CLUSTERS_PER_VECTOR = 1 / 500  # one centre per 500 vectors (at least 20)
NOISE = 0.5  # per coordinate, centres ~N(0, 1): clusters overlap like embeddings' topics do
OVERHEAD_TARGET_SINGLE = 1.10
OVERHEAD_TARGET_BATCH = 1.05
FULL_SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (2_000, 10_000)
WIDE = (512, 100_000)  # OpenCLIP-sized vectors at one size
QUERY_SENTENCES = [
    f"a {c} {s} on a {b} background"
    for c in ("red", "green", "blue", "yellow", "purple")
    for s in ("circle", "square", "star", "triangle")
    for b in ("white", "black", "grey")
]


def log(message: str) -> None:
    """Progress on stderr (the report goes to a file)."""
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def clustered(count: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors (count, dim) float32 around count * CLUSTERS_PER_VECTOR random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(20, int(count * CLUSTERS_PER_VECTOR)), dim)).astype(np.float32)
    out = np.empty((count, dim), np.float32)
    for start in range(0, count, 100_000):
        n = min(100_000, count - start)
        block = centres[rng.integers(0, len(centres), n)] + NOISE * rng.normal(size=(n, dim)).astype(
            np.float32
        )
        out[start : start + n] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def percentiles(seconds: Sequence[float]) -> tuple[float, float]:
    """(p50, p99) in ms."""
    ms = np.asarray(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def timed(run: Callable[[int], object], count: int) -> list[float]:
    """Wall time of run(i) for i in range(count), the first WARMUP left out."""
    out = []
    for i in range(count + WARMUP):
        started = time.perf_counter()
        run(i)
        if i >= WARMUP:
            out.append(time.perf_counter() - started)
    return out


def timed_pair(
    run_a: Callable[[int], object], run_b: Callable[[int], object], count: int
) -> tuple[list[float], list[float]]:
    """timed() for two ways of doing the same thing, interleaved query by query (which goes first
    alternates): a drift in the machine's speed during the run then weighs on both alike, where
    timing one after the other let it decide a ratio of two sub-millisecond figures."""
    out_a: list[float] = []
    out_b: list[float] = []
    for i in range(count + WARMUP):
        order = ((run_a, out_a), (run_b, out_b)) if i % 2 == 0 else ((run_b, out_b), (run_a, out_a))
        for run, out in order:
            started = time.perf_counter()
            run(i)
            if i >= WARMUP:
                out.append(time.perf_counter() - started)
    return out_a, out_b


def batch_count(run_once: Callable[[], object]) -> int:
    """How many batches to time per side: enough for about BATCH_SECONDS, BATCHES at least."""
    run_once()  # warm
    started = time.perf_counter()
    run_once()
    seconds = time.perf_counter() - started
    return int(np.clip(BATCH_SECONDS / max(seconds, 1e-6), BATCHES, MAX_BATCHES))


@dataclass
class KindResult:
    """One (N, dim, kind) row."""

    n: int
    dim: int
    kind: str
    describe: str = ""
    build_s: float = 0.0
    build_recall: float | None = None
    disk_faiss: float = 0.0  # bytes per vector
    disk_raw: float = 0.0
    resident: float = 0.0
    single: tuple[float, float] = (0.0, 0.0)  # mmsearch p50, p99 ms
    single_raw: tuple[float, float] = (0.0, 0.0)  # raw FAISS, the same call
    batch: tuple[float, float] = (0.0, 0.0)  # per batch of 64
    batch_raw: tuple[float, float] = (0.0, 0.0)
    single_raw_k: tuple[float, float] = (0.0, 0.0)  # raw FAISS asked for k only (compressed kinds)
    recall: float = 0.0  # mmsearch recall@10, held-out queries
    recall_raw_k: float = 0.0  # raw FAISS top-k without re-ranking
    # compressed kinds at their kind's fixed re-rank factor (what every index used before the
    # factor was tuned per index): mmsearch p50, the raw FAISS call fetching as many, recall@10
    fixed: tuple[float, float] = (0.0, 0.0)
    fixed_raw: tuple[float, float] = (0.0, 0.0)
    recall_fixed: float = 0.0
    engine: dict[str, float] = field(default_factory=dict)


def measure_kind(
    kind: str, ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, work: Path
) -> tuple[KindResult, VectorStore]:
    """Build, save, reload with its raw file, then time and score one kind."""
    n, dim = vectors.shape
    result = KindResult(n, dim, kind)
    log(f"N={n:,} dim={dim} {kind}: building")
    built = build_index(ArraySource(ids, vectors), dim, BuildSpec(kind))  # type: ignore[arg-type]
    result.build_s, result.build_recall = built.seconds, built.recall
    folder = work / f"{kind}-{n}-{dim}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / IMAGES_FAISS
    built.store.save(path)
    RawVectors(raw_path_for(path), dim).write_all(ids, vectors)
    store = VectorStore.load(path, dim=dim, with_raw=True)
    result.describe = store.describe()
    result.disk_faiss = path.stat().st_size / n
    result.disk_raw = raw_path_for(path).stat().st_size / n
    result.resident = resident_bytes(path, dim) / n
    log(f"  built in {result.build_s:.1f} s ({result.describe}); timing")
    index: object = store.index
    fetch = K * index_types_rerank(store)
    single, single_raw = timed_pair(
        lambda i: store.search(queries[i % len(queries)][None], K),
        lambda i: index.search(queries[i % len(queries)][None], fetch),  # type: ignore[attr-defined]
        SINGLE_QUERIES,
    )
    result.single, result.single_raw = percentiles(single), percentiles(single_raw)
    batches = [
        np.take(queries, range(b * BATCH, (b + 1) * BATCH), axis=0, mode="wrap")
        for b in range(MAX_BATCHES + WARMUP)
    ]
    count = batch_count(lambda: index.search(batches[0], fetch))  # type: ignore[attr-defined]
    batch, batch_raw = timed_pair(
        lambda i: store.search(batches[i], K),
        lambda i: index.search(batches[i], fetch),  # type: ignore[attr-defined]
        count,
    )
    result.batch, result.batch_raw = percentiles(batch), percentiles(batch_raw)
    found = [r.ids for r in store.search(queries[:RECALL_QUERIES], K)]
    result.recall = recall(found, truth)
    if fetch != K:
        result.single_raw_k = percentiles(
            timed(lambda i: index.search(queries[i % len(queries)][None], K), SINGLE_QUERIES)  # type: ignore[attr-defined]
        )
        _, raw_ids = index.search(queries[:RECALL_QUERIES], K)  # type: ignore[attr-defined]
        result.recall_raw_k = recall(list(raw_ids), truth)
    else:
        result.single_raw_k, result.recall_raw_k = result.single_raw, result.recall
    if store.is_lossy:
        measure_fixed_factor(result, store, queries, truth)
    log(
        f"  p50 {result.single[0]:.3f} ms (raw {result.single_raw[0]:.3f}), "
        f"batch {result.batch[0]:.2f} ms (raw {result.batch_raw[0]:.2f}), "
        f"recall {result.recall:.3f}, resident {result.resident:.0f} B/vector"
    )
    return result, store


def measure_fixed_factor(
    result: KindResult, store: VectorStore, queries: np.ndarray, truth: np.ndarray
) -> None:
    """The same kind at its fixed re-rank factor (the one before factors were tuned), timed
    interleaved with raw FAISS fetching as many candidates: before and after in one run."""
    from indexer.store.vectors import RERANK_FACTORS

    fixed = SearchParams(rerank=RERANK_FACTORS[store.kind])
    index: object = store.index
    fetch = K * RERANK_FACTORS[store.kind]
    single, single_raw = timed_pair(
        lambda i: store.search(queries[i % len(queries)][None], K, params=fixed),
        lambda i: index.search(queries[i % len(queries)][None], fetch),  # type: ignore[attr-defined]
        SINGLE_QUERIES,
    )
    result.fixed, result.fixed_raw = percentiles(single), percentiles(single_raw)
    found = [r.ids for r in store.search(queries[:RECALL_QUERIES], K, params=fixed)]
    result.recall_fixed = recall(found, truth)


def index_types_rerank(store: VectorStore) -> int:
    """Candidates per wanted hit that VectorStore asks FAISS for (its recorded re-rank factor)."""
    return int(store.params().get("rerank", 1))


def recall(found: Sequence[np.ndarray], truth: np.ndarray) -> float:
    """Mean share of the exact top-k found."""
    return float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth, strict=False)]))


RSS_SCRIPT = """
import sys, faiss
def rss():
    with open('/proc/self/statm') as fh:
        return int(fh.read().split()[1]) * 4096
before = rss()
index = faiss.read_index(sys.argv[1])
print(rss() - before)
"""


def resident_bytes(path: Path, dim: int) -> int:
    """RSS growth of a fresh Python process that reads the FAISS file (what a reader holds)."""
    out = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, str(path)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


def exact_truth(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Exact top-k ids (q, k) by a flat FAISS scan."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    _, ids = flat.search(queries, K)
    return ids.astype(np.int64) + 1  # ids are 1..n (catalogue keys)


def engine_folder(
    store: VectorStore, ids: np.ndarray, vectors: np.ndarray, work: Path, encoder: Encoder
) -> Path:
    """An index folder the Engine opens: store as its image index (full vectors beside it) and a
    catalogue of one row per id (made once per size, copied per kind)."""
    dim = store.dim
    shared = work / f"catalog-{len(ids)}"  # one catalogue of N rows per size, copied per kind
    if not (shared / catalog.CATALOG_FILE).exists():
        shared.mkdir(parents=True, exist_ok=True)
        with IndexWriter(shared, encoder.info) as writer, writer.session() as session:
            for start in range(0, len(ids), 50_000):
                rows = [
                    {
                        "id": int(i),
                        "path": f"/bench/{i}.jpg",
                        "root": "/bench",
                        "size": 1,
                        "mtime_ns": 0,
                        "content_hash": f"h{i}",
                        "width": 1,
                        "height": 1,
                        "indexed_at": 0.0,
                    }
                    for i in ids[start : start + 50_000]
                ]
                session.execute(insert(ImageRow), rows)
            session.commit()
    folder = work / f"engine-{store.kind}-{len(ids)}"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shared / catalog.CATALOG_FILE, folder / catalog.CATALOG_FILE)
    store.save(folder / IMAGES_FAISS)
    RawVectors(raw_path_for(folder / IMAGES_FAISS), dim).write_all(ids, vectors)
    return folder


def measure_engine(
    store: VectorStore, ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, work: Path
) -> dict[str, float]:
    """Sentence query and search by vector through an Engine on an index folder with N catalogue
    rows, against text encoding + raw FAISS on the same index."""
    encoder = load_encoder(None, device="cpu")
    if encoder.info.dim != store.dim:
        return {}
    folder = engine_folder(store, ids, vectors, work, encoder)
    out: dict[str, float] = {}
    with Engine.open(folder, device="cpu") as engine:
        index: object = VectorStore.load(folder / IMAGES_FAISS, dim=store.dim).index
        fetch = K * index_types_rerank(store)
        vector_s, raw_s = timed_pair(
            lambda i: engine.search_vector(queries[i % len(queries)], K),
            lambda i: index.search(queries[i % len(queries)][None], fetch),  # type: ignore[attr-defined]
            SINGLE_QUERIES,
        )
        sentences = QUERY_SENTENCES
        text_s, enc_s = timed_pair(
            lambda i: engine.search_text(sentences[i % len(sentences)], k=K),
            lambda i: index.search(encoder.encode_texts([sentences[i % len(sentences)]]), fetch),  # type: ignore[attr-defined]
            SINGLE_QUERIES,
        )
    out["vector_p50"], out["vector_raw_p50"] = percentiles(vector_s)[0], percentiles(raw_s)[0]
    out["text_p50"], out["text_raw_p50"] = percentiles(text_s)[0], percentiles(enc_s)[0]
    return out


def fit_exponent(ns: Sequence[int], values: Sequence[float]) -> float | None:
    """Slope of log(value) against log(N): value ~ N^slope."""
    pairs = [(math.log(n), math.log(v)) for n, v in zip(ns, values, strict=True) if v > 0]
    if len(pairs) < 2:
        return None
    x, y = np.array(pairs).T
    return float(np.polyfit(x, y, 1)[0])


@dataclass
class RealResult:
    """Recall of each kind's tuned defaults on one set of real embeddings vs synthetic ones of the
    same size."""

    label: str  # which corpus and model, e.g. "sample corpus, bundled model"
    n: int  # image vectors
    dim: int
    rows: list[tuple[str, float, float, float]]  # kind, text-query recall, image-query recall, synthetic
    carried: bool = False  # not measured in this run: the rows of the results file's earlier run


@dataclass(frozen=True)
class RealEmbeddings:
    """A model's vectors of a caption corpus: every image once, and each distinct caption once."""

    images: np.ndarray  # (images, dim) float32, L2-normalised
    captions: np.ndarray  # (distinct captions, dim) float32, L2-normalised


def corpus_file(corpus: Path) -> Path:
    """corpus.jsonl of a corpus folder (sample_corpus/build, .cache/emoji), or the file itself."""
    return corpus / "corpus.jsonl" if corpus.is_dir() else corpus


def real_cache_dir(corpus: Path, model_id: str, work_root: Path) -> Path:
    """Where one model's vectors of one corpus are kept between runs: keyed by the model's content
    id and the corpus file's bytes, so a retrained model or a rebuilt corpus is encoded again."""
    digest = hashlib.sha256(corpus_file(corpus).read_bytes()).hexdigest()[:12]
    model = re.sub(r"[^\w.-]", "-", model_id)  # "native:77a0..." -> "native-77a0..."
    return work_root / f"scale-real-{model}-{digest}"


def real_embeddings(corpus: Path, encoder: Encoder) -> RealEmbeddings:
    """The encoder's vectors of every image of the corpus (where its corpus.jsonl points) and of
    its distinct captions, read from the work cache when this model already encoded this corpus."""
    from indexer.training.corpora import load_corpus
    from indexer.training.evaluate import embed_corpus

    folder = real_cache_dir(corpus, encoder.info.model_id, BENCH_DIR / "work")
    cached = folder / "vectors.npz"
    if cached.exists():
        with np.load(cached) as saved:
            return RealEmbeddings(saved["images"], saved["captions"])
    log(f"real: encoding {corpus_file(corpus)} with {encoder.info.source}")
    embedded = embed_corpus(encoder, load_corpus(corpus_file(corpus)))
    first_row: dict[str, int] = {}  # each distinct caption's first row of text_emb
    for row, pair in enumerate(embedded.pairs):
        first_row.setdefault(pair.caption, row)
    out = RealEmbeddings(embedded.image_emb, embedded.text_emb[list(first_row.values())])
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / "vectors.partial.npz"
    np.savez(partial, images=out.images, captions=out.captions)
    partial.replace(cached)  # a present cache file is always complete
    return out


def measure_real(corpus: Path, model: Path | None, label: str) -> RealResult:
    """Recall@10 of each kind's tuned defaults on one model's image vectors of a caption corpus
    (None: the bundled model), queried by its caption vectors (the real workload) and by stored
    image vectors, against synthetic clustered vectors of the same count and dimension."""
    encoder = load_encoder(model, device="cpu")
    embedded = real_embeddings(corpus, encoder)
    vectors = embedded.images
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    rng = np.random.default_rng(SEED)
    picked = rng.choice(len(embedded.captions), min(RECALL_QUERIES, len(embedded.captions)), replace=False)
    text_queries = embedded.captions[picked]
    image_queries = vectors[rng.choice(len(vectors), min(RECALL_QUERIES, len(vectors)), replace=False)]
    generated = clustered(len(ids) + RECALL_QUERIES, vectors.shape[1], seed=SEED + 7)
    synthetic, synthetic_queries = generated[: len(ids)], generated[len(ids) :]
    rows = []
    for kind in INDEX_KINDS:
        if kind == "flat":
            continue
        real = build_index(ArraySource(ids, vectors), vectors.shape[1], BuildSpec(kind)).store  # type: ignore[arg-type]
        synth_store = build_index(ArraySource(ids, synthetic), vectors.shape[1], BuildSpec(kind)).store  # type: ignore[arg-type]
        rows.append(
            (
                f"{kind} ({real.describe()})",
                _recall_against(real, vectors, ids, text_queries),
                _recall_against(real, vectors, ids, image_queries),
                _recall_against(synth_store, synthetic, ids, synthetic_queries),
            )
        )
        log(f"real ({label}): {rows[-1]}")
    return RealResult(label, len(ids), vectors.shape[1], rows)


def _recall_against(store: VectorStore, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray) -> float:
    truth = ids[np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :K]]
    return recall([r.ids for r in store.search(queries, K)], truth)


def plot(results: list[KindResult], path: Path) -> None:
    """Latency and build time against N per kind (128-d), log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for kind in INDEX_KINDS:
        rows = sorted((r for r in results if r.kind == kind and r.dim == 128), key=lambda r: r.n)
        if not rows:
            continue
        ns = [r.n for r in rows]
        axes[0].plot(ns, [r.single[0] for r in rows], marker="o", label=kind)
        axes[1].plot(ns, [r.build_s for r in rows], marker="o", label=kind)
        axes[2].plot(ns, [r.resident for r in rows], marker="o", label=kind)
    for ax, title, unit in zip(
        axes,
        ("query latency p50, one at a time", "build time (incl. knob tuning)", "resident bytes per vector"),
        ("ms", "s", "bytes"),
        strict=True,
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("vectors (dim 128)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("mmsearch index types on one shared 2-core machine (benchmarks/scale.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)  # one plot per measurement: keep no figure open


def render(
    results: list[KindResult],
    reals: Sequence[RealResult],
    *,
    command: str,
    elapsed_s: float,
    load_start: str,
    load_end: str,
    quick: bool,
    plot_name: str,
) -> str:
    """The Markdown section."""
    lines = [BEGIN, "", "## Index types at scale (`make bench-scale`)", ""]
    if quick:
        lines += ["> **Quick run**: small N to check the harness; not the issue's sizes.", ""]
    lines += [
        f"Command: `{command}`; wall time {elapsed_s / 60:.1f} min; {report.cpu_model()}, "
        f"{os.cpu_count()} cores, {report.memory_gib()}; faiss {faiss.__version__}; commit "
        f"{report.git_revision(REPO_DIR)}; load average at start {load_start}, at end {load_end}. "
        + _machine_state(load_start, load_end)
        + "mmsearch and raw FAISS were timed interleaved (query by query, batch by batch) on the "
        f"same index, so their ratio is the steadier figure ({SINGLE_QUERIES} single queries; "
        f"{BATCHES}-{MAX_BATCHES} batches of {BATCH} per side, as many as fit in about "
        f"{BATCH_SECONDS:.0f} s). FAISS used one OpenMP thread and torch "
        "one thread (with two, spin-waiting threads on a loaded machine made some builds 15x and "
        "text encoding 6x slower). No GPU: no GPU figure is claimed.",
        "",
        f"![latency, build time and memory per index type]({plot_name})",
        "",
        "| N | dim | kind | structure | build s | recall@10 at build | recall@10 held-out "
        "| disk B/vec (FAISS + raw) | resident B/vec | p50 / p99 ms (1 query) | raw FAISS p50 | ratio "
        "| batch of 64 p50 ms | raw | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        single_ratio = r.single[0] / r.single_raw[0] if r.single_raw[0] else float("nan")
        batch_ratio = r.batch[0] / r.batch_raw[0] if r.batch_raw[0] else float("nan")
        build_recall = "exact" if r.build_recall is None else f"{r.build_recall:.3f}"
        lines.append(
            f"| {r.n:,} | {r.dim} | {r.kind} | {r.describe} | {r.build_s:.1f} | {build_recall} "
            f"| {r.recall:.3f} | {r.disk_faiss:.0f} + {r.disk_raw:.0f} | {r.resident:.0f} "
            f"| {r.single[0]:.3f} / {r.single[1]:.3f} | {r.single_raw[0]:.3f} | {single_ratio:.2f} "
            f"| {r.batch[0]:.2f} | {r.batch_raw[0]:.2f} | {batch_ratio:.2f} |"
        )
    lines += [
        "",
        '"raw FAISS" is `index.search` on the same loaded index with the same parameters and the '
        "same candidate count: for the compressed kinds (sq8, ivfpq) mmsearch asks FAISS for "
        "`rerank` x k candidates (the structure column's factor, tuned when the index was built: "
        "the smallest that keeps recall@10 >= 0.97 on both of the build's probe sets, else the "
        "kind's full factor; 1 = FAISS's own top-k, not re-ranked) and re-ranks them exactly "
        "from the memory-mapped full vectors, and the raw "
        "figure is that same FAISS call. The table below shows, in the same run, the same indexes "
        f"at their kind's fixed factor ({index_types_rerank_factors()}: what every compressed "
        "index used before the factor was tuned), and FAISS's own top-k. Each mmsearch figure and "
        "its raw figure are timed interleaved, query by query, so a drift in the machine's speed "
        "weighs on both alike.",
        "",
        "| N | dim | kind | raw FAISS top-10 p50 ms | its recall@10 "
        "| fixed factor: p50 ms | ratio to raw FAISS | recall@10 "
        "| tuned factor | p50 ms | ratio to raw FAISS | recall@10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.kind in ("sq8", "ivfpq"):
            fixed_ratio = r.fixed[0] / r.fixed_raw[0] if r.fixed_raw[0] else float("nan")
            tuned_ratio = r.single[0] / r.single_raw[0] if r.single_raw[0] else float("nan")
            factor = re.search(r"rerank=(\d+)", r.describe)
            lines.append(
                f"| {r.n:,} | {r.dim} | {r.kind} | {r.single_raw_k[0]:.3f} | {r.recall_raw_k:.3f} "
                f"| {r.fixed[0]:.3f} | {fixed_ratio:.2f} | {r.recall_fixed:.3f} "
                f"| {factor.group(1) if factor else '?'} | {r.single[0]:.3f} | {tuned_ratio:.2f} "
                f"| {r.recall:.3f} |"
            )
    engine_rows = [r for r in results if r.engine]
    if engine_rows:
        lines += [
            "",
            "Through the `Engine` (an index folder with N catalogue rows; one query at a time, p50 ms; "
            f"searches by vector: {SINGLE_QUERIES} distinct held-out vectors, so most hits' catalogue "
            f"rows are read, not found among those kept (indexer/store/hit_cache.py); sentence "
            f"queries: {len(QUERY_SENTENCES)} sentences in turn, rows kept after the first round):",
            "",
            "| N | kind | search by vector | raw FAISS | ratio (target <= 1.10) | sentence query "
            "| text encoding + raw FAISS | ratio (target <= 1.10) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in engine_rows:
            e = r.engine
            lines.append(
                f"| {r.n:,} | {r.kind} | {e['vector_p50']:.3f} | {e['vector_raw_p50']:.3f} "
                f"| {e['vector_p50'] / e['vector_raw_p50']:.2f} | {e['text_p50']:.3f} "
                f"| {e['text_raw_p50']:.3f} | {e['text_p50'] / e['text_raw_p50']:.2f} |"
            )
    lines += ["", "Growth with N (128-d), fitted as time ~ N^b over the sizes above:", ""]
    lines += ["| kind | build b | p50 latency b |", "|---|---|---|"]
    for kind in INDEX_KINDS:
        rows = sorted((r for r in results if r.kind == kind and r.dim == 128), key=lambda r: r.n)
        ns = [r.n for r in rows]
        build_b = fit_exponent(ns, [r.build_s for r in rows])
        latency_b = fit_exponent(ns, [r.single[0] for r in rows])
        lines.append(f"| {kind} | {_fmt(build_b)} | {_fmt(latency_b)} |")
    if reals:
        lines += ["", *render_real(reals)]
    lines += ["", END]
    return "\n".join(lines) + "\n"


def _machine_state(load_start: str, load_end: str) -> str:
    """What the load averages say about the figures: shared (above one per core) or quiet."""
    try:
        peak = max(float(part) for text in (load_start, load_end) for part in text.split("/"))
    except ValueError:
        return "The machine's load is unknown. "
    if peak > (os.cpu_count() or 1):
        return (
            "**The machine was shared with other jobs** (its load average rose above its core "
            "count), so absolute times are inflated and noisy; "
        )
    return "The machine was quiet (load average at most its core count at start and end). "


def render_real(reals: Sequence[RealResult], *, provenance: str = "") -> list[str]:
    """The real-embeddings recall paragraph and table (one row group per set), as lines;
    `provenance` says how it was measured when that differs from the section's command."""
    lines = [
        f"{REAL_INTRO}: for each set below, a model's vectors of every image of a caption corpus "
        f"(where its corpus.jsonl points), queried by {RECALL_QUERIES} of its distinct captions' "
        f"vectors (what a sentence search sends) and by {RECALL_QUERIES} stored image vectors, "
        "against synthetic clustered vectors of the same count and dimension. Each kind is built "
        "and its knobs tuned on each set (the structure column shows the real set's)."
        + (f" {provenance}" if provenance else "")
        + (
            f' Sets marked "{CARRIED_MARK[2:]}" were not measured by this command (their vectors '
            "were not given): their rows are the results file's from before."
            if any(real.carried for real in reals)
            else ""
        ),
        "",
        "| kind | real, caption queries | real, image queries | synthetic |",
        "|---|---|---|---|",
    ]
    for real in reals:
        earlier = CARRIED_MARK if real.carried else ""
        lines.append(f"| **{real.label}** ({real.n:,} images, {real.dim}-d{earlier}) | | | |")
        lines += [f"| {k} | {t:.3f} | {i:.3f} | {s:.3f} |" for k, t, i, s in real.rows]
    return lines


def earlier_reals(text: str) -> list[RealResult]:
    """The real-embeddings row groups of the bench-scale section in a results file's text, as
    RealResults marked carried (nothing when it has no such table)."""
    begin, end = text.find(BEGIN), text.find(END)
    start = text.find(REAL_INTRO, begin, end) if 0 <= begin < end else -1
    if start < 0:
        return []
    reals: list[RealResult] = []
    for line in text[start:end].splitlines():
        if head := _GROUP_HEAD.match(line):
            label, count, dim = head["label"], int(head["n"].replace(",", "")), int(head["dim"])
            reals.append(RealResult(label, count, dim, [], carried=True))
        elif reals and (row := _GROUP_ROW.match(line)):
            reals[-1].rows.append((row["kind"], float(row["t"]), float(row["i"]), float(row["s"])))
    return reals


def with_earlier_reals(reals: Sequence[RealResult], text: str) -> list[RealResult]:
    """This run's real sets, then those of the results file it did not measure (a run without the
    emoji model must not erase the emoji rows an earlier run measured)."""
    measured = {real.label for real in reals}
    return [*reals, *(real for real in earlier_reals(text) if real.label not in measured)]


def replace_real_block(text: str, block: str) -> str:
    """The results file `text` with the real-embeddings recall paragraph and the table after it
    replaced by `block` inside the bench-scale section (appended before the section's end marker
    when it has none); every other byte is kept."""
    begin, end = text.find(BEGIN), text.find(END)
    if begin < 0 or end < begin:
        raise ValueError(f"no {BEGIN} ... {END} section: run the full benchmarks/scale.py first")
    section = text[begin:end]
    block = block.strip("\n") + "\n"
    start = section.find(REAL_INTRO)
    if start < 0:
        return text[:begin] + section.rstrip("\n") + "\n\n" + block + "\n" + text[end:]
    lines = section[start:].splitlines(keepends=True)
    i = 0
    while i < len(lines) and lines[i].strip() and not lines[i].startswith("|"):  # the paragraph
        i += 1
    while i < len(lines) and not lines[i].strip():  # blank lines before the table
        i += 1
    if i == len(lines) or not lines[i].startswith("|"):
        raise ValueError(f"the paragraph starting {REAL_INTRO!r} is not followed by a table")
    while i < len(lines) and lines[i].startswith("|"):
        i += 1
    stop = start + sum(len(line) for line in lines[:i])
    return text[:begin] + section[:start] + block + section[stop:] + text[end:]


def index_types_rerank_factors() -> str:
    """RERANK_FACTORS, for the text: "8x k (sq8) or 16x k (ivfpq)"."""
    from indexer.store.vectors import RERANK_FACTORS

    return " or ".join(f"{factor}x k ({kind})" for kind, factor in RERANK_FACTORS.items())


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


@dataclass(frozen=True)
class RealSet:
    """One set of real embeddings: a caption corpus and the model that encodes it."""

    corpus: Path  # a corpus folder holding corpus.jsonl, or the file
    model: Path | None  # a model folder; None: the bundled model
    label: str


def real_sets(args: argparse.Namespace) -> list[RealSet]:
    """The sets the flags ask for, sample corpus first."""
    sets = []
    if args.real_corpus:
        sets.append(RealSet(args.real_corpus, None, "sample corpus, bundled model"))
    if args.real_emoji:
        sets.append(RealSet(args.real_emoji, args.emoji_model, "emoji corpus, emoji model"))
    return sets


def main(argv: Sequence[str] | None = None) -> int:
    """Run every size and kind, write the section and the plot (or, with --real-only, re-measure
    the real-embeddings recall table alone)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small N, to check the harness")
    parser.add_argument("--sizes", help="comma-separated N for dim 128 (default 10000,100000,1000000)")
    parser.add_argument("--kinds", default=",".join(INDEX_KINDS))
    parser.add_argument("--no-wide", action="store_true", help="skip dim 512")
    parser.add_argument(
        "--engine-max", type=int, default=1_000_000, help="largest N timed through the Engine"
    )
    parser.add_argument("--real-corpus", type=Path, help="a sample corpus folder for recall on real vectors")
    parser.add_argument(
        "--real-emoji",
        type=Path,
        help="the emoji corpus folder (make emoji-corpus) for recall on real vectors",
    )
    parser.add_argument(
        "--emoji-model",
        type=Path,
        default=REPO_DIR / ".cache" / "models" / "emoji",
        help="the model that encodes --real-emoji (make emoji-model; default .cache/models/emoji)",
    )
    parser.add_argument(
        "--real-only",
        action="store_true",
        help="measure only the real-embeddings recall and rewrite only its table in --out",
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "RESULTS.md")
    parser.add_argument("--plot", type=Path, default=BENCH_DIR / "scale.png")
    parser.add_argument("--json", type=Path, help="also dump the raw figures here")
    args = parser.parse_args(argv)
    sets = real_sets(args)
    for real_set in sets:  # refuse now rather than after an hour of synthetic sizes
        if not corpus_file(real_set.corpus).is_file():
            parser.error(
                f"no corpus at {corpus_file(real_set.corpus)} (make sample-corpus / make emoji-corpus)"
            )
        if real_set.model is not None and not (real_set.model / "config.json").is_file():
            parser.error(f"no model in {real_set.model}: run `make emoji-model` or pass --emoji-model DIR")
    if args.real_only:
        if not sets:
            parser.error("--real-only needs --real-corpus and/or --real-emoji")
        try:
            replace_real_block(args.out.read_text() if args.out.exists() else "", "")
        except ValueError as exc:
            parser.error(f"{args.out}: {exc}")
    started = time.perf_counter()
    load_start = report.load_average()
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)  # text encoding: two threads spin against the other jobs here (6x slower)
    if args.real_only:
        return _real_only(args, sets, started, load_start, argv)
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else list(QUICK_SIZES if args.quick else FULL_SIZES)
    )
    kinds = args.kinds.split(",")
    plan = [(n, 128) for n in sizes] + ([] if args.no_wide or args.quick else [(WIDE[1], WIDE[0])])
    results: list[KindResult] = []
    with tempfile.TemporaryDirectory(prefix="mmsearch-scale-") as tmp:
        work = Path(tmp)
        for n, dim in plan:
            held_out = max(RECALL_QUERIES, SINGLE_QUERIES + WARMUP)
            generated = clustered(n + held_out, dim, seed=SEED + n + dim)
            vectors, queries = generated[:n], generated[n:]  # queries: same clusters, not stored
            ids = np.arange(1, n + 1, dtype=np.int64)
            log(f"N={n:,} dim={dim}: exact top-{K} of {len(queries)} held-out queries")
            truth = exact_truth(vectors, queries[:RECALL_QUERIES])
            for kind in kinds:
                result, store = measure_kind(kind, ids, vectors, queries, truth, work)
                if dim == 128 and n <= args.engine_max:
                    result.engine = measure_engine(store, ids, vectors, queries, work)
                results.append(result)
                if args.json:
                    args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1))
                publish(results, [], args, started, load_start, argv, partial=True)
                for leftover in work.glob(f"{kind}-{n}-*"):
                    _remove_tree(leftover)
                _remove_tree(work / f"engine-{kind}-{n}")
            _remove_tree(work / f"catalog-{n}")
    reals = [measure_real(s.corpus, s.model, s.label) for s in sets]
    publish(results, reals, args, started, load_start, argv, partial=False)
    log(f"wrote {args.out} and {args.plot}")
    return 0


def _real_only(
    args: argparse.Namespace,
    sets: Sequence[RealSet],
    started: float,
    load_start: str,
    argv: Sequence[str] | None,
) -> int:
    """Measure the real sets and rewrite only their paragraph and table in args.out."""
    reals = [measure_real(s.corpus, s.model, s.label) for s in sets]
    provenance = (
        f"Re-measured alone by `{_command(argv)}` in {(time.perf_counter() - started) / 60:.1f} min "
        f"at commit {report.git_revision(REPO_DIR)}, load average at start {load_start}, at end "
        f"{report.load_average()}."
    )
    previous = args.out.read_text()
    block = "\n".join(render_real(with_earlier_reals(reals, previous), provenance=provenance))
    args.out.write_text(replace_real_block(previous, block))
    log(f"rewrote the real-embeddings recall table in {args.out}")
    return 0


def _command(argv: Sequence[str] | None) -> str:
    """This run's command line, as the report shows it."""
    return ("benchmarks/scale.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()


def publish(
    results: list[KindResult],
    reals: Sequence[RealResult],
    args: argparse.Namespace,
    started: float,
    load_start: str,
    argv: Sequence[str] | None,
    *,
    partial: bool,
) -> None:
    """Write the plot and the section (after every measurement, so a long run that is stopped
    still leaves what it measured, marked as partial)."""
    plot(results, args.plot)
    section = render(
        results,
        with_earlier_reals(reals, args.out.read_text() if args.out.exists() else ""),
        command=_command(argv),
        elapsed_s=time.perf_counter() - started,
        load_start=load_start,
        load_end=report.load_average(),
        quick=args.quick,
        plot_name=args.plot.name,
    )
    if partial:
        section = section.replace(
            "## Index types at scale (`make bench-scale`)\n",
            "## Index types at scale (`make bench-scale`)\n\n> **Partial**: the run was still going "
            "(or was stopped) after the rows below.\n",
        )
    report.write_marked_section(args.out, section, BEGIN, END)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
