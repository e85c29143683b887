"""End-to-end indexing against encoder-only throughput, for the bundled model and a ViT-B/32-sized one.

    .venv/bin/python benchmarks/ingest.py            # 300 12-MP photos -> a section of benchmarks/RESULTS.md
    .venv/bin/python benchmarks/ingest.py --quick    # harness check -> work/RESULTS-ingest-quick.md

For each model: encoder-only images/s at 1 and 2 torch threads; the CPU time one image costs to
decode (read, hash, decode, preprocess, own text) and to encode; decode-only images/s with
threads and with processes; and `index_folders` over the same photos with decoding in threads
or in processes (--decode-processes), 1 or 2 decode workers, 1 or 2 torch threads. Every
configuration runs --rounds times, interleaved (each round in the reverse order of the last),
and the median is reported: the machine is shared, and a quiet minute must not decide a
comparison. The section is written between markers into the results file, which
benchmarks/run.py keeps when it rewrites the rest.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from indexer.indexing.decode_pool import LoadedImage, encode_files, load_file
from indexer.indexing.pipeline import IndexOptions, index_folders
from indexer.media.images import PreprocessConfig
from indexer.media.scan import FileEntry, scan_folder
from indexer.models.devices import indexing_threads, torch_threads
from indexer.models.encoder import Encoder, EncoderInfo, load_encoder

# isort: split
# Helper modules beside this script (benchmarks/ is on sys.path when run as benchmarks/ingest.py).
import report
import synth
from vit_b32 import VitB32Encoder

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
BEGIN, END = "<!-- bench-ingest:begin -->", "<!-- bench-ingest:end -->"

RATIO_TARGET = 0.90  # issue 11: end-to-end over encoder-only, with the ViT-B/32-sized model
FULL = {"photos": 300, "megapixels": 12.0, "rounds": 3}
QUICK = {"photos": 64, "megapixels": 2.0, "rounds": 1}
BATCH_SIZE = 64  # what `mmsearch index` uses (IndexOptions default)
ENCODER_BATCHES = 4  # batches of real preprocessed photos timed encoder-only
DECODE_CPU_FILES = 48  # files decoded one after another to measure CPU time per image
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
GENERATION_PROCESSES = 2
MS_PER_S = 1000.0

STARTED = time.perf_counter()


def log(message: str) -> None:
    """One progress line on stdout, stamped with seconds since the run started."""
    print(f"[{time.perf_counter() - STARTED:7.1f}s] {message}", flush=True)


@dataclass(frozen=True)
class Encoding:
    """How the encoder uses the cores: batches encoded at once x torch intra-op threads each."""

    streams: int
    threads: int

    @property
    def label(self) -> str:
        return f"{self.streams} x {self.threads} torch thread(s)"


def encodings() -> list[Encoding]:
    """One thread; every core for one batch; one batch per core."""
    return list(dict.fromkeys([Encoding(1, 1), Encoding(1, CORES), Encoding(CORES, 1)]))


@dataclass(frozen=True)
class Config:
    """One way to run the pipeline: decode workers (threads or processes), and the encoding."""

    processes: bool
    workers: int
    encoding: Encoding

    @property
    def label(self) -> str:
        kind = "processes" if self.processes else "threads"
        return f"{self.workers} decode {kind}; encode {self.encoding.label}"


def grid() -> list[Config]:
    """Every split of the cores worth measuring: decoders (threads or processes) x encodings."""
    return [
        Config(processes, workers, encoding)
        for processes in (False, True)
        for workers in sorted({1, CORES})
        for encoding in encodings()
    ]


class StageTimer:
    """An Encoder that adds up the wall time spent encoding images and texts."""

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.info: EncoderInfo = inner.info
        self.preprocess_config: PreprocessConfig = inner.preprocess_config
        self.pixels_s = 0.0
        self.texts_s = 0.0

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Delegates (runs in the decode workers)."""
        return self.inner.preprocess(image)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Delegates and times (the calibration probes of a new index)."""
        started = time.perf_counter()
        vectors = self.inner.encode_texts(texts)
        self.texts_s += time.perf_counter() - started
        return vectors

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Delegates and times."""
        started = time.perf_counter()
        vectors = self.inner.encode_pixels(pixels)
        self.pixels_s += time.perf_counter() - started
        return vectors


