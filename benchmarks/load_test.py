"""Loopback load test of `mmsearch serve`: concurrent clients against a real uvicorn on 127.0.0.1.

    .venv/bin/python benchmarks/load_test.py --quick                 # 4 clients for 3 s per setup
    .venv/bin/python benchmarks/load_test.py                         # 16 clients for 20 s per setup
    .venv/bin/python benchmarks/load_test.py --db INDEX --baseline ../main --workers 2

Each server setup runs as `python -m mmsearch.cli serve` in a subprocess (so the clients'
interpreter does not slow it), on 127.0.0.1 at a free port, one after the other: this code with
batching off (`--max-batch 1`) and on (the defaults), then, if asked, another checkout's code
(`--baseline`, e.g. main before a change), `--workers N` and `--variant "FLAGS"`. This process
drives each with asyncio + httpx clients that send `GET /search?q=...&k=10` back to back until
the time is up. Beside them, the in-process engine answers the same sentences from as many threads
as there are clients (with torch's default threads and with the server's); the issue's target is
the batched server's requests/s over the faster of those. Reported per setup: requests/s, p50/p99
latency, errors, batches (GET /stats/batching) and the CPU time of the server's processes per
answer, which, unlike requests/s, does not depend on how busy the machine is. Every answer is
compared with the in-process engine's: different ids or order count as wrong answers (errors),
equal ids with other scores are counted apart. Traffic goes to 127.0.0.1 only, and the run stops
by itself.

Without --db an index of synthetic images is built once under benchmarks/work/load/ with the
bundled default model (or, if that model has not been trained, a random tiny one, which is
said in the report). Nothing is written outside benchmarks/work/.

benchmarks/run.py calls `run_load_test(index_dir, clients, seconds)`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from indexer.models.devices import serving_threads

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / "work" / "load"

DEFAULT_CLIENTS = 16  # the figure
DEFAULT_SECONDS = 20.0
QUICK_CLIENTS, QUICK_SECONDS = 4, 3.0
QUERY_K = 10
DISTINCT_QUERIES = 64
ENGINE_REPEATS = 3  # in-process passes over the sentences (first pass is warm-up)
SERVER_START_TIMEOUT_S = 180.0  # model load on a busy two-core machine
REQUEST_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
SYNTH_IMAGES, QUICK_SYNTH_IMAGES = 300, 100
SYNTH_SIZE = 96
SEED = 0
WARMUP_S = 2.0  # each server is loaded this long before the timed run (first batches, caches)
# The target: HTTP requests/s at 16 clients over the in-process engine's queries/s
# when 16 threads call search_text (batching must show, not just match the engine).
THROUGHPUT_TARGET = 1.5
# The batched setup's figures, also at the top level of the result (benchmarks/run.py reads them).
MAIN_KEYS = (
    "seconds",
    "requests",
    "requests_per_s",
    "errors",
    "wrong_answers",
    "score_diffs",
    "max_score_diff",
    "error_samples",
    "p50_ms",
    "p99_ms",
    "mean_ms",
    "max_ms",
    "server_startup_s",
    "batching",
    "vs_engine_threads",
)

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "black", "white")
SHAPES = ("circle", "square", "triangle", "star", "hexagon")
PLACES = ("on the left", "on the right", "at the top", "at the bottom", "in the middle")


def log(message: str) -> None:
    print(f"[load] {message}", file=sys.stderr, flush=True)


def sentences(count: int, rng: random.Random) -> list[str]:
    """Distinct short descriptions in the sample corpus's vocabulary."""
    found: dict[str, None] = {}
    while len(found) < count:
        found[f"a {rng.choice(COLORS)} {rng.choice(SHAPES)} {rng.choice(PLACES)}"] = None
    return list(found)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; 0 for no values."""
    return float(np.percentile(values, q)) if values else 0.0


# -- an index to hit when none is given ----------------------------------------------------------


def ensure_index(work: Path, *, images: int) -> tuple[Path, str]:
    """benchmarks/work/load/index-N over N synthetic images, built once; returns (dir, model note)."""
    from indexer.indexing.pipeline import index_folders
    from indexer.models.encoder import DEFAULT_MODEL_DIR, load_encoder
    from indexer.models.native import is_model_dir

    index_dir = work / f"index-{images}"
    note_file = index_dir / "model-note.txt"
    if note_file.is_file():
        return index_dir, note_file.read_text().strip()
    photos = work / f"photos-{images}"
    photos.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    for i in range(images):
        path = photos / f"img_{i:05d}.png"
        if not path.exists():
            blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)  # 4x4 colour blocks, stretched
            Image.fromarray(blocks).resize((SYNTH_SIZE, SYNTH_SIZE), Image.Resampling.BICUBIC).save(path)
    if is_model_dir(DEFAULT_MODEL_DIR):
        model_dir, note = DEFAULT_MODEL_DIR, "the bundled default model"
    else:
        model_dir = _random_tiny_model(work / "random-model")
        note = "a random tiny-test model (the default model is not trained: `make default-model`)"
    index_folders([photos], index_dir, load_encoder(model_dir, device="cpu"))
    note_file.write_text(note + "\n")
    return index_dir, note


def _random_tiny_model(out: Path) -> Path:
    import torch

    from indexer.models.config import load_named_config
    from indexer.models.native import build_model, is_model_dir, save_model_dir
    from indexer.models.tokenizer import tokenizer_from_sentencepiece, train_sentencepiece

    if is_model_dir(out):
        return out
    torch.manual_seed(SEED)
    proto = train_sentencepiece(sentences(200, random.Random(SEED)), vocab_size=64)
    tokenizer = tokenizer_from_sentencepiece(proto)
    config = load_named_config("tiny-test")
    config = replace(config, text=replace(config.text, vocab_size=len(tokenizer)))
    save_model_dir(build_model(config), tokenizer, out, spm_proto=proto)
    return out


# -- the server ----------------------------------------------------------------------------------


def free_port() -> int:
    """A port the OS says is free on 127.0.0.1 (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ServerSetup:
    """One way of serving the index: extra `mmsearch serve` flags, and the checkout whose code
    serves (another checkout measures a baseline, e.g. main before a change, in the same run)."""

    label: str
    flags: tuple[str, ...] = ()
    repo: Path = REPO_DIR


def start_server(
    index_dir: Path, port: int, *, model: str | None, setup: ServerSetup = ServerSetup("default")
) -> subprocess.Popen[bytes]:
    """`mmsearch serve` on 127.0.0.1:port, without a token (loopback needs none)."""
    command = [sys.executable, "-m", "mmsearch.cli", "serve", "--db", str(index_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *setup.flags]
    if model:
        command += ["--model", model]
    env = {k: v for k, v in os.environ.items() if k != "MMSEARCH_TOKEN"}
    env["PYTHONPATH"] = str(setup.repo)  # that checkout's mmsearch, not this one's
    return subprocess.Popen(
        command, cwd=setup.repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def wait_until_up(base: str, server: subprocess.Popen[bytes]) -> float:
    """Seconds until /health answers; raises with the server's stderr if it died."""
    started = time.perf_counter()
    while time.perf_counter() - started < SERVER_START_TIMEOUT_S:
        if server.poll() is not None:
            stderr = server.stderr.read().decode(errors="replace") if server.stderr else ""
            raise RuntimeError(f"mmsearch serve exited with {server.returncode}: {stderr.strip()}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"mmsearch serve did not answer within {SERVER_START_TIMEOUT_S:.0f} s")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    """SIGINT (uvicorn's graceful stop), then kill if it lingers."""
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# -- the clients ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """The in-process engine's answer to one sentence: ids best first and their scores."""

    ids: list[int]
    scores: list[float]


async def drive(
    base: str, queries: list[str], expected: dict[str, Expected], *, clients: int, seconds: float
) -> dict[str, Any]:
    """`clients` coroutines, each one request at a time, until `seconds` have passed.

    An answer whose ids (or their order) differ from the in-process engine's is wrong; one with
    the same ids whose scores differ is counted apart with the largest difference (batched
    float arithmetic may move the 4th decimal by one unit)."""
    latencies: list[float] = []
    errors: list[str] = []
    wrong = score_diffs = 0
    max_score_diff = 0.0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=REQUEST_TIMEOUT_S, limits=limits) as http:

        async def client(number: int, deadline: float) -> None:
            nonlocal wrong, score_diffs, max_score_diff
            pick = number
            while time.perf_counter() < deadline:
                query = queries[pick % len(queries)]
                pick += clients
                started = time.perf_counter()
                try:
                    response = await http.get("/search", params={"q": query, "k": QUERY_K})
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
                    continue
                results = response.json()["results"]
                want = expected[query]
                if [r["id"] for r in results] != want.ids:
                    wrong += 1
                    continue
                diff = max(
                    (abs(r["score"] - s) for r, s in zip(results, want.scores, strict=True)), default=0.0
                )
                if diff > 0:
                    score_diffs += 1
                    max_score_diff = max(max_score_diff, diff)

        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(client(n, deadline) for n in range(clients)))
        elapsed = time.perf_counter() - started
    return {
        "latencies": latencies,
        "errors": errors,
        "wrong": wrong,
        "score_diffs": score_diffs,
        "max_score_diff": max_score_diff,
        "elapsed": elapsed,
    }


# -- the in-process engine -------------------------------------------------------------------------


def engine_latencies(
    index_dir: Path, queries: list[str], *, model: str | None
) -> tuple[dict[str, Expected], list[float]]:
    """Expected answers per sentence, and the in-process search_text latency one query at a time
    (first pass is warm-up)."""
    from mmsearch.engine import Engine

    seconds: list[float] = []
    expected: dict[str, Expected] = {}
    with Engine.open(index_dir, model=model) as engine:
        for repeat in range(ENGINE_REPEATS):
            for query in queries:
                started = time.perf_counter()
                hits = engine.search_text(query, k=QUERY_K)
                if repeat:
                    seconds.append(time.perf_counter() - started)
                expected[query] = Expected([h.id for h in hits], [h.score for h in hits])
    return expected, seconds


def engine_threads(
    index_dir: Path,
    queries: list[str],
    *,
    model: str | None,
    threads: int,
    seconds: float,
    torch_threads: int | None = None,
) -> dict[str, Any]:
    """Queries/s of one in-process Engine when `threads` threads each call search_text one
    query at a time for `seconds` (what an application embedding the engine gets), with torch's
    default intra-op threads or `torch_threads`."""
    import torch

    from indexer.models.devices import torch_threads as torch_threads_set
    from mmsearch.engine import Engine

    latencies: list[list[float]] = [[] for _ in range(threads)]
    with torch_threads_set(torch_threads), Engine.open(index_dir, model=model) as engine:
        intra_op = torch.get_num_threads()
        for query in queries[:threads]:  # warm-up
            engine.search_text(query, k=QUERY_K)
        start = threading.Barrier(threads + 1)
        deadline = 0.0

        def work(number: int) -> None:
            pick = number
            start.wait()
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                engine.search_text(queries[pick % len(queries)], k=QUERY_K)
                latencies[number].append(time.perf_counter() - began)
                pick += threads

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        started, cpu_started = time.perf_counter(), time.process_time()
        deadline = started + seconds
        start.wait()
        for worker in workers:
            worker.join()
        elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    done_ms = [s * 1000 for per_thread in latencies for s in per_thread]
    return {
        "threads": threads,
        "torch_threads": intra_op,
        "queries": len(done_ms),
        "queries_per_s": round(len(done_ms) / elapsed, 1),
        "cpu_ms_per_query": round(cpu_s * 1000 / max(len(done_ms), 1), 2),
        "p50_ms": round(percentile(done_ms, 50), 2),
        "p99_ms": round(percentile(done_ms, 99), 2),
    }


# -- one run -----------------------------------------------------------------------------------------


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its descendants (Linux /proc;
    0 elsewhere). Unlike requests/s, this does not depend on how much of the machine other
    users' processes leave: it says how much work a request costs."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        parents[int(entry.name)] = int(fields[1])  # after "pid (comm)": state, ppid, ...
        used[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    tree = {pid}
    for _ in range(len(parents)):  # descendants, level by level
        grown = tree | {child for child, parent in parents.items() if parent in tree}
        if grown == tree:
            break
        tree = grown
    return sum(used.get(member, 0.0) for member in tree)


def batching_stats(base: str) -> dict[str, Any] | None:
    """GET /stats/batching, or None from a server without it (a baseline before batching)."""
    try:
        response = httpx.get(f"{base}/stats/batching", timeout=10)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def load_server(
    index_dir: Path,
    setup: ServerSetup,
    queries: list[str],
    expected: dict[str, Expected],
    *,
    model: str | None,
    clients: int,
    seconds: float,
) -> dict[str, Any]:
    """Start one server setup, warm it up, load it for `seconds`, stop it; its figures."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log(f"[{setup.label}] starting mmsearch serve {shlex.join(setup.flags)} on {base} (code: {setup.repo})")
    server = start_server(index_dir, port, model=model, setup=setup)
    try:
        startup_s = wait_until_up(base, server)
        log(
            f"[{setup.label}] up after {startup_s:.1f} s; "
            f"warming up, then {clients} clients for {seconds:g} s"
        )
        asyncio.run(drive(base, queries, expected, clients=clients, seconds=min(WARMUP_S, seconds)))
        before, cpu_before, client_before = batching_stats(base), tree_cpu_s(server.pid), time.process_time()
        run = asyncio.run(drive(base, queries, expected, clients=clients, seconds=seconds))
        cpu_s, client_s = tree_cpu_s(server.pid) - cpu_before, time.process_time() - client_before
        after = batching_stats(base)
    finally:
        stop_server(server)
    latencies_ms = [s * 1000 for s in run["latencies"]]
    requests = len(run["latencies"]) + sum(1 for e in run["errors"] if not e.startswith("HTTP"))
    result = {
        "label": setup.label,
        "flags": list(setup.flags),
        "code": str(setup.repo),
        "seconds": round(run["elapsed"], 2),
        "requests": requests,
        "requests_per_s": round(requests / run["elapsed"], 1),
        "errors": len(run["errors"]) + run["wrong"],
        "wrong_answers": run["wrong"],
        "score_diffs": run["score_diffs"],
        "max_score_diff": round(run["max_score_diff"], 6),
        "error_samples": run["errors"][:5],
        "p50_ms": round(percentile(latencies_ms, 50), 2),
        "p99_ms": round(percentile(latencies_ms, 99), 2),
        "mean_ms": round(statistics.fmean(latencies_ms), 2) if latencies_ms else 0.0,
        "max_ms": round(max(latencies_ms, default=0.0), 2),
        "server_startup_s": round(startup_s, 1),
        "batching": _batching_during(before, after),
        "cpu_ms_per_request": round(cpu_s * 1000 / max(requests, 1), 2),
        "client_cpu_ms_per_request": round(client_s * 1000 / max(requests, 1), 2),
    }
    log(f"[{setup.label}] {format_server(result)}")
    return result


def _batching_during(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    """Batches and queries of the timed run alone (the warm-up's subtracted)."""
    if before is None or after is None:
        return None
    batches = after["batches"] - before["batches"]
    queries = after["queries"] - before["queries"]
    return {
        "max_batch": after["max_batch"],
        "max_wait_ms": after["max_wait_ms"],
        "batches": batches,
        "mean_batch": round(queries / batches, 2) if batches else 0.0,
        "largest_batch": after["largest_batch"],
    }


def default_setups(
    *,
    baseline: Path | None = None,
    workers: int | None = None,
    flags: tuple[str, ...] = (),
    variants: tuple[str, ...] = (),
) -> list[ServerSetup]:
    """Baseline checkout (if given), this code with batching off, with it on (flags added), then
    with several worker processes (if asked) and each variant (more flags, e.g. "--torch-threads 2")."""
    setups = [ServerSetup("baseline", repo=baseline.resolve())] if baseline is not None else []
    setups.append(ServerSetup("unbatched", ("--max-batch", "1", *flags)))
    setups.append(ServerSetup("batched", flags))
    if workers is not None and workers > 1:
        setups.append(ServerSetup(f"batched, {workers} workers", (*flags, "--workers", str(workers))))
    for variant in variants:
        setups.append(ServerSetup(f"batched, {variant}", (*flags, *shlex.split(variant))))
    return setups


def run_load_test(
    index_dir: Path | str,
    clients: int = DEFAULT_CLIENTS,
    seconds: float = DEFAULT_SECONDS,
    *,
    model: str | None = None,
    setups: list[ServerSetup] | None = None,
) -> dict[str, Any]:
    """Serve index_dir on 127.0.0.1 in each setup and load it; the in-process engine one query
    at a time and from `clients` threads beside them. Figures in milliseconds and per second;
    the "batched" setup's are also the top-level keys (run.py reads those)."""
    if clients < 1 or seconds <= 0:
        raise ValueError("clients must be >= 1 and seconds > 0")
    index_dir = Path(index_dir).resolve()
    setups = setups or default_setups()
    queries = sentences(DISTINCT_QUERIES, random.Random(SEED))
    log(f"in-process engine: {ENGINE_REPEATS} passes over {len(queries)} sentences")
    expected, engine_s = engine_latencies(index_dir, queries, model=model)
    threaded_runs = []
    for torch_threads in (None, serving_threads()):
        threaded_runs.append(
            engine_threads(
                index_dir, queries, model=model, threads=clients, seconds=seconds, torch_threads=torch_threads
            )
        )
        log(
            f"in-process engine, {clients} threads, {threaded_runs[-1]['torch_threads']} torch threads: "
            f"{threaded_runs[-1]['queries_per_s']} queries/s"
        )
    threaded = max(threaded_runs, key=lambda run: run["queries_per_s"])  # the bar to beat
    servers = [
        load_server(index_dir, setup, queries, expected, model=model, clients=clients, seconds=seconds)
        for setup in setups
    ]
    for server in servers:
        server["vs_engine_threads"] = round(
            server["requests_per_s"] / max(threaded["queries_per_s"], 1e-9), 2
        )
    engine_ms = [s * 1000 for s in engine_s]
    main = next((s for s in servers if s["label"] == "batched"), servers[-1])
    return {
        "index_dir": str(index_dir),
        "clients": clients,
        "k": QUERY_K,
        "engine_p50_ms": round(percentile(engine_ms, 50), 2),
        "engine_p99_ms": round(percentile(engine_ms, 99), 2),
        "engine_queries": len(engine_ms),
        "engine_threads": threaded,
        "engine_threads_runs": threaded_runs,
        "servers": servers,
        "throughput_target": THROUGHPUT_TARGET,
        **{key: main[key] for key in MAIN_KEYS},
    }


def format_server(server: dict[str, Any]) -> str:
    """One setup's figures on one line."""
    batching = server.get("batching")
    batches = (
        f", batches of {batching['mean_batch']} on average (largest {batching['largest_batch']})"
        if batching and batching["batches"]
        else ""
    )
    return (
        f"p50 {server['p50_ms']:.2f} ms  p99 {server['p99_ms']:.2f} ms  "
        f"{server['requests_per_s']:.1f} requests/s  "
        f"({server['requests']} requests, {server['errors']} errors, "
        f"{server['wrong_answers']} wrong answers, {server['score_diffs']} with a score off by "
        f"<= {server['max_score_diff']:g}){batches}; "
        f"CPU {server['cpu_ms_per_request']:.2f} ms per request in the server"
    )


def format_report(result: dict[str, Any]) -> str:
    """A few lines for a terminal or a Markdown report."""
    lines = [
        f"loopback load test: {result['clients']} clients, "
        f"GET /search k={result['k']} on {result['index_dir']}",
    ]
    for threaded in result["engine_threads_runs"]:
        lines.append(
            f"  in-process, {threaded['threads']} threads ({threaded['torch_threads']} torch): "
            f"{threaded['queries_per_s']:.1f} queries/s  "
            f"p50 {threaded['p50_ms']:.2f} ms  p99 {threaded['p99_ms']:.2f} ms; "
            f"CPU {threaded['cpu_ms_per_query']:.2f} ms per query"
        )
    lines += [
        f"  in-process, one at a time: "
        f"p50 {result['engine_p50_ms']:.2f} ms  p99 {result['engine_p99_ms']:.2f} ms"
        f"  ({result['engine_queries']} queries)",
    ]
    for server in result["servers"]:
        flags = shlex.join(server["flags"]) or "defaults"
        lines.append(
            f"  HTTP {server['label']} ({flags}): {format_server(server)}; "
            f"{server['vs_engine_threads']:.2f}x the faster in-process run"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, build the default index if needed, run, print; 1 if any request failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--db", type=Path, help="index to serve (default: a synthetic one under work/)")
    parser.add_argument("--images", type=int, help=f"synthetic images without --db (default {SYNTH_IMAGES})")
    parser.add_argument("--model", help="model for the index (default: the index's own)")
    parser.add_argument("--clients", type=int, help=f"concurrent clients (default {DEFAULT_CLIENTS})")
    parser.add_argument("--seconds", type=float, help=f"duration per setup (default {DEFAULT_SECONDS:g})")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="CHECKOUT",
        help="also serve from this checkout first (e.g. /work/main before a change), in the same run",
    )
    parser.add_argument("--workers", type=int, help="also serve with this many worker processes")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="FLAGS",
        help='also serve batched with these flags added (repeatable), e.g. --variant "--torch-threads 2"',
    )
    parser.add_argument(
        "--serve-flag",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra `mmsearch serve` flag for the batched setups (repeatable), "
        "e.g. --serve-flag=--max-batch=16",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_CLIENTS} clients for {QUICK_SECONDS:g} s: a harness check",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    clients = args.clients or (QUICK_CLIENTS if args.quick else DEFAULT_CLIENTS)
    seconds = args.seconds or (QUICK_SECONDS if args.quick else DEFAULT_SECONDS)
    if clients < 1 or seconds <= 0:
        parser.error("--clients must be >= 1 and --seconds > 0")
    if args.db is not None:
        index_dir, note = args.db, "the index's own model"
    else:
        images = args.images or (QUICK_SYNTH_IMAGES if args.quick else SYNTH_IMAGES)
        log(f"index: {images} synthetic images under {WORK_DIR} (built once, then reused)")
        index_dir, note = ensure_index(WORK_DIR, images=images)
    setups = default_setups(
        baseline=args.baseline,
        workers=args.workers,
        flags=tuple(args.serve_flag),
        variants=tuple(args.variant),
    )
    result = run_load_test(index_dir, clients, seconds, model=args.model, setups=setups)
    result["model"] = note
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2) if args.json else format_report(result) + f"\n  model: {note}")
    return 1 if any(server["errors"] for server in result["servers"]) else 0


if __name__ == "__main__":
    sys.exit(main())
