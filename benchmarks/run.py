"""Benchmark mmsearch in one run on one machine and write a Markdown report.

    .venv/bin/python benchmarks/run.py                   # the issue's sizes -> benchmarks/RESULTS.md
    .venv/bin/python benchmarks/run.py --quick           # ~1-2 min harness check -> work/RESULTS-quick.md
    .venv/bin/python benchmarks/run.py --photos 500 --megapixels 6 --model /path/to/model

Measures (1) encoder-only image and text throughput, (2) end-to-end `index_folders` throughput
on large JPEGs against (1), with the decode-only rate beside it, (3) a no-change re-index of
many small files, and (4) in-process query latency. Inputs are generated once into
benchmarks/work/ (gitignored) and reused; generation time is reported apart from the figures.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from indexer.indexing.decode_pool import LoadedImage, Skipped, load_file
from indexer.indexing.pipeline import IndexOptions, IndexReport, index_folders
from indexer.media.images import DEFAULT_MAX_MEGAPIXELS, FROM_EXIF_THUMBNAIL, PreprocessConfig
from indexer.media.scan import FileEntry, scan_folder
from indexer.models.devices import indexing_threads, torch_threads
from indexer.models.encoder import TEXT_BATCH_SIZE, Encoder, EncoderInfo, load_encoder
from indexer.models.native import ModelLoadError
from indexer.store.index_types import build_ivf, default_lists, default_nprobe
from indexer.store.vectors import VectorStore
from mmsearch.engine import Engine

# isort: split
# Helper modules beside this script (benchmarks/ is on sys.path when run as benchmarks/run.py).
import ray_bench
import report
import synth
from load_test import format_report, run_load_test

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent

# Targets from the issue.
PIPELINE_RATIO_TARGET = 0.85  # end-to-end images/s over encoder-only images/s
REINDEX_TARGET_S = 5.0  # a run over an unchanged folder

# Defaults from the issue, and the --quick scale (a harness check in about two minutes).
FULL = {"photos": 2000, "megapixels": 12.0, "reindex_files": 10_000, "captions": 1024, "repeats": 5}
QUICK = {"photos": 100, "megapixels": 2.0, "reindex_files": 1000, "captions": 256, "repeats": 3}
# Section 6: vector search alone, exact vs IVF, on synthetic clustered unit vectors.
ANN_VECTORS = {"full": 200_000, "quick": 20_000}
ANN_CLUSTERS = 2000  # centres the synthetic vectors gather around (embeddings cluster)
ANN_QUERIES = 200

BATCH_SIZE = 64  # what `mmsearch index` uses (IndexOptions default)
ENCODER_BATCHES = 8  # batches of real preprocessed photos timed by the encoder-only benchmark
FIDELITY_PHOTOS = 256  # photos encoded both from their preview and from the photo
WARMUP_QUERIES = 5  # first queries (allocator, caches) excluded from latency percentiles
QUERY_K = 10
GENERATION_PROCESSES = 2  # the machine has two cores
BYTES_PER_MB = 1_000_000
KIB_PER_MIB = 1024
SEED = 0

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "black", "white", "grey", "pink")
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "rectangle", "ellipse")
SIZES = ("small", "large", "tiny", "big")
PLACES = (
    "on the left",
    "on the right",
    "at the top",
    "at the bottom",
    "in the middle",
    "in the top left corner",
    "near the bottom edge",
)
SCENES = (
    "a dog running along the beach at sunset",
    "two children playing football in a park",
    "a snowy mountain above a quiet lake",
    "a plate of pasta on a wooden table",
    "a red bicycle leaning against a brick wall",
    "city lights reflected in a wet street at night",
    "a cat asleep on a sunny windowsill",
    "a crowded market with colourful fruit stalls",
    "an old lighthouse on a rocky coast",
    "a birthday cake with lit candles",
    "a field of sunflowers under a blue sky",
    "a train crossing a stone bridge in autumn",
)


STARTED = time.perf_counter()


def log(message: str) -> None:
    """One progress line on stdout, stamped with seconds since the run started."""
    print(f"[{time.perf_counter() - STARTED:7.1f}s] {message}", flush=True)


@dataclass(frozen=True)
class Settings:
    """Every parameter of a run, after --quick and explicit flags are combined."""

    model: str | None
    out: Path
    work: Path
    quick: bool
    photos: int
    megapixels: float
    reindex_files: int
    captions: int  # per text-throughput repeat
    repeats: int  # timed repeats of the encoder-only measurements; the median is reported
    text_queries: int
    image_queries: int
    workers: int
    torch_threads: int | None  # None: torch's own default, which is what `mmsearch` runs with
    keep_indexes: bool


class TimedEncoder:
    """An Encoder that adds up the wall time the pipeline's main thread spends in encode_pixels."""

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.info: EncoderInfo = inner.info
        self.preprocess_config: PreprocessConfig = inner.preprocess_config
        self.encode_s = 0.0

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Delegates (runs in the decode threads)."""
        return self.inner.preprocess(image)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Delegates."""
        return self.inner.encode_texts(texts)

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Delegates and times."""
        started = time.perf_counter()
        vectors = self.inner.encode_pixels(pixels)
        self.encode_s += time.perf_counter() - started  # only the pipeline's main thread encodes
        return vectors


# -- helpers ------------------------------------------------------------------------------------


def entries_of(folder: Path) -> list[FileEntry]:
    """The files the pipeline would see, in its order."""
    return list(scan_folder(folder))


def load_files(
    entries: Sequence[FileEntry], encoder: Encoder, *, workers: int, exif_thumbnails: bool = True
) -> Iterator[LoadedImage | Skipped]:
    """load_file over entries in `workers` threads, as the pipeline does, in input order."""

    def load(entry: FileEntry) -> LoadedImage | Skipped:
        return load_file(
            entry, encoder, max_megapixels=DEFAULT_MAX_MEGAPIXELS, embedded_thumbnail=exif_thumbnails
        )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(load, entries)


def shown(path: Path) -> str:
    """A path as the report prints it: relative to the checkout when inside it."""
    try:
        return str(path.relative_to(REPO_DIR))
    except ValueError:
        return str(path)


def fresh_dir(path: Path) -> Path:
    """An empty directory at path (removing what a previous run left)."""
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def peak_rss_mib() -> float:
    """High-water resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB


