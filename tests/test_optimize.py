"""IVF image vectors (`mmsearch optimize --ivf`): same answers when every list is searched, real
deletion and reconstruction, incremental indexing into the trained lists, and back to exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from indexer import errors
from indexer.store.index_dir import IMAGES_FAISS
from indexer.store.index_types import MIN_POINTS_PER_LIST, build_flat, build_ivf
from indexer.store.vectors import VectorStore, VectorStoreError, gpu_available
from mmsearch import Engine
from mmsearch.cli import app

DIM = 32
LISTS = 16


def _clustered_store(n: int = 3000, seed: int = 0) -> tuple[VectorStore, np.ndarray, np.ndarray]:
    """Unit vectors around 40 centres (embeddings cluster); ids start at 1000, like SQLite keys."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, DIM))
    vectors = centres[rng.integers(0, 40, n)] + 0.3 * rng.normal(size=(n, DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(1000, 1000 + n, dtype=np.int64)
    store = VectorStore.create(DIM)
    store.add(ids, vectors)
    return store, ids, vectors


def test_ivf_searching_every_list_answers_exactly_like_the_flat_store() -> None:
    store, ids, vectors = _clustered_store()
    report = build_ivf(store, lists=LISTS, nprobe=LISTS, use_gpu=False)
    ivf = report.store
    assert ivf.is_ivf and ivf.describe() == f"IVF{LISTS},FlatIP nprobe={LISTS}"
    assert report.recall == 1.0 and report.device == "cpu" and report.vectors == len(ids)
    assert set(ivf.ids().tolist()) == set(ids.tolist())
    for want, got in zip(store.search(vectors[:20], 10), ivf.search(vectors[:20], 10), strict=True):
        assert got.ids.tolist() == want.ids.tolist()
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)


def test_ivf_with_few_lists_probed_keeps_most_of_the_exact_top_10() -> None:
    store, _, _ = _clustered_store()
    report = build_ivf(store, lists=LISTS, nprobe=2, use_gpu=False)
    assert report.recall is not None and 0.7 <= report.recall < 1.0 + 1e-9


def test_ivf_store_supports_deletion_reconstruction_filters_and_files(tmp_path: Path) -> None:
    store, ids, vectors = _clustered_store()
    ivf = build_ivf(store, lists=LISTS, nprobe=4, use_gpu=False).store
    np.testing.assert_allclose(ivf.reconstruct(1500), vectors[500], atol=1e-6)
    assert ivf.remove([1500, 1501, 99_999]) == 2
    assert 1500 not in set(ivf.ids().tolist()) and len(ivf) == len(ids) - 2
    with pytest.raises(KeyError):
        ivf.reconstruct(1500)
    assert 1500 not in ivf.search(vectors[500:501], 10)[0].ids.tolist()
    allowed = np.array([1002, 2999], dtype=np.int64)
    assert set(ivf.search(vectors[:1], 5, allowed_ids=allowed)[0].ids.tolist()) == {1002, 2999}
    ivf.add(np.array([5000], dtype=np.int64), vectors[:1])  # into the trained lists
    assert ivf.search(vectors[:1], 2)[0].ids.tolist()[:2] in ([1000, 5000], [5000, 1000])

    path = tmp_path / "images.faiss"
    ivf.save(path)
    reread = VectorStore.load(path, dim=DIM)
    assert reread.describe() == ivf.describe() and set(reread.ids().tolist()) == set(ivf.ids().tolist())
    back = build_flat(reread).store
    assert not back.is_ivf and set(back.ids().tolist()) == set(ivf.ids().tolist())
    np.testing.assert_allclose(back.reconstruct(1002), vectors[2], atol=1e-6)


def test_too_few_vectors_for_the_lists_is_a_clear_error() -> None:
    store, _, _ = _clustered_store(n=100)
    with pytest.raises(VectorStoreError, match=f"need at least {4 * MIN_POINTS_PER_LIST} vectors"):
        build_ivf(store, lists=4, nprobe=1, use_gpu=False)


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs faiss-gpu and a CUDA device")
def test_ivf_built_on_the_gpu_matches_the_cpu_build() -> None:
    store, _, vectors = _clustered_store()
    on_gpu = build_ivf(store, lists=LISTS, nprobe=LISTS, use_gpu=True)
    assert on_gpu.device == "gpu" and on_gpu.store.cpu is None  # saved form is the CPU one
    for want, got in zip(store.search(vectors[:20], 10), on_gpu.store.search(vectors[:20], 10), strict=True):
        assert got.ids.tolist() == want.ids.tolist()


# -- through the CLI, on a real index ------------------------------------------------------------


def _noise_photos(folder: Path, count: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"noise_{seed}_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _ok(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_optimize_round_trip_keeps_the_index_searchable_and_editable(
    tmp_path: Path, colors_model: Path
) -> None:
    db = tmp_path / "db"
    photos = _noise_photos(tmp_path / "photos", 2 * MIN_POINTS_PER_LIST + 2, seed=1)
    _ok("index", tmp_path / "photos", "--db", db, "--model", colors_model, "--device", "cpu")
    probe = photos[7]
    with Engine.open(db, device="cpu") as engine:
        exact = [h.id for h in engine.search_image(probe, k=5)]

    summary = json.loads(_ok("optimize", "--ivf", "--lists", 2, "--nprobe", 2, "--db", db, "--json"))
    assert summary["after"] == "IVF2,FlatIP nprobe=2" and summary["recall"] == 1.0
    assert VectorStore.load(db / IMAGES_FAISS, dim=32).is_ivf
    with Engine.open(db, device="cpu") as engine:
        assert [h.id for h in engine.search_image(probe, k=5)] == exact
        assert engine.stats().index_type == "IVF2,FlatIP nprobe=2"

    added = _noise_photos(tmp_path / "photos", 1, seed=2)[0]  # incremental run adds to the lists
    photos[0].unlink()
    out = json.loads(_ok("index", tmp_path / "photos", "--db", db, "--device", "cpu", "--json"))
    assert (out["new"], out["removed"]) == (1, 1)
    with Engine.open(db, device="cpu") as engine:
        assert engine.search_image(added, k=1)[0].path == str(added.resolve())
        everything = [h.path for h in engine.search_image(photos[1], k=10 * len(photos))]
        assert len(everything) == len(photos) and str(photos[0].resolve()) not in everything

    text = _ok("optimize", "--flat", "--db", db)
    assert "IVF2,FlatIP nprobe=2 -> IDMap2,FlatIP" in text
    assert not VectorStore.load(db / IMAGES_FAISS, dim=32).is_ivf


def test_optimize_refuses_unclear_requests(tmp_path: Path) -> None:
    for args in (["--ivf", "--flat"], [], ["--flat", "--lists", "4"]):
        result = CliRunner().invoke(app, ["optimize", "--db", str(tmp_path / "none"), *args])
        assert result.exit_code == 2 and "error:" in result.stderr


@pytest.mark.skipif(gpu_available(), reason="tests the fallback on a machine without a GPU")
def test_optimize_on_cuda_without_a_gpu_builds_on_the_cpu_with_one_warning(
    tmp_path: Path, colors_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(errors, "_warned", set())  # warn_once is per process
    db = tmp_path / "db"
    _noise_photos(tmp_path / "photos", MIN_POINTS_PER_LIST + 1, seed=3)
    _ok("index", tmp_path / "photos", "--db", db, "--model", colors_model, "--device", "cpu")
    with pytest.warns(UserWarning) as caught:
        out = json.loads(_ok("optimize", "--ivf", "--lists", 1, "--db", db, "--device", "cuda", "--json"))
    assert out["device"] == "cpu" and out["after"].startswith("IVF1,")
    assert len(caught) == 1, [str(w.message) for w in caught]
