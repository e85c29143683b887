"""The machine a benchmark ran on, and the Markdown report it writes."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import PIL
import torch

from indexer.models.encoder import Encoder

KIB_PER_GIB = 1024 * 1024
# A section another script writes into the results file (benchmarks/ingest.py), between markers.
MARKED_SECTION = re.compile(r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->", re.DOTALL)


@dataclass
class Section:
    """One measurement: a two-column table, the parameters that produced it, and notes."""

    title: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, value: str) -> None:
        """Append one table row."""
        self.rows.append((name, value))


def cpu_model() -> str:
    """The `model name` line of /proc/cpuinfo (falls back to platform.processor())."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: platform.processor() below is the best we have
    return platform.processor() or "unknown"


def memory_gib() -> str:
    """Total RAM from /proc/meminfo, or 'unknown'."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / KIB_PER_GIB:.1f} GiB"
    except OSError:
        pass  # not Linux
    return "unknown"


def load_average() -> str:
    """1/5/15-minute load averages: other work on the machine skews every figure."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def git_revision(repo: Path) -> str:
    """Short commit of the checkout, with '+dirty' when the working tree has changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def gpu_description() -> str:
    """'none' unless torch sees a CUDA device; this harness never reports GPU figures."""
    if not torch.cuda.is_available():
        return "none"
    return f"{torch.cuda.get_device_name(0)} (present, not used for these figures)"


def machine_rows(encoder: Encoder, repo: Path) -> list[tuple[str, str]]:
    """The header table: when, where, with what software and which model."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = encoder.info
    return [
        ("date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("CPU", cpu_model()),
        ("cores", f"{os.cpu_count()} logical, {affinity} usable by this process"),
        ("RAM", memory_gib()),
        ("GPU", gpu_description()),
        ("load average at start (1/5/15 min)", load_average()),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
        ("torch", f"{torch.__version__} ({torch.get_num_threads()} intra-op threads)"),
        ("faiss", faiss.__version__),
        ("Pillow", PIL.__version__),
        ("numpy", np.__version__),
        ("mmsearch commit", git_revision(repo)),
        ("model", f"{info.kind} {info.source}"),
        ("model id", info.model_id),
        ("embedding dim", str(info.dim)),
        ("model input", f"{encoder.preprocess_config.image_size} px, {encoder.preprocess_config.resize}"),
    ]


def _table(rows: list[tuple[str, str]], header: tuple[str, str]) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return lines


def render(
    *,
    machine: list[tuple[str, str]],
    sections: list[Section],
    command: str,
    quick: bool,
    elapsed_s: float,
) -> str:
    """The whole report as Markdown."""
    lines = ["# mmsearch benchmark results", ""]
    if quick:
        lines += [
            "> **Quick run (`--quick`)**: scaled-down inputs to check the harness. These figures "
            "are not the issue's benchmark and are not comparable with a full run.",
            "",
        ]
    lines += [f"Command: `{command}`  ", f"Total wall time of the run: {elapsed_s:.1f} s", ""]
    lines += [*_table(machine, ("machine", "")), ""]
    for number, section in enumerate(sections, start=1):
        lines += [f"## {number}. {section.title}", ""]
        lines += [*_table(section.rows, ("measurement", "value")), ""]
        if section.params:
            lines += ["Parameters:", ""]
            lines += [*(f"- {name}: {value}" for name, value in section.params.items()), ""]
        for note in section.notes:
            lines += [note, ""]
    return "\n".join(lines).rstrip() + "\n"


def keep_marked_sections(previous: str, text: str) -> str:
    """text, followed by the marked sections of the previous results file: a rewrite keeps them."""
    kept = [m.group(0) for m in MARKED_SECTION.finditer(previous)]
    return text.rstrip() + "".join(f"\n\n{section}" for section in kept) + "\n"


def write_marked_section(path: Path, section: str, begin: str, end: str) -> None:
    """Replace the section between `begin` and `end` in the results file (or append it); a
    section starts with `begin` and ends with `end` itself."""
    text = path.read_text() if path.exists() else "# mmsearch benchmark results\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section.strip() + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)
