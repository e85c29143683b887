"""What a user relies on: train a model, index a folder, find the right picture for a sentence."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.indexing.pipeline import index_folders
from indexer.models.encoder import load_encoder
from mmsearch import Engine, ImageHit, TextHit
from mmsearch.engine import IndexUnavailableError, QueryError

COLORS = ("red", "green", "blue", "yellow")


@pytest.fixture
def gallery(tmp_path: Path, make_color_image: Callable[..., Image.Image]) -> dict[str, Path]:
    """One new picture per colour (never seen in training), in mixed formats and folders."""
    files = {
        "red": tmp_path / "photos" / "2023" / "red.jpg",
        "green": tmp_path / "photos" / "green.png",
        "blue": tmp_path / "photos" / "2024" / "summer" / "blue.png",
        "yellow": tmp_path / "photos" / "yellow.jpeg",
    }
    for i, (color, path) in enumerate(files.items()):
        path.parent.mkdir(parents=True, exist_ok=True)
        make_color_image(color, seed=7000 + i, size=(80, 60)).save(path, quality=92)
    return files


@pytest.fixture
def index_dir(gallery: dict[str, Path], colors_model: Path, tmp_path: Path) -> Path:
    index_dir = tmp_path / "index"
    report = index_folders([tmp_path / "photos"], index_dir, load_encoder(colors_model, device="cpu"))
    assert report.new == len(gallery) and not report.skipped
    return index_dir


def test_a_caption_finds_its_image(index_dir: Path, gallery: dict[str, Path]) -> None:
    with Engine.open(index_dir) as engine:  # the index records its model: none given here
        for color in COLORS:
            hits = engine.search_text(f"a {color} image", k=5)
            assert all(isinstance(h, ImageHit) for h in hits)
            assert [h.rank for h in hits] == [1, 2, 3, 4]  # k > n: every image once
            assert hits[0].path == str(gallery[color].resolve()), color
            scores = [h.score for h in hits]
            assert scores == sorted(scores, reverse=True)


def test_an_image_finds_itself_and_its_caption(index_dir: Path, gallery: dict[str, Path]) -> None:
    with Engine.open(index_dir) as engine:
        engine.add_texts([f"a {color} image" for color in COLORS])
        for color in COLORS:
            images = engine.search_image(gallery[color], k=5, to="image")
            assert isinstance(images[0], ImageHit)
            assert images[0].path == str(gallery[color].resolve())
            assert images[0].score == pytest.approx(1.0, abs=1e-3)

            texts = engine.search_image(gallery[color], k=5, to="text")
            assert all(isinstance(t, TextHit) for t in texts) and len(texts) == len(COLORS)
            assert texts[0].text == f"a {color} image"
            assert texts[0].rank == 1


def test_engine_sees_images_added_after_it_opened(
    index_dir: Path,
    gallery: dict[str, Path],
    tmp_path: Path,
    make_color_image: Callable[..., Image.Image],
) -> None:
    with Engine.open(index_dir) as engine:
        assert len(engine.search_text("a red image", k=10)) == len(gallery)
        extra = tmp_path / "photos" / "another red.png"
        make_color_image("red", seed=8000, size=(50, 50)).save(extra)
        assert engine.add([tmp_path / "photos"]).new == 1
        paths = {h.path for h in engine.search_text("a red image", k=2)}
        assert paths == {str(extra.resolve()), str(gallery["red"].resolve())}
        assert engine.remove([extra]) == 1
        assert len(engine.search_text("a red image", k=10)) == len(gallery)


def test_engine_errors_are_typed(index_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(IndexUnavailableError, match="no index"):
        Engine.open(tmp_path / "nowhere")
    with Engine.open(index_dir) as engine:
        with pytest.raises(QueryError, match="empty query"):
            engine.search_text("  ")
        with pytest.raises(QueryError, match="k must be"):
            engine.search_text("a red image", k=0)
        with pytest.raises(QueryError, match="k must be a whole number"):
            engine.search_text("a red image", k=2.5)  # type: ignore[arg-type]
        with pytest.raises(QueryError, match="rerank must be a whole number"):
            engine.search_text("a red image", rerank=2.0)  # type: ignore[arg-type]
        # NumPy integers (a k or a knob computed with NumPy) are whole numbers
        assert len(engine.search_text("a red image", k=np.int64(2), nprobe=np.int64(4))) == 2  # type: ignore[arg-type]
        with pytest.raises(QueryError, match="query image"):
            engine.search_image(tmp_path / "missing.png")
