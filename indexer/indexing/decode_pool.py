"""Load and encode stages: decode files in worker threads while the model encodes earlier batches.

Decoding (Pillow releases the GIL) overlaps encoding through a bounded look-ahead queue, so
memory stays flat however large the folder is. Bad files are skipped and reported, never fatal,
and so is a file whose decoding outlasts the time limit (DecodePool).
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from indexer.errors import warn_once
from indexer.indexing.file_loading import (  # re-exported: their home before file_loading.py
    STOPPED_REASON as STOPPED_REASON,
)
from indexer.indexing.file_loading import EncodedBatch as EncodedBatch
from indexer.indexing.file_loading import FileRequest as FileRequest
from indexer.indexing.file_loading import LoadedImage as LoadedImage
from indexer.indexing.file_loading import LoadResult as LoadResult
from indexer.indexing.file_loading import Skipped as Skipped
from indexer.indexing.file_loading import load_file as load_file
from indexer.media import caption_files
from indexer.media.images import (
    DECODE_PROCESSES_FLAG,
    DECODE_TIMEOUT_FLAG,
    DEFAULT_DECODE_PROCESSES,
    DEFAULT_DECODE_TIMEOUT_S,
    DEFAULT_MAX_MEGAPIXELS,
)
from indexer.media.scan import FileEntry

if TYPE_CHECKING:

    from indexer.models.encoder import Encoder

# Batches decoded ahead of the encoder: enough to hide decode latency, bounded for memory.
LOOKAHEAD_BATCHES = 2
# Decoders given up on that may still run at once, each holding a file and a decoder's memory;
# past this many the pool runs short-handed until one of them returns, instead of growing.
MAX_ABANDONED_DECODERS = 4
# How often a wait for a file that has not started decoding yet looks at the pool again.
START_POLL_S = 0.05
@dataclass(eq=False)
class _Job:
    """One file's load, and what a consumer needs to wait for it or to give up on it."""

    entry: FileEntry
    load: Callable[[], LoadResult]
    done: threading.Event = field(default_factory=threading.Event)
    started_at: float | None = None  # time.monotonic() when a thread took it
    outcome: LoadResult | None = None
    error: BaseException | None = None  # a bug in load: re-raised to the consumer
    abandoned: bool = False  # the consumer stopped waiting; its outcome is dropped


