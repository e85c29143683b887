"""The `mmsearch` command through typer's CliRunner: output shapes, defaults and error lines."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from click.testing import Result
from support import reference_recall
from typer.testing import CliRunner

from indexer.models.encoder import load_encoder
from indexer.models.native import CONFIG_FILE, WEIGHTS_FILE, load_model_dir
from indexer.store.catalog import CATALOG_FILE
from indexer.training.corpora import load_corpus
from mmsearch.cli import app
from mmsearch.paths import HOME_ENV

if TYPE_CHECKING:
    from conftest import PhotoFolder

Run = Callable[..., Result]

COLORS = ("red", "green", "blue", "yellow")
METRIC_KEYS = {"R@1", "R@5", "R@10", "medr"}
EVAL_ROUNDING = 1e-4  # `mmsearch eval` rounds recalls to four decimals


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$MMSEARCH_HOME for the test: the default --db is HOME/index."""
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def run() -> Run:
    runner = CliRunner()

    def invoke(*args: object) -> Result:
        return runner.invoke(app, [str(a) for a in args])

    return invoke


@pytest.fixture
def indexed(home: Path, photo_folder: PhotoFolder, colors_model: Path, run: Run) -> PhotoFolder:
    """The photo folder indexed into the default --db with the colours model."""
    result = run("index", photo_folder.root, "--model", colors_model, "--device", "cpu")
    assert result.exit_code == 0, result.output
    return photo_folder


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def one_error_line(result: Result, *fragments: str) -> str:
    """A failed command: non-zero exit, nothing on stdout, exactly one `error:` line on stderr."""
    assert result.exit_code != 0, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_index_prints_a_summary_into_the_default_db(
    home: Path, photo_folder: PhotoFolder, colors_model: Path, run: Run
) -> None:
    out = ok(run("index", photo_folder.root, "--model", colors_model, "--device", "cpu"))
    summary = out.strip().splitlines()[-1]
    assert summary.startswith(f"indexed {len(photo_folder.valid)} (new {len(photo_folder.valid)}, changed 0)")
    assert f"skipped {len(photo_folder.skipped)} " in summary
    assert "images/s" in summary
    assert summary.endswith(f"-> {(home / 'index').resolve()}")
    for bad in photo_folder.skipped:
        assert f"skipped {bad.resolve()}: " in out  # one line per bad file, naming it
    assert (home / "index" / CATALOG_FILE).is_file()

    # The second run uses the model the index recorded: no --model needed.
    again = ok(run("index", photo_folder.root, "--device", "cpu"))
    assert f"unchanged {len(photo_folder.valid)}" in again and "indexed 0 " in again


def test_index_json_summary(home: Path, photo_folder: PhotoFolder, colors_model: Path, run: Run) -> None:
    result = run("index", photo_folder.root, "--model", colors_model, "--json", "--device", "cpu")
    summary = json.loads(ok(result))
    assert summary["indexed"] == summary["new"] == len(photo_folder.valid)
    assert {s["path"] for s in summary["skipped"]} == {str(p.resolve()) for p in photo_folder.skipped}
    assert summary["db"] == str((home / "index").resolve())


def test_search_json_has_exactly_the_documented_shape(indexed: PhotoFolder, run: Run) -> None:
    data = json.loads(ok(run("search", "a red image", "--json", "-k", "3", "--device", "cpu")))
    assert list(data) == ["results"]
    hits = data["results"]
    assert len(hits) == 3
    for rank, hit in enumerate(hits, 1):
        assert list(hit) == ["rank", "score", "id", "path"]
        assert hit["rank"] == rank
        assert type(hit["score"]) is float and type(hit["id"]) is int
        assert Path(hit["path"]).is_absolute() and Path(hit["path"]).is_file()
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert hits[0]["path"] == str(indexed.valid["red"].resolve())


def test_search_plain_output(indexed: PhotoFolder, run: Run) -> None:
    lines = ok(run("search", "a blue image", "-k", "2", "--device", "cpu")).strip().splitlines()
    assert len(lines) == 2
    rank, _score, path = lines[0].split(maxsplit=2)
    assert rank == "1" and path == str(indexed.valid["blue"].resolve())


def test_search_by_image_finds_the_image_itself_first(indexed: PhotoFolder, run: Run) -> None:
    for color in ("green", "yellow"):  # a JPEG in a subfolder, and the unicode file name
        query = indexed.valid[color]
        data = json.loads(ok(run("search", "--image", query, "--to", "image", "--json", "--device", "cpu")))
        top = data["results"][0]
        assert top["path"] == str(query.resolve())
        assert top["score"] == pytest.approx(1.0, abs=1e-3)


