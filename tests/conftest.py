"""Shared fixtures: a tiny sample corpus, two tiny trained models and a folder of awkward files.

Everything is built offline into pytest's temp folders. The expensive pieces (corpus generation
and training) are session-scoped and take a few seconds together on one CPU core.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image
from support import load_script

from indexer.models.config import TrainConfig, load_named_config
from indexer.models.devices import torch_threads
from indexer.training.corpora import load_corpus
from indexer.training.loop import train

REPO = Path(__file__).resolve().parents[1]
GENERATOR_PATH = REPO / "sample_corpus" / "generate.py"

# The tiny models gain nothing from intra-op threads, and on a shared 2-core machine a second
# thread spinning against another job makes each step ~10x slower.
torch.set_num_threads(1)

SAMPLE_SCALE = 0.04  # ~180 scenes, ~670 captions: generated in about a second
SHAPES_TRAIN = TrainConfig(epochs=8, batch_size=32, lr=3e-3, warmup_steps=5)

# Four colours far apart in RGB: a 32-dim model separates them after ~60 steps with a cosine
# margin of ~0.6, which makes "the right image ranks first" a deterministic check.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
    "yellow": (240, 230, 40),
}
COLOR_COPIES = 6  # noisy training images per colour
COLOR_NOISE = 20.0  # std of the per-pixel noise, so no two files share a content hash
COLORS_TRAIN = TrainConfig(epochs=20, batch_size=8, lr=3e-3, warmup_steps=5)


def caption_for(color: str) -> str:
    """The one training caption of a colour (also the query the e2e tests use)."""
    return f"a {color} image"


def color_image(color: str, *, seed: int, size: tuple[int, int] = (40, 32)) -> Image.Image:
    """A solid colour with Gaussian noise; different seeds give different bytes."""
    rng = np.random.default_rng(seed)
    width, height = size
    base = np.asarray(COLORS[color], dtype=np.float32)
    pixels = base[None, None, :] + rng.normal(0.0, COLOR_NOISE, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def noise_jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """An incompressible JPEG, so cutting it in half really loses image data."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def load_generator() -> ModuleType:
    """sample_corpus/generate.py is a script, not a package module: import it by path."""
    return load_script(GENERATOR_PATH, "sample_corpus_generate_for_fixtures")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for a module's tests, whatever an earlier test left set."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """corpus.jsonl of a tiny generated sample corpus (train/val/test shape scenes)."""
    out = tmp_path_factory.mktemp("sample") / "corpus"
    report = load_generator().generate(out, seed=0, scale=SAMPLE_SCALE, workers=1)
    assert report.images > 100, report
    return out / "corpus.jsonl"


@pytest.fixture(scope="session")
def shapes_model(sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-test model trained on the sample corpus (a real model dir; quality is modest)."""
    out = tmp_path_factory.mktemp("shapes-model")
    train(
        load_corpus(sample_corpus),
        out,
        model_config=load_named_config("tiny-test"),
        train_config=SHAPES_TRAIN,
        device="cpu",
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def colors_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """corpus.jsonl of noisy solid-colour images, one caption each ("a red image", ...)."""
    root = tmp_path_factory.mktemp("colors")
    (root / "images").mkdir()
    lines = []
    for c, color in enumerate(COLORS):
        for i in range(COLOR_COPIES):
            name = f"{color}_{i}.png"
            color_image(color, seed=1000 * c + i).save(root / "images" / name)
            lines.append(json.dumps({"image": f"images/{name}", "caption": caption_for(color)}))
    corpus = root / "corpus.jsonl"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return corpus


@pytest.fixture(scope="session")
def colors_model(colors_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-test model that reliably tells the four colours apart, in text and in images."""
    out = tmp_path_factory.mktemp("colors-model")
    train(
        load_corpus(colors_corpus),
        out,
        model_config=load_named_config("tiny-test"),
        train_config=COLORS_TRAIN,
        device="cpu",
        progress=False,
    )
    return out


@pytest.fixture
def make_color_image() -> Callable[..., Image.Image]:
    """color_image(color, seed=..., size=...) for tests that write their own galleries."""
    return color_image


@dataclass
class PhotoFolder:
    """A folder of real-world mess: what should be indexed, skipped (and why), and ignored."""

    root: Path
    valid: dict[str, Path]  # colour -> image file (each colour once, different formats/depths)
    skipped: dict[Path, str] = field(default_factory=dict)  # bad file -> expected reason
    ignored: list[Path] = field(default_factory=list)  # hidden files and OS metadata

    @property
    def valid_paths(self) -> set[str]:
        """Absolute resolved paths of the valid images, as the catalogue stores them."""
        return {str(p.resolve()) for p in self.valid.values()}


def write_photo_folder(root: Path, *, seed: int = 0) -> PhotoFolder:
    """Valid PNG/JPEG in nested folders and a unicode name, next to every kind of bad file."""
    sub = root / "sub"
    deeper = sub / "deeper"
    deeper.mkdir(parents=True)
    valid = {
        "red": root / "red.png",
        "green": sub / "green.jpg",
        "blue": deeper / "blue.PNG",  # extension case must not matter
        "yellow": root / "café 写真.png",
    }
    for i, (color, path) in enumerate(valid.items()):
        fmt = "JPEG" if path.suffix.lower() == ".jpg" else "PNG"
        color_image(color, seed=seed * 100 + i, size=(48, 40)).save(path, fmt, quality=95)

    folder = PhotoFolder(root, valid)
    rng = np.random.default_rng(seed)
    corrupt = root / "corrupt.png"
    corrupt.write_bytes(rng.integers(0, 256, 2048, dtype=np.uint8).tobytes())
    truncated = sub / "truncated.jpg"
    whole = noise_jpeg(seed)
    truncated.write_bytes(whole[: len(whole) // 2])
    empty = root / "empty.jpg"
    empty.write_bytes(b"")
    text_as_jpg = deeper / "text.jpg"
    text_as_jpg.write_text("this is a text file, not a JPEG\n", encoding="utf-8")
    notes = root / "notes.txt"
    notes.write_text("holiday notes\n", encoding="utf-8")
    folder.skipped = {
        corrupt: "not an image (unrecognised format)",
        truncated: "truncated or corrupt image data",
        empty: "empty file",
        text_as_jpg: "not an image (unrecognised format)",
        notes: "not an image file type (.txt: text)",
    }

    hidden_png = root / ".hidden.png"
    color_image("red", seed=seed * 100 + 50).save(hidden_png)
    ds_store = sub / ".DS_Store"
    ds_store.write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    bare_ext = root / ".jpg"  # a file literally named ".jpg" is hidden, not an image
    bare_ext.write_text("not an image\n", encoding="utf-8")
    hidden_dir = root / ".thumbnails-cache"
    hidden_dir.mkdir()
    hidden_in_dir = hidden_dir / "thumb.png"
    color_image("blue", seed=seed * 100 + 51).save(hidden_in_dir)
    folder.ignored = [hidden_png, ds_store, bare_ext, hidden_in_dir]
    return folder


@pytest.fixture
def photo_folder(tmp_path: Path) -> PhotoFolder:
    """A fresh awkward photo folder per test (tests rename, touch and delete its files)."""
    return write_photo_folder(tmp_path / "photos")
