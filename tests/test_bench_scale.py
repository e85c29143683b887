"""benchmarks/scale.py: `--real-only` rewrites the real-embeddings recall table and nothing else, and
the real vectors kept between runs are keyed by the model and the corpus."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support import REPO, load_script

BENCH_DIR = REPO / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))  # scale.py imports its sibling report.py
try:
    scale = load_script(BENCH_DIR / "scale.py", "mmsearch_bench_scale")
finally:
    sys.path.remove(str(BENCH_DIR))

SAMPLE = scale.RealResult(
    "sample corpus, bundled model", 5050, 128, [("ivf (IVF115,FlatIP nprobe=8)", 0.975, 0.989, 0.999)]
)
EMOJI = scale.RealResult(
    "emoji corpus, emoji model",
    4858,
    256,
    [("ivf (IVF110,FlatIP nprobe=8)", 0.91, 0.95, 0.999), ("hnsw (HNSW32)", 0.99, 1.0, 1.0)],
)
BEFORE_TABLE = (
    "# results\n\n<!-- other:begin -->\nother | section\n<!-- other:end -->\n\n"
    f"{scale.BEGIN}\n\n## Index types at scale\n\n| N | kind |\n|---|---|\n| 10 | ivf |\n\n"
)
OLD_TABLE = (
    f"{scale.REAL_INTRO}: the bundled model's vectors, old words.\n\n"
    "| kind | real, caption queries | real, image queries | synthetic |\n|---|---|---|---|\n"
    "| ivf (old) | 0.100 | 0.200 | 0.300 |\n"
)
AFTER_TABLE = f"\nReading these figures:\n\n- a note | with a pipe\n\n{scale.END}\n\ntail\n"


def block(*reals: object) -> str:
    return "\n".join(scale.render_real(list(reals), provenance="Re-measured alone."))


def test_real_only_replaces_the_paragraph_and_table_and_keeps_every_other_byte() -> None:
    new = block(SAMPLE, EMOJI)
    out = scale.replace_real_block(BEFORE_TABLE + OLD_TABLE + AFTER_TABLE, new)
    assert out == BEFORE_TABLE + new + "\n" + AFTER_TABLE
    assert scale.replace_real_block(out, new) == out  # a second re-measure finds its own block


def test_a_section_without_the_table_gets_it_before_the_end_marker() -> None:
    text = BEFORE_TABLE + AFTER_TABLE
    out = scale.replace_real_block(text, block(SAMPLE))
    head, tail = text.split(scale.END)
    assert out == head.rstrip("\n") + "\n\n" + block(SAMPLE) + "\n\n" + scale.END + tail


def test_the_full_section_holds_a_block_real_only_can_find() -> None:
    section = scale.render(
        [],
        [SAMPLE],
        command="benchmarks/scale.py",
        elapsed_s=1.0,
        load_start="0",
        load_end="0",
        quick=True,
        plot_name="scale.png",
    )
    out = scale.replace_real_block(section, block(EMOJI))
    assert "| ivf (IVF115,FlatIP nprobe=8) | 0.975" not in out
    assert block(EMOJI) in out
    assert out.startswith(section[: section.index(scale.REAL_INTRO)])
    assert out.endswith(scale.END + "\n")


def test_one_row_group_per_set_in_order() -> None:
    lines = block(SAMPLE, EMOJI).splitlines()
    table = lines[lines.index("|---|---|---|---|") + 1 :]
    assert table == [
        "| **sample corpus, bundled model** (5,050 images, 128-d) | | | |",
        "| ivf (IVF115,FlatIP nprobe=8) | 0.975 | 0.989 | 0.999 |",
        "| **emoji corpus, emoji model** (4,858 images, 256-d) | | | |",
        "| ivf (IVF110,FlatIP nprobe=8) | 0.910 | 0.950 | 0.999 |",
        "| hnsw (HNSW32) | 0.990 | 1.000 | 1.000 |",
    ]


@pytest.mark.parametrize(
    "text",
    ["# results, no section\n", f"{scale.BEGIN}\n{scale.REAL_INTRO}: words.\n\nno table\n{scale.END}\n"],
)
def test_a_file_it_cannot_edit_safely_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        scale.replace_real_block(text, block(SAMPLE))


def test_the_vector_cache_is_keyed_by_model_and_corpus(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "corpus.jsonl").write_text('{"image": "a.png", "caption": "a"}\n')
    work = tmp_path / "work"
    first = scale.real_cache_dir(corpus, "native:0123456789abcdef", work)
    assert first.parent == work and first.name.startswith("scale-real-native-0123456789abcdef-")
    assert scale.real_cache_dir(corpus / "corpus.jsonl", "native:0123456789abcdef", work) == first
    assert scale.real_cache_dir(corpus, "model-b", work) != first  # a retrained model
    (corpus / "corpus.jsonl").write_text('{"image": "b.png", "caption": "b"}\n')
    assert scale.real_cache_dir(corpus, "native:0123456789abcdef", work) != first  # a rebuilt corpus


def test_the_startup_section_is_rewritten_without_eating_the_next_sections_marker(tmp_path: Path) -> None:
    """benchmarks/startup.py replaces its own section only: the begin marker of the section after
    it stays, so `make bench-scale` finds and replaces its section instead of adding another."""
    sys.path.insert(0, str(BENCH_DIR))
    try:
        startup = load_script(BENCH_DIR / "startup.py", "mmsearch_bench_startup")
    finally:
        sys.path.remove(str(BENCH_DIR))
    results = tmp_path / "RESULTS.md"
    results.write_text(
        "# results\n\n## CLI start-up\n\nold figures\n\n"
        f"{scale.BEGIN}\n\n## Index types at scale\n\nscale figures\n{scale.END}\n"
    )
    startup.write_section(results, "## CLI start-up\n\nnew figures\n")
    text = results.read_text()
    assert "new figures" in text and "old figures" not in text
    assert text.count(scale.BEGIN) == 1 and text.index(scale.BEGIN) > text.index("new figures")
    section = f"{scale.BEGIN}\nnew scale\n{scale.END}"
    scale.report.write_marked_section(results, section, scale.BEGIN, scale.END)
    text = results.read_text()
    assert "## Index types at scale" not in text and text.count("new scale") == 1


def test_a_run_without_a_set_keeps_its_rows_from_the_file_marked_as_earlier() -> None:
    """A full run given only the sample corpus must not erase the emoji rows measured before."""
    before = BEFORE_TABLE + block(SAMPLE, EMOJI) + "\n" + AFTER_TABLE
    fresh = scale.RealResult(SAMPLE.label, 5050, 128, [("ivf (IVF129,FlatIP nprobe=8)", 0.976, 0.995, 1.0)])
    kept = scale.with_earlier_reals([fresh], before)
    assert [r.label for r in kept] == [SAMPLE.label, EMOJI.label]
    assert kept[0] is fresh and kept[1].carried and kept[1].rows == EMOJI.rows
    rendered = "\n".join(scale.render_real(kept))
    assert f"| **{EMOJI.label}** (4,858 images, 256-d; measured in an earlier run) | | | |" in rendered
    assert "| ivf (IVF110,FlatIP nprobe=8) | 0.910 | 0.950 | 0.999 |" in rendered
    # Carried again by a later run, it is read back the same (no mark piles up).
    again = scale.with_earlier_reals([], BEFORE_TABLE + rendered + "\n" + AFTER_TABLE)
    assert [(r.label, r.n, r.dim, r.rows, r.carried) for r in again] == [
        (fresh.label, 5050, 128, fresh.rows, True),
        (EMOJI.label, 4858, 256, EMOJI.rows, True),
    ]
    assert scale.with_earlier_reals([], BEFORE_TABLE + AFTER_TABLE) == []