class DecodePool:
    """Daemon threads that load files, giving up on any file that takes longer than timeout_s.

    Python cannot stop a thread, so the pool stops *waiting*: the file is reported as skipped,
    its thread is left to finish in the background (its result dropped) and a new thread takes
    its place, with at most MAX_ABANDONED_DECODERS left running at once. Past that the pool runs
    short-handed until one returns; if no thread is left for timeout_s, files not yet started
    are reported as not decoded, so the run still ends. The threads are daemons: a decoder that
    never returns cannot keep the process alive after the run.
    """

    def __init__(self, workers: int, *, timeout_s: float) -> None:
        if workers < 1 or not timeout_s > 0:
            raise ValueError(f"need workers >= 1 and timeout_s > 0, got {workers}, {timeout_s}")
        self._workers = workers
        self._timeout_s = timeout_s
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._live = 0  # threads taking jobs
        self._abandoned = 0  # threads still running a job the pool gave up on
        self._idle_since: float | None = None  # when the last live thread was given up on
        self._closed = False
        with self._lock:
            for _ in range(workers):
                self._start_thread()

    def submit(self, entry: FileEntry, load: Callable[[], LoadResult]) -> _Job:
        """Queue a file's load; pass the job to result() for its outcome."""
        job = _Job(entry, load)
        self._jobs.put(job)
        return job

    def result(self, job: _Job) -> LoadResult:
        """The job's outcome, or a Skipped once it has run for timeout_s (or can never start)."""
        while not job.done.wait(self._wait_s(job)):
            with self._lock:
                if job.done.is_set():
                    break
                skipped = self._give_up_if_due(job)
            if skipped is not None:
                return skipped
        if job.error is not None:
            raise job.error
        assert job.outcome is not None  # done is set only after one of the two
        return job.outcome

    def close(self) -> None:
        """Let every thread end once its current job is done; queued jobs are answered, not run."""
        with self._lock:
            self._closed = True
            threads = self._live + self._abandoned
        for _ in range(threads):
            self._jobs.put(None)

    def _wait_s(self, job: _Job) -> float:
        started = job.started_at
        if started is None:
            return START_POLL_S
        return max(0.0, started + self._timeout_s - time.monotonic())

    def _give_up_if_due(self, job: _Job) -> Skipped | None:
        """Abandon a job past its time limit, or one no thread can start; holds the lock."""
        now = time.monotonic()
        if job.started_at is not None and now - job.started_at >= self._timeout_s:
            self._abandon(job, now)
            reason = f"decoding took longer than {DECODE_TIMEOUT_FLAG} {self._timeout_s:g} s"
            # retry: a busy machine can be the cause; the next run (maybe with a longer limit)
            # tries again rather than remembering the file as bad.
            return Skipped(job.entry.path, reason, retry=True)
        idle = self._idle_since
        if job.started_at is None and idle is not None and now - idle >= self._timeout_s:
            job.abandoned = True  # a thread that frees up later must not start it
            reason = (
                f"not decoded: {self._abandoned} decoders are still busy with files "
                f"that took longer than {DECODE_TIMEOUT_FLAG} {self._timeout_s:g} s"
            )
            return Skipped(job.entry.path, reason, retry=True)
        return None

    def _abandon(self, job: _Job, now: float) -> None:
        job.abandoned = True
        self._live -= 1
        self._abandoned += 1
        if self._abandoned <= MAX_ABANDONED_DECODERS:
            self._start_thread()
        elif self._live == 0:
            self._idle_since = now

    def _start_thread(self) -> None:
        """One more thread taking jobs; the caller holds the lock."""
        self._live += 1
        self._idle_since = None
        threading.Thread(target=self._work, name="decode", daemon=True).start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            with self._lock:
                if job.abandoned:
                    continue
                if self._closed:  # an encoder thread may still wait for it: answer, do not run it
                    job.outcome = Skipped(job.entry.path, STOPPED_REASON, retry=True)
                    job.done.set()
                    continue
                job.started_at = time.monotonic()
            try:
                job.outcome = job.load()
            except BaseException as exc:  # handed to the consumer, which re-raises it
                job.error = exc
            with self._lock:
                job.done.set()
                if not job.abandoned:
                    continue
                self._abandoned -= 1  # this thread was given up on and replaced, or not
                if self._closed or self._live >= self._workers:
                    return
                self._live += 1  # the pool ran short-handed: rejoin it
                self._idle_since = None


def _chunks(entries: Iterable[FileEntry], size: int) -> Iterator[list[FileEntry]]:
    chunk: list[FileEntry] = []
    for entry in entries:
        chunk.append(entry)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _FilePool(Protocol):
    """What encode_files needs of a decode pool: threads (DecodePool) or processes."""

    def submit(self, request: FileRequest) -> Any:
        """Queue one file; the returned job goes to result()."""
        ...

    def result(self, job: Any) -> LoadResult:
        """The file's outcome; a Skipped past the time limit, or when the pool closed first."""
        ...

    def close(self) -> None:
        """Stop the workers; files not started yet are answered as not decoded (STOPPED_REASON)."""
        ...


class _ThreadFiles:
    """DecodePool behind the request interface the process pool has."""

    def __init__(self, workers: int, *, timeout_s: float, load: Callable[[FileRequest], LoadResult]) -> None:
        self._pool = DecodePool(workers, timeout_s=timeout_s)
        self._load = load

    def submit(self, request: FileRequest) -> _Job:
        return self._pool.submit(request.entry, functools.partial(self._load, request))

    def result(self, job: _Job) -> LoadResult:
        return self._pool.result(job)

    def close(self) -> None:
        self._pool.close()


