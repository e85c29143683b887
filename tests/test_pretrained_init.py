"""Pretrained starting points through the user-facing CLI: --text-init, --image-init, OpenCLIP specs.

The ALBERT and ResNet "pretrained" parts are tiny random models saved the way Hugging Face saves
them; `mmsearch train` must start from exactly those weights (checked with --lr 0, which leaves
every weight where it started) and fine-tune from them (checked with a real learning rate).
The OpenCLIP checks here need no open_clip; the real OpenCLIP tests live in tests/openclip/.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from click.testing import Result
from pretrained_parts import (
    ALBERT_HIDDEN,
    RESNET_HIDDEN,
    write_albert_folder,
    write_resnet_file,
    write_resnet_folder,
)
from transformers import AlbertModel, ResNetModel
from typer.testing import CliRunner

from indexer.models.config import load_named_config
from indexer.models.encoder import load_encoder, model_spec
from indexer.models.native import ModelLoadError, build_model, load_model_dir
from indexer.models.openclip import OpenClipSpec
from indexer.models.tokenizer import load_tokenizer
from mmsearch.cli import app

WORDS = (
    "a red image",
    "a green image",
    "a blue image",
    "a yellow image",
    "a small red square on a white background",
    "two green circles next to a blue triangle",
    "the yellow star is above the large square",
)


def run(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def train_cli(corpus: Path, out: Path, *extra: object, lr: float, epochs: int = 1) -> Result:
    result = run(
        "train", "--corpus", corpus, "--out", out, "--config", "tiny-test", "--epochs", epochs,
        "--batch-size", 8, "--lr", lr, "--device", "cpu", "--quiet", *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def albert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_albert_folder(tmp_path_factory.mktemp("albert-tiny"), WORDS)


@pytest.fixture(scope="module")
def resnet_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("resnet-tiny")
    write_resnet_folder(folder)
    return folder


# A weights file has no architecture of its own: it is built with the --config's image tower.
TINY_TEST_RESNET = load_named_config("tiny-test").image.hidden_sizes


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("resnet-file") / "resnet.safetensors"
    write_resnet_file(path, hidden_sizes=TINY_TEST_RESNET)
    return path


def assert_same_weights(got: torch.nn.Module, want: torch.nn.Module) -> None:
    want_state = want.state_dict()
    got_state = got.state_dict()
    assert set(got_state) == set(want_state)
    for key, value in want_state.items():
        assert torch.equal(got_state[key], value), key


def distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
    b_state = b.state_dict()
    return sum(float((v.float() - b_state[k].float()).norm()) for k, v in a.state_dict().items())


# -- --text-init -------------------------------------------------------------------------------


def test_text_init_starts_from_the_folder_weights(
    colors_corpus: Path, albert_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "model"
    train_cli(colors_corpus, out, "--text-init", albert_folder, lr=0.0)
    saved = AlbertModel.from_pretrained(str(albert_folder), local_files_only=True)
    loaded = load_model_dir(out)
    # --lr 0 leaves every weight where it started: the text tower is the folder's ALBERT ...
    assert_same_weights(loaded.model.text.albert, saved)
    assert loaded.model.config.albert_config is not None
    assert loaded.model.config.albert_config["hidden_size"] == ALBERT_HIDDEN
    # ... which is also what build_model starts from, before any training.
    before = build_model(load_named_config("tiny-test"), text_init=albert_folder)
    assert_same_weights(before.text.albert, saved)
    # The folder's tokenizer travels with the model: same ids for the same caption.
    folder_tokenizer = load_tokenizer(albert_folder)
    caption = "a small red square"
    assert loaded.tokenizer(caption)["input_ids"] == folder_tokenizer(caption)["input_ids"]


def test_text_init_fine_tunes_from_the_folder_and_loads_as_model(
    colors_corpus: Path, albert_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "model"
    train_cli(colors_corpus, out, "--text-init", albert_folder, lr=3e-3, epochs=2)
    saved = AlbertModel.from_pretrained(str(albert_folder), local_files_only=True)
    trained = load_model_dir(out).model.text.albert
    random_init = AlbertModel(saved.config)
    moved = distance(trained, saved)
    assert moved > 0.0  # it trained ...
    assert moved < distance(random_init, saved)  # ... from the folder's weights, not from scratch
    encoder = load_encoder(out, device="cpu")
    assert encoder.encode_texts(["a red image"]).shape == (1, encoder.info.dim)


# -- --image-init --------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["folder", "file"])
def test_image_init_starts_from_local_resnet_weights(
    source: str,
    colors_corpus: Path,
    resnet_folder: Path,
    resnet_file: Path,
    tmp_path: Path,
) -> None:
    init = resnet_folder if source == "folder" else resnet_file
    out = tmp_path / "model"
    train_cli(colors_corpus, out, "--image-init", init, lr=0.0)
    if source == "folder":
        saved = ResNetModel.from_pretrained(str(resnet_folder), local_files_only=True)
        sizes = RESNET_HIDDEN  # the folder's config wins over --config
    else:
        saved = write_resnet_file(tmp_path / "again.safetensors", hidden_sizes=TINY_TEST_RESNET)
        sizes = TINY_TEST_RESNET
    loaded = load_model_dir(out).model
    resnet = loaded.image.resnet
    assert list(resnet.config.hidden_sizes) == list(sizes)
    # Parameters only: BatchNorm's running statistics follow the training images even at lr 0.
    got, want = dict(resnet.named_parameters()), dict(saved.named_parameters())
    assert set(got) == set(want)
    stem = "embedder.embedder.convolution.weight"
    for key, value in want.items():
        if key == stem and loaded.config.image.coord_channels:
            # The 3-channel stem is widened for the x/y coordinate inputs with zero weights, so
            # the pretrained response is unchanged.
            assert torch.equal(got[key][:, :3], value)
            assert not got[key][:, 3:].any()
        else:
            assert torch.equal(got[key], value), key
    encoder = load_encoder(out, device="cpu")
    pixels = torch.zeros(1, 3, 32, 32)
    assert encoder.encode_pixels(pixels).shape == (1, encoder.info.dim)


def test_image_init_that_is_not_resnet_weights_names_the_flag(
    colors_corpus: Path, tmp_path: Path
) -> None:
    bogus = tmp_path / "weights.safetensors"
    bogus.write_bytes(b"not safetensors")
    result = run(
        "train", "--corpus", colors_corpus, "--out", tmp_path / "m", "--config", "tiny-test",
        "--image-init", bogus, "--epochs", 1, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "--image-init" in result.stderr


# -- OpenCLIP: what works without open_clip ------------------------------------------------------


def test_openclip_without_the_extra_names_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if not installed, in any venv
    (tmp_path / "photos").mkdir()
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    result = run(
        "index", tmp_path / "photos", "--db", tmp_path / "db",
        "--model", "openclip:ViT-B-32", "--checkpoint", weights,
    )  # fmt: skip
    assert result.exit_code == 1
    assert "mmsearch[openclip]" in result.stderr
    with pytest.raises(ModelLoadError, match=r"mmsearch\[openclip\]"):
        load_encoder("openclip:ViT-B-32", checkpoint=weights, device="cpu")


def test_checkpoint_needs_an_openclip_model(tmp_path: Path) -> None:
    result = run("search", "a cat", "--db", tmp_path / "db", "--checkpoint", tmp_path / "w.pt")
    assert result.exit_code == 1
    assert "--model openclip:ARCH" in result.stderr


def test_train_init_refuses_native_only_flags(colors_corpus: Path, tmp_path: Path) -> None:
    result = run(
        "train", "--corpus", colors_corpus, "--out", tmp_path / "m",
        "--init", "openclip:ViT-B-32", "--checkpoint", tmp_path / "w.pt", "--config", "tiny-test",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--init" in result.stderr


@pytest.mark.parametrize("name", ["plain.safetensors", "with space?&=#.pt", "caf\u00e9/w.bin"])
def test_openclip_spec_round_trips_through_the_recorded_source(tmp_path: Path, name: str) -> None:
    checkpoint = tmp_path / name
    spec = OpenClipSpec.parse("openclip:ViT-B-32", checkpoint=checkpoint)
    assert spec.checkpoint == checkpoint.resolve()
    assert OpenClipSpec.parse(spec.source()) == spec
    tagged = OpenClipSpec.parse("openclip:ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert OpenClipSpec.parse(tagged.source()) == tagged
    assert model_spec("openclip:ViT-B-32", checkpoint=checkpoint) == spec.source()


@pytest.mark.parametrize(
    ("text", "checkpoint", "pretrained"),
    [
        ("openclip:ViT-B-32", None, None),  # no weights: a random CLIP is never what one wants
        ("openclip:ViT-B-32", Path("w.pt"), "openai"),  # two sources
        ("openclip:", Path("w.pt"), None),  # no architecture
        ("openclip:ViT-B-32?weights=w.pt", None, None),  # unknown option
    ],
)
def test_openclip_spec_needs_one_weights_source(
    text: str, checkpoint: Path | None, pretrained: str | None
) -> None:
    with pytest.raises(ModelLoadError, match="--checkpoint"):
        OpenClipSpec.parse(text, checkpoint=checkpoint, pretrained=pretrained)


def test_pretrained_given_a_file_is_a_checkpoint(tmp_path: Path) -> None:
    """open_clip's own `pretrained=FILE` form: local weights, recorded by content, not as a tag."""
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"")
    spec = OpenClipSpec.parse("openclip:ViT-B-32", pretrained=str(weights))
    assert spec == OpenClipSpec("ViT-B-32", checkpoint=weights.resolve())
