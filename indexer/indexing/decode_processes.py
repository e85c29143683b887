"""Decode files in worker processes instead of threads (`mmsearch index --decode-processes`).

A process decodes without holding the indexer's GIL, and a file that outlasts --decode-timeout
is stopped for real: its process is killed and a fresh one forked, instead of a thread being
left to run on in the background. A decoder that crashes on a file (a C library fault) costs
that one file, named in the report, not the run.

Workers are forked, so they inherit the model's preprocessing (and the rest of the indexer's
memory, shared copy-on-write) without pickling anything: a request is a file entry and its
given text, an answer the decoded file with its pixels as a NumPy array. Fork needs a POSIX
system; elsewhere the caller falls back to threads (encode_files).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import NamedTuple

import numpy as np
import torch

from indexer.indexing.file_loading import STOPPED_REASON, FileRequest, LoadedImage, LoadResult, Skipped
from indexer.media.images import DECODE_TIMEOUT_FLAG
from indexer.media.own_text import OwnText
from indexer.media.scan import FileEntry

# A stopped worker is given this long to exit on its own before it is killed.
STOP_GRACE_S = 1.0
# Files sent to a worker before its last answer is back: one decoding, one waiting in the pipe,
# so the worker never idles while an answer travels back and the next file travels out.
REQUESTS_IN_FLIGHT = 2
WORKER_TORCH_THREADS = 1  # the encoder in the parent has the cores; a worker preprocesses one image


RequestLoad = Callable[[FileRequest], LoadResult]


def fork_available() -> bool:
    """True where worker processes can be forked (Linux, the BSDs, macOS)."""
    return "fork" in multiprocessing.get_all_start_methods()


class _ImageWire(NamedTuple):
    """A LoadedImage with its pixels as a NumPy array: torch would send a tensor as shared memory."""

    entry: FileEntry
    pixels: np.ndarray  # (3, S, S) float32
    content_hash: str
    width: int
    height: int
    own_text: OwnText | None
    decoded_from: str


def _to_wire(result: LoadResult) -> _ImageWire | Skipped:
    if isinstance(result, Skipped):
        return result
    return _ImageWire(
        result.entry,
        result.pixels.numpy(),
        result.content_hash,
        result.width,
        result.height,
        result.own_text,
        result.decoded_from,
    )


def _from_wire(answer: _ImageWire | Skipped) -> LoadResult:
    if isinstance(answer, Skipped):
        return answer
    return LoadedImage(
        answer.entry,
        torch.from_numpy(answer.pixels),
        answer.content_hash,
        answer.width,
        answer.height,
        answer.own_text,
        answer.decoded_from,
    )


def _serve(conn: Connection, load: RequestLoad) -> None:
    """A worker's loop: load each requested file and send the outcome back, until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    torch.set_num_threads(WORKER_TORCH_THREADS)
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return  # the parent is gone
        if request is None:
            return
        try:
            answer: tuple[str, object] = ("ok", _to_wire(load(request)))
        except Exception:  # a bug, not a bad file: handed to the consumer, which raises it
            answer = ("error", traceback.format_exc())
        conn.send(answer)


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection

    def stop(self) -> None:
        """Ask the process to exit; kill it if it does not (it may be stuck on a file)."""
        with contextlib.suppress(OSError):  # already gone: the join below returns at once
            self.conn.send(None)
        self.process.join(STOP_GRACE_S)
        self.kill()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


@dataclass(eq=False)
class ProcessJob:
    """One file's load, and the event its consumer waits on."""

    request: FileRequest
    done: threading.Event = field(default_factory=threading.Event)
    outcome: LoadResult | None = None
    error: BaseException | None = None


