"""The query batcher alone (mmsearch/service/batching.py), over a recording search function.

What it promises: queries submitted together are answered by one call, never more than
max_batch at a time; a lone query waits for company at most max_wait_s; each caller gets its
own answer or its own error; an unexpected failure fails its batch only. Through a real server
and engine: tests/test_service.py (concurrency section).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future

import pytest

from indexer.errors import MMSearchError
from mmsearch.engine import ImageHit, QueryError, SearchResults
from mmsearch.query import Query, QueryTerm
from mmsearch.service.batching import QueryBatcher

WAIT_S = 0.2  # the batching bound the timing tests use
# Scheduling slack on a shared two-core machine: a thread can be off the CPU this long.
SLACK_S = 0.5
ANSWER_TIMEOUT_S = 10


def sentence(text: str) -> Query:
    return Query((QueryTerm("text", text),))


class Recorder:
    """A search_batch that answers each sentence with one hit named after it, refuses "bad",
    records every call (sentences and time), and can be held to let queries pile up."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, list[str]]] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def __call__(self, queries: Sequence[Query]) -> list[SearchResults | MMSearchError]:
        texts = [str(q.terms[0].value) for q in queries]
        self.calls.append((time.monotonic(), texts))
        self.entered.set()
        assert self.release.wait(ANSWER_TIMEOUT_S)
        if "crash" in texts:
            raise RuntimeError("disk on fire")
        return [QueryError(f"refused {t}") if t == "bad" else answer(t) for t in texts]


def answer(text: str) -> SearchResults:
    return SearchResults([ImageHit(1, 1.0, 1, text)], None)


def results(futures: Sequence[Future[SearchResults]]) -> list[str | BaseException]:
    """Each future's hit path, or its exception."""
    out: list[str | BaseException] = []
    for future in futures:
        error = future.exception(ANSWER_TIMEOUT_S)
        out.append(error if error is not None else str(future.result().hits[0].path))  # type: ignore[union-attr]
    return out


def test_queries_that_wait_together_are_answered_by_one_call_in_order() -> None:
    recorder = Recorder()
    batcher = QueryBatcher(recorder, max_batch=32, max_wait_s=WAIT_S)
    recorder.release.clear()
    first = batcher.submit(sentence("q0"))
    assert recorder.entered.wait(ANSWER_TIMEOUT_S)  # the worker is busy with q0 alone
    rest = [batcher.submit(sentence(f"q{n}")) for n in range(1, 9)]
    recorder.release.set()
    assert results([first, *rest]) == [f"q{n}" for n in range(9)]
    assert [texts for _, texts in recorder.calls] == [["q0"], [f"q{n}" for n in range(1, 9)]]
    stats = batcher.stats()
    assert (stats.batches, stats.queries, stats.largest_batch) == (2, 9, 8)
    assert stats.mean_batch == 4.5


def test_no_batch_is_larger_than_max_batch() -> None:
    recorder = Recorder()
    batcher = QueryBatcher(recorder, max_batch=3, max_wait_s=WAIT_S)
    recorder.release.clear()
    futures = [batcher.submit(sentence(f"q{n}")) for n in range(10)]
    recorder.release.set()
    assert results(futures) == [f"q{n}" for n in range(10)]
    sizes = [len(texts) for _, texts in recorder.calls]
    assert max(sizes) == 3 and sum(sizes) == 10


def test_a_lone_query_waits_for_company_no_longer_than_the_bound() -> None:
    recorder = Recorder()
    batcher = QueryBatcher(recorder, max_batch=32, max_wait_s=WAIT_S)
    sent = time.monotonic()
    assert results([batcher.submit(sentence("alone"))]) == ["alone"]
    ((called, texts),) = recorder.calls
    assert texts == ["alone"]
    assert WAIT_S * 0.9 <= called - sent <= WAIT_S + SLACK_S


def test_a_query_that_waited_behind_a_busy_worker_is_answered_without_more_waiting() -> None:
    """The bound counts from a query's arrival: a batch whose first query already waited that
    long (the worker was busy) starts as soon as the worker is free."""
    recorder = Recorder()
    batcher = QueryBatcher(recorder, max_batch=32, max_wait_s=WAIT_S)
    recorder.release.clear()
    busy = batcher.submit(sentence("busy"))
    assert recorder.entered.wait(ANSWER_TIMEOUT_S)
    queued = batcher.submit(sentence("queued"))
    time.sleep(WAIT_S * 2)
    freed = time.monotonic()
    recorder.release.set()
    assert results([busy, queued]) == ["busy", "queued"]
    assert recorder.calls[1][0] - freed < WAIT_S


