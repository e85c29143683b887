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
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from indexer.indexing.decode_pool import LoadedImage, encode_files, load_file
from indexer.indexing.pipeline import IndexOptions, index_folders
from indexer.media.content_id import content_id
from indexer.media.images import PreprocessConfig, decode_bytes
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
# Each photo indexed this many times per run (hard links): the bundled model indexes 300 photos in
# under a second, too short to time against a run's fixed costs; the ViT gets ~10 batches, so that
# filling and draining the pipeline once (a batch's decoding, a last batch on one stream) weigh little.
COPIES = {"bundled": 4, "vit-b-32": 2}
DECODE_CPU_FILES = 48  # files decoded one after another to measure CPU time per image
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
GENERATION_PROCESSES = 2
MS_PER_S = 1000.0
REAP_TIMEOUT_S = 10.0  # a stopped decode process exits within its pool's grace time

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
    input_px: int = 0
    photos: int = 0  # files indexed per pipeline run
    decoded_from: str = ""
    encoder_rates: dict[Encoding, list[float]] = field(default_factory=dict)  # images/s
    encode_cpu_ms: dict[Encoding, list[float]] = field(default_factory=dict)  # CPU ms per image
    decode_cpu_ms: list[float] = field(default_factory=list)
    decode_parts: dict[str, list[float]] = field(default_factory=dict)  # part -> CPU ms per image
    decode_rates: dict[bool, list[float]] = field(default_factory=dict)  # processes? -> images/s
    pipeline_rates: dict[Config, list[float]] = field(default_factory=dict)  # images/s, whole run
    streaming_rates: dict[Config, list[float]] = field(default_factory=dict)  # first to last batch
    pipeline_cpu_ms: dict[Config, list[float]] = field(default_factory=dict)  # CPU ms per image
    progress: dict[Config, list[list[tuple[float, int, float]]]] = field(default_factory=dict)  # raw
    calibration_s: list[float] = field(default_factory=list)
    skipped: dict[Config, int] = field(default_factory=dict)

    def encoder_best(self) -> float:
        """The fastest encoder-only rate (the encoding chosen in its favour)."""
        return max(statistics.median(r) for r in self.encoder_rates.values())


# -- measurements --------------------------------------------------------------------------------


def linked_copies(folder: Path, copies: int) -> Path:
    """The folder's files hard-linked `copies` times under one folder (the folder itself for 1)."""
    if copies == 1:
        return folder
    target = folder.with_name(f"{folder.name}-x{copies}")
    for source in sorted(folder.rglob("*.jpg")):
        for copy in range(copies):
            link = target / f"copy{copy}" / source.relative_to(folder)
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                os.link(source, link)
    return target


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


def decode_parts_ms(encoder: Encoder, entries: Sequence[FileEntry]) -> dict[str, float]:
    """CPU ms per image of load_file's parts: read + content id, decode, preprocess."""
    sample = entries[:DECODE_CPU_FILES]
    started = time.process_time()
    data = [Path(e.path).read_bytes() for e in sample]
    for blob in data:
        content_id(blob)
    read_s = time.process_time() - started
    size = encoder.preprocess_config.image_size
    started = time.process_time()
    decoded = [
        decode_bytes(blob, name=e.path, target_size=size) for blob, e in zip(data, sample, strict=True)
    ]
    decode_s = time.process_time() - started
    started = time.process_time()
    for image in decoded:
        encoder.preprocess(image.image)
    preprocess_s = time.process_time() - started
    return {
        name: MS_PER_S * seconds / len(sample)
        for name, seconds in (("read + hash", read_s), ("decode", decode_s), ("preprocess", preprocess_s))
    }


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
    # (seconds since the run started, files done, CPU seconds) when decoding starts (after the
    # scan), then after each batch: the streaming rate is read from the first point to the last,
    # leaving out the scan before and the last commit and calibration after, which a large folder
    # spreads over many more images. It includes filling and draining the pipeline once.
    progress: list[tuple[float, int, float]]
    texts_s: float  # encoding the calibration sentences: once per new index, not per image
    cpu_s: float  # CPU time of this process and its decode workers over the run

    @property
    def rate(self) -> float:
        return self.encoded / self.wall_s

    @property
    def streaming_rate(self) -> float:
        (first_s, first_done, _), (last_s, last_done, _) = self.progress[0], self.progress[-1]
        return (last_done - first_done) / (last_s - first_s) if last_s > first_s else float("nan")

    @property
    def streaming_cpu_ms(self) -> float:
        """CPU ms per image while streaming (all threads and workers)."""
        (_, first_done, first_cpu), (_, last_done, last_cpu) = self.progress[0], self.progress[-1]
        return (
            MS_PER_S * (last_cpu - first_cpu) / (last_done - first_done)
            if last_done > first_done
            else float("nan")
        )