class ProcessDecodePool:
    """Worker processes that load files; a file past timeout_s is skipped and its process killed.

    Each process is driven by one daemon thread here, which keeps REQUESTS_IN_FLIGHT files sent
    to it and waits for each answer up to timeout_s. The same files give the same LoadResults, and the same
    Skipped reasons, as decode_pool.DecodePool; the pool never runs short-handed, since a
    process can be stopped where a thread cannot.
    """

    def __init__(self, workers: int, *, timeout_s: float, load: RequestLoad) -> None:
        if workers < 1 or not timeout_s > 0:
            raise ValueError(f"need workers >= 1 and timeout_s > 0, got {workers}, {timeout_s}")
        self._timeout_s = timeout_s
        self._load = load
        self._context = multiprocessing.get_context("fork")
        self._jobs: queue.SimpleQueue[ProcessJob | None] = queue.SimpleQueue()
        self._closed = threading.Event()
        self._workers = workers
        for _ in range(workers):
            threading.Thread(target=self._drive, name="decode-process", daemon=True).start()

    def submit(self, request: FileRequest) -> ProcessJob:
        """Queue a file's load; pass the job to result() for its outcome."""
        job = ProcessJob(request)
        self._jobs.put(job)
        return job

    def result(self, job: ProcessJob) -> LoadResult:
        """The job's outcome (a Skipped if it outlasted timeout_s or crashed its process)."""
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.outcome is not None  # done is set only after one of the two
        return job.outcome

    def close(self) -> None:
        """Stop every process once the files sent to it are done; queued ones are not decoded."""
        self._closed.set()
        for _ in range(self._workers):
            self._jobs.put(None)

    def _start_worker(self) -> _Worker:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_serve, args=(theirs, self._load), name="mmsearch-decode", daemon=True
        )
        process.start()
        theirs.close()  # the child holds its end: EOF here once it exits
        return _Worker(process, ours)

    def _drive(self) -> None:
        """One worker process's feeder: keep it supplied with files and collect the answers."""
        feeder = _Feeder(self._start_worker, self._timeout_s)
        stopping = False
        try:
            while feeder.sent or not stopping:
                while not stopping and len(feeder.sent) < REQUESTS_IN_FLIGHT:
                    try:
                        job = self._jobs.get(block=not feeder.sent)  # wait only when it is idle
                    except queue.Empty:
                        break
                    if job is None:
                        stopping = True
                    elif self._closed.is_set():  # an encoder thread may still wait for it
                        _answer(job, Skipped(job.request.entry.path, STOPPED_REASON, retry=True))
                    else:
                        feeder.send(job)
                if feeder.sent:
                    try:
                        feeder.receive()
                    except Exception as exc:  # a bug here: raise it in the consumer, never hang it
                        feeder.fail(exc)
        finally:
            feeder.stop()


def _answer(job: ProcessJob, outcome: LoadResult) -> None:
    job.outcome = outcome
    job.done.set()


class _Feeder:
    """One worker process and the files sent to it, oldest first: the one it is decoding now.

    The oldest file's time limit runs from when it became the oldest (its predecessor's answer
    arrived), so a file is never charged for the time it waited in the pipe.
    """

    def __init__(self, start_worker: Callable[[], _Worker], timeout_s: float) -> None:
        self._start_worker = start_worker
        self._timeout_s = timeout_s
        self._worker: _Worker | None = None
        self.sent: deque[ProcessJob] = deque()
        self._head_since = 0.0

    def send(self, job: ProcessJob) -> None:
        """Send a file to the worker, forking one first when there is none or it died idle."""
        try:
            if not self.sent and (self._worker is None or not self._worker.process.is_alive()):
                if self._worker is not None:
                    self._worker.kill()  # died while idle (the OOM killer): reap it
                self._worker = self._start_worker()
            assert self._worker is not None  # a worker with files in flight is kept until receive()
            self._worker.conn.send(job.request)
        except BrokenPipeError:
            pass  # it died with files in flight: receive() names the oldest and resends the rest
        except BaseException as exc:  # cannot fork: the consumer re-raises it
            job.error = exc
            job.done.set()
            return
        if not self.sent:
            self._head_since = time.monotonic()
        self.sent.append(job)

    def receive(self) -> None:
        """Answer the oldest file: its outcome, or a Skipped at its time limit or a crash."""
        assert self._worker is not None  # a file was sent
        job = self.sent[0]
        remaining = self._head_since + self._timeout_s - time.monotonic()
        if not self._worker.conn.poll(max(0.0, remaining)):
            self._replace_worker(crashed=False)
            return
        try:
            kind, payload = self._worker.conn.recv()
        except (EOFError, OSError):  # OSError: it died with a file unread (connection reset)
            self._replace_worker(crashed=True)
            return
        self.sent.popleft()
        self._head_since = time.monotonic()
        if kind == "error":
            # A bug in the worker's load (bad files come back as Skipped): raised with its traceback,
            # for the whole run, as a bug in this process would be.
            job.error = RuntimeError(f"decoding {job.request.entry.path} failed:\n{payload}")
            job.done.set()
        else:
            assert isinstance(payload, _ImageWire | Skipped)
            _answer(job, _from_wire(payload))

    def _replace_worker(self, *, crashed: bool) -> None:
        """Skip the oldest file, kill the worker, and send the files it never answered to a new one.

        The skip is retried next run, not remembered: a busy machine can make a decoder slow,
        and a crash can come from the machine (memory) as well as from the file.
        """
        assert self._worker is not None
        job = self.sent.popleft()
        self._worker.kill()
        if crashed:
            reason = f"the decoder crashed on this file ({_exit_reason(self._worker.process)})"
        else:
            reason = f"decoding took longer than {DECODE_TIMEOUT_FLAG} {self._timeout_s:g} s"
        _answer(job, Skipped(job.request.entry.path, reason, retry=True))
        self._worker = None
        unanswered = list(self.sent)
        self.sent.clear()
        for other in unanswered:
            self.send(other)

    def fail(self, error: BaseException) -> None:
        """Hand an error to every file in flight, and start over with a fresh worker."""
        if self._worker is not None:
            self._worker.kill()
            self._worker = None
        while self.sent:
            job = self.sent.popleft()
            job.error = error
            job.done.set()

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.stop()


def _exit_reason(process: BaseProcess) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
