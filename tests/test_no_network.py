"""No user-facing load path opens a network connection (STYLE: no network at run time).

Each test runs with socket connects and name lookups refused *and recorded*, then asserts that
nothing was attempted: a library that swallowed the refusal and fell back to a cache would still
fail the test. The OpenCLIP load paths get the same guard in tests/openclip/ (autouse there).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants as hub_constants
import pytest
from pretrained_parts import NetworkGuard, write_albert_folder, write_resnet_folder
from typer.testing import CliRunner

from indexer.models.config import load_named_config
from indexer.models.encoder import hub_offline, load_encoder
from indexer.models.native import build_model, load_model_dir
from indexer.models.tokenizer import load_tokenizer
from mmsearch.cli import app

CAPTIONS = ("a red image", "a green image", "a blue image", "a yellow image", "a small square")


@pytest.fixture
def guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetworkGuard]:
    net = NetworkGuard().install(monkeypatch)
    yield net
    assert net.attempts == [], f"network access attempted: {net.attempts}"


@pytest.fixture(scope="module")
def albert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_albert_folder(tmp_path_factory.mktemp("albert"), CAPTIONS)


@pytest.fixture(scope="module")
def resnet_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("resnet")
    write_resnet_folder(folder)
    return folder


def test_the_guard_refuses_and_records(monkeypatch: pytest.MonkeyPatch) -> None:
    net = NetworkGuard().install(monkeypatch)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", 9))
    with pytest.raises(ConnectionRefusedError), socket.socket() as sock:
        sock.connect(("127.0.0.1", 9))
    with pytest.raises(ConnectionRefusedError):
        socket.getaddrinfo("example.org", 443)
    assert len(net.attempts) == 3


def test_native_model_load_and_encode(guard: NetworkGuard, colors_model: Path) -> None:
    encoder = load_encoder(colors_model, device="cpu")
    assert encoder.encode_texts(["a red image"]).shape == (1, encoder.info.dim)
    assert load_model_dir(colors_model).model_id == encoder.info.model_id


def test_tokenizer_and_pretrained_parts_load_offline(
    guard: NetworkGuard, albert_folder: Path, resnet_folder: Path
) -> None:
    tokenizer = load_tokenizer(albert_folder)
    assert tokenizer("a red image")["input_ids"]
    model = build_model(
        load_named_config("tiny-test"), text_init=albert_folder, image_init=resnet_folder
    )
    assert model.config.albert_config is not None


def test_cli_train_with_text_init_then_index_and_search(
    guard: NetworkGuard,
    albert_folder: Path,
    resnet_folder: Path,
    colors_corpus: Path,
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    out = tmp_path / "model"
    args = [
        "train", "--corpus", colors_corpus, "--out", out, "--config", "tiny-test",
        "--text-init", albert_folder, "--image-init", resnet_folder,
        "--epochs", 1, "--batch-size", 8, "--device", "cpu", "--quiet",
    ]  # fmt: skip
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    db = tmp_path / "db"
    photos = colors_corpus.parent / "images"
    result = runner.invoke(app, ["index", str(photos), "--db", str(db), "--model", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["search", "a red image", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"]


def test_hub_offline_sets_and_restores_the_hub_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = hub_constants.HF_HUB_OFFLINE
    with hub_offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1"
        assert hub_constants.HF_HUB_OFFLINE is True
    assert "HF_HUB_OFFLINE" not in os.environ
    assert before == hub_constants.HF_HUB_OFFLINE