def _cpu_s() -> float:
    """CPU seconds of this process's threads and of its children, running or exited."""
    exited = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + exited.ru_utime + exited.ru_stime + sum(map(_running_cpu_s, _child_pids()))


def _child_pids() -> list[int]:
    return [p.pid for p in multiprocessing.active_children() if p.pid is not None]


def _running_cpu_s(pid: int) -> float:
    """utime + stime of a running process, from /proc (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # Fields after the command name: state is the 1st, utime the 12th, stime the 13th.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _reap_workers() -> None:
    """Wait for the decode processes of a finished run (their pool stops them in the background)."""
    deadline = time.monotonic() + REAP_TIMEOUT_S
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.01)


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
    progress: list[tuple[float, int, float]] = []
    cpu_before = _cpu_s()
    started = time.perf_counter()

    def on_total(count: int) -> None:
        progress.append((time.perf_counter() - started, 0, _cpu_s()))

    def on_progress(done: int, skipped: int) -> None:
        progress.append((time.perf_counter() - started, progress[-1][1] + done, _cpu_s()))

    result = index_folders(
        [folder], index_dir, timed, options=options, on_total=on_total, on_progress=on_progress
    )
    wall_s = time.perf_counter() - started
    _reap_workers()  # a worker's CPU time is counted once it has exited and been waited for
    run = PipelineRun(
        result.encoded, len(result.skipped), wall_s, progress, timed.texts_s, _cpu_s() - cpu_before
    )
    shutil.rmtree(index_dir, ignore_errors=True)
    return run


def measure_round(
    model: ModelResult,
    encoder: Encoder,
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
        steps.append((f"encoder-only, {encoding.label}", _encoder_step(model, encoder, batches, encoding)))
    steps.append(("decode CPU time", _decode_cpu_step(model, encoder, entries)))
    for processes in (False, True):
        steps.append(
            (f"decode-only, processes={processes}", _decode_step(model, encoder, entries, processes))
        )
    for config in grid():
        steps.append((f"pipeline, {config.label}", _pipeline_step(model, encoder, folder, index_dir, config)))
    for label, step in reversed(steps) if reverse else steps:
        step()
        log(f"{model.name}: {label} done")


def _encoder_step(
    model: ModelResult, encoder: Encoder, batches: list[torch.Tensor], encoding: Encoding
) -> Callable[[], None]:
    def step() -> None:
        rate, cpu_ms = encoder_only(encoder, batches, encoding)
        model.encoder_rates.setdefault(encoding, []).append(rate)
        model.encode_cpu_ms.setdefault(encoding, []).append(cpu_ms)

    return step


def _decode_cpu_step(model: ModelResult, encoder: Encoder, entries: list[FileEntry]) -> Callable[[], None]:
    def step() -> None:
        model.decode_cpu_ms.append(decode_cpu_ms(encoder, entries))
        for part, ms in decode_parts_ms(encoder, entries).items():
            model.decode_parts.setdefault(part, []).append(ms)

    return step


def _decode_step(
    model: ModelResult, encoder: Encoder, entries: list[FileEntry], processes: bool
) -> Callable[[], None]:
    def step() -> None:
        rate = decode_only(encoder, entries, processes=processes)
        model.decode_rates.setdefault(processes, []).append(rate)

    return step


def _pipeline_step(
    model: ModelResult, encoder: Encoder, folder: Path, index_dir: Path, config: Config
) -> Callable[[], None]:
    def step() -> None:
        run = pipeline(encoder, folder, index_dir, config)
        model.pipeline_rates.setdefault(config, []).append(run.rate)
        model.streaming_rates.setdefault(config, []).append(run.streaming_rate)
        model.calibration_s.append(run.texts_s)
        model.pipeline_cpu_ms.setdefault(config, []).append(run.streaming_cpu_ms)
        model.progress.setdefault(config, []).append(run.progress)
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
    """(images/s the CPU time per image allows on these cores, the ratio that allows).

    An image costs e1 + d ms of CPU at best: encoding on one thread (the encoder's most efficient
    use of a core, no barrier waits) plus decoding. CORES cores finish at most CORES / (e1 + d)
    images a second in the pipeline, and CORES / e1 encoding alone: the ratio is at most
    e1 / (e1 + d), on any number of cores, as long as the encoder alone can use them all.
    """
    e1, d = med(model.encode_cpu_ms[Encoding(1, 1)]), med(model.decode_cpu_ms)
    return CORES * MS_PER_S / (e1 + d), e1 / (e1 + d)


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
            "CPU per image, decode's parts",
            ", ".join(f"{part} {med(ms):.1f} ms" for part, ms in model.decode_parts.items()),
        ),
        (
            "decode-only, threads / processes",
            f"{med(model.decode_rates[False]):,.1f} / "
            f"{med(model.decode_rates[True]):,.1f} images/s ({CORES} workers)",
        ),
        (
            "CPU bound: encode / (encode + decode)",
            f"**{best_ratio:.2f}**; {CORES} cores x 1000 / (encode + decode) = {best:,.1f} images/s",
        ),
    ]
    return ["| measurement | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def default_config() -> Config:
    """What `mmsearch index` runs with on this machine."""
    defaults = IndexOptions()
    threads = defaults.torch_threads or indexing_threads()
    return Config(
        defaults.decode_processes, defaults.workers or CORES, Encoding(defaults.encode_streams, threads)
    )


def best_config(model: ModelResult) -> Config:
    """The configuration with the fastest streaming rate."""
    return max(grid(), key=lambda c: med(model.streaming_rates[c]))


def pipeline_table(models: Sequence[ModelResult]) -> list[str]:
    """One row per configuration: streaming and whole-run images/s over encoder-only, per model."""
    header = "| pipeline configuration |" + "".join(
        f" {m.name}: streaming images/s (ratio) | whole run | CPU per image |" for m in models
    )
    lines = [header, "|---|" + "---|---|---|" * len(models)]
    for config in grid():
        cells = []
        for m in models:
            streaming, whole = med(m.streaming_rates[config]), med(m.pipeline_rates[config])
            mark = "**" if config == best_config(m) else ""
            cells.append(f" {mark}{streaming:,.1f} ({streaming / m.encoder_best():.3f}){mark} |")
            cells.append(f" {whole:,.1f} ({whole / m.encoder_best():.3f}) |")
            cells.append(f" {med(m.pipeline_cpu_ms[config]):.1f} ms |")
        name = config.label + (" (default)" if config == default_config() else "")
        lines.append(f"| {name} |" + "".join(cells))
    return lines


def arithmetic(model: ModelResult) -> str:
    """The CPU-time argument for the model's ratio, in the measured figures."""
    e1, d = med(model.encode_cpu_ms[Encoding(1, 1)]), med(model.decode_cpu_ms)
    rate, ratio = bound(model)
    parts = ", ".join(f"{part} {med(ms):.1f} ms" for part, ms in model.decode_parts.items())
    return (
        f"{model.name}: one image costs {e1:.1f} ms of CPU to encode (one thread: the encoder's "
        f"most efficient use of a core) and {d:.1f} ms to decode ({parts}). Encoding alone, "
        f"{CORES} cores do at most {CORES} x 1000 / {e1:.1f} = {CORES * MS_PER_S / e1:,.1f} images/s; "
        f"indexing, at most {CORES} x 1000 / ({e1:.1f} + {d:.1f}) = {rate:,.1f} images/s: a ratio of "
        f"at most **{ratio:.2f}**, on any number of cores the encoder alone could use. "
        f"{RATIO_TARGET} needs decoding in under {e1 * (1 / RATIO_TARGET - 1):.1f} ms per image "
        f"(e1 / 9)."
    )