def current_rss_mib() -> float:
    """Resident set size now, from /proc/self/status (0 where unavailable)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / KIB_PER_MIB
    except OSError:
        pass  # not Linux
    return 0.0


def median_rate(count: int, seconds: list[float]) -> tuple[float, float, float]:
    """(median, slowest, fastest) items/s over timed repeats."""
    rates = sorted(count / s for s in seconds)
    return statistics.median(rates), rates[0], rates[-1]


def query_sentences(count: int, rng: random.Random) -> list[str]:
    """`count` distinct sentences mixing the shapes vocabulary with everyday photo captions."""
    sentences: dict[str, None] = {}
    while len(sentences) < count:
        colour, colour2 = rng.sample(COLORS, 2)
        shape, shape2 = rng.choice(SHAPES), rng.choice(SHAPES)
        size, place, scene = rng.choice(SIZES), rng.choice(PLACES), rng.choice(SCENES)
        sentence = rng.choice(
            (
                f"a {size} {colour} {shape}",
                f"a {colour} {shape} {place}",
                f"a {size} {colour} {shape} next to a {colour2} {shape2}",
                f"a {colour} {shape} above a {size} {colour2} {shape2} {place}",
                scene,
                f"{scene}, with a {colour} {shape} {place}",
            )
        )
        sentences[sentence] = None
    return list(sentences)


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    """p50/p95/p99/mean/max of latencies, in milliseconds."""
    ms = np.asarray(seconds) * 1000.0
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50": p50, "p95": p95, "p99": p99, "mean": float(ms.mean()), "max": float(ms.max())}


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN rather than a crash when a stage produced nothing."""
    return numerator / denominator if denominator > 0 else float("nan")


def pass_fail(ok: bool) -> str:
    """Bold verdict for a target row."""
    return "**PASS**" if ok else "**FAIL**"


# -- 1. encoder-only ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderResult:
    """Encoder-only rates, kept for the pipeline ratio."""

    images_per_s: float
    section: report.Section


def measure_encoder(encoder: Encoder, photos: list[FileEntry], settings: Settings) -> EncoderResult:
    """Time encode_pixels on the pipeline's own batches of preprocessed photos, then encode_texts."""
    section = report.Section("Encoder-only throughput")
    log(f"encoder-only: decoding {BATCH_SIZE * ENCODER_BATCHES} photos into batches of {BATCH_SIZE}")
    batches = _pixel_batches(encoder, photos, settings)
    images = sum(len(b) for b in batches)
    image_rate, image_low, image_high = median_rate(images, _time_batches(encoder, batches, settings))
    log(f"encoder-only: {image_rate:,.0f} images/s (median of {settings.repeats})")

    captions = query_sentences(settings.captions, random.Random(SEED))
    encoder.encode_texts(captions[:TEXT_BATCH_SIZE])  # warm-up
    seconds = []
    for _ in range(settings.repeats):
        started = time.perf_counter()
        encoder.encode_texts(captions)
        seconds.append(time.perf_counter() - started)
    text_rate, text_low, text_high = median_rate(len(captions), seconds)
    log(f"encoder-only: {text_rate:,.0f} texts/s (median of {settings.repeats})")

    section.add("image encoding (encode_pixels)", f"**{image_rate:,.0f} images/s**")
    section.add("images: slowest / fastest repeat", f"{image_low:,.0f} / {image_high:,.0f} images/s")
    section.add("text encoding (encode_texts)", f"**{text_rate:,.0f} texts/s**")
    section.add("texts: slowest / fastest repeat", f"{text_low:,.0f} / {text_high:,.0f} texts/s")
    section.params = {
        "images": f"{images} preprocessed photos from the end-to-end set (section 2), decoded "
        "with indexer.indexing.decode_pool.load_file exactly as the pipeline does",
        "image batches": f"{len(batches)} x up to {BATCH_SIZE}, tensor shape "
        f"{tuple(batches[0].shape) if batches else ()} float32",
        "texts": f"{len(captions)} distinct captions per repeat, encoded in batches of {TEXT_BATCH_SIZE}",
        "timing": f"2 warm-up batches excluded; median of {settings.repeats} repeats; "
        f"torch intra-op threads {torch.get_num_threads()}"
        + (" (--torch-threads)" if settings.torch_threads else " (torch default)"),
    }
    return EncoderResult(image_rate, section)


