"""CLI start-up: wall time of `mmsearch --help`, `mmsearch info` and a no-change `mmsearch index`.

    .venv/bin/python benchmarks/startup.py                         # this checkout, printed
    .venv/bin/python benchmarks/startup.py --results benchmarks/RESULTS.md   # (make bench)
    .venv/bin/python benchmarks/startup.py --baseline /work/main/.venv/bin/python:/work/main

Each command runs as a user runs it: a new process through the console entry point
(`from mmsearch.cli import main; main()`), timed from spawn to exit, and reports whether it
imported torch or transformers. With --baseline, the other checkout (PYTHON:ROOT) runs the same
commands on the same index, interleaved run by run, so both see the same machine load. The
re-index folder is benchmarks/work/small-N (shared with benchmarks/run.py, generated once).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# isort: split
# Helper modules beside this script (benchmarks/ is on sys.path when run as benchmarks/startup.py).
import report
import synth

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SECTION_TITLE = "## CLI start-up"
# Goals from issue 10, in seconds.
GOALS = {"help": 0.5, "info": 1.0, "reindex": 2.5}
MODEL_MODULES = ("torch", "transformers")
GENERATION_PROCESSES = 2  # the machine has two cores
# The console script's own code, plus a line on stderr naming the model libraries imported.
ENTRY = (
    "import atexit, json, sys\n"
    f"heavy = {MODEL_MODULES!r}\n"
    "atexit.register(lambda: print('IMPORTED ' + json.dumps([m for m in heavy if m in sys.modules]),"
    " file=sys.stderr))\n"
    "from mmsearch.cli import main\n"
    "sys.argv[0] = 'mmsearch'\n"
    "sys.exit(main())\n"
)


@dataclass(frozen=True)
class Build:
    """One checkout of mmsearch and the interpreter that runs it."""

    label: str
    python: Path
    root: Path

    def command(self, args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """argv and environment of `mmsearch ARGS` from this checkout."""
        env = {**os.environ, "PYTHONPATH": str(self.root)}
        return [str(self.python), "-c", ENTRY, *args], env


@dataclass
class Timings:
    """Wall times of one command under one build, and what it imported."""

    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # user + system time of the process
    imported: set[str] = field(default_factory=set)

    @property
    def median(self) -> float:
        """Median wall time in seconds."""
        return statistics.median(self.seconds)


@dataclass(frozen=True)
class ProcessCost:
    """What one process cost: wall time, CPU time, and the model libraries it imported."""

    seconds: float
    cpu_seconds: float
    imported: list[str]


def run_once(build: Build, args: Sequence[str]) -> ProcessCost:
    """Run one `mmsearch ARGS` process to its exit and say what it cost."""
    argv, env = build.command(args)
    cpu_before = _children_cpu_seconds()
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=build.root)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"startup: `mmsearch {' '.join(args)}` ({build.label}) failed:\n{done.stderr}")
    marker = [line for line in done.stderr.splitlines() if line.startswith("IMPORTED ")]
    imported = json.loads(marker[-1].removeprefix("IMPORTED ")) if marker else []
    return ProcessCost(elapsed, _children_cpu_seconds() - cpu_before, imported)


def _children_cpu_seconds() -> float:
    """User + system CPU time of every finished child so far: less sensitive than wall time to
    other jobs on a shared machine (it still grows when they evict caches)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def prepare_index(build: Build, folder: Path, index_dir: Path, model: Path | None = None) -> None:
    """A fresh index of `folder` built once, untimed, by the measured build; `model` lets an
    older baseline read it (a model folder written in a format both builds know)."""
    if index_dir.exists():
        shutil.rmtree(index_dir)
    extra = ["--model", str(model)] if model is not None else []
    argv, env = build.command(["index", str(folder), "--db", str(index_dir), "--quiet", *extra])
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=build.root)
    if done.returncode != 0:
        raise SystemExit(f"startup: indexing {folder} ({build.label}) failed:\n{done.stderr}")


def measure(
    builds: Sequence[Build], folder: Path, index_dir: Path, repeats: int
) -> dict[str, dict[str, Timings]]:
    """{command: {build label: Timings}}, the builds interleaved within each repeat."""
    commands = {
        "help": ["--help"],
        "info": ["info", "--db", str(index_dir)],
        "reindex": ["index", str(folder), "--db", str(index_dir), "--quiet"],
    }
    results = {name: {b.label: Timings() for b in builds} for name in commands}
    for name, args in commands.items():
        for build in builds:
            run_once(build, args)  # warm the page cache; not counted
        for _ in range(repeats):
            for build in builds:
                cost = run_once(build, args)
                timings = results[name][build.label]
                timings.seconds.append(cost.seconds)
                timings.cpu_seconds.append(cost.cpu_seconds)
                timings.imported.update(cost.imported)
    return results