def test_a_refused_query_gets_its_own_error_and_its_batch_mates_their_answers() -> None:
    recorder = Recorder()
    batcher = QueryBatcher(recorder, max_batch=32, max_wait_s=WAIT_S)
    recorder.release.clear()
    first = batcher.submit(sentence("q0"))
    assert recorder.entered.wait(ANSWER_TIMEOUT_S)
    together = [batcher.submit(sentence(t)) for t in ("q1", "bad", "q2")]
    recorder.release.set()
    got = results([first, *together])
    assert got[:2] == ["q0", "q1"] and got[3] == "q2"
    assert isinstance(got[2], QueryError) and "refused bad" in str(got[2])
    assert recorder.calls[1][1] == ["q1", "bad", "q2"]  # answered in the same call


def test_an_unexpected_failure_fails_its_batch_only_and_the_worker_lives_on() -> None:
    recorder = Recorder()
    batcher = QueryBatcher(recorder, max_batch=32, max_wait_s=WAIT_S)
    recorder.release.clear()
    first = batcher.submit(sentence("q0"))
    assert recorder.entered.wait(ANSWER_TIMEOUT_S)
    doomed = [batcher.submit(sentence(t)) for t in ("q1", "crash")]
    recorder.release.set()
    got = results([first, *doomed])
    assert got[0] == "q0"
    assert all(isinstance(g, RuntimeError) for g in got[1:])
    assert results([batcher.submit(sentence("after"))]) == ["after"]


def test_a_cancelled_query_is_not_searched() -> None:
    """A client that went away (its Future cancelled while queued) costs no search."""
    recorder = Recorder()
    batcher = QueryBatcher(recorder, max_batch=32, max_wait_s=WAIT_S)
    recorder.release.clear()
    first = batcher.submit(sentence("q0"))
    assert recorder.entered.wait(ANSWER_TIMEOUT_S)
    gone, kept = batcher.submit(sentence("gone")), batcher.submit(sentence("kept"))
    assert gone.cancel()
    recorder.release.set()
    assert results([first, kept]) == ["q0", "kept"]
    assert [texts for _, texts in recorder.calls] == [["q0"], ["kept"]]


def test_the_idle_worker_ends_and_the_next_query_starts_another() -> None:
    recorder = Recorder()
    batcher = QueryBatcher(recorder, max_batch=32, max_wait_s=0.0, idle_exit_s=0.05)
    assert results([batcher.submit(sentence("one"))]) == ["one"]
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while batcher.running:
        assert time.monotonic() < deadline, "the idle worker did not end"
        time.sleep(0.02)
    assert results([batcher.submit(sentence("two"))]) == ["two"]


def test_with_two_workers_a_second_batch_is_answered_while_the_first_computes() -> None:
    """One batch per query slot: while one worker is held inside its batch, the other collects
    the queries that arrive meanwhile and answers them (the held one is answered later)."""
    held = threading.Event()
    calls: list[list[str]] = []

    def search_batch(queries: Sequence[Query]) -> list[SearchResults | MMSearchError]:
        texts = [str(q.terms[0].value) for q in queries]
        calls.append(texts)
        if "slow" in texts:
            assert held.wait(ANSWER_TIMEOUT_S)
        return [answer(t) for t in texts]

    batcher = QueryBatcher(search_batch, max_batch=32, max_wait_s=0.0, workers=2)
    slow = batcher.submit(sentence("slow"))
    while not calls:
        time.sleep(0.01)
    quick = [batcher.submit(sentence(f"q{n}")) for n in range(3)]
    assert results(quick) == ["q0", "q1", "q2"]  # answered while "slow" is still held
    assert not slow.done()
    held.set()
    assert results([slow]) == ["slow"]
    assert batcher.running == 2


@pytest.mark.parametrize(("max_batch", "max_wait_s", "workers"), [(0, 0.005, 1), (4, -1.0, 1), (4, 0.005, 0)])
def test_bounds_must_make_sense(max_batch: int, max_wait_s: float, workers: int) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        QueryBatcher(Recorder(), max_batch=max_batch, max_wait_s=max_wait_s, workers=workers)
