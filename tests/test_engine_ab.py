"""benchmarks/engine_ab.py: the before/after comparison measures each tree's own code, and says
what is wrong with a revision it cannot use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO

SCRIPT = REPO / "benchmarks" / "engine_ab.py"


def run_ab(*args: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_tiny_run_measures_both_trees_and_writes_its_section(tmp_path: Path) -> None:
    """One flat index of 2,000 vectors, one process per tree (HEAD against this checkout): both
    import their own tree (the child refuses otherwise), and the section holds the row."""
    out = tmp_path / "RESULTS.md"
    out.write_text("# results\n\n<!-- other:begin -->\nkept\n<!-- other:end -->\n")
    done = run_ab("--before", "HEAD", "--sizes", "2000", "--kinds", "flat", "--rounds", "1", out=out)
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    assert "<!-- other:begin -->\nkept\n<!-- other:end -->" in text
    row = next(line for line in text.splitlines() if line.startswith("| 2,000 | flat |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert len(cells) == 6 and all(cell.endswith("x)") for cell in cells[2:])
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=REPO, capture_output=True, text=True)
    assert "mmsearch-ab-" not in worktrees.stdout  # the earlier tree is removed afterwards


@pytest.mark.parametrize(
    ("args", "words"),
    [((), "--before REV is required"), (("--before", "no-such-revision-xyz"), "not a revision")],
)
def test_a_missing_or_unknown_revision_is_refused(tmp_path: Path, args: tuple[str, ...], words: str) -> None:
    out = tmp_path / "RESULTS.md"
    done = run_ab(*args, out=out)
    assert done.returncode == 2 and words in done.stderr
    assert not out.exists()
