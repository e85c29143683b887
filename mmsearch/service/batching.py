"""Concurrent sentence queries answered together: one forward pass, one FAISS batch.

A route hands its Query to the app's QueryBatcher and awaits the Future it gets back. A worker
thread takes the oldest waiting query, collects the queries that arrive within `max_wait_s` of
it (at most `max_batch` in all) and answers them with one Engine.search_batch call, holding one
of the server's query slots meanwhile. Queries that arrive while it works wait in the queue and
form the next batch, so under load batches fill without waiting at all, and a lone query waits
no longer than `max_wait_s` for company. A query the engine refuses gets its own error; the
others in its batch are answered as if they had come alone.

There are as many workers as query slots (one per core by default), so one batch can compute
on each core; but only one worker collects at a time, so idle workers do not split a batch
that is forming between them. Workers are plain threads because the engine's work is blocking
(torch and FAISS release the GIL while they compute); the routes are async and await
`asyncio.wrap_future`, so a waiting request holds no thread of the server's pool.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from indexer.errors import MMSearchError

if TYPE_CHECKING:
    from mmsearch.engine import SearchResults
    from mmsearch.query import Query

    SearchBatch = Callable[[Sequence[Query]], list[SearchResults | MMSearchError]]

MS_PER_S = 1000.0
# The worker thread ends after this long without a query and the next query starts a new one:
# no start-up or shut-down hook to wire (an app may be started and stopped several times, as
# test clients do), and an app nobody queries keeps no thread.
IDLE_EXIT_S = 30.0


@dataclass(frozen=True)
class BatchStats:
    """What the batcher has done since the server started (GET /stats/batching)."""

    max_batch: int
    max_wait_ms: float
    batches: int
    queries: int
    largest_batch: int

    @property
    def mean_batch(self) -> float:
        """Queries per batch on average (0 before the first batch)."""
        return self.queries / self.batches if self.batches else 0.0


@dataclass
class _Waiting:
    """A submitted query, the Future its route awaits, and when it arrived (time.monotonic)."""

    query: Query
    future: Future[SearchResults] = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class QueryBatcher:
    """Answers submitted queries in batches of at most max_batch, waiting at most max_wait_s
    after a batch's first query for more, with up to `workers` batches computing at once.
    Thread-safe; the workers start with the first query."""

    def __init__(
        self,
        search_batch: SearchBatch,
        *,
        max_batch: int,
        max_wait_s: float,
        workers: int = 1,
        slots: threading.BoundedSemaphore | None = None,
        on_worker_start: Callable[[], None] | None = None,
        idle_exit_s: float = IDLE_EXIT_S,
    ) -> None:
        if max_batch < 1 or max_wait_s < 0 or workers < 1:
            raise ValueError(
                "max_batch and workers must be >= 1 and max_wait_s >= 0, "
                f"got {max_batch}, {workers}, {max_wait_s}"
            )
        self._search_batch = search_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._slots = slots
        self._on_worker_start = on_worker_start  # per-thread settings (FAISS's OpenMP threads)
        self._idle_exit_s = idle_exit_s
        self._queue: queue.SimpleQueue[_Waiting] = queue.SimpleQueue()
        self._workers = workers
        self._lock = threading.Lock()  # guards the workers' start and exit, and the counters
        self._collecting = threading.Lock()  # held by the one worker gathering the next batch
        self._live = 0  # workers running
        self._batches = self._queries = self._largest = 0

    def submit(self, query: Query) -> Future[SearchResults]:
        """Queue a query; its Future gets the results, or the error that refuses it."""
        waiting = _Waiting(query)
        with self._lock:
            self._queue.put(waiting)
            while self._live < self._workers:
                threading.Thread(target=self._run, name="mmsearch-batcher", daemon=True).start()
                self._live += 1
        return waiting.future

    def search(self, query: Query) -> SearchResults:
        """submit() and wait: for callers on a thread of their own."""
        return self.submit(query).result()

    def stats(self) -> BatchStats:
        """Counters so far (a consistent snapshot)."""
        with self._lock:
            return BatchStats(
                max_batch=self.max_batch,
                max_wait_ms=round(self.max_wait_s * MS_PER_S, 3),
                batches=self._batches,
                queries=self._queries,
                largest_batch=self._largest,
            )

    # -- the worker ---------------------------------------------------------------------------

    @property
    def running(self) -> int:
        """Worker threads alive now (0 once all have been idle for idle_exit_s)."""
        with self._lock:
            return self._live

    def _run(self) -> None:
        """Collect a batch (one worker at a time), answer it; until the queue stays empty for
        idle_exit_s."""
        if self._on_worker_start is not None:
            self._on_worker_start()
        while True:
            with self._collecting:
                try:
                    first = self._queue.get(timeout=self._idle_exit_s)
                except queue.Empty:
                    with self._lock:  # submit() puts and counts workers under the same lock
                        if self._queue.empty():
                            self._live -= 1
                            return
                    continue
                batch = self._collect(first)
            self._answer(batch)

    def _collect(self, first: _Waiting) -> list[_Waiting]:
        """The first query and those queued within max_wait_s of its arrival (a query that has
        already waited that long while the worker was busy takes what is queued, at once)."""
        batch = [first]
        deadline = first.arrived + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            batch.append(item)
        return batch

    def _answer(self, batch: list[_Waiting]) -> None:
        """One search_batch call for the queries whose callers still wait; each Future gets its
        own answer. An unexpected error fails this batch only (each route answers 500)."""
        live = [w for w in batch if w.future.set_running_or_notify_cancel()]  # drops cancelled ones
        if not live:
            return
        try:
            with self._slots if self._slots is not None else contextlib.nullcontext():
                answers = self._search_batch([w.query for w in live])
        except Exception as exc:  # a bug or a broken disk: handed to every caller; the worker lives on
            for waiting in live:
                waiting.future.set_exception(exc)
            return
        for waiting, answer in zip(live, answers, strict=True):
            if isinstance(answer, MMSearchError):
                waiting.future.set_exception(answer)
            else:
                waiting.future.set_result(answer)
        with self._lock:
            self._batches += 1
            self._queries += len(live)
            self._largest = max(self._largest, len(live))
