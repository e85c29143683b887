"""Crash safety of index runs: real SIGKILLs at random moments and at each commit step, leftover
temp files, the writer lock under a live writer, and reconcile after hand-made damage.

Importing torch and transformers takes seconds, far longer than an index run on the tiny model, so
one helper process imports them once and forks a child per run; the test SIGKILLs that child by
its PID. The child sets COMMIT_INTERVAL_S to 0 so every batch is a commit a kill can land between,
and may log each commit's time so a kill can wait for a random number of commits: a clock alone
misses the commits whenever other processes slow the machine down.
The model is random-init: the invariants below are about ids, rows and vectors, not ranking.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session
from support import save_random_model
from typer.testing import CliRunner

from indexer.indexing.decode_pool import LoadedImage, load_file
from indexer.indexing.pipeline import IndexOptions, IndexReport, index_folders
from indexer.media.content_id import file_content_id
from indexer.media.scan import FileEntry
from indexer.models.encoder import Encoder, load_encoder
from indexer.store import catalog
from indexer.store.catalog import ImageRow
from indexer.store.index_dir import IMAGES_FAISS, LOCK_FILE, IndexLockedError, IndexWriter, WriterLock
from indexer.store.vectors import VectorStore
from mmsearch.cli import app
from mmsearch.engine import MAX_K, Engine, IndexUnavailableError

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED = 20240611
N_PHOTOS = 120
BATCH_SIZE = 8
KILL_TRIALS = 12
CHANGE_TRIALS = 5
CHANGE_PHOTOS = 60
CHANGE_BATCH_SIZE = 2
# A run this slow per batch lets a reader's queries overlap many commits.
SLOW_BATCH_DELAY_S = 0.08
# Re-encoding a file in another batch moves float32 rounding, never a whole vector.
VECTOR_ATOL = 1e-4
QUERY = "a red circle on a white background"
PROCESS_TIMEOUT_S = 120.0
CAPTIONS = [
    f"a {colour} {shape} on a {background} background"
    for colour in ("red", "green", "blue", "yellow")
    for shape in ("circle", "square", "star")
    for background in ("white", "black")
]

# The helper process: imports once, then forks one index run per JSON job on stdin. It prints
# the child's PID, waits for a line (the test kills the child meanwhile, or not), reaps the child
# and prints its wait status. Reaping only on request keeps the PID from being reused under a kill.
ZYGOTE_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys, time, traceback
    from pathlib import Path

    import torch
    import indexer.indexing.pipeline as pipeline
    from indexer.models.encoder import load_encoder
    from indexer.store.index_dir import IndexWriter

    pipeline.COMMIT_INTERVAL_S = 0.0  # commit after every batch


    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)


    def arm(crash_at, after):
        # SIGKILL at one step of the (after + 1)-th commit that adds image vectors.
        commits = 0
        original = IndexWriter.commit_vectors

        def commit_vectors(self, session, **kwargs):
            nonlocal commits
            if kwargs.get("images") and kwargs["images"][0]:
                commits += 1
                if commits > after:
                    if crash_at == "before_faiss_write":
                        die()
                    elif crash_at == "before_faiss_rename":
                        os.replace = die  # the temp file is written, never renamed
                    elif crash_at == "before_sql_commit":
                        session.commit = die  # FAISS replaced, SQL not committed
                    else:
                        raise ValueError(crash_at)
            return original(self, session, **kwargs)

        IndexWriter.commit_vectors = commit_vectors


    def trace(path):
        # Append the time of each commit that adds image vectors, once it is durable.
        original = IndexWriter.commit_vectors

        def commit_vectors(self, session, **kwargs):
            original(self, session, **kwargs)
            if kwargs.get("images") and kwargs["images"][0]:
                with open(path, "a") as fh:
                    print(time.time(), file=fh)

        IndexWriter.commit_vectors = commit_vectors


    def pause(after, resume_file):
        # After the after-th commit that adds image vectors, hold the lock until resume_file exists.
        commits = 0
        original = IndexWriter.commit_vectors

        def commit_vectors(self, session, **kwargs):
            nonlocal commits
            original(self, session, **kwargs)
            if kwargs.get("images") and kwargs["images"][0]:
                commits += 1
                while commits == after and not os.path.exists(resume_file):
                    time.sleep(0.005)

        IndexWriter.commit_vectors = commit_vectors


    def slow_down(seconds):
        original = pipeline._stage_batch

        def stage_batch(*args, **kwargs):
            time.sleep(seconds)
            return original(*args, **kwargs)

        pipeline._stage_batch = stage_batch


    def run(job):
        torch.set_num_threads(1)
        if job.get("crash_at"):
            arm(job["crash_at"], job.get("after", 0))
        if job.get("trace"):
            trace(job["trace"])
        if job.get("batch_delay_s"):
            slow_down(job["batch_delay_s"])
        if job.get("pause_after"):
            pause(job["pause_after"], job["resume_file"])  # outermost: after the trace line
        encoder = load_encoder(job["model"], device="cpu")
        pipeline.index_folders(
            [Path(root) for root in job["roots"]],
            Path(job["index"]),
            encoder,
            options=pipeline.IndexOptions(batch_size=job["batch_size"]),
        )


    print("ready", flush=True)
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                run(json.loads(line))
            except BaseException:
                traceback.print_exc()
                code = 1
            os._exit(code)
        print(pid, flush=True)
        sys.stdin.readline()
        _, status = os.waitpid(pid, 0)
        print(status, flush=True)
    """
)


