"""An upgrade that replaces the weights at a model path: old indexes say so, and `make demo`
rebuilds its own index instead of failing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from support import save_random_model
from typer.testing import CliRunner

from indexer.indexing.pipeline import index_folders
from indexer.models.encoder import load_encoder
from indexer.store.index_dir import IndexMismatchError
from mmsearch.cli import app
from mmsearch.demo import index_demo_scenes
from mmsearch.engine import Engine, IndexUnavailableError

CAPTIONS = ["a red square", "a blue circle", "two green stars", "a small white hexagon"]


def _photos(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, colour in enumerate(("red", "blue", "green")):
        Image.new("RGB", (40, 32), colour).save(folder / f"{i}.png")
    return folder


def _replace_weights(model_dir: Path, seed: int) -> None:
    """What an upgrade does to the bundled model: same folder, new weights."""
    shutil.rmtree(model_dir)
    save_random_model(model_dir, CAPTIONS, vocab_size=32, seed=seed)


def test_index_built_before_the_weights_changed_names_the_cause(tmp_path: Path) -> None:
    model_dir = save_random_model(tmp_path / "model", CAPTIONS, vocab_size=32, seed=1)
    photos = _photos(tmp_path / "photos")
    index_folders([photos], tmp_path / "index", load_encoder(model_dir, device="cpu"))
    _replace_weights(model_dir, seed=2)
    with pytest.raises(IndexMismatchError, match=r"has changed since .* was built"):
        index_folders([photos], tmp_path / "index", load_encoder(model_dir, device="cpu"))


def test_demo_rebuilds_its_own_stale_index_only_when_allowed(tmp_path: Path) -> None:
    model_dir = save_random_model(tmp_path / "model", CAPTIONS, vocab_size=32, seed=1)
    photos = _photos(tmp_path / "photos")
    db = tmp_path / "demo-index"
    index_demo_scenes(photos, db, load_encoder(model_dir, device="cpu"), rebuild_if_stale=True)
    _replace_weights(model_dir, seed=2)
    encoder = load_encoder(model_dir, device="cpu")
    with pytest.raises(SystemExit, match="has changed since"):
        index_demo_scenes(photos, db, encoder, rebuild_if_stale=False)
    report = index_demo_scenes(photos, db, encoder, rebuild_if_stale=True)
    assert report.new == 3


def test_info_still_describes_an_index_whose_model_changed_or_vanished(tmp_path: Path) -> None:
    """`mmsearch info` is what a user runs to find out what an old index holds: it answers, with
    a note naming the problem, while a search still refuses with the same message."""
    model_dir = save_random_model(tmp_path / "model", CAPTIONS, vocab_size=32, seed=1)
    photos = _photos(tmp_path / "photos")
    db = tmp_path / "index"
    index_folders([photos], db, load_encoder(model_dir, device="cpu"))
    _replace_weights(model_dir, seed=2)

    info = CliRunner().invoke(app, ["info", "--db", str(db), "--json"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.stdout)["images"] == 3
    assert "has changed since" in info.stderr
    search = CliRunner().invoke(app, ["search", "a red square", "--db", str(db)])
    assert search.exit_code == 1 and "has changed since" in search.output

    shutil.rmtree(model_dir)  # the model folder is gone altogether
    info = CliRunner().invoke(app, ["info", "--db", str(db)])
    assert info.exit_code == 0, info.output
    assert "images" in info.stdout and "note:" in info.stderr
    with Engine.open(db, check_model=False) as engine:
        assert engine.model_problem is not None
        with pytest.raises(IndexUnavailableError):
            engine.search_text("a red square")
