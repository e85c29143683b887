"""OpenCLIP behind the Encoder interface, exercised through the real open_clip code.

Tiny random-weight models are saved to local files and loaded through exactly the user-facing
paths (`load_encoder`, `mmsearch index/search/train`); the loaded encoder must reproduce the saved
model's embeddings. Every test runs with network connections refused and recorded.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Runs in .venv-openclip (`make test` does, loading mmsearch_torchvision_shim first); skipped
# where the optional extra is not installed, as in the core .venv.
open_clip = pytest.importorskip("open_clip", reason="needs mmsearch[openclip]: make test-openclip")

import torch  # noqa: E402
from click.testing import Result  # noqa: E402
from open_clip.transform import PreprocessCfg, image_transform_v2  # noqa: E402
from PIL import Image  # noqa: E402
from pretrained_parts import NetworkGuard  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from support import recall_of  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from indexer.models.config import TrainConfig  # noqa: E402
from indexer.models.encoder import load_encoder  # noqa: E402
from indexer.models.native import ModelLoadError  # noqa: E402
from indexer.models.openclip import CONFIG_FILE, WEIGHTS_FILE, OpenClipSpec  # noqa: E402
from indexer.training.corpora import load_corpus  # noqa: E402
from indexer.training.loop import (  # noqa: E402
    LAST_DIR,
    STATE_FILE,
    EpochResult,
    TrainReport,
    train_openclip,
)
from mmsearch.cli import app  # noqa: E402
from mmsearch.engine import Engine  # noqa: E402

TINY_ARCH = "mmsearch-tiny-vit"
# A ViT CLIP small enough to build in milliseconds; vocab_size is the SimpleTokenizer's (its BPE
# vocabulary ships inside the open_clip package, so tokenising needs no download).
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@dataclass(frozen=True)
class Checkpoint:
    """A saved weights file and the model it was saved from (the reference for embeddings)."""

    path: Path
    model: Any


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetworkGuard]:
    """Nothing in the OpenCLIP paths may open a connection (recorded even if swallowed)."""
    guard = NetworkGuard().install(monkeypatch)
    yield guard
    assert guard.attempts == [], f"network access attempted: {guard.attempts}"


@pytest.fixture(scope="session")
def tiny_arch(tmp_path_factory: pytest.TempPathFactory) -> str:
    """TINY_ARCH registered the way open_clip registers its own: a JSON config in a folder."""
    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / f"{TINY_ARCH}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder)
    return TINY_ARCH


def save_checkpoint(arch: str, path: Path, *, seed: int) -> Checkpoint:
    """Random weights for `arch` saved as safetensors or a plain torch state dict (by suffix)."""
    torch.manual_seed(seed)
    model = open_clip.create_model(arch).eval()
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return Checkpoint(path, model)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_arch: str, tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    """The model users would point --checkpoint at, as safetensors."""
    return save_checkpoint(tiny_arch, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", seed=0)


TEXTS = ["a red image", "a blue square on a white background", "an image"]
COLORS = ("red", "green", "blue", "yellow")
ATOL = 1e-5
EVAL_ROUNDING = 1e-4  # `mmsearch eval` rounds recalls to four decimals


def run(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


@torch.no_grad()
def reference_embeddings(
    model: Any, arch_or_dir: str, texts: list[str], images: list[Image.Image]
) -> tuple[np.ndarray, np.ndarray]:
    """What open_clip itself computes: its tokenizer, its eval transform, normalised features."""
    tokenizer = open_clip.get_tokenizer(arch_or_dir)
    transform = image_transform_v2(
        PreprocessCfg(**open_clip.get_model_preprocess_cfg(model)), is_train=False
    )
    text = model.encode_text(tokenizer(texts), normalize=True)
    pixels = torch.stack([transform(image) for image in images])
    return text.numpy(), model.encode_image(pixels, normalize=True).numpy()


def read_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def encoder_embeddings(encoder: Any, texts: list[str], images: list[Image.Image]) -> tuple:
    pixels = torch.stack([encoder.preprocess(image) for image in images])
    return encoder.encode_texts(texts), encoder.encode_pixels(pixels)


@pytest.fixture
def images(make_color_image: Callable[..., Image.Image]) -> list[Image.Image]:
    return [make_color_image(c, seed=i, size=(48, 40)) for i, c in enumerate(COLORS)]


# -- loading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_loads_with_the_saved_embeddings(
    tiny_arch: str, tmp_path: Path, images: list[Image.Image], suffix: str
) -> None:
    saved = save_checkpoint(tiny_arch, tmp_path / f"weights{suffix}", seed=1)
    encoder = load_encoder(f"openclip:{tiny_arch}", checkpoint=saved.path, device="cpu")
    want_text, want_image = reference_embeddings(saved.model, tiny_arch, TEXTS, images)
    got_text, got_image = encoder_embeddings(encoder, TEXTS, images)
    np.testing.assert_allclose(got_text, want_text, atol=ATOL)
    np.testing.assert_allclose(got_image, want_image, atol=ATOL)
    assert got_text.dtype == np.float32 and got_text.flags.c_contiguous
    assert encoder.info.kind == "openclip"
    assert encoder.info.dim == 32
    assert encoder.info.source == OpenClipSpec(tiny_arch, saved.path.resolve()).source()
    assert encoder.info.model_id.startswith(f"openclip:{tiny_arch}:")


def test_model_id_is_the_content_of_the_weights(tiny_checkpoint: Checkpoint, tmp_path: Path) -> None:
    copy = tmp_path / "moved" / "same.safetensors"
    copy.parent.mkdir()
    shutil.copyfile(tiny_checkpoint.path, copy)
    other = save_checkpoint(TINY_ARCH, tmp_path / "other.safetensors", seed=2)
    spec = f"openclip:{TINY_ARCH}"
    original = load_encoder(spec, checkpoint=tiny_checkpoint.path, device="cpu").info
    moved = load_encoder(spec, checkpoint=copy, device="cpu").info
    different = load_encoder(spec, checkpoint=other.path, device="cpu").info
    assert moved.model_id == original.model_id  # a moved file is the same model ...
    assert moved.source != original.source
    assert different.model_id != original.model_id  # ... and other weights are not


class Payload:
    """Anything that is not a tensor: loading it would mean unpickling code."""


def test_a_checkpoint_that_needs_unpickling_is_refused(tiny_arch: str, tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": {}, "payload": Payload()}, path)
    with pytest.raises(ModelLoadError, match="never unpickles"):
        load_encoder(f"openclip:{tiny_arch}", checkpoint=path, device="cpu")


def test_unknown_architecture_and_missing_file_are_clear(
    tiny_checkpoint: Checkpoint, tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError, match="no architecture 'no-such-arch'"):
        load_encoder("openclip:no-such-arch", checkpoint=tiny_checkpoint.path, device="cpu")
    with pytest.raises(ModelLoadError, match="--checkpoint FILE"):
        load_encoder(f"openclip:{TINY_ARCH}", checkpoint=tmp_path / "gone.pt", device="cpu")


def test_pretrained_tag_is_passed_to_open_clip(
    tiny_checkpoint: Checkpoint, monkeypatch: pytest.MonkeyPatch, images: list[Image.Image]
) -> None:
    """--pretrained TAG goes to open_clip unchanged (which downloads on machines with internet);
    here open_clip's create_model is wrapped to serve the tag from the local file instead."""
    real_create = open_clip.create_model
    calls: list[tuple[str, str | None]] = []

    def create_model(name: str, pretrained: str | None = None, **kwargs: Any) -> Any:
        calls.append((name, pretrained))
        return real_create(name, pretrained=str(tiny_checkpoint.path), **kwargs)

    monkeypatch.setattr(open_clip, "create_model", create_model)
    encoder = load_encoder(f"openclip:{TINY_ARCH}", pretrained="laion2b_s34b_b79k", device="cpu")
    assert calls == [(TINY_ARCH, "laion2b_s34b_b79k")]
    assert encoder.info.source == f"openclip:{TINY_ARCH}?pretrained=laion2b_s34b_b79k"
    assert encoder.info.model_id == f"openclip:{TINY_ARCH}/laion2b_s34b_b79k"
    want_text, _ = reference_embeddings(tiny_checkpoint.model, TINY_ARCH, TEXTS, images)
    np.testing.assert_allclose(encoder.encode_texts(TEXTS), want_text, atol=ATOL)