def render(
    models: Sequence[ModelResult], command: str, header: list[tuple[str, str]], params: dict[str, str]
) -> str:
    """The section as Markdown, between its markers."""
    lines = [BEGIN, "## Indexing with a real-sized model: pipeline / encoder-only, threads vs processes", ""]
    lines += [f"Command: `{command}`", ""]
    lines += ["| run | |", "|---|---|", *(f"| {k} | {v} |" for k, v in header), ""]
    for m in models:
        best = best_config(m)
        streaming = med(m.streaming_rates[best]) / m.encoder_best()
        default = med(m.streaming_rates[default_config()]) / m.encoder_best()
        whole = med(m.pipeline_rates[best]) / m.encoder_best()
        target = ""
        if m.name.startswith("ViT"):
            verdict = "PASS" if streaming >= RATIO_TARGET else "FAIL"
            target = f" (target >= {RATIO_TARGET}: **{verdict}**)"
        lines += [
            f"- {m.name}: pipeline / encoder-only **{streaming:.3f}**{target} at best ({best.label}); "
            f"{default:.3f} with the defaults; {whole:.3f} over the whole run of {m.photos} files "
            f"(start-up and calibration included); CPU time per image bounds it at {bound(m)[1]:.2f}.",
        ]
    lines += [""]
    for m in models:
        lines += [f"### {m.name}", "", *model_rows(m), ""]
    lines += ["### Pipeline configurations", ""]
    lines += pipeline_table(models)
    calibration = "; ".join(f"{m.name} {med(m.calibration_s):.1f} s" for m in models)
    lines += [
        "",
        "Ratio = pipeline images/s over the fastest encoder-only rate of the same model. Streaming: "
        "from the start of decoding (after the scan) to the last batch encoded, the rate a large "
        "folder is indexed at (filling and draining the pipeline once included); whole run: every "
        "file over index_folders' wall time, which on a few hundred files also counts the scan and "
        "the end (last commit, and the calibration sentences every new index encodes once: median "
        f"{calibration} per run). The best configuration by streaming rate is in bold. CPU per "
        "image: CPU time of the indexer and its decode processes while streaming, per image; "
        "unlike the rates it hardly depends on how much of the shared machine a run was given, "
        f"and {CORES} x 1000 / it is what the configuration reaches when it keeps every core busy.",
        "",
        "### Why (CPU time per image)",
        "",
        *(line for m in models for line in (arithmetic(m), "")),
        "Parameters:",
        "",
        *(f"- {k}: {v}" for k, v in params.items()),
        END,
    ]
    return "\n".join(lines) + "\n"


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
    parser.add_argument("--from-json", type=Path, help="write the section from a saved run's figures")
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