class NoEncoding(StageTimer):
    """Decoding only: the pipeline's pools and look-ahead, with an encoder that returns zeros."""

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """(n, dim) zeros: nothing is encoded."""
        return np.zeros((len(pixels), self.info.dim), dtype=np.float32)


@dataclass
class ModelResult:
    """Every figure measured for one model."""

    name: str
    encoder: Encoder
    input_px: int = 0
    decoded_from: str = ""
    encoder_rates: dict[Encoding, list[float]] = field(default_factory=dict)  # images/s
    encode_cpu_ms: dict[Encoding, list[float]] = field(default_factory=dict)  # CPU ms per image
    decode_cpu_ms: list[float] = field(default_factory=list)
    decode_rates: dict[bool, list[float]] = field(default_factory=dict)  # processes? -> images/s
    pipeline_rates: dict[Config, list[float]] = field(default_factory=dict)  # images/s, whole run
    steady_rates: dict[Config, list[float]] = field(default_factory=dict)  # without calibration
    calibration_s: list[float] = field(default_factory=list)
    skipped: dict[Config, int] = field(default_factory=dict)

    def encoder_best(self) -> float:
        """The fastest encoder-only rate (the encoding chosen in its favour)."""
        return max(statistics.median(r) for r in self.encoder_rates.values())


# -- measurements --------------------------------------------------------------------------------


def pixel_batches(encoder: Encoder, entries: Sequence[FileEntry]) -> tuple[list[torch.Tensor], str]:
    """The first ENCODER_BATCHES batches of photos, preprocessed as the pipeline does."""
    sample = entries[: BATCH_SIZE * ENCODER_BATCHES]
    with ThreadPoolExecutor(CORES) as pool:
        loaded = [r for r in pool.map(lambda e: load_file(e, encoder), sample) if isinstance(r, LoadedImage)]
    pixels = [r.pixels for r in loaded]
    batches = [torch.stack(pixels[i : i + BATCH_SIZE]) for i in range(0, len(pixels), BATCH_SIZE)]
    return batches, loaded[0].decoded_from if loaded else "nothing"


def encoder_only(encoder: Encoder, batches: list[torch.Tensor], encoding: Encoding) -> tuple[float, float]:
    """(images/s, CPU ms per image) of encode_pixels alone, batches spread over encoding.streams."""
    images = sum(len(b) for b in batches)
    with torch_threads(encoding.threads), ThreadPoolExecutor(encoding.streams) as streams:
        list(streams.map(encoder.encode_pixels, batches[: encoding.streams]))  # allocation, kernels
        wall, cpu = time.perf_counter(), time.process_time()
        list(streams.map(encoder.encode_pixels, batches))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return images / wall, MS_PER_S * cpu / images


def decode_cpu_ms(encoder: Encoder, entries: Sequence[FileEntry]) -> float:
    """CPU time of load_file per image, one file after another on one thread."""
    sample = entries[:DECODE_CPU_FILES]
    started = time.process_time()
    for entry in sample:
        load_file(entry, encoder)
    return MS_PER_S * (time.process_time() - started) / len(sample)


def decode_only(encoder: Encoder, entries: Sequence[FileEntry], *, processes: bool) -> float:
    """images/s of the pipeline's decode stage alone (its pool and look-ahead, nothing encoded)."""
    started = time.perf_counter()
    decoded = sum(
        len(batch.images)
        for batch in encode_files(
            entries, NoEncoding(encoder), batch_size=BATCH_SIZE, workers=CORES, decode_processes=processes
        )
    )
    return decoded / (time.perf_counter() - started)


@dataclass(frozen=True)
class PipelineRun:
    """One index_folders run into a fresh index."""

    encoded: int
    skipped: int
    wall_s: float
    texts_s: float  # encoding the calibration probes: once per new index, not per image

    @property
    def rate(self) -> float:
        return self.encoded / self.wall_s

    @property
    def steady_rate(self) -> float:
        return self.encoded / (self.wall_s - self.texts_s)