# -- the CLI: index records the model, search reuses it -------------------------------------------


def test_index_then_search_without_repeating_the_model(
    tiny_checkpoint: Checkpoint, photo_folder: Any, tmp_path: Path
) -> None:
    db = tmp_path / "db"
    args = [
        "index", photo_folder.root, "--db", db, "--model", f"openclip:{TINY_ARCH}",
        "--checkpoint", tiny_checkpoint.path, "--device", "cpu", "--json",
    ]  # fmt: skip
    summary = json.loads(ok(run(*args)))
    assert summary["new"] == len(photo_folder.valid)
    assert len(summary["skipped"]) == len(photo_folder.skipped)

    info = json.loads(ok(run("info", "--db", db, "--json")))
    assert info["model_kind"] == "openclip"
    assert info["model_source"] == OpenClipSpec(TINY_ARCH, tiny_checkpoint.path.resolve()).source()
    assert info["model_id"].startswith(f"openclip:{TINY_ARCH}:")
    assert info["dim"] == 32

    results = json.loads(ok(run("search", "a red image", "--db", db, "--json", "-k", 4)))["results"]
    # The scores are the saved model's own cosine similarities between query and files.
    encoder = load_encoder(f"openclip:{TINY_ARCH}", checkpoint=tiny_checkpoint.path, device="cpu")
    query = encoder.encode_texts(["a red image"])[0]
    with Engine.open(db) as engine:
        assert engine.encoder.info == encoder.info
    for hit in results:
        image = Image.open(hit["path"]).convert("RGB")
        vector = encoder.encode_pixels(encoder.preprocess(image)[None])[0]
        assert hit["score"] == pytest.approx(float(query @ vector), abs=2e-3)
    assert {h["path"] for h in results} == photo_folder.valid_paths


