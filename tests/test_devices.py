"""GPU paths: --device cuda with mixed precision, FAISS on the GPU, and the CPU fallback.

Tests marked `gpu` need CUDA (and faiss-gpu for the FAISS ones) and are skipped without it; no
GPU result is claimed from a machine that has none. The fallback tests run where there is no
GPU: one warning line, then the same results as on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from indexer import errors
from indexer.models import devices
from indexer.models.config import TrainConfig, load_named_config
from indexer.models.devices import CPU, autocast_for, resolve_device
from indexer.models.encoder import load_encoder
from indexer.models.native import load_model_dir
from indexer.store.vectors import VectorStore, VectorStoreError, gpu_available, to_search_device
from indexer.training.corpora import load_corpus
from indexer.training.loop import train
from mmsearch.cli import app
from mmsearch.engine import Engine

HAS_CUDA = torch.cuda.is_available()
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device visible to torch")
faiss_gpu_only = pytest.mark.skipif(not gpu_available(), reason="needs faiss-gpu and a CUDA device")
without_cuda = pytest.mark.skipif(HAS_CUDA, reason="tests the fallback of a machine without CUDA")
ONE_EPOCH = TrainConfig(epochs=1, batch_size=8, lr=3e-3, warmup_steps=2)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a new process would: no fallback warned yet."""
    monkeypatch.setattr(errors, "_warned", set())


def random_store(n: int = 200, dim: int = 16, seed: int = 0) -> tuple[VectorStore, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = VectorStore.create(dim)
    store.add(np.arange(100, 100 + n, dtype=np.int64), vectors)
    return store, vectors


# -- device choice ---------------------------------------------------------------------------------


def test_cpu_and_bad_devices() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if HAS_CUDA else "cpu")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        resolve_device("tpu")


@without_cuda
def test_cuda_without_a_gpu_falls_back_with_one_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert [resolve_device("cuda") for _ in range(3)] == ["cpu"] * 3
        assert resolve_device("cuda:1") == "cpu"
    assert len(caught) == 1
    assert "no CUDA device" in str(caught[0].message)


def test_autocast_is_a_no_op_on_the_cpu() -> None:
    with autocast_for(CPU):
        product = torch.ones(4, 4) @ torch.ones(4, 4)
    assert product.dtype == torch.float32


# -- FAISS ----------------------------------------------------------------------------------------


def test_search_device_without_gpu_request_is_the_store_itself() -> None:
    store, _ = random_store()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert to_search_device(store, use_gpu=False) is store


@pytest.mark.skipif(gpu_available(), reason="tests the fallback of a faiss without GPU support")
def test_faiss_gpu_request_without_gpu_warns_once_and_searches_on_cpu() -> None:
    store, vectors = random_store()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = to_search_device(store, use_gpu=True)
        second = to_search_device(store, use_gpu=True)
    assert first is store and second is store
    assert len(caught) == 1 and "FAISS GPU not available" in str(caught[0].message)
    result = first.search(vectors[:1], 5)[0]
    assert result.ids[0] == 100


def test_a_search_copy_answers_restricted_queries_from_its_cpu_store(tmp_path: Path) -> None:
    """The GPU copy's bookkeeping, with a CPU index standing in for the GPU one."""
    store, vectors = random_store()
    stand_in = VectorStore(faiss.clone_index(store.index), cpu=store)
    allowed = np.array([105, 150, 199], dtype=np.int64)
    restricted = stand_in.search(vectors[50:51], 3, allowed_ids=allowed)[0]
    assert set(restricted.ids.tolist()) == set(allowed.tolist()) and restricted.ids[0] == 150
    assert stand_in.search(vectors[7:8], 1)[0].ids[0] == 107
    with pytest.raises(VectorStoreError, match="CPU store"):
        stand_in.save(tmp_path / "images.faiss")
    assert to_search_device(stand_in, use_gpu=True) is stand_in  # never copied twice


# -- end to end: one warning line, same results ------------------------------------------------------