def render(
    builds: Sequence[Build],
    results: dict[str, dict[str, Timings]],
    *,
    folder: Path,
    files: int,
    repeats: int,
    load_before: str,
    model: Path | None = None,
) -> str:
    """The "CLI start-up" section as Markdown."""
    labels = [b.label for b in builds]
    names = {
        "help": "`mmsearch --help`",
        "info": "`mmsearch info`",
        "reindex": f"no-change `mmsearch index` of {files:,} files",
    }
    lines = [
        SECTION_TITLE,
        "",
        "| command | " + " | ".join(f"{label}: wall median (min-max); CPU" for label in labels) + " | goal |",
        "|---|" + "---|" * len(labels) + "---|",
    ]
    for name, timings in results.items():
        cells = [_cell(timings[label]) for label in labels]
        met = timings[labels[-1]].median < GOALS[name]
        verdict = "met" if met else "**missed**"
        lines.append(f"| {names[name]} | " + " | ".join(cells) + f" | < {GOALS[name]:g} s: {verdict} |")
    lines += ["", "Parameters:", ""]
    lines += [f"- {b.label}: {_revision(b.root)} at {b.root}, run by {b.python}" for b in builds]
    lines += [
        f"- each command: {repeats} timed runs per build after one untimed warm-up, builds interleaved "
        "run by run; wall time from process spawn to exit through the console entry point; CPU = median "
        "user + system time of the process (all its threads)",
        f"- index: {files:,} {synth.SMALL_SIZE}px PNGs in {folder.name}/ (benchmarks/synth.py), indexed "
        f"once, untimed, with {'the model in ' + str(model) if model else 'the bundled model'} by the "
        f"'{builds[-1].label}' build; info and re-index use it",
        "- imports: `torch`/`transformers` found in `sys.modules` at the exit of any timed run",
        f"- goal: issue 10's, checked against the median wall time of the '{labels[-1]}' build",
        f"- load average (1/5/15 min) at start: {load_before}; at end: {report.load_average()} (2 cores "
        "shared with other jobs, so single runs vary; medians of interleaved runs compare fairly)",
    ]
    return "\n".join(lines) + "\n"


def _revision(root: Path) -> str:
    """The checkout's commit, or (for an exported tree such as `git archive`) that it has none."""
    revision = report.git_revision(root)
    return f"commit {revision}" if revision != "unknown" else "an exported tree (no git metadata)"


def _cell(timings: Timings) -> str:
    imported = ", ".join(sorted(timings.imported)) or "no model library"
    return (
        f"**{timings.median:.2f} s** ({min(timings.seconds):.2f}-{max(timings.seconds):.2f}); "
        f"CPU {statistics.median(timings.cpu_seconds):.2f} s; imports {imported}"
    )


def write_section(results_file: Path, section: str) -> None:
    """Replace the CLI start-up section of a results file (or append it). It ends at the next
    heading or at the next section marker (`<!-- name:begin -->` comes before its heading: eating
    it once made bench-scale append a second copy of its section)."""
    text = results_file.read_text() if results_file.exists() else ""
    pattern = re.compile(rf"^{re.escape(SECTION_TITLE)}\n.*?(?=^## |^<!-- |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = (text.rstrip() + "\n\n" if text else "") + section
    results_file.write_text(text)


def parse_build(value: str, label: str) -> Build:
    """PYTHON:ROOT -> Build."""
    python, sep, root = value.partition(":")
    if not sep or not python or not root:
        raise argparse.ArgumentTypeError(
            f"{value!r}: give PYTHON:ROOT, e.g. /work/main/.venv/bin/python:/work/main"
        )
    return Build(label, Path(python), Path(root).resolve())


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, then print the section or write it into --results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--baseline", help="another checkout to compare, as PYTHON:ROOT (label: before)")
    parser.add_argument("--files", type=int, default=10_000, help="files in the re-indexed folder")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per command and build")
    parser.add_argument(
        "--work", type=Path, default=BENCH_DIR / "work", help="generated inputs and the index"
    )
    parser.add_argument("--results", type=Path, help="write the section into this Markdown file")
    parser.add_argument(
        "--model",
        type=Path,
        help="model folder the index is built with (default: the bundled one); give an older "
        "model folder when the baseline cannot read this release's model config",
    )
    args = parser.parse_args(argv)
    current = Build("after" if args.baseline else "this checkout", Path(sys.executable), REPO_DIR)
    builds = [current] if not args.baseline else [parse_build(args.baseline, "before"), current]
    load_before = report.load_average()
    small = synth.ensure_small_files(args.work, count=args.files, processes=GENERATION_PROCESSES)
    index_dir = args.work / f"startup-index-{args.files}"
    print(f"startup: indexing {args.files} files into {index_dir} (untimed)", flush=True)
    prepare_index(builds[-1], small.folder, index_dir, args.model)
    results = measure(builds, small.folder, index_dir, args.repeats)
    section = render(
        builds,
        results,
        folder=small.folder,
        files=args.files,
        repeats=args.repeats,
        load_before=load_before,
        model=args.model,
    )
    if args.results:
        write_section(args.results, section)
        print(f"startup: section written to {args.results}")
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
