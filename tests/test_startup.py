"""Start-up cost: commands that need no model never import torch or transformers, and a run that
needs none never loads one, while a mismatched model is still refused before anything is written.

The import checks run real `mmsearch` processes (support.mmsearch_process) and read their
`sys.modules` at exit.
"""

from __future__ import annotations

import json
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy.orm import Session
from support import MODEL_MODULES, mmsearch_process, save_random_model

import indexer.store
from indexer.indexing.pipeline import index_folders
from indexer.models import encoder as encoder_module
from indexer.models.devices import CPU
from indexer.models.encoder import load_encoder
from indexer.models.lazy import LazyEncoder
from indexer.models.spec import ModelLoadError, ModelSpec
from indexer.store import catalog
from indexer.store.catalog import ImageRow
from indexer.store.index_dir import IndexMismatchError
from mmsearch.engine import Engine, IndexUnavailableError

REPO = Path(__file__).resolve().parents[1]
COLOURS = ("red", "green", "blue")


def photos(folder: Path, colours: tuple[str, ...] = COLOURS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate(colours):
        Image.new("RGB", (40, 32), colour).save(folder / f"{i}-{colour}.png")
    return folder


def image_count(db: Path) -> int:
    sql = catalog.open_catalog(db, create=False)
    try:
        with Session(sql) as session:
            return catalog.count(session, ImageRow)
    finally:
        sql.dispose()


@pytest.fixture(scope="module")
def indexed(colors_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(photo folder, index of it built with the tiny colours model)."""
    root = tmp_path_factory.mktemp("startup")
    folder = photos(root / "photos")
    db = root / "db"
    index_folders([folder], db, load_encoder(colors_model, device="cpu"))
    return folder, db


def test_help_imports_no_model_or_data_library() -> None:
    """Help is built from plain settings (media.settings, fusion_spec): not even NumPy or Pillow."""
    run = mmsearch_process("--help")
    assert run.code == 0 and "index" in run.stdout
    assert run.loaded == []
    search_help = mmsearch_process("search", "--help")
    assert search_help.code == 0 and "--fusion" in search_help.stdout
    assert search_help.loaded == []


def test_info_imports_no_model_library(indexed: tuple[Path, Path]) -> None:
    _, db = indexed
    run = mmsearch_process("info", "--db", db, "--json")
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout)["images"] == len(COLOURS)
    assert run.imported == []


def test_no_change_reindex_through_the_cli_loads_no_model(indexed: tuple[Path, Path]) -> None:
    folder, db = indexed
    run = mmsearch_process("index", folder, "--db", db, "--json")
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    assert (report["unchanged"], report["indexed"]) == (len(COLOURS), 0)
    assert run.imported == []


def test_reindex_with_a_new_file_loads_the_model_and_refuses_a_mismatched_one(
    colors_model: Path, tmp_path: Path
) -> None:
    folder = photos(tmp_path / "photos")
    db = tmp_path / "db"
    index_folders([folder], db, load_encoder(colors_model, device="cpu"))
    other = save_random_model(tmp_path / "other", ["a red image", "a blue image"], vocab_size=24, seed=3)
    photos(folder, ("yellow",))  # 0-yellow.png replaces nothing: a fourth file needs encoding

    refused = mmsearch_process("index", folder, "--db", db, "--model", other, "--json")
    assert refused.code == 1
    assert refused.stderr.startswith("error: ")
    assert "drop --model to use the index's own model" in refused.stderr
    assert image_count(db) == len(COLOURS)  # nothing was written
    assert refused.imported == []  # refused from the files' ids, before any model was loaded

    accepted = mmsearch_process("index", folder, "--db", db, "--json")
    assert accepted.code == 0, accepted.stderr
    assert json.loads(accepted.stdout)["indexed"] == 1
    assert image_count(db) == len(COLOURS) + 1
    assert "torch" in accepted.imported  # the new file needed the model


def test_a_lazy_encoder_is_never_loaded_by_a_run_with_nothing_to_encode(
    indexed: tuple[Path, Path], colors_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, db = indexed
    lazy = LazyEncoder(ModelSpec.parse(colors_model), device=CPU)

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded although nothing needed encoding")

    monkeypatch.setattr(encoder_module, "load_encoder", no_loading)
    report = index_folders([folder], db, lazy)
    assert report.unchanged == len(COLOURS) and report.encoded == 0
    assert not lazy.is_loaded


def test_a_lazy_encoder_with_another_model_is_refused_before_writing(
    indexed: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, db = indexed
    other = save_random_model(tmp_path / "other", ["a red image"], vocab_size=16, seed=4)
    lazy = LazyEncoder(ModelSpec.parse(other), device=CPU)
    with pytest.raises(IndexMismatchError, match="drop --model"):
        index_folders([folder], db, lazy)
    assert not lazy.is_loaded


def test_a_lazy_encoder_promises_what_the_loaded_model_reports(colors_model: Path) -> None:
    lazy = LazyEncoder(ModelSpec.parse(colors_model), device=CPU)
    assert lazy.info == load_encoder(colors_model, device="cpu").info
    assert lazy.encode_texts(["a red image"]).shape == (1, lazy.info.dim)
    assert lazy.is_loaded


def test_the_bundled_model_is_described_as_it_loads() -> None:
    assert LazyEncoder(ModelSpec.bundled(), device=CPU).info == load_encoder(None, device="cpu").info


def test_weights_replaced_after_the_check_are_refused_at_load(tmp_path: Path) -> None:
    model_dir = save_random_model(tmp_path / "model", ["a red image"], vocab_size=16, seed=1)
    lazy = LazyEncoder(ModelSpec.parse(model_dir), device=CPU)
    save_random_model(model_dir, ["a red image"], vocab_size=16, seed=2)  # new weights, same place
    with pytest.raises(ModelLoadError, match="changed while in use"):
        lazy.encode_texts(["a red image"])


def test_storage_never_imports_torch() -> None:
    modules = [m.name for m in pkgutil.iter_modules(indexer.store.__path__, "indexer.store.")]
    assert len(modules) >= 4
    check = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in {MODEL_MODULES!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_model_that_cannot_load_is_reported_by_the_engine_at_first_use(
    colors_model: Path, tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(colors_model, model_dir)
    folder = photos(tmp_path / "photos")
    db = tmp_path / "db"
    index_folders([folder], db, load_encoder(model_dir, device="cpu"))
    config = json.loads((model_dir / "config.json").read_text())
    config["model"]["text"]["hidden_size"] += 8  # same weights file, no longer the same shapes
    (model_dir / "config.json").write_text(json.dumps(config))

    with Engine.open(db, device="cpu") as engine:  # opening needs only the weights' id
        assert engine.stats().images == len(COLOURS)
        with pytest.raises(IndexUnavailableError, match=r"weights do not match config\.json"):
            engine.search_text("a red image")
        with pytest.raises(IndexUnavailableError, match=r"weights do not match config\.json"):
            engine.load_model()