def measure(settings: argparse.Namespace) -> dict[str, Any]:
    """Every model and configuration: the figures, the run's header rows and its parameters."""
    started_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    uptime_start = uptime()
    log(f"uptime at start: {uptime_start}")
    photos = synth.ensure_photos(
        settings.work, count=settings.photos, megapixels=settings.megapixels, processes=GENERATION_PROCESSES
    )
    for path in photos.files:  # into the page cache: the figures measure CPU work, not the disk
        path.read_bytes()
    builders: dict[str, Callable[[], tuple[str, Encoder]]] = {
        "bundled": lambda: ("bundled 64-px model", load_encoder(None)),
        "vit-b-32": lambda: ("ViT-B/32-sized model", VitB32Encoder()),
    }
    models = []
    for key in settings.models.split(","):
        name, encoder = builders[key]()
        folder = linked_copies(photos.folder, COPIES[key])
        entries = sorted(scan_folder(folder), key=lambda e: e.path)
        model = ModelResult(name, encoder.preprocess_config.image_size, len(entries))
        batches, model.decoded_from = pixel_batches(encoder, entries)
        log(f"{name}: {len(batches)} batches of preprocessed photos ({model.decoded_from})")
        for number in range(settings.rounds):
            measure_round(
                model,
                encoder,
                batches,
                entries,
                folder,
                index_dir=settings.work / "index-ingest",
                reverse=number % 2 == 1,
            )
        models.append(model)
    width, height = synth.photo_dimensions(settings.megapixels)
    folder = photos.folder.relative_to(REPO_DIR) if photos.folder.is_relative_to(REPO_DIR) else photos.folder
    header = [
        ("date", started_at),
        ("CPU", f"{report.cpu_model()}, {CORES} cores usable"),
        ("`uptime` at start", uptime_start),
        ("`uptime` at end", uptime()),
        ("torch", f"{torch.__version__}"),
        ("mmsearch commit", report.git_revision(REPO_DIR)),
    ]
    params = {
        "photos": f"{len(photos.files)} JPEGs, {width}x{height} ({settings.megapixels:g} MP), quality "
        f"{synth.JPEG_QUALITY}, {photos.total_bytes / len(photos.files) / 1e6:.2f} MB mean, with the "
        f"{synth.CAMERA_PREVIEW_SIZE[0]}x{synth.CAMERA_PREVIEW_SIZE[1]} EXIF preview cameras embed, "
        f"in {folder}; each pipeline run of the bundled model indexes every photo "
        f"{COPIES['bundled']} times, of the ViT {COPIES['vit-b-32']} times (hard links in as many "
        "folders: the same bytes, decoded and encoded anew), so that runs last long enough to time",
        "ViT-B/32-sized model": "benchmarks/vit_b32.py: open_clip ViT-B-32's towers rebuilt in plain "
        "torch (random weights, 87.8 M image-tower weights as open_clip's), open_clip's preprocessing "
        "(224 px, bicubic, centre crop, CLIP mean/std); the camera preview (160x120) is smaller than "
        "224 px, so every photo is decoded with JPEG draft mode (1/8 DCT scale)",
        "encoder-only": f"{ENCODER_BATCHES} batches of {BATCH_SIZE} real preprocessed photos, one warm-up "
        "call per stream excluded; CPU time = time.process_time() over the same calls",
        "decode CPU time": f"load_file on {DECODE_CPU_FILES} photos one after another on one thread",
        "decode-only": f"encode_files with an encoder that returns zeros, {CORES} workers",
        "pipeline": "index_folders into a fresh index (scan, decode, encode, commit, calibration), "
        f"batch size {BATCH_SIZE}",
        "rounds": f"{settings.rounds}, interleaved (every other round in reverse order); medians",
        "page cache": "every photo read once before the runs",
    }
    return {"command": settings.command, "header": header, "params": params, "models": models}