def pipeline(encoder: Encoder, folder: Path, index_dir: Path, config: Config) -> PipelineRun:
    """index_folders over the photos into a fresh index, with one configuration."""
    shutil.rmtree(index_dir, ignore_errors=True)
    timed = StageTimer(encoder)
    options = IndexOptions(
        batch_size=BATCH_SIZE,
        workers=config.workers,
        torch_threads=config.encoding.threads,
        encode_streams=config.encoding.streams,
        decode_processes=config.processes,
    )
    started = time.perf_counter()
    result = index_folders([folder], index_dir, timed, options=options)
    run = PipelineRun(result.encoded, len(result.skipped), time.perf_counter() - started, timed.texts_s)
    shutil.rmtree(index_dir, ignore_errors=True)
    return run


def measure_round(
    model: ModelResult,
    batches: list[torch.Tensor],
    entries: list[FileEntry],
    folder: Path,
    *,
    index_dir: Path,
    reverse: bool,
) -> None:
    """One round of every measurement of a model, in forward or reverse order."""
    steps: list[tuple[str, Callable[[], None]]] = []
    for encoding in encodings():
        steps.append((f"encoder-only, {encoding.label}", _encoder_step(model, batches, encoding)))
    steps.append(("decode CPU time", _decode_cpu_step(model, entries)))
    for processes in (False, True):
        steps.append((f"decode-only, processes={processes}", _decode_step(model, entries, processes)))
    for config in grid():
        steps.append((f"pipeline, {config.label}", _pipeline_step(model, folder, index_dir, config)))
    for label, step in reversed(steps) if reverse else steps:
        step()
        log(f"{model.name}: {label} done")


def _encoder_step(model: ModelResult, batches: list[torch.Tensor], encoding: Encoding) -> Callable[[], None]:
    def step() -> None:
        rate, cpu_ms = encoder_only(model.encoder, batches, encoding)
        model.encoder_rates.setdefault(encoding, []).append(rate)
        model.encode_cpu_ms.setdefault(encoding, []).append(cpu_ms)

    return step


def _decode_cpu_step(model: ModelResult, entries: list[FileEntry]) -> Callable[[], None]:
    def step() -> None:
        model.decode_cpu_ms.append(decode_cpu_ms(model.encoder, entries))

    return step


def _decode_step(model: ModelResult, entries: list[FileEntry], processes: bool) -> Callable[[], None]:
    def step() -> None:
        rate = decode_only(model.encoder, entries, processes=processes)
        model.decode_rates.setdefault(processes, []).append(rate)

    return step


def _pipeline_step(model: ModelResult, folder: Path, index_dir: Path, config: Config) -> Callable[[], None]:
    def step() -> None:
        run = pipeline(model.encoder, folder, index_dir, config)
        model.pipeline_rates.setdefault(config, []).append(run.rate)
        model.steady_rates.setdefault(config, []).append(run.steady_rate)
        model.calibration_s.append(run.texts_s)
        model.skipped[config] = model.skipped.get(config, 0) + run.skipped

    return step


# -- the report ----------------------------------------------------------------------------------


def med(values: Sequence[float]) -> float:
    """Median (NaN for no values)."""
    return statistics.median(values) if values else float("nan")