@without_cuda
def test_cli_search_with_cuda_on_a_cpu_machine_warns_one_line(
    colors_model: Path, photo_folder: object, tmp_path: Path
) -> None:
    db = tmp_path / "db"
    root = photo_folder.root  # type: ignore[attr-defined]
    indexed = CliRunner().invoke(
        app, ["index", str(root), "--db", str(db), "--model", str(colors_model), "--device", "cpu"]
    )
    assert indexed.exit_code == 0, indexed.output
    # A real process, so that the warning goes through the CLI's own formatting.
    command = [sys.executable, "-m", "mmsearch.cli", "search", "a red image", "--db", str(db)]
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    on_cuda = subprocess.run(
        [*command, "--device", "cuda", "--json"], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert on_cuda.returncode == 0, on_cuda.stderr
    warning_lines = [line for line in on_cuda.stderr.splitlines() if line.strip()]
    assert warning_lines == ["warning: --device cuda: no CUDA device visible to torch; using the CPU"]
    with Engine.open(db, device="cpu") as engine:
        on_cpu = [hit.path for hit in engine.search_text("a red image", k=10)]
    assert [hit["path"] for hit in json.loads(on_cuda.stdout)["results"]] == on_cpu


@without_cuda
def test_training_with_cuda_on_a_cpu_machine_falls_back(colors_corpus: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="no CUDA device"):
        report = train(
            load_corpus(colors_corpus),
            tmp_path,
            model_config=load_named_config("tiny-test"),
            train_config=ONE_EPOCH,
            device="cuda",
            progress=False,
        )
    assert np.isfinite(report.epochs[0].loss)
    assert load_model_dir(tmp_path).model_id.startswith("native:")


# -- on a GPU (skipped without one) ------------------------------------------------------------------


@pytest.mark.gpu
@cuda_only
def test_encoder_on_cuda_matches_the_cpu(colors_model: Path) -> None:
    texts = ["a red image", "a blue image"]
    pixels = torch.rand(3, 3, 32, 32)
    cpu = load_encoder(colors_model, device="cpu")
    gpu = load_encoder(colors_model, device="cuda")
    for got, want in (
        (gpu.encode_texts(texts), cpu.encode_texts(texts)),
        (gpu.encode_pixels(pixels), cpu.encode_pixels(pixels)),
    ):
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(got, want, atol=2e-2)  # fp16 autocast vs fp32


@pytest.mark.gpu
@cuda_only
def test_training_on_cuda_with_mixed_precision(colors_corpus: Path, tmp_path: Path) -> None:
    report = train(
        load_corpus(colors_corpus),
        tmp_path,
        model_config=load_named_config("tiny-test"),
        train_config=TrainConfig(epochs=3, batch_size=8, lr=3e-3, warmup_steps=2),
        device="cuda",
        progress=False,
    )
    losses = [epoch.loss for epoch in report.epochs]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert load_model_dir(tmp_path, device="cpu").model_id.startswith("native:")


@pytest.mark.gpu
@faiss_gpu_only
def test_faiss_gpu_search_matches_the_cpu_and_saves_the_cpu_form(tmp_path: Path) -> None:
    store, vectors = random_store(n=1000, dim=32)
    gpu = to_search_device(store, use_gpu=True)
    assert gpu.cpu is store
    want = store.search(vectors[:10], 5)
    got = gpu.search(vectors[:10], 5)
    for g, w in zip(got, want, strict=True):
        assert g.ids.tolist() == w.ids.tolist()
        np.testing.assert_allclose(g.scores, w.scores, atol=1e-4)
    allowed = np.array([100, 500, 900], dtype=np.int64)
    assert set(gpu.search(vectors[:1], 3, allowed_ids=allowed)[0].ids.tolist()) == set(allowed.tolist())
    path = tmp_path / "images.faiss"
    store.save(path)
    reread = VectorStore.load(path, dim=32)
    assert reread.cpu is None and len(reread) == 1000


@pytest.mark.gpu
@faiss_gpu_only
def test_engine_on_cuda_searches_a_gpu_copy(colors_model: Path, photo_folder: object, tmp_path: Path) -> None:
    db = tmp_path / "db"
    root = photo_folder.root  # type: ignore[attr-defined]
    result = CliRunner().invoke(app, ["index", str(root), "--db", str(db), "--model", str(colors_model)])
    assert result.exit_code == 0, result.output
    with Engine.open(db, device="cuda") as on_gpu, Engine.open(db, device="cpu") as on_cpu:
        assert on_gpu._images.refresh().cpu is not None
        got = [h.path for h in on_gpu.search_text("a red image", k=4)]
        assert got == [h.path for h in on_cpu.search_text("a red image", k=4)]


def test_indexing_threads_take_every_core_but_never_more_than_torch_has() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert devices.indexing_threads() == 1
        torch.set_num_threads(64)
        assert devices.indexing_threads() == max(1, os.cpu_count() or 1)
    finally:
        torch.set_num_threads(before)