def _to_json(run: dict[str, Any]) -> str:
    """The figures of a run, keyed by labels, so the section can be written again without rerunning."""
    models = [
        {
            key: {_label(k): v for k, v in value.items()} if isinstance(value, dict) else value
            for key, value in vars(model).items()
        }
        for model in run["models"]
    ]
    return json.dumps({**run, "models": models}, indent=1)


def _label(key: object) -> str:
    return key.label if isinstance(key, Encoding | Config) else str(key)


def _from_json(text: str) -> dict[str, Any]:
    run = json.loads(text)
    keys: dict[str, object] = {
        **{e.label: e for e in encodings()},
        **{c.label: c for c in grid()},
        "True": True,
        "False": False,
    }
    run["models"] = [
        ModelResult(
            **{
                name: {keys.get(k, k): v for k, v in value.items()} if isinstance(value, dict) else value
                for name, value in fields.items()
            }
        )
        for fields in run["models"]
    ]
    run["header"] = [tuple(row) for row in run["header"]]
    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Measure (or read a saved run with --from-json), then write the section."""
    settings = parse_args(argv)
    if settings.from_json:
        run = _from_json(settings.from_json.read_text())
    else:
        run = measure(settings)
        saved = settings.work / "ingest-results.json"
        saved.write_text(_to_json(run))
        log(f"figures saved to {saved} (--from-json writes the section again from them)")
    section = render(run["models"], run["command"], run["header"], run["params"])
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    report.write_marked_section(settings.out, section, BEGIN, END)
    log(f"section written to {settings.out}")
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
