"""The Engine's cost over raw FAISS at an earlier commit and at this checkout, in one run.

    .venv/bin/python benchmarks/engine_ab.py --before 63711ba            # N = 1e4, 1e5; every kind
    .venv/bin/python benchmarks/engine_ab.py --before HEAD~3 --sizes 10000 --kinds ivf --rounds 1

For every (N, kind): one index folder built by this checkout (the on-disk format is shared), then
`--rounds` pairs of fresh processes, one per tree, in alternating order (before, after, after,
before, ...). Each process times what `make bench-scale` times through the Engine: a search by
vector and a sentence query, each interleaved query by query with raw FAISS (+ text encoding)
on the same index. Reported: the median over the rounds of each p50 and of each ratio. The
earlier commit runs from a `git worktree` of it, with this checkout's virtualenv.

The table is written between markers into benchmarks/RESULTS.md (--out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# Run as a script, so Python puts this folder first on the path: `scale` and `report` import as
# siblings (lazily: a measuring child imports mmsearch from its own tree first).
BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
BEGIN, END = "<!-- engine-ab:begin -->", "<!-- engine-ab:end -->"
KINDS = ("flat", "ivf", "sq8", "ivfpq", "hnsw")
SIZES = (10_000, 100_000)
TREES = ("before", "after")


def measure(folder: Path, queries_file: Path) -> dict[str, float]:
    """In a child process whose PYTHONPATH is one tree: p50 ms of the Engine and of raw FAISS."""
    import faiss
    import numpy as np
    import torch

    import mmsearch
    from indexer.store import vectors as vector_module
    from mmsearch.engine import Engine

    tree = Path(os.environ["PYTHONPATH"]).resolve()
    if not Path(mmsearch.__file__).resolve().is_relative_to(tree):  # the installed checkout won
        raise RuntimeError(f"measuring {tree} but mmsearch was imported from {mmsearch.__file__}")

    import scale  # this checkout's harness: the timing and the sentences are the same for both trees

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    queries = np.load(queries_file)
    factors = getattr(vector_module, "RERANK_FACTORS", {})
    with Engine.open(folder, device="cpu") as engine:
        store = vector_module.VectorStore.load(folder / "images.faiss", dim=queries.shape[1])
        index, encoder = store.index, engine.encoder
        # the factor this tree searches with (a tuned one is read from beside the FAISS file)
        fetch = scale.K * int(store.params().get("rerank", factors.get(store.kind, 1)))
        sentences = scale.QUERY_SENTENCES
        vector_s, raw_s = scale.timed_pair(
            lambda i: engine.search_vector(queries[i % len(queries)], scale.K),
            lambda i: index.search(queries[i % len(queries)][None], fetch),
            scale.SINGLE_QUERIES,
        )
        text_s, enc_s = scale.timed_pair(
            lambda i: engine.search_text(sentences[i % len(sentences)], k=scale.K),
            lambda i: index.search(encoder.encode_texts([sentences[i % len(sentences)]]), fetch),
            scale.SINGLE_QUERIES,
        )
    p50 = {name: scale.percentiles(s)[0] for name, s in (("vector", vector_s), ("vector_raw", raw_s))}
    p50.update({name: scale.percentiles(s)[0] for name, s in (("text", text_s), ("text_raw", enc_s))})
    return p50


@contextlib.contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """A detached checkout of revision in a temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="mmsearch-ab-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "--quiet", str(path), revision], cwd=REPO_DIR, check=True
        )
        try:
            yield path
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO_DIR, check=False)