def test_an_explicit_model_that_differs_from_the_index_is_refused(
    tiny_checkpoint: Checkpoint, photo_folder: Any, tmp_path: Path
) -> None:
    db = tmp_path / "db"
    spec = ["--model", f"openclip:{TINY_ARCH}"]
    ok(run("index", photo_folder.root, "--db", db, *spec, "--checkpoint", tiny_checkpoint.path))
    other = save_checkpoint(TINY_ARCH, tmp_path / "other.safetensors", seed=3)
    result = run("search", "a red image", "--db", db, *spec, "--checkpoint", other.path)
    assert result.exit_code == 1
    assert "was built with model" in result.stderr
    # The same weights given explicitly are accepted.
    ok(run("search", "a red image", "--db", db, *spec, "--checkpoint", tiny_checkpoint.path))


# -- fine-tuning ------------------------------------------------------------------------------------


def test_finetune_writes_a_folder_usable_as_model(
    tiny_checkpoint: Checkpoint,
    colors_corpus: Path,
    photo_folder: Any,
    images: list[Image.Image],
    tmp_path: Path,
) -> None:
    out = tmp_path / "finetuned"
    output = ok(
        run(
            "train", "--corpus", colors_corpus, "--out", out, "--init", f"openclip:{TINY_ARCH}",
            "--checkpoint", tiny_checkpoint.path, "--epochs", 4, "--batch-size", 8,
            "--lr", 1e-3, "--device", "cpu",
        )
    )  # fmt: skip
    losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", output)]
    assert len(losses) == 4 and losses[-1] < losses[0], output
    assert (out / CONFIG_FILE).is_file() and (out / WEIGHTS_FILE).is_file()

    # open_clip reads the folder itself (its local-dir layout) ...
    plain = open_clip.create_model(f"local-dir:{out}").eval()
    want_text, want_image = reference_embeddings(plain, f"local-dir:{out}", TEXTS, images)
    # ... and the Encoder built from it gives the same embeddings.
    encoder = load_encoder(out, device="cpu")
    got_text, got_image = encoder_embeddings(encoder, TEXTS, images)
    np.testing.assert_allclose(got_text, want_text, atol=ATOL)
    np.testing.assert_allclose(got_image, want_image, atol=ATOL)
    assert encoder.info.kind == "openclip" and encoder.info.source == str(out.resolve())
    # Training moved the weights away from the checkpoint it started from.
    start_text, _ = reference_embeddings(tiny_checkpoint.model, TINY_ARCH, TEXTS, images)
    assert not np.allclose(got_text, start_text, atol=1e-3)
    recorded = json.loads((out / CONFIG_FILE).read_text())["mmsearch"]
    assert recorded["arch"] == TINY_ARCH
    assert recorded["init"]["source"] == OpenClipSpec(TINY_ARCH, tiny_checkpoint.path.resolve()).source()

    db = tmp_path / "db"
    ok(run("index", photo_folder.root, "--db", db, "--model", out, "--device", "cpu"))
    assert json.loads(ok(run("search", "a red image", "--db", db, "--json")))["results"]
    assert json.loads(ok(run("info", "--db", db, "--json")))["model_source"] == str(out.resolve())