# -- 2. end-to-end indexing -----------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineRun:
    """One index_folders run into a fresh index."""

    encoded: int
    skipped: int
    wall_s: float
    encode_s: float  # main thread inside encode_pixels
    peak_rss_mib: float

    @property
    def rate(self) -> float:
        return self.encoded / self.wall_s


@dataclass(frozen=True)
class DecodeRun:
    """load_file alone over the same files, in the pipeline's worker count."""

    decoded: int
    skipped: int
    wall_s: float
    from_preview: int

    @property
    def rate(self) -> float:
        return self.decoded / self.wall_s


def _read_all(paths: Sequence[Path]) -> float:
    """Read every file once (into the OS page cache); returns the seconds it took."""
    started = time.perf_counter()
    for path in paths:
        with open(path, "rb") as fh:
            while fh.read(1 << 24):
                pass
    return time.perf_counter() - started


def _run_pipeline(
    encoder: Encoder, photos: synth.GeneratedSet, settings: Settings, *, exif_thumbnails: bool
) -> PipelineRun:
    index_dir = fresh_dir(settings.work / "index-photos")
    timed = TimedEncoder(encoder)
    label = "camera previews used" if exif_thumbnails else "--no-exif-thumbnails"
    log(f"indexing ({label}): {len(photos.files)} photos -> {index_dir} ({settings.workers} workers)")
    options = IndexOptions(
        batch_size=BATCH_SIZE,
        workers=settings.workers,
        exif_thumbnails=exif_thumbnails,
        torch_threads=settings.torch_threads,
    )
    started = time.perf_counter()
    result = index_folders([photos.folder], index_dir, timed, options=options)
    run = PipelineRun(
        result.encoded, len(result.skipped), time.perf_counter() - started, timed.encode_s, peak_rss_mib()
    )
    log(f"indexing ({label}): {run.encoded} images in {run.wall_s:.1f} s = {run.rate:,.1f} images/s")
    if not settings.keep_indexes:
        shutil.rmtree(index_dir, ignore_errors=True)
    return run


def _run_decode_only(
    encoder: Encoder, entries: list[FileEntry], settings: Settings, *, exif_thumbnails: bool
) -> DecodeRun:
    started = time.perf_counter()
    decoded = skipped = from_preview = 0
    for item in load_files(entries, encoder, workers=settings.workers, exif_thumbnails=exif_thumbnails):
        if isinstance(item, LoadedImage):  # counts only: pixels are dropped
            decoded += 1
            from_preview += item.decoded_from == FROM_EXIF_THUMBNAIL
        else:
            skipped += 1
    run = DecodeRun(decoded, skipped, time.perf_counter() - started, from_preview)
    log(f"decode-only (exif_thumbnails={exif_thumbnails}): {run.rate:,.1f} images/s")
    return run


def _preview_fidelity(encoder: Encoder, entries: list[FileEntry], settings: Settings) -> tuple[float, float]:
    """Cosine between each photo's vector from its preview and from the photo: (mean, min)."""
    ways = [
        [img for img in load_files(entries, encoder, workers=settings.workers, exif_thumbnails=flag)]
        for flag in (True, False)
    ]
    pairs = [
        (a.pixels, b.pixels)
        for a, b in zip(*ways, strict=True)
        if isinstance(a, LoadedImage) and isinstance(b, LoadedImage)
    ]
    if not pairs:
        return float("nan"), float("nan")
    preview = encoder.encode_pixels(torch.stack([a for a, _ in pairs]))
    photo = encoder.encode_pixels(torch.stack([b for _, b in pairs]))
    cosines = np.sum(preview * photo, axis=1)  # vectors are L2-normalised
    return float(cosines.mean()), float(cosines.min())