def uptime() -> str:
    """`uptime` as printed: the machine is shared, and its load decides how much of it we got."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"load average {report.load_average()}"


def bound(model: ModelResult) -> tuple[float, float]:
    """(best pipeline images/s the CPU time allows on these cores, that over encoder-only).

    Every image costs e1 + d ms of CPU (encoding at one thread, its most efficient, plus
    decoding); CORES cores cannot finish more than CORES / (e1 + d) images a second.
    """
    per_image_s = (med(model.encode_cpu_ms[Encoding(1, 1)]) + med(model.decode_cpu_ms)) / MS_PER_S
    best = min(CORES / per_image_s, model.encoder_best())
    return best, best / model.encoder_best()


def model_rows(model: ModelResult) -> list[str]:
    """The per-model table: encoder-only, CPU per image, decode-only, and the bound."""
    e1, d = med(model.encode_cpu_ms[Encoding(1, 1)]), med(model.decode_cpu_ms)
    best, best_ratio = bound(model)
    rows = [
        ("model input", f"{model.input_px} px; photos decoded from: {model.decoded_from}"),
        *(
            (
                f"encoder-only, {encoding.label}",
                f"{med(model.encoder_rates[encoding]):,.1f} images/s; "
                f"{med(model.encode_cpu_ms[encoding]):.1f} ms CPU per image",
            )
            for encoding in encodings()
        ),
        (
            "CPU per image: encode (1 thread) / decode",
            f"{e1:.1f} ms / {d:.1f} ms (decode: read, hash, decode, preprocess, own text)",
        ),
        (
            "decode-only, threads / processes",
            f"{med(model.decode_rates[False]):,.1f} / "
            f"{med(model.decode_rates[True]):,.1f} images/s ({CORES} workers)",
        ),
        (
            f"CPU bound on {CORES} cores: {CORES} / (encode + decode)",
            f"{best:,.1f} images/s = **{best_ratio:.2f}** of encoder-only",
        ),
    ]
    return ["| measurement | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def pipeline_table(models: Sequence[ModelResult]) -> list[str]:
    """One row per configuration: images/s and the ratio to encoder-only, for each model."""
    header = "| pipeline configuration |" + "".join(
        f" {m.name}: images/s (ratio) | without calibration |" for m in models
    )
    lines = [header, "|---|" + "---|---|" * len(models)]
    defaults = IndexOptions()
    default = Config(defaults.decode_processes, CORES, Encoding(defaults.encode_streams, indexing_threads()))
    for config in grid():
        cells = []
        for m in models:
            rate, steady = med(m.pipeline_rates[config]), med(m.steady_rates[config])
            best = max(grid(), key=lambda c, m=m: med(m.steady_rates[c]))
            mark = "**" if config == best else ""
            cells.append(f" {rate:,.1f} ({rate / m.encoder_best():.3f}) |")
            cells.append(f" {mark}{steady:,.1f} ({steady / m.encoder_best():.3f}){mark} |")
        name = config.label + (" (the default)" if config == default else "")
        lines.append(f"| {name} |" + "".join(cells))
    return lines


def render(models: Sequence[ModelResult], settings: argparse.Namespace, header: list[tuple[str, str]]) -> str:
    """The section as Markdown, between its markers."""
    vit = next(m for m in models if m.name.startswith("ViT"))
    best_vit = max(grid(), key=lambda c: med(vit.steady_rates[c]))
    vit_ratio = med(vit.steady_rates[best_vit]) / vit.encoder_best()
    lines = [BEGIN, "## Indexing with a real-sized model: pipeline / encoder-only, threads vs processes", ""]
    lines += [f"Command: `{settings.command}`", ""]
    lines += ["| run | |", "|---|---|", *(f"| {k} | {v} |" for k, v in header), ""]
    verdict = "PASS" if vit_ratio >= RATIO_TARGET else "FAIL"
    lines += [
        f"ViT-B/32-sized model, best configuration ({best_vit.label}): "
        f"**{vit_ratio:.3f}** of encoder-only (target >= {RATIO_TARGET}: **{verdict}**).",
        "",
    ]
    for m in models:
        lines += [f"### {m.name}", "", *model_rows(m), ""]
    lines += ["### Pipeline configurations", ""]
    lines += pipeline_table(models)
    lines += [
        "",
        "Ratio = pipeline images/s over the faster encoder-only rate of the same model. 'Without "
        "calibration' leaves out the one-off encoding of the calibration sentences a new index "
        f"gets (ViT-B/32 text tower: median {med(vit.calibration_s):.1f} s per run); the best "
        "configuration by that figure is in bold.",
        "",
        "Parameters:",
        "",
        *(f"- {k}: {v}" for k, v in settings.params.items()),
        END,
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace the marked section of the results file (or append it)."""
    text = path.read_text() if path.exists() else "# mmsearch benchmark results\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.strip() + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