def test_finetune_applies_caption_agreement(
    tiny_checkpoint: Checkpoint, colors_corpus: Path, tmp_path: Path
) -> None:
    # Two captions per image, so the agreement term has pairs to pull together.
    lines = [json.loads(line) for line in colors_corpus.read_text(encoding="utf-8").splitlines()]
    second = [{**row, "caption": row["caption"].replace("a ", "the colour ", 1)} for row in lines]
    corpus = colors_corpus.parent / "two_captions.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in lines + second), encoding="utf-8")
    first_losses = []
    for weight in (0.0, 1.0):
        output = ok(
            run(
                "train", "--corpus", corpus, "--out", tmp_path / f"w{weight}",
                "--init", f"openclip:{TINY_ARCH}", "--checkpoint", tiny_checkpoint.path,
                "--epochs", 1, "--batch-size", 8, "--lr", 1e-3, "--device", "cpu",
                "--caption-agreement", weight,
            )
        )  # fmt: skip
        first_losses.append(float(re.findall(r"loss (\d+\.\d+)", output)[0]))
        recorded = json.loads((tmp_path / f"w{weight}" / "train_config.json").read_text())
        assert recorded["caption_agreement"] == weight
    # Same seed and start: the extra InfoNCE term (about log(batch) before training) is added.
    assert first_losses[1] > first_losses[0] + 0.5, first_losses


def test_eval_reports_the_recall_of_the_checkpoints_own_embeddings(
    tiny_checkpoint: Checkpoint, colors_corpus: Path
) -> None:
    args = [
        "eval", "--corpus", colors_corpus, "--model", f"openclip:{TINY_ARCH}",
        "--checkpoint", tiny_checkpoint.path, "--json", "--device", "cpu",
    ]  # fmt: skip
    result = json.loads(ok(run(*args)))
    assert result["counts"] == {"images": 24, "captions": 24, "skipped": 0}
    # The expected numbers from open_clip's own model, tokenizer and transform.
    pairs = load_corpus(colors_corpus).pairs
    gallery = list(dict.fromkeys(p.image for p in pairs))
    captions = [p.caption for p in pairs]
    texts, images = reference_embeddings(
        tiny_checkpoint.model, TINY_ARCH, captions, [read_rgb(path) for path in gallery]
    )
    want = recall_of(images, texts, [gallery.index(p.image) for p in pairs], captions)
    for direction in ("t2i", "i2t"):
        assert result[direction] == pytest.approx(want[direction], abs=EVAL_ROUNDING), direction
    # Random weights rank the colours far from perfectly: the comparison has teeth.
    assert want["t2i"]["R@1"] < 1.0 and want["i2t"]["R@1"] < 1.0, want