def measure_indexing(
    encoder: Encoder,
    photos: synth.GeneratedSet,
    entries: list[FileEntry],
    encoder_rate: float,
    settings: Settings,
) -> report.Section:
    """index_folders over the photos (previews on, then off), and decode-only over the same files."""
    section = report.Section("End-to-end indexing throughput")
    rss_before = current_rss_mib()
    warm_s = _read_all(photos.files)
    log(f"page cache: read every photo once in {warm_s:.1f} s (not timed below)")
    fast = _run_pipeline(encoder, photos, settings, exif_thumbnails=True)
    fast_decode = _run_decode_only(encoder, entries, settings, exif_thumbnails=True)
    full = _run_pipeline(encoder, photos, settings, exif_thumbnails=False)
    full_decode = _run_decode_only(encoder, entries, settings, exif_thumbnails=False)
    fidelity_mean, fidelity_min = _preview_fidelity(encoder, entries[:FIDELITY_PHOTOS], settings)
    threads = settings.torch_threads or indexing_threads()
    encoder_at_threads = _encoder_rate_at(encoder, entries, settings, threads)

    to_encoder = ratio(fast.rate, encoder_rate)
    # If decoding and encoding merely took turns on the CPUs, an image would cost the sum of both.
    time_shared = ratio(1.0, ratio(1.0, fast_decode.rate) + ratio(1.0, encoder_rate))
    section.add(
        "pipeline (index_folders, defaults)",
        f"**{fast.rate:,.1f} images/s** ({fast.encoded} images in {fast.wall_s:.1f} s)",
    )
    section.add(
        "pipeline / encoder-only",
        f"**{to_encoder:.3f}** (target >= {PIPELINE_RATIO_TARGET}: "
        f"{pass_fail(to_encoder >= PIPELINE_RATIO_TARGET)})",
    )
    section.add(
        "decode-only (load_file: read, hash, decode, preprocess, own text)",
        f"{fast_decode.rate:,.1f} images/s; {fast_decode.from_preview} of {fast_decode.decoded} "
        "from the camera's EXIF preview",
    )
    section.add("encoder-only (section 1, torch default threads)", f"{encoder_rate:,.0f} images/s")
    section.add(
        f"encoder-only at the pipeline's {threads} torch thread(s)", f"{encoder_at_threads:,.0f} images/s"
    )
    section.add(
        "bounds: perfect overlap / stages taking turns",
        f"{min(fast_decode.rate, encoder_rate):,.1f} / {time_shared:,.1f} images/s",
    )
    section.add(
        "pipeline with --no-exif-thumbnails (every photo decoded, 1/8 DCT scale)",
        f"{full.rate:,.1f} images/s ({full.wall_s:.1f} s); ratio {ratio(full.rate, encoder_rate):.3f}",
    )
    section.add("decode-only with --no-exif-thumbnails", f"{full_decode.rate:,.1f} images/s")
    section.add("speed-up from previews (pipeline)", f"{ratio(fast.rate, full.rate):.1f}x")
    section.add(
        f"preview vs photo vector cosine ({min(FIDELITY_PHOTOS, len(entries))} photos)",
        f"mean {fidelity_mean:.4f}, min {fidelity_min:.4f}",
    )
    section.add(
        "main thread inside encode_pixels (defaults)",
        f"{fast.encode_s:.1f} s of {fast.wall_s:.1f} s ({100 * fast.encode_s / fast.wall_s:.0f}%)",
    )
    section.add(
        "peak RSS of the process (getrusage)",
        f"{max(fast.peak_rss_mib, full.peak_rss_mib):,.0f} MiB (RSS before indexing: {rss_before:,.0f} MiB)",
    )
    section.add(
        "skipped files",
        f"{fast.skipped} / {full.skipped} in the two pipelines, "
        f"{fast_decode.skipped} / {full_decode.skipped} decode-only",
    )
    section.add("photo generation (not counted)", _generation(photos))
    width, height = synth.photo_dimensions(settings.megapixels)
    section.params = {
        "photos": f"{len(entries)} JPEGs, {width}x{height} ({settings.megapixels:g} MP), quality "
        f"{synth.JPEG_QUALITY}, {photos.total_bytes / len(photos.files) / BYTES_PER_MB:.2f} MB "
        f"mean, {photos.total_bytes / 1e9:.2f} GB total, in {shown(photos.folder)}",
        "content": "bicubic gradients + 3-8 filled shapes + Gaussian noise "
        f"(sigma {synth.NOISE_SIGMA:g} grey levels), with the "
        f"{synth.CAMERA_PREVIEW_SIZE[0]}x{synth.CAMERA_PREVIEW_SIZE[1]} EXIF preview cameras embed",
        "index options": f"IndexOptions(batch_size={BATCH_SIZE}, workers={settings.workers}, "
        f"torch_threads={settings.torch_threads}) -> {threads} torch thread(s) while indexing; "
        "a fresh index for each run",
        "decode-only": f"ThreadPoolExecutor({settings.workers}) mapping "
        "indexer.indexing.decode_pool.load_file over "
        "the same files, after each pipeline run",
        "page cache": f"every photo was read once before the runs ({warm_s:.1f} s, untimed), so the "
        f"figures measure CPU work, not disk reads ({photos.total_bytes / 1e9:.1f} GB fits this "
        "machine's page cache)",
    }
    section.notes = [
        "The pipeline overlaps decoding (worker threads) with encoding (main thread). It cannot beat "
        "the slower stage (perfect overlap); when both stages need every core they only take turns, "
        "and 1 / (1/decode + 1/encode) is the better guide. Ratio and verdict are reported as measured.",
        "A 0.85 ratio needs the non-encoding work of an image (read and hash the whole file, parse "
        "its headers, decode the preview, preprocess, look for own text) to cost under ~18% of its "
        "encoding CPU time. With the bundled 64-px model one image encodes in ~2 ms of CPU on two "
        "cores, while reading and hashing a 3 MB file alone takes ~0.5 ms: on two cores the target "
        "is out of reach for this model, and the figures above show by how much.",
    ]
    return section