# -- the run -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Flags; --quick scales everything down."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small photos, one round (harness check)")
    parser.add_argument("--photos", type=int, help=f"photos to index (default {FULL['photos']})")
    parser.add_argument("--megapixels", type=float, help=f"photo size (default {FULL['megapixels']:g})")
    parser.add_argument("--rounds", type=int, help=f"repeats of every measurement (default {FULL['rounds']})")
    parser.add_argument("--models", default="bundled,vit-b-32", help="comma-separated: bundled, vit-b-32")
    parser.add_argument("--work", type=Path, default=BENCH_DIR / "work")
    parser.add_argument("--out", type=Path, help="results file (default benchmarks/RESULTS.md)")
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    args.photos = args.photos or int(scale["photos"])
    args.megapixels = args.megapixels or float(scale["megapixels"])
    args.rounds = args.rounds or int(scale["rounds"])
    args.out = args.out or (
        BENCH_DIR / "work" / "RESULTS-ingest-quick.md" if args.quick else BENCH_DIR / "RESULTS.md"
    )
    args.command = " ".join([Path(sys.executable).name, *sys.argv])
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every model and configuration, then write the section."""
    settings = parse_args(argv)
    started_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    uptime_start = uptime()
    log(f"uptime at start: {uptime_start}")
    photos = synth.ensure_photos(
        settings.work, count=settings.photos, megapixels=settings.megapixels, processes=GENERATION_PROCESSES
    )
    entries = sorted(scan_folder(photos.folder), key=lambda e: e.path)
    for path in photos.files:  # into the page cache: the figures measure CPU work, not the disk
        path.read_bytes()
    builders = {
        "bundled": lambda: ("bundled 64-px model", load_encoder(None)),
        "vit-b-32": lambda: ("ViT-B/32-sized model", VitB32Encoder()),
    }
    models = []
    for key in settings.models.split(","):
        name, encoder = builders[key]()
        model = ModelResult(name, encoder, encoder.preprocess_config.image_size)
        batches, model.decoded_from = pixel_batches(encoder, entries)
        log(f"{name}: {len(batches)} batches of preprocessed photos ({model.decoded_from})")
        for number in range(settings.rounds):
            measure_round(
                model,
                batches,
                entries,
                photos.folder,
                index_dir=settings.work / "index-ingest",
                reverse=number % 2 == 1,
            )
        models.append(model)
    width, height = synth.photo_dimensions(settings.megapixels)
    header = [
        ("date", started_at),
        ("CPU", f"{report.cpu_model()}, {CORES} cores usable"),
        ("`uptime` at start", uptime_start),
        ("`uptime` at end", uptime()),
        ("torch", f"{torch.__version__}"),
        ("mmsearch commit", report.git_revision(REPO_DIR)),
    ]
    settings.params = {
        "photos": f"{len(entries)} JPEGs, {width}x{height} ({settings.megapixels:g} MP), quality "
        f"{synth.JPEG_QUALITY}, {photos.total_bytes / len(photos.files) / 1e6:.2f} MB mean, with the "
        f"{synth.CAMERA_PREVIEW_SIZE[0]}x{synth.CAMERA_PREVIEW_SIZE[1]} EXIF preview cameras embed, in "
        f"{photos.folder.relative_to(REPO_DIR) if photos.folder.is_relative_to(REPO_DIR) else photos.folder}",
        "ViT-B/32-sized model": "benchmarks/vit_b32.py: open_clip ViT-B-32's towers rebuilt in plain torch "
        "(random weights, 87.8 M image-tower weights as open_clip's), open_clip's preprocessing (224 px, "
        "bicubic, centre crop, CLIP mean/std); the camera preview (160x120) is smaller than 224 px, so "
        "every photo is decoded with JPEG draft mode (1/8 DCT scale)",
        "encoder-only": f"{ENCODER_BATCHES} batches of {BATCH_SIZE} real preprocessed photos, one warm-up "
        "call excluded; CPU time = time.process_time() over the same calls",
        "decode CPU time": f"load_file on {DECODE_CPU_FILES} photos one after another on one thread",
        "decode-only": f"encode_files with an encoder that returns zeros, {CORES} workers",
        "pipeline": f"index_folders into a fresh index (scan, decode, encode, commit, calibration), "
        f"batch size {BATCH_SIZE}",
        "rounds": f"{settings.rounds}, interleaved (every other round in reverse order); medians",
        "page cache": "every photo read once before the runs",
    }
    section = render(models, settings, header)
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    write_section(settings.out, section)
    log(f"section written to {settings.out}")
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