# -- the one training loop: OpenCLIP through its adapter -------------------------------------------

# 24 colour images in batches of 12: two optimiser steps per epoch.
OPENCLIP_TRAIN = TrainConfig(epochs=3, batch_size=12, lr=1e-3, warmup_steps=1)


class _Interrupted(Exception):
    pass


def _finetune(corpus: Path, out: Path, checkpoint: Checkpoint, **kwargs: Any) -> TrainReport:
    return train_openclip(
        load_corpus(corpus),
        out,
        init=f"openclip:{TINY_ARCH}",
        checkpoint=checkpoint.path,
        train_config=kwargs.pop("train_config", OPENCLIP_TRAIN),
        device="cpu",
        progress=False,
        **kwargs,
    )


def test_two_steps_through_the_one_loop(
    tiny_checkpoint: Checkpoint, colors_corpus: Path, tmp_path: Path
) -> None:
    report = _finetune(
        colors_corpus, tmp_path, tiny_checkpoint, train_config=replace(OPENCLIP_TRAIN, epochs=1)
    )
    assert json.loads((tmp_path / LAST_DIR / STATE_FILE).read_text())["step"] == 2
    assert np.isfinite(report.epochs[0].loss)
    recorded = json.loads((tmp_path / CONFIG_FILE).read_text())["mmsearch"]
    assert recorded["trained_on"] == {
        "corpus": colors_corpus.parent.name,
        "domain": "",
        "images": 24,
        "pairs": 24,
    }
    assert (tmp_path / "augmentations.png").is_file()
    assert load_encoder(tmp_path, device="cpu").info.kind == "openclip"


def test_resume_continues_an_openclip_finetune(
    tiny_checkpoint: Checkpoint, colors_corpus: Path, tmp_path: Path
) -> None:
    straight = _finetune(colors_corpus, tmp_path / "straight", tiny_checkpoint)

    def stop_after_one(result: EpochResult) -> None:
        if result.epoch == 1:
            raise _Interrupted

    out = tmp_path / "interrupted"
    with pytest.raises(_Interrupted):
        _finetune(colors_corpus, out, tiny_checkpoint, on_epoch=stop_after_one)
    resumed = _finetune(colors_corpus, out, tiny_checkpoint, resume=True)
    assert [e.epoch for e in resumed.epochs] == [2, 3]
    assert json.loads((out / LAST_DIR / STATE_FILE).read_text())["step"] == 6
    assert [e.loss for e in resumed.epochs] == pytest.approx([e.loss for e in straight.epochs[1:]], abs=1e-5)
    want = load_file(str(tmp_path / "straight" / LAST_DIR / WEIGHTS_FILE))
    got = load_file(str(out / LAST_DIR / WEIGHTS_FILE))
    for name in want:
        assert torch.allclose(want[name], got[name], atol=1e-5), name
    # The resumed folder still records the checkpoint the fine-tune started from.
    recorded = json.loads((out / CONFIG_FILE).read_text())["mmsearch"]
    assert recorded["init"]["source"] == OpenClipSpec(TINY_ARCH, tiny_checkpoint.path.resolve()).source()
    # Through the CLI, as a user resumes: no --init needed, OUT/last says what it holds.
    output = ok(
        run(
            "train", "--corpus", colors_corpus, "--out", out, "--resume", "--epochs", 4,
            "--batch-size", 12, "--device", "cpu",
        )
    )  # fmt: skip
    assert [int(e) for e in re.findall(r"^epoch\s+(\d+)", output, re.M)] == [4]
    assert json.loads((out / LAST_DIR / STATE_FILE).read_text())["step"] == 8