class Zygote:
    """The helper process; start() forks an index run and returns its PID, finish() reaps it."""

    def __init__(self, directory: Path) -> None:
        script = directory / "zygote.py"
        script.write_text(ZYGOTE_SCRIPT)
        self.log = directory / "zygote.log"
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(script)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=REPO_ROOT,
                env=env,
            )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.ready = False

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def _read(self) -> str:
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(queue.Empty):
                return self.lines.get(timeout=0.1)
        with contextlib.suppress(queue.Empty):
            return self.lines.get_nowait()
        raise AssertionError(f"helper process silent or gone; log:\n{self.log.read_text()}")

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_ready(self) -> None:
        """Block until the helper has finished its imports."""
        if not self.ready:
            assert self._read() == "ready", self.log.read_text()
            self.ready = True

    def start(self, job: dict[str, Any]) -> int:
        """Fork an index run; returns the child's PID (not reaped until finish())."""
        self.wait_ready()
        self._send(json.dumps(job))
        return int(self._read())

    def finish(self) -> int:
        """Reap the child; returns its wait status."""
        self._send("reap")
        return int(self._read())

    def close(self) -> None:
        """Stop the helper process; every child has been reaped, and torch's exit is slow."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.kill()
        self.proc.wait()

    def child_log(self) -> str:
        """What children printed (tracebacks of runs that failed)."""
        return self.log.read_text()


@dataclass(frozen=True)
class Row:
    """What the catalogue says about one image."""

    path: str
    content_hash: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class IndexState:
    """SQLite rows, FAISS ids and stray temp files of an index directory, read without a writer."""

    rows: dict[int, Row]
    vector_ids: frozenset[int]
    temp_files: tuple[str, ...]

    @property
    def orphans(self) -> set[int]:
        """FAISS ids with no row."""
        return set(self.vector_ids - self.rows.keys())

    @property
    def missing(self) -> set[int]:
        """Rows with no FAISS vector."""
        return set(self.rows.keys() - self.vector_ids)


# Tiny convolutions run far faster on one thread when other processes share the cores.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    helper = Zygote(tmp_path_factory.mktemp("zygote"))
    yield helper
    helper.close()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init model of the tiny-test config."""
    return save_random_model(tmp_path_factory.mktemp("tiny-model"), CAPTIONS, vocab_size=64, seed=SEED)


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path) -> Encoder:
    return load_encoder(tiny_model_dir, device="cpu")


@dataclass(frozen=True)
class SharedPhotos:
    """The fresh-index tests' one photo folder and its fingerprint when it was written."""

    folder: Path
    fingerprint: dict[str, tuple[int, int, str]]