@dataclass(frozen=True)
class _RequestLoader:
    """load_file with a run's options, called with one FileRequest (inherited by forked workers)."""

    encoder: Encoder
    max_megapixels: float
    embedded_thumbnail: bool

    def __call__(self, request: FileRequest) -> LoadResult:
        return load_file(
            request.entry,
            self.encoder,
            max_megapixels=self.max_megapixels,
            embedded_thumbnail=self.embedded_thumbnail,
            caption=request.caption,
            sidecar=request.sidecar,
        )


def _start_pool(
    workers: int, *, timeout_s: float, processes: bool, load: Callable[[FileRequest], LoadResult]
) -> _FilePool:
    if processes:
        from indexer.indexing import decode_processes  # imports decode_pool: not at module level

        if decode_processes.fork_available():
            return decode_processes.ProcessDecodePool(workers, timeout_s=timeout_s, load=load)
        warn_once(f"{DECODE_PROCESSES_FLAG}: this system cannot fork worker processes; decoding in threads")
    return _ThreadFiles(workers, timeout_s=timeout_s, load=load)


def encode_files(
    entries: Iterable[FileEntry],
    encoder: Encoder,
    *,
    batch_size: int,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    embedded_thumbnail: bool = True,
    captions: Mapping[str, str] | None = None,
    sidecars: Container[str] = frozenset(),
    workers: int | None = None,
    decode_timeout_s: float = DEFAULT_DECODE_TIMEOUT_S,
    decode_processes: bool = DEFAULT_DECODE_PROCESSES,
    encode_streams: int = 1,
) -> Iterator[EncodedBatch]:
    """Yield encoded batches in input order; decoding runs `LOOKAHEAD_BATCHES` ahead in workers.

    sidecars: the caption files a folder scan found (none is looked for on disk).
    decode_processes: decode in forked worker processes instead of threads (decode_processes).
    encode_streams: batches encoded at once, each on its own thread (torch releases the GIL);
    with one intra-op thread each, no stream waits at a barrier for a thread a decoder preempted.
    """
    if encode_streams < 1:
        raise ValueError(f"encode_streams must be at least 1, got {encode_streams}")
    load = _RequestLoader(encoder, max_megapixels, embedded_thumbnail)
    pool = _start_pool(
        workers or os.cpu_count() or 1, timeout_s=decode_timeout_s, processes=decode_processes, load=load
    )
    streams = ThreadPoolExecutor(encode_streams, thread_name_prefix="encode")
    try:
        decoding: deque[list[Any]] = deque()
        encoding: deque[Future[EncodedBatch]] = deque()
        for chunk in _chunks(entries, batch_size):
            decoding.append([pool.submit(_request(e, captions, sidecars)) for e in chunk])
            if len(decoding) > LOOKAHEAD_BATCHES:
                encoding.append(streams.submit(_encode_ready, pool, decoding.popleft(), encoder))
            if len(encoding) >= encode_streams:
                yield encoding.popleft().result()
        encoding.extend(streams.submit(_encode_ready, pool, jobs, encoder) for jobs in decoding)
        while encoding:
            yield encoding.popleft().result()
    finally:
        streams.shutdown(wait=False, cancel_futures=True)
        pool.close()


def _request(entry: FileEntry, captions: Mapping[str, str] | None, sidecars: Container[str]) -> FileRequest:
    caption = captions.get(entry.path) if captions else None
    return FileRequest(entry, caption, caption_files.sidecar_among(entry.path, sidecars))


def _encode_ready(pool: _FilePool, jobs: list[Any], encoder: Encoder) -> EncodedBatch:
    results = [pool.result(job) for job in jobs]
    images = [r for r in results if isinstance(r, LoadedImage)]
    skipped = [r for r in results if isinstance(r, Skipped)]
    if images:
        import torch

        vectors = encoder.encode_pixels(torch.stack([img.pixels for img in images]))
    else:
        vectors = np.zeros((0, encoder.info.dim), dtype=np.float32)
    return EncodedBatch(images, vectors, skipped)