def _encoder_rate_at(encoder: Encoder, entries: list[FileEntry], settings: Settings, threads: int) -> float:
    """encode_pixels images/s with `threads` intra-op threads on the section-1 batches."""
    batches = _pixel_batches(encoder, entries, settings)
    with torch_threads(threads):
        seconds = _time_batches(encoder, batches, settings)
    return median_rate(sum(len(b) for b in batches), seconds)[0]


def _pixel_batches(encoder: Encoder, entries: list[FileEntry], settings: Settings) -> list[torch.Tensor]:
    """The first ENCODER_BATCHES batches of photos, preprocessed exactly as the pipeline does."""
    sample = entries[: BATCH_SIZE * ENCODER_BATCHES]
    loaded = load_files(sample, encoder, workers=settings.workers)
    pixels = [img.pixels for img in loaded if isinstance(img, LoadedImage)]
    return [torch.stack(pixels[i : i + BATCH_SIZE]) for i in range(0, len(pixels), BATCH_SIZE)]


def _time_batches(encoder: Encoder, batches: list[torch.Tensor], settings: Settings) -> list[float]:
    """Seconds per pass over the batches, settings.repeats times, after two warm-up batches."""
    for batch in batches[:2]:  # first calls pay for allocation and kernel selection
        encoder.encode_pixels(batch)
    seconds = []
    for _ in range(settings.repeats):
        started = time.perf_counter()
        for batch in batches:
            encoder.encode_pixels(batch)
        seconds.append(time.perf_counter() - started)
    return seconds


def _generation(generated: synth.GeneratedSet) -> str:
    if generated.written == 0:
        return f"reused {len(generated.files)} files from an earlier run"
    return f"{generated.written} files in {generated.elapsed_s:.1f} s ({GENERATION_PROCESSES} processes)"


# -- 3. no-change re-index ------------------------------------------------------------------------


@dataclass(frozen=True)
class ReindexResult:
    """The index built here is reused by the query benchmark."""

    index_dir: Path
    encoded_on_rerun: int
    section: report.Section


def measure_reindex(encoder: Encoder, small: synth.GeneratedSet, settings: Settings) -> ReindexResult:
    """Index the small files once, then time a second run that finds nothing changed."""
    section = report.Section("No-change re-index")
    index_dir = fresh_dir(settings.work / "index-small")
    log(f"re-index: first run over {len(small.files)} small files -> {index_dir}")
    first = _timed_index(small.folder, index_dir, encoder, settings)
    log(f"re-index: first run {first[1]:.1f} s ({first[0].encoded} encoded); timing the second run")
    second = _timed_index(small.folder, index_dir, encoder, settings)
    result, wall = second
    log(f"re-index: second run {wall:.2f} s, encoded {result.encoded}, unchanged {result.unchanged}")
    section.add(
        "second run (nothing changed)",
        f"**{wall:.2f} s** (target < {REINDEX_TARGET_S:g} s: {pass_fail(wall < REINDEX_TARGET_S)})",
    )
    section.add(
        "images encoded by the second run",
        f"{result.encoded} ({'as expected' if result.encoded == 0 else '**UNEXPECTED**'})",
    )
    section.add(
        "unchanged / new / changed / removed on the second run",
        f"{result.unchanged} / {result.new} / {result.changed} / {result.removed}",
    )
    section.add(
        "first run (empty index)",
        f"{first[1]:.1f} s, {first[0].encoded} encoded ({first[0].encoded / first[1]:,.0f} images/s)",
    )
    section.add("file generation (not counted)", _generation(small))
    section.params = {
        "files": f"{len(small.files)} PNGs of {synth.SMALL_SIZE}x{synth.SMALL_SIZE}, "
        f"{synth.FILES_PER_FOLDER} per folder, in {shown(small.folder)}",
        "index options": f"IndexOptions(batch_size={BATCH_SIZE}, workers={settings.workers})",
        "timing": "wall time of index_folders() in-process, model already loaded",
    }
    return ReindexResult(index_dir, result.encoded, section)