def _fingerprint(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry below folder: relative path -> (size, mtime_ns, SHA-256 of the bytes)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        st = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        found[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns, digest)
    return found


@pytest.fixture(scope="module")
def shared_photos(tmp_path_factory: pytest.TempPathFactory) -> SharedPhotos:
    """N_PHOTOS small noise PNGs, fingerprinted as written."""
    folder = tmp_path_factory.mktemp("crash-photos").resolve()
    _write_photos(folder, N_PHOTOS, np.random.default_rng(SEED))
    return SharedPhotos(folder, _fingerprint(folder))


@pytest.fixture
def crash_photos(shared_photos: SharedPhotos) -> Iterator[Path]:
    """The shared photos for one test, checked unchanged after it: the fresh-index tests expect
    exactly these files, so a test that added, edited, touched or removed one would void the
    tests after it. Checked after every test that uses them, whatever order they run in."""
    yield shared_photos.folder
    before, now = shared_photos.fingerprint, _fingerprint(shared_photos.folder)
    changed = sorted(name for name in before.keys() | now.keys() if before.get(name) != now.get(name))
    assert not changed, f"this test changed the shared photo folder: {changed[:5]}"


@pytest.fixture(scope="module")
def reference(encoder: Encoder, shared_photos: SharedPhotos) -> dict[str, np.ndarray]:
    """content hash -> the vector the model gives that content."""
    return _reference_vectors(encoder, _image_files(shared_photos.folder))


def _write_photo(path: Path, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(path)


def _write_photos(folder: Path, count: int, rng: np.random.Generator) -> list[Path]:
    paths = [folder / f"photo_{i:03d}.png" for i in range(count)]
    for path in paths:
        _write_photo(path, rng)
    return paths


def _image_files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.resolve().rglob("*.png"))


def _reference_vectors(encoder: Encoder, paths: list[str]) -> dict[str, np.ndarray]:
    loaded = []
    for path in paths:
        st = os.stat(path)
        item = load_file(FileEntry(path, "/", st.st_size, st.st_mtime_ns), encoder, max_megapixels=100)
        assert isinstance(item, LoadedImage), item
        loaded.append(item)
    vectors = encoder.encode_pixels(torch.stack([item.pixels for item in loaded]))  # (n, dim)
    return {item.content_hash: vector for item, vector in zip(loaded, vectors, strict=True)}


def _job(model: Path, photos: Path, index_dir: Path, **extra: Any) -> dict[str, Any]:
    return {
        "model": str(model),
        "roots": [str(photos)],
        "index": str(index_dir),
        "batch_size": BATCH_SIZE,
        **extra,
    }


@dataclass(frozen=True)
class CommitTiming:
    """When an uninterrupted run commits: offsets (s) of its first commit and between commits."""

    commits: int
    first_s: float
    gap_s: float


def _count_commits(trace: Path) -> int:
    try:
        return trace.read_text().count("\n")
    except FileNotFoundError:
        return 0


def _measure_commits(zygote: Zygote, job: dict[str, Any], trace: Path) -> CommitTiming:
    """Run a job uninterrupted and time its commits."""
    zygote.wait_ready()
    started = time.time()
    zygote.start({**job, "trace": str(trace)})
    assert zygote.finish() == 0, zygote.child_log()
    stamps = [float(line) for line in trace.read_text().split()]
    gap = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    return CommitTiming(len(stamps), stamps[0] - started, gap)


def _run_and_kill(
    zygote: Zygote, job: dict[str, Any], trace: Path, timing: CommitTiming, rng: random.Random
) -> int:
    """SIGKILL a run at a random moment: after a random number of commits (0 to all but one),
    a random fraction of a commit cycle later. Waiting on the commit trace rather than a clock
    keeps kills mid-run however loaded the machine is. Returns the wait status."""
    trace.unlink(missing_ok=True)
    wait_for = rng.randrange(timing.commits)
    pid = zygote.start({**job, "trace": str(trace)})
    if wait_for == 0:
        time.sleep(rng.uniform(0.0, timing.first_s))
    else:
        _wait_for(lambda: _count_commits(trace) >= wait_for, f"{wait_for} commits")
        time.sleep(rng.uniform(0.0, timing.gap_s))
    os.kill(pid, signal.SIGKILL)  # a zombie if it already finished: harmless
    return zygote.finish()


def _killed(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _read_state(index_dir: Path, dim: int) -> IndexState:
    temp = tuple(sorted(p.name for p in index_dir.glob("*.tmp-*"))) if index_dir.exists() else ()
    try:
        engine = catalog.open_catalog(index_dir, create=False)
    except FileNotFoundError:
        return IndexState({}, frozenset(), temp)
    try:
        with Session(engine) as session:
            rows = {
                r.id: Row(r.path, r.content_hash, r.size, r.mtime_ns)
                for r in session.scalars(select(ImageRow))
            }
    finally:
        engine.dispose()
    store = VectorStore.load(index_dir / IMAGES_FAISS, dim=dim)
    return IndexState(rows, frozenset(int(i) for i in store.ids()), temp)


def _current_hash(path: str) -> str | None:
    try:
        return file_content_id(path)
    except FileNotFoundError:
        return None


def _check_pairing(index_dir: Path, state: IndexState, reference: dict[str, np.ndarray], dim: int) -> None:
    """Every row that has a vector has the vector of the content the row records."""
    store = VectorStore.load(index_dir / IMAGES_FAISS, dim=dim)
    for id_ in sorted(state.rows.keys() & state.vector_ids):
        row = state.rows[id_]
        np.testing.assert_allclose(
            store.reconstruct(id_),
            reference[row.content_hash],
            atol=VECTOR_ATOL,
            err_msg=f"id {id_} ({row.path}) holds the vector of other content",
        )


def _check_reader(index_dir: Path, state: IndexState, reference: dict[str, np.ndarray], dim: int) -> None:
    """What a reader sees before any writer repairs the index: only committed rows, no crash."""
    paths = [row.path for row in state.rows.values()]
    assert len(paths) == len(set(paths)), "duplicate paths in the catalogue"
    _check_pairing(index_dir, state, reference, dim)
    try:
        engine = Engine.open(index_dir, device="cpu")
    except IndexUnavailableError as exc:
        assert not state.rows, f"rows committed but the index does not open: {exc}"
        assert "mmsearch index" in str(exc)
        return
    with engine:
        k = min(MAX_K, max(1, len(state.vector_ids)))
        hits = engine.search_text(QUERY, k=k)
        assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
        assert len({h.id for h in hits}) == len(hits)
        for hit in hits:
            assert hit.id in state.rows, f"reader returned id {hit.id} with no committed row"
            assert hit.path == state.rows[hit.id].path
        assert len(hits) == len(state.rows.keys() & state.vector_ids)
        searchable = [
            (id_, row)
            for id_, row in sorted(state.rows.items())
            if id_ in state.vector_ids and _current_hash(row.path) == row.content_hash
        ]
        for id_, row in random.Random(len(state.rows)).sample(searchable, min(4, len(searchable))):
            found = engine.search_image(row.path, k=k)
            assert id_ in {h.id for h in found}, f"{row.path} not found by its own image"


def _check_after_kill(
    index_dir: Path,
    photos: Path,
    encoder: Encoder,
    reference: dict[str, np.ndarray],
    *,
    fresh: bool,
) -> tuple[IndexState, IndexReport]:
    """Reader view, then writer reconcile, then a resume run; returns the pre-repair state."""
    dim = encoder.info.dim
    state = _read_state(index_dir, dim)
    if fresh:
        # FAISS is written before SQL commits, and nothing is removed on a fresh index.
        assert not state.missing, f"committed rows without vectors: {sorted(state.missing)}"
    _check_reader(index_dir, state, reference, dim)

    with IndexWriter(index_dir, encoder.info) as writer, writer.session() as session:
        assert writer.repaired == len(state.orphans) + len(state.missing)
        assert set(writer.ids_of(writer.images)) == catalog.all_ids(session, ImageRow)
    repaired = _read_state(index_dir, dim)
    assert repaired.rows == {i: r for i, r in state.rows.items() if i not in state.missing}
    assert repaired.vector_ids == repaired.rows.keys()
    _check_pairing(index_dir, repaired, reference, dim)

    files = _image_files(photos)
    expect_unchanged = 0
    for row in repaired.rows.values():
        if row.path in files:
            st = os.stat(row.path)
            same = (st.st_size, st.st_mtime_ns) == (row.size, row.mtime_ns)
            expect_unchanged += same or _current_hash(row.path) == row.content_hash
    report = index_folders([photos], index_dir, encoder, options=IndexOptions(batch_size=BATCH_SIZE))
    assert report.repaired == 0
    assert report.skipped == []
    assert report.unchanged == expect_unchanged, "committed files were encoded again"
    assert report.new + report.changed + report.moved + report.unchanged == len(files)
    if fresh:
        assert (report.changed, report.moved, report.removed) == (0, 0, 0)
        assert report.new == len(files) - len(repaired.rows)

    final = _read_state(index_dir, dim)
    assert sorted(row.path for row in final.rows.values()) == files, "not every image exactly once"
    assert final.vector_ids == final.rows.keys()
    for row in final.rows.values():
        assert row.content_hash == file_content_id(row.path)
    _check_pairing(index_dir, final, reference, dim)
    return state, report


def test_sigkill_at_random_moments_leaves_a_consistent_resumable_index(
    zygote: Zygote,
    tiny_model_dir: Path,
    crash_photos: Path,
    encoder: Encoder,
    reference: dict[str, np.ndarray],
    tmp_path: Path,
) -> None:
    trace = tmp_path / "trace"
    measured = tmp_path / "uninterrupted"
    timing = _measure_commits(zygote, _job(tiny_model_dir, crash_photos, measured), trace)
    assert len(_read_state(measured, encoder.info.dim).rows) == N_PHOTOS
    assert timing.commits == -(-N_PHOTOS // BATCH_SIZE)

    rng = random.Random(SEED)
    mid_run = 0
    for trial in range(KILL_TRIALS):
        index_dir = tmp_path / f"index-{trial}"
        job = _job(tiny_model_dir, crash_photos, index_dir)
        status = _run_and_kill(zygote, job, trace, timing, rng)
        assert _killed(status) or status == 0, zygote.child_log()
        state, _ = _check_after_kill(index_dir, crash_photos, encoder, reference, fresh=True)
        mid_run += _killed(status) and 0 < len(state.rows) < N_PHOTOS
    assert mid_run >= KILL_TRIALS // 2, f"only {mid_run} kills landed between commits ({timing})"


@pytest.mark.parametrize("crash_at", ["before_faiss_write", "before_faiss_rename", "before_sql_commit"])
def test_sigkill_at_each_step_of_a_commit(
    crash_at: str,
    zygote: Zygote,
    tiny_model_dir: Path,
    crash_photos: Path,
    encoder: Encoder,
    reference: dict[str, np.ndarray],
    tmp_path: Path,
) -> None:
    index_dir = tmp_path / "index"
    committed = 2
    zygote.start(_job(tiny_model_dir, crash_photos, index_dir, crash_at=crash_at, after=committed))
    assert _killed(zygote.finish()), zygote.child_log()

    state = _read_state(index_dir, encoder.info.dim)
    assert len(state.rows) == committed * BATCH_SIZE
    if crash_at == "before_sql_commit":
        assert len(state.orphans) == BATCH_SIZE  # the batch FAISS holds but SQLite rolled back
    else:
        assert not state.orphans
    # The temp file of an interrupted save is never read as the index.
    assert len(state.temp_files) == (crash_at == "before_faiss_rename")
    _check_after_kill(index_dir, crash_photos, encoder, reference, fresh=True)


def test_kill_between_faiss_and_sql_commit_never_pairs_a_row_with_another_files_vector(
    zygote: Zygote, tiny_model_dir: Path, encoder: Encoder, tmp_path: Path
) -> None:
    # SQLite reuses the highest rowid once that row is deleted. The edited file with the highest
    # id is deleted and re-inserted in one batch with a new file sorting before it; if the new
    # file took the freed id, a crash after the FAISS write would leave the edited file's old row
    # paired with the new file's vector, a mismatch reconcile cannot see.
    photos = tmp_path / "photos"
    rng = np.random.default_rng(SEED + 2)
    for name in ("b.png", "c.png", "z.png"):
        _write_photo(photos / name, rng)
    index_dir = tmp_path / "index"
    index_folders([photos], index_dir, encoder)
    reference = _reference_vectors(encoder, _image_files(photos))
    _write_photo(photos / "z.png", rng)  # edited: its row (the highest id) is replaced
    _write_photo(photos / "a.png", rng)  # new, encoded first in the same batch
    reference |= _reference_vectors(encoder, _image_files(photos))

    zygote.start(_job(tiny_model_dir, photos, index_dir, crash_at="before_sql_commit"))
    assert _killed(zygote.finish()), zygote.child_log()
    _check_after_kill(index_dir, photos, encoder, reference, fresh=False)


def _apply_random_changes(photos: Path, rng: random.Random, np_rng: np.random.Generator) -> None:
    """Edit, delete and rename some files and add new ones."""
    files = sorted(photos.glob("*.png"))
    picked = rng.sample(files, 18)
    for path in picked[:6]:
        _write_photo(path, np_rng)
    for path in picked[6:12]:
        path.unlink()
    for path in picked[12:]:
        (photos / "moved").mkdir(exist_ok=True)
        path.rename(photos / "moved" / f"{path.stem}_renamed.png")
    for i in range(10):
        _write_photo(photos / f"new_{i:02d}.png", np_rng)


def test_sigkill_during_reindex_with_edits_removals_and_renames(
    zygote: Zygote, tiny_model_dir: Path, encoder: Encoder, tmp_path: Path
) -> None:
    rng = random.Random(SEED + 1)
    np_rng = np.random.default_rng(SEED + 1)
    trace = tmp_path / "trace"
    timing = CommitTiming(1, 0.0, 0.0)
    mid_run = 0
    for trial in range(CHANGE_TRIALS + 1):
        photos = tmp_path / f"trial-{trial}" / "photos"
        index_dir = tmp_path / f"trial-{trial}" / "index"
        _write_photos(photos, CHANGE_PHOTOS, np_rng)
        index_folders([photos], index_dir, encoder)
        reference = _reference_vectors(encoder, _image_files(photos))
        _apply_random_changes(photos, rng, np_rng)
        reference |= _reference_vectors(encoder, _image_files(photos))

        job = _job(
            tiny_model_dir,
            photos.resolve(),
            index_dir,
            batch_size=CHANGE_BATCH_SIZE,
        )
        if trial == 0:  # the first run goes uninterrupted and measures when commits happen
            timing = _measure_commits(zygote, job, trace)
        else:
            status = _run_and_kill(zygote, job, trace, timing, rng)
            assert _killed(status) or status == 0, zygote.child_log()
            mid_run += _killed(status)
        _check_after_kill(index_dir, photos.resolve(), encoder, reference, fresh=False)
    assert mid_run >= CHANGE_TRIALS // 2, f"only {mid_run} of the kills landed mid-run ({timing})"


def test_leftover_faiss_temp_files_are_ignored_and_cleaned_by_the_next_writer(
    zygote: Zygote,
    tiny_model_dir: Path,
    crash_photos: Path,
    encoder: Encoder,
    reference: dict[str, np.ndarray],
    tmp_path: Path,
) -> None:
    index_dir = tmp_path / "index"
    for attempt in range(3):
        job = _job(tiny_model_dir, crash_photos, index_dir, crash_at="before_faiss_rename", after=1)
        zygote.start(job)
        assert _killed(zygote.finish()), zygote.child_log()
        state = _read_state(index_dir, encoder.info.dim)
        assert len(state.temp_files) == 1, f"attempt {attempt}: {state.temp_files}"
        temp = index_dir / state.temp_files[0]
        # The interrupted save is complete on disk and holds more vectors than the index.
        assert len(VectorStore.load(temp, dim=encoder.info.dim)) > len(state.vector_ids)
        _check_reader(index_dir, state, reference, encoder.info.dim)
        with Engine.open(index_dir, device="cpu") as engine:
            assert engine.stats().image_vectors == len(state.vector_ids)
        # Under the writer lock no save is in flight, so the writer drops every leftover.
        with IndexWriter(index_dir, encoder.info):
            pass
        assert _read_state(index_dir, encoder.info.dim).temp_files == ()
    _check_after_kill(index_dir, crash_photos, encoder, reference, fresh=True)


def _wait_for(
    condition: Callable[[], bool], what: str, *, poll_s: float = 0.005, timeout_s: float = PROCESS_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)


def _writer_done(index_dir: Path) -> bool:
    probe = WriterLock(index_dir)
    try:
        probe.acquire()
    except IndexLockedError:
        return False
    probe.release()
    return True


def test_second_writer_fails_fast_while_a_reader_keeps_answering(
    zygote: Zygote, tiny_model_dir: Path, crash_photos: Path, encoder: Encoder, tmp_path: Path
) -> None:
    index_dir = tmp_path / "index"
    trace, resume = tmp_path / "trace", tmp_path / "resume"
    paused_at = 2  # the writer holds the lock here until the lock checks are done
    job = _job(
        tiny_model_dir,
        crash_photos,
        index_dir,
        batch_delay_s=SLOW_BATCH_DELAY_S,
        trace=str(trace),
        pause_after=paused_at,
        resume_file=str(resume),
    )
    pid = zygote.start(job)
    try:
        _wait_for(lambda: _count_commits(trace) >= paused_at, "the writer's first commits")
        assert (index_dir / LOCK_FILE).read_text() == str(pid)

        started = time.perf_counter()
        with (
            pytest.raises(IndexLockedError, match=rf"index is locked by PID {pid}\b"),
            IndexWriter(index_dir, encoder.info),
        ):
            pass
        assert time.perf_counter() - started < 1.0, "a second writer must not wait for the lock"

        args = ["index", str(crash_photos), "--db", str(index_dir), "--model", str(tiny_model_dir)]
        result = CliRunner().invoke(app, [*args, "--device", "cpu", "--quiet"])
        assert result.exit_code == 1, result.output
        assert f"error: index is locked by PID {pid} " in result.stderr

        with Engine.open(index_dir, device="cpu") as engine:
            counts = [len(engine.search_text(QUERY, k=N_PHOTOS))]
            resume.touch()
            while not _writer_done(index_dir):
                counts.append(len(engine.search_text(QUERY, k=N_PHOTOS)))
            counts.append(len(engine.search_text(QUERY, k=N_PHOTOS)))
    finally:
        resume.touch()  # never leave the writer waiting, or finish() waits forever
        status = zygote.finish()
    assert status == 0, zygote.child_log()
    assert counts == sorted(counts), "a reader lost results while commits landed"
    assert counts[0] == paused_at * BATCH_SIZE
    assert counts[-1] == N_PHOTOS
    assert len(set(counts)) >= 3, f"the reader never saw commits land: {counts}"


RECONCILE_PHOTOS = 12


def _damage_orphan_vector(index_dir: Path, store: VectorStore, state: IndexState) -> tuple[int, int]:
    vector = np.ones((1, store.dim), np.float32) / np.sqrt(store.dim)  # (1, dim)
    store.add(np.array([max(state.rows) + 100], np.int64), vector)
    store.save(index_dir / IMAGES_FAISS)
    return 1, 0


def _damage_row_deleted(index_dir: Path, store: VectorStore, state: IndexState) -> tuple[int, int]:
    engine = catalog.open_catalog(index_dir, create=False)
    with Session(engine) as session:
        catalog.delete_images(session, [min(state.rows)])
        session.commit()
    engine.dispose()
    return 1, 1


def _damage_vector_deleted(index_dir: Path, store: VectorStore, state: IndexState) -> tuple[int, int]:
    store.remove([max(state.rows)])
    store.save(index_dir / IMAGES_FAISS)
    return 1, 1


def _damage_faiss_deleted(index_dir: Path, store: VectorStore, state: IndexState) -> tuple[int, int]:
    (index_dir / IMAGES_FAISS).unlink()
    return RECONCILE_PHOTOS, RECONCILE_PHOTOS


DAMAGE: dict[str, Callable[[Path, VectorStore, IndexState], tuple[int, int]]] = {
    "orphan vector": _damage_orphan_vector,
    "row deleted, vector kept": _damage_row_deleted,
    "vector deleted, row kept": _damage_vector_deleted,
    "images.faiss deleted": _damage_faiss_deleted,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_next_writer_repairs_hand_made_damage_and_resume_reencodes(
    damage: str, encoder: Encoder, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    _write_photos(photos, RECONCILE_PHOTOS, np.random.default_rng(SEED + 3))
    index_dir = tmp_path / "index"
    index_folders([photos], index_dir, encoder)
    reference = _reference_vectors(encoder, _image_files(photos))
    dim = encoder.info.dim
    before = _read_state(index_dir, dim)
    store = VectorStore.load(index_dir / IMAGES_FAISS, dim=dim)
    expect_repaired, expect_reencoded = DAMAGE[damage](index_dir, store, before)

    state, report = _check_after_kill(index_dir, photos.resolve(), encoder, reference, fresh=False)
    assert len(state.orphans) + len(state.missing) == expect_repaired
    assert report.new == expect_reencoded
    assert report.unchanged == RECONCILE_PHOTOS - expect_reencoded