def test_an_empty_answer_says_what_it_most_likely_means(
    indexed: PhotoFolder, tmp_path: Path, run: Run
) -> None:
    """No hits is not an error, but the one line printed must point at the likely cause."""
    nowhere = tmp_path / "not-indexed"
    assert ok(run("search", "a blue image", "--under", nowhere, "--device", "cpu")).strip() == (
        f"no results: no indexed image is under {nowhere}"
    )
    no_captions = ok(run("search", "a blue image", "--to", "text", "--device", "cpu")).strip()
    assert no_captions == "no results: the index holds no captions (add some with `mmsearch add-texts`)"
    cut = ok(run("search", "a blue image", "--min-score", "2", "--device", "cpu")).strip()
    assert cut.startswith("no results above the cut-off")


def test_add_texts_then_image_to_text_search(
    indexed: PhotoFolder, home: Path, tmp_path: Path, run: Run
) -> None:
    plain = tmp_path / "captions.txt"
    plain.write_text("a red image\na green image\n\na red image\n", encoding="utf-8")
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text('{"caption": "a blue image"}\n{"text": "a yellow image", "id": 4}\n', encoding="utf-8")

    out = ok(run("add-texts", plain, "--device", "cpu"))
    assert out.startswith("added 2 texts (1 duplicates skipped)")
    assert ok(run("add-texts", jsonl, "--device", "cpu")).startswith("added 2 texts (0 duplicates")

    for color in COLORS:
        result = run("search", "--image", indexed.valid[color], "--to", "text", "--json", "--device", "cpu")
        hits = json.loads(ok(result))["results"]
        assert [list(h) for h in hits] == [["rank", "score", "id", "text"]] * 4
        assert hits[0]["text"] == f"a {color} image"


def test_info_shows_model_counts_dim_type_and_size(
    indexed: PhotoFolder, colors_model: Path, run: Run
) -> None:
    stats = json.loads(ok(run("info", "--json")))
    assert stats["model_source"] == str(colors_model.resolve())
    assert stats["model_id"] == load_model_dir(colors_model).model_id
    assert stats["images"] == stats["image_vectors"] == len(indexed.valid)
    assert stats["texts"] == stats["text_vectors"] == 0
    assert stats["dim"] == 32 and stats["index_type"] == "IDMap2,FlatIP"
    assert stats["size_bytes"] > 0

    text = ok(run("info"))
    for key in ("model_source", "images", "dim", "index_type", "size_bytes"):
        assert any(line.split()[0] == key for line in text.splitlines()), key
    assert str(colors_model.resolve()) in text and "IDMap2,FlatIP" in text


def test_remove_drops_a_file(indexed: PhotoFolder, run: Run) -> None:
    red = indexed.valid["red"]
    assert ok(run("remove", red)).startswith("removed 1 image from")
    assert json.loads(ok(run("info", "--json")))["images"] == len(indexed.valid) - 1
    hits = json.loads(ok(run("search", "a red image", "--json", "--device", "cpu")))["results"]
    paths = [h["path"] for h in hits]
    assert str(red.resolve()) not in paths and len(paths) == len(indexed.valid) - 1


def test_eval_reports_the_recall_of_the_models_own_embeddings(
    sample_corpus: Path, shapes_model: Path, run: Run
) -> None:
    corpus = load_corpus(sample_corpus)
    encoder = load_encoder(shapes_model, device="cpu")
    # Without --split every split but "shift" is scored; the shift split is reported beside it.
    in_distribution = replace(corpus, pairs=tuple(p for p in corpus.pairs if p.split != "shift"))
    for split, expected in (("test", corpus.select("test")), (None, in_distribution)):
        args = ["eval", "--corpus", sample_corpus, "--model", shapes_model, "--json", "--device", "cpu"]
        result = json.loads(ok(run(*args, *(["--split", split] if split else []))))
        want = reference_recall(encoder, [(p.image, p.caption) for p in expected.pairs])
        for direction in ("t2i", "i2t"):
            assert set(result[direction]) == METRIC_KEYS
            assert result[direction] == pytest.approx(want[direction], abs=EVAL_ROUNDING), direction
        # The modest tiny model ranks some right and some wrong: the comparison has teeth.
        assert 0.0 < want["t2i"]["R@1"] < want["t2i"]["R@10"] < 1.0, want
        assert result["counts"]["images"] == len(expected.images())
        assert result["counts"]["captions"] == len(expected)
        assert result["shift"]["counts"]["images"] == len(corpus.select("shift").images())

    args = ["eval", "--corpus", sample_corpus, "--model", shapes_model, "--split", "val"]
    text = ok(run(*args, "--device", "cpu"))
    assert "split=val" in text and "t2i  R@1" in text and "i2t  R@1" in text

    # The test split's breakdown has caption-only groups (new phrasings): t2i lines alone.
    args = ["eval", "--corpus", sample_corpus, "--model", shapes_model, "--split", "test"]
    text = ok(run(*args, "--device", "cpu"))
    assert "split=test" in text and "new_phrasing" in text