def _timed_index(
    folder: Path, index_dir: Path, encoder: Encoder, settings: Settings
) -> tuple[IndexReport, float]:
    started = time.perf_counter()
    result = index_folders(
        [folder], index_dir, encoder, options=IndexOptions(batch_size=BATCH_SIZE, workers=settings.workers)
    )
    return result, time.perf_counter() - started


# -- 4. query latency -----------------------------------------------------------------------------


def measure_queries(index_dir: Path, small: synth.GeneratedSet, settings: Settings) -> report.Section:
    """Engine.open on the re-index index; text and image queries timed one by one."""
    section = report.Section("Query latency (in-process)")
    model = settings.model  # None: the index's own model, which is the one benchmarked above
    started = time.perf_counter()
    engine = Engine.open(index_dir, model=model)
    engine.load_model()  # timed with the open, as `mmsearch serve` loads it (else the first query would)
    open_s = time.perf_counter() - started
    rng = random.Random(SEED + 1)
    sentences = query_sentences(settings.text_queries + WARMUP_QUERIES, rng)
    step = max(1, len(small.files) // (settings.image_queries + WARMUP_QUERIES))
    images = small.files[::step][: settings.image_queries + WARMUP_QUERIES]
    log(
        f"queries: {settings.text_queries} search_text, {len(images) - WARMUP_QUERIES} search_image "
        f"(Engine.open {open_s * 1000:.0f} ms)"
    )
    with engine:
        text_s = _latencies(lambda q: engine.search_text(q, k=QUERY_K), sentences)
        image_s = _latencies(lambda p: engine.search_image(p, k=QUERY_K), images)
        vectors = engine.stats().image_vectors
    text, image = percentiles_ms(text_s), percentiles_ms(image_s)
    log(
        f"queries: search_text p50 {text['p50']:.2f} ms p99 {text['p99']:.2f} ms; "
        f"search_image p50 {image['p50']:.2f} ms p99 {image['p99']:.2f} ms"
    )
    for name, stats, count in (("search_text", text, len(text_s)), ("search_image", image, len(image_s))):
        section.add(
            f"{name} p50 / p95 / p99",
            f"**{stats['p50']:.2f} / {stats['p95']:.2f} / {stats['p99']:.2f} ms** ({count} queries)",
        )
        section.add(f"{name} mean / max", f"{stats['mean']:.2f} / {stats['max']:.2f} ms")
    section.add("Engine.open", f"{open_s * 1000:.0f} ms (model load + catalogue + FAISS)")
    section.params = {
        "index": f"the section 3 index: {vectors} image vectors, k={QUERY_K}",
        "text queries": f"{len(text_s)} distinct sentences (shapes vocabulary and everyday captions)",
        "image queries": f"{len(image_s)} indexed {synth.SMALL_SIZE}px PNGs by path (latency includes "
        "reading and decoding the file)",
        "timing": f"sequential, one query at a time; first {WARMUP_QUERIES} of each kind excluded",
    }
    return section


# -- 6. exact vs IVF vector search -----------------------------------------------------------------


def measure_ann(dim: int, settings: Settings) -> report.Section:
    """Flat vs IVF (mmsearch optimize --ivf defaults) on synthetic vectors: build, recall, latency."""
    section = report.Section("Vector search: exact vs IVF (`mmsearch optimize --ivf`)")
    count = ANN_VECTORS["quick" if settings.quick else "full"]
    rng = np.random.default_rng(SEED)
    centres = rng.normal(size=(ANN_CLUSTERS, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, ANN_CLUSTERS, count)] + 0.5 * rng.normal(size=(count, dim)).astype(
        np.float32
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    flat = VectorStore.create(dim)
    flat.add(np.arange(count, dtype=np.int64), vectors)
    lists = default_lists(count)
    log(f"ann: {count} vectors of dim {dim}; building IVF{lists} on the CPU")
    built = build_ivf(flat, lists=lists, nprobe=default_nprobe(lists), use_gpu=False)
    queries = vectors[rng.choice(count, ANN_QUERIES, replace=False)] + 0.05 * rng.normal(
        size=(ANN_QUERIES, dim)
    ).astype(np.float32)
    flat_ms = percentiles_ms(_latencies(lambda q: flat.search(q[None, :], QUERY_K), list(queries)))
    ivf_ms = percentiles_ms(_latencies(lambda q: built.store.search(q[None, :], QUERY_K), list(queries)))
    log(
        f"ann: build {built.seconds:.1f} s, recall@10 {built.recall:.3f}; "
        f"p50 {flat_ms['p50']:.2f} -> {ivf_ms['p50']:.2f} ms"
    )
    section.add("exact (IDMap2,FlatIP) search p50 / p99", f"{flat_ms['p50']:.2f} / {flat_ms['p99']:.2f} ms")
    section.add(
        f"IVF ({built.store.describe()}) search p50 / p99",
        f"**{ivf_ms['p50']:.2f} / {ivf_ms['p99']:.2f} ms**",
    )
    section.add("IVF recall@10 against exact (256 stored vectors as queries)", f"{built.recall:.3f}")
    section.add("IVF build (k-means + list assignment, CPU)", f"{built.seconds:.1f} s")
    section.add("GPU build", "not measured: no GPU on this machine")
    section.params = {
        "vectors": f"{count} unit vectors of dim {dim} around {ANN_CLUSTERS} random centres "
        "(noise 0.5 per coordinate), ids 0..n-1",
        "queries": f"{ANN_QUERIES} stored vectors plus noise 0.05, k={QUERY_K}, one at a time, "
        f"first {WARMUP_QUERIES} excluded; vector search only (no query encoding)",
        "IVF": "the `mmsearch optimize --ivf` defaults: 4*sqrt(n) lists, nprobe = lists/8",
    }
    return section


def _latencies(run: Callable[[Any], object], items: Sequence[Any]) -> list[float]:
    """Wall time of run(item) for each item, warm-up items left out."""
    seconds = []
    for i, item in enumerate(items):
        started = time.perf_counter()
        run(item)
        if i >= WARMUP_QUERIES:
            seconds.append(time.perf_counter() - started)
    return seconds


# -- the run --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Flags -> Settings; --quick sets the scale, explicit flags still win."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--model", help="model directory (default: the bundled default model)")
    parser.add_argument(
        "--out",
        type=Path,
        help="report path (default benchmarks/RESULTS.md; benchmarks/work/RESULTS-quick.md with --quick)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=BENCH_DIR / "work",
        help="where generated inputs and indexes go (default benchmarks/work)",
    )
    parser.add_argument("--quick", action="store_true", help="scaled-down run to check the harness (~2 min)")
    parser.add_argument(
        "--photos", type=int, help=f"photos to index (default {FULL['photos']}, quick {QUICK['photos']})"
    )
    parser.add_argument(
        "--megapixels",
        type=float,
        help=f"photo size (default {FULL['megapixels']:g}, quick {QUICK['megapixels']:g})",
    )
    parser.add_argument(
        "--reindex-files",
        type=int,
        help=f"small files for the re-index "
        f"(default {FULL['reindex_files']}, quick {QUICK['reindex_files']})",
    )
    parser.add_argument("--text-queries", type=int, default=200)
    parser.add_argument("--image-queries", type=int, default=50)
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="decode threads (default: CPU count, as `mmsearch index` uses)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        help="torch intra-op threads (default: torch's own choice, which is what mmsearch runs with)",
    )
    parser.add_argument(
        "--keep-indexes", action="store_true", help="leave the photo index in the work folder for inspection"
    )
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    for flag, value in (
        ("--photos", args.photos),
        ("--reindex-files", args.reindex_files),
        ("--megapixels", args.megapixels),
        ("--workers", args.workers),
        ("--text-queries", args.text_queries),
        ("--image-queries", args.image_queries),
        ("--torch-threads", args.torch_threads),
    ):
        if value is not None and value <= 0:
            parser.error(f"{flag} must be positive")
    default_out = BENCH_DIR / "work" / "RESULTS-quick.md" if args.quick else BENCH_DIR / "RESULTS.md"
    return Settings(
        model=args.model,
        out=args.out or default_out,
        work=args.work.resolve(),
        quick=args.quick,
        photos=args.photos or int(scale["photos"]),
        megapixels=args.megapixels or float(scale["megapixels"]),
        reindex_files=args.reindex_files or int(scale["reindex_files"]),
        captions=int(scale["captions"]),
        repeats=int(scale["repeats"]),
        text_queries=args.text_queries,
        image_queries=args.image_queries,
        workers=args.workers,
        torch_threads=args.torch_threads,
        keep_indexes=args.keep_indexes,
    )


def measure_http_load(index_dir: Path, settings: Settings) -> report.Section:
    """The loopback HTTP load test against the same index: the server with batching off and on,
    against the in-process engine driven by as many threads as there are clients."""
    section = report.Section("HTTP service under load (loopback)")
    clients, seconds = (4, 3.0) if settings.quick else (16, 20.0)
    result = run_load_test(index_dir, clients, seconds, model=settings.model)
    log(format_report(result))
    threaded = result["engine_threads"]
    servers = {server["label"]: server for server in result["servers"]}
    batched, unbatched = servers["batched"], servers["unbatched"]
    section.add("GET /search p50 / p99 (batched)", f"**{result['p50_ms']:.2f} / {result['p99_ms']:.2f} ms**")
    section.add(
        "requests/s (batched)",
        f"**{result['requests_per_s']:.1f}** ({result['requests']} requests; "
        f"batches of {(batched['batching'] or {}).get('mean_batch', 0)} on average)",
    )
    ratio = result["vs_engine_threads"]
    section.add(
        f"batched HTTP / in-process engine from {clients} threads",
        f"**{ratio:.2f}x** (target >= {result['throughput_target']}: "
        f"{pass_fail(ratio >= result['throughput_target'])})",
    )
    for run in result["engine_threads_runs"]:
        section.add(
            f"in-process engine, {clients} threads, {run['torch_threads']} torch thread(s)",
            f"{run['queries_per_s']:.1f} queries/s, p50 / p99 {run['p50_ms']:.2f} / {run['p99_ms']:.2f} ms",
        )
    section.add(
        "GET /search unbatched (--max-batch 1)",
        f"{unbatched['requests_per_s']:.1f} requests/s, p50 / p99 "
        f"{unbatched['p50_ms']:.2f} / {unbatched['p99_ms']:.2f} ms",
    )
    section.add(
        "CPU per query: in-process threads / unbatched / batched",
        f"{threaded['cpu_ms_per_query']:.2f} / {unbatched['cpu_ms_per_request']:.2f} / "
        f"{batched['cpu_ms_per_request']:.2f} ms",
    )
    errors = sum(server["errors"] for server in result["servers"])
    section.add("errors (incl. wrong answers)", f"{errors} ({pass_fail(errors == 0)})")
    section.add(
        "in-process Engine p50 / p99, one at a time",
        f"{result['engine_p50_ms']:.2f} / {result['engine_p99_ms']:.2f} ms "
        f"({result['engine_queries']} queries)",
    )
    section.params = {
        "server": "`mmsearch serve` on 127.0.0.1 in its own process"
        f" (start-up {result['server_startup_s']} s), batching defaults (32 queries, 5 ms)",
        "load": f"{clients} concurrent clients for {seconds:g} s per setup, GET /search k={result['k']}, "
        "each answer checked against the in-process engine (ids and order exact; scores to 1e-4)",
        "in-process": f"{clients} threads calling Engine.search_text one query each for {seconds:g} s, "
        "with torch's default threads and with the server's; the faster is the bar",
        "CPU": "user + system time of the server's processes (or of the in-process run) per answer: "
        "unlike requests/s it does not depend on how busy the machine is",
    }
    return section


def measure_distributed(encoder: Encoder, folder: Path, settings: Settings) -> report.Section:
    """Section 7: local Ray vs one process (benchmarks/ray_bench.py), if mmsearch[ray] is installed."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        section = report.Section("Distributed encoding: local Ray vs one process")
        section.notes = ["not measured: install mmsearch[ray]"]
        return section
    log(f"distributed: {folder} with one process, then with --ray local ({ray_bench.RAY_CPUS} CPUs)")
    return ray_bench.measure_ray(encoder, folder, settings.work)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every measurement and write the report; 1 if a hard check failed."""
    settings = parse_args(argv)
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    try:
        encoder = load_encoder(settings.model)
    except ModelLoadError as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return 2
    log(
        f"model {encoder.info.source} ({encoder.info.model_id}, dim {encoder.info.dim}); "
        f"GPU: {report.gpu_description()}{'; QUICK RUN' if settings.quick else ''}"
    )
    machine = report.machine_rows(encoder, REPO_DIR)
    settings.work.mkdir(parents=True, exist_ok=True)

    log(
        f"inputs: {settings.photos} photos of {settings.megapixels:g} MP and "
        f"{settings.reindex_files} small PNGs under {settings.work} (generated once, then reused)"
    )
    photos = synth.ensure_photos(
        settings.work, count=settings.photos, megapixels=settings.megapixels, processes=GENERATION_PROCESSES
    )
    log(f"inputs: photos {_generation(photos)}")
    small = synth.ensure_small_files(
        settings.work, count=settings.reindex_files, processes=GENERATION_PROCESSES
    )
    log(f"inputs: small files {_generation(small)}")
    photo_entries = entries_of(photos.folder)

    encoded = measure_encoder(encoder, photo_entries, settings)
    indexing = measure_indexing(encoder, photos, photo_entries, encoded.images_per_s, settings)
    reindex = measure_reindex(encoder, small, settings)
    queries = measure_queries(reindex.index_dir, small, settings)
    ann = measure_ann(encoder.info.dim, settings)
    http = measure_http_load(reindex.index_dir, settings)
    distributed = measure_distributed(encoder, photos.folder, settings)

    machine.append(("load average at end (1/5/15 min)", report.load_average()))
    command = shlex.join([shown(Path(sys.executable)), *sys.argv])
    text = report.render(
        machine=machine,
        sections=[encoded.section, indexing, reindex.section, queries, http, ann, distributed],
        command=command,
        quick=settings.quick,
        elapsed_s=time.perf_counter() - STARTED,
    )
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    previous = settings.out.read_text() if settings.out.exists() else ""
    settings.out.write_text(report.keep_marked_sections(previous, text))
    log(f"report written to {settings.out}")
    if reindex.encoded_on_rerun != 0:
        print(
            f"benchmark: the no-change re-index encoded {reindex.encoded_on_rerun} images (expected 0)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