def run_tree(tree: Path, folder: Path, queries_file: Path) -> dict[str, float]:
    """measure() in a fresh process importing mmsearch and indexer from `tree` (run from the
    temporary folder, so this checkout's own path never comes first)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, __file__, "--measure", str(folder), "--queries", str(queries_file)],
        cwd=folder.parent,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"measuring {tree} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(before: Path, sizes: list[int], kinds: list[str], rounds: int) -> list[dict[str, object]]:
    """Every (N, kind): per tree, the median over rounds of each p50 and of each ratio."""
    import numpy as np
    import scale

    from indexer.models.encoder import load_encoder
    from indexer.store.index_types import ArraySource, BuildSpec, build_index

    encoder = load_encoder(None, device="cpu")
    trees = {"before": before, "after": REPO_DIR}
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="mmsearch-ab-work-") as tmp:
        work = Path(tmp)
        for n in sizes:
            held_out = max(scale.RECALL_QUERIES, scale.SINGLE_QUERIES + scale.WARMUP)
            generated = scale.clustered(
                n + held_out, encoder.info.dim, seed=scale.SEED + n + encoder.info.dim
            )
            vectors, queries = generated[:n], generated[n:]
            ids = np.arange(1, n + 1, dtype=np.int64)
            queries_file = work / f"queries-{n}.npy"
            np.save(queries_file, queries)
            for kind in kinds:
                store = build_index(ArraySource(ids, vectors), encoder.info.dim, BuildSpec(kind)).store  # type: ignore[arg-type]
                folder = scale.engine_folder(store, ids, vectors, work, encoder)
                runs: dict[str, list[dict[str, float]]] = {tree: [] for tree in TREES}
                for r in range(rounds):
                    for tree in TREES if r % 2 == 0 else TREES[::-1]:
                        runs[tree].append(run_tree(trees[tree], folder, queries_file))
                row: dict[str, object] = {"n": n, "kind": kind}
                for tree in TREES:
                    got = runs[tree]
                    row[tree] = {
                        "vector": statistics.median(g["vector"] for g in got),
                        "vector_ratio": statistics.median(g["vector"] / g["vector_raw"] for g in got),
                        "text": statistics.median(g["text"] for g in got),
                        "text_ratio": statistics.median(g["text"] / g["text_raw"] for g in got),
                    }
                rows.append(row)
                print(render_row(row), file=sys.stderr, flush=True)
                scale._remove_tree(folder)
    return rows


def render_row(row: dict[str, object]) -> str:
    b, a = row["before"], row["after"]
    assert isinstance(b, dict) and isinstance(a, dict)
    return (
        f"| {row['n']:,} | {row['kind']} | {b['vector']:.3f} ({b['vector_ratio']:.2f}x) "
        f"| {a['vector']:.3f} ({a['vector_ratio']:.2f}x) | {b['text']:.3f} ({b['text_ratio']:.2f}x) "
        f"| {a['text']:.3f} ({a['text_ratio']:.2f}x) |"
    )


def render(
    rows: list[dict[str, object]], *, before: str, after: str, command: str, minutes: float, load: str
) -> str:
    """The Markdown section."""
    import report

    lines = [
        BEGIN,
        "",
        "## The Engine's cost over raw FAISS, before and after (`benchmarks/engine_ab.py`)",
        "",
        f"Command: `{command}`; wall time {minutes:.1f} min; before = {before}, after = {after}; "
        f"load average at start {load}, at end {report.load_average()}. Per (N, kind) one index "
        "folder, then fresh processes of each tree in alternating order; each figure is the median "
        "over those processes of a p50 (ms) and, in brackets, of its ratio to raw FAISS (+ text "
        "encoding for the sentence query) timed interleaved with it in the same process.",
        "",
        "| N | kind | search by vector, before | after | sentence query, before | after |",
        "|---|---|---|---|---|---|",
        *(render_row(row) for row in rows),
        "",
        END,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", help="the earlier commit (any git revision)")
    parser.add_argument("--sizes", default=",".join(str(n) for n in SIZES))
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--rounds", type=int, default=3, help="process pairs per (N, kind)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "RESULTS.md")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--queries", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.queries)))
        return 0
    if not args.before:
        parser.error("--before REV is required (the commit to compare this checkout with)")
    import report

    started, load = time.perf_counter(), report.load_average()
    before = subprocess.run(
        ["git", "rev-parse", "--short", args.before],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    if before.returncode != 0:
        parser.error(f"--before {args.before}: not a revision of this repository")
    with worktree(args.before) as tree:
        rows = compare(tree, [int(s) for s in args.sizes.split(",")], args.kinds.split(","), args.rounds)
    section = render(
        rows,
        before=before.stdout.strip(),
        after=report.git_revision(REPO_DIR),
        command="benchmarks/engine_ab.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        minutes=(time.perf_counter() - started) / 60,
        load=load,
    )
    report.write_marked_section(args.out, section, BEGIN, END)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