def test_eval_of_a_model_that_tells_every_colour_apart_is_perfect(
    colors_corpus: Path, colors_model: Path, run: Run
) -> None:
    """Six images share each colour's one caption: every caption finds an image of its colour
    first, and every image its colour's caption, so each recall is 1 and each median rank 1."""
    args = ["eval", "--corpus", colors_corpus, "--model", colors_model, "--json", "--device", "cpu"]
    result = json.loads(ok(run(*args)))
    perfect = {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "medr": 1.0}
    assert (result["t2i"], result["i2t"]) == (perfect, perfect)
    assert result["counts"] == {"images": 24, "captions": 24, "skipped": 0}


def test_train_through_the_cli(colors_corpus: Path, tmp_path: Path, run: Run) -> None:
    out = tmp_path / "model"
    args = ["train", "--corpus", colors_corpus, "--out", out, "--epochs", "1", "--config", "tiny-test"]
    text = ok(run(*args, "--batch-size", "8", "--device", "cpu"))
    assert "epoch   1  loss" in text and f"best epoch 1; model saved to {out}" in text
    assert (out / CONFIG_FILE).is_file() and (out / WEIGHTS_FILE).is_file()
    assert load_model_dir(out).model.config.name == "tiny-test"


# -- errors: one line on stderr, non-zero exit ----------------------------------------------------


def test_empty_query_is_an_error(indexed: PhotoFolder, run: Run) -> None:
    one_error_line(run("search", "   ", "--device", "cpu"), "empty query")
    one_error_line(run("search", "", "--device", "cpu"), "empty query")


def test_missing_index_is_an_error(home: Path, tmp_path: Path, run: Run) -> None:
    one_error_line(run("search", "a red image"), "no index at", str(home / "index"), "mmsearch index")
    one_error_line(run("info", "--db", tmp_path / "nowhere"), "no index at")
    one_error_line(run("remove", tmp_path / "x.png"), "no index at")
    assert not (home / "index").exists()  # a failed search creates nothing


def test_a_db_that_is_a_file_is_refused_and_left_alone(
    tmp_path: Path, photo_folder: PhotoFolder, run: Run
) -> None:
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("my notes\n")
    for args in (["search", "a red image"], ["info"], ["index", photo_folder.root]):
        result = run(*args, "--db", not_a_folder)
        assert result.exit_code == 2
        one_error_line(result, str(not_a_folder), "is a file, not an index folder")
    assert not_a_folder.read_text() == "my notes\n"


def test_missing_query_image_is_an_error(indexed: PhotoFolder, tmp_path: Path, run: Run) -> None:
    missing = tmp_path / "nope.jpg"
    one_error_line(
        run("search", "--image", missing, "--device", "cpu"), "query image", str(missing), "file not found"
    )


def test_sentence_and_image_together_is_an_error(indexed: PhotoFolder, run: Run) -> None:
    result = run("search", "a red image", "--image", indexed.valid["red"])
    one_error_line(result, "either")
    assert result.exit_code == 2
    one_error_line(run("search"), "either")


def test_unknown_split_is_an_error(sample_corpus: Path, shapes_model: Path, run: Run) -> None:
    result = run("eval", "--corpus", sample_corpus, "--model", shapes_model, "--split", "nope")
    one_error_line(result, "nope", "train", "val", "test")


def test_indexing_a_missing_folder_is_an_error(
    home: Path, tmp_path: Path, colors_model: Path, run: Run
) -> None:
    result = run("index", tmp_path / "missing", "--model", colors_model, "--device", "cpu")
    one_error_line(result, "no such folder")
