"""The one training loop, augmentation that keeps captions true, trained_on, and the evaluator.

Small real runs on the noisy colour corpus; the evaluator is checked against Recall@K computed
here with NumPy from the model's own forward pass.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from indexer.models.config import AugmentConfig, TrainConfig, load_named_config
from indexer.models.encoder import load_encoder
from indexer.models.native import CONFIG_FILE, WEIGHTS_FILE, build_model, load_model_dir, save_model_dir
from indexer.models.tokenizer import tokenize, tokenizer_from_sentencepiece, train_sentencepiece
from indexer.training.augment import AUGMENTATIONS_FILE, augment, swap_left_right, view_rng
from indexer.training.corpora import load_corpus
from indexer.training.evaluate import evaluate_corpus
from indexer.training.loop import (
    LAST_DIR,
    STATE_FILE,
    Batch,
    EpochResult,
    PairData,
    step_inputs,
    train,
)
from mmsearch.cli import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 24 colour images in batches of 12: exactly two optimiser steps per epoch.
TWO_STEPS = TrainConfig(epochs=1, batch_size=12, lr=3e-3, warmup_steps=1)
# Every augmentation on, flips included, so resuming must replay the very same views.
AUGMENTED = replace(TWO_STEPS, epochs=3, augment=AugmentConfig(flip=True))
SIDE = 32  # tiny-test's input size
RED = (220, 30, 30)
BLUE = (30, 40, 220)
GREY = (128, 128, 128)
# Only the flip: the test below can then find each pixel where a mirror puts it.
FLIP_ONLY = AugmentConfig(
    crop_min_area=1.0,
    crop_max_shift=0.0,
    flip=True,
    brightness=0.0,
    contrast=0.0,
    saturation=0.0,
    blur_probability=0.0,
    noise_probability=0.0,
    jpeg_probability=0.0,
)


class _Interrupted(Exception):
    pass


def _train(corpus: Path, out: Path, config: TrainConfig, **kwargs: Any) -> Any:
    return train(
        load_corpus(corpus),
        out,
        model_config=load_named_config("tiny-test"),
        train_config=config,
        device="cpu",
        progress=False,
        **kwargs,
    )


# -- the loop ------------------------------------------------------------------------------------


def test_two_steps_write_a_usable_model_that_says_what_it_was_trained_on(
    colors_corpus: Path, tmp_path: Path
) -> None:
    report = _train(colors_corpus, tmp_path, replace(TWO_STEPS, augment=AugmentConfig()))
    assert json.loads((tmp_path / LAST_DIR / STATE_FILE).read_text())["step"] == 2
    assert np.isfinite(report.epochs[0].loss)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["trained_on"] == {
        "corpus": colors_corpus.parent.name,  # corpus.jsonl says nothing; its folder does
        "domain": load_named_config("tiny-test").domain,
        "images": 24,
        "pairs": 24,
    }
    load_encoder(tmp_path, device="cpu").encode_texts(["a red image"])
    with Image.open(tmp_path / AUGMENTATIONS_FILE) as grid:
        assert grid.format == "PNG" and grid.width > 6 * 100  # six columns of views


def test_trained_on_name_and_manifest_name_the_corpus(colors_corpus: Path, tmp_path: Path) -> None:
    _train(colors_corpus, tmp_path / "named", TWO_STEPS, trained_on_name="my colours")
    named = json.loads((tmp_path / "named" / CONFIG_FILE).read_text())["trained_on"]
    assert named["corpus"] == "my colours"
    assert not (tmp_path / "named" / AUGMENTATIONS_FILE).exists()  # tiny-test: augmentation off

    copy = tmp_path / "generated"
    copy.mkdir()
    (copy / "corpus.jsonl").write_text(
        "".join(
            json.dumps({**row, "image": str((colors_corpus.parent / row["image"]).resolve())}) + "\n"
            for row in map(json.loads, colors_corpus.read_text().splitlines())
        )
    )
    (copy / "manifest.json").write_text(json.dumps({"generator": "colour-maker", "version": "3"}))
    _train(copy / "corpus.jsonl", tmp_path / "manifest", TWO_STEPS)
    recorded = json.loads((tmp_path / "manifest" / CONFIG_FILE).read_text())["trained_on"]
    assert recorded["corpus"] == "colour-maker/3"


def test_resume_with_augmentation_replays_the_uninterrupted_run(colors_corpus: Path, tmp_path: Path) -> None:
    straight = _train(colors_corpus, tmp_path / "straight", AUGMENTED)

    def stop_after_one(result: EpochResult) -> None:
        if result.epoch == 1:
            raise _Interrupted

    out = tmp_path / "interrupted"
    with pytest.raises(_Interrupted):
        _train(colors_corpus, out, AUGMENTED, on_epoch=stop_after_one)
    assert json.loads((out / LAST_DIR / STATE_FILE).read_text())["step"] == 2
    resumed = _train(colors_corpus, out, AUGMENTED, resume=True)
    assert [e.epoch for e in resumed.epochs] == [2, 3]
    assert json.loads((out / LAST_DIR / STATE_FILE).read_text())["step"] == 6
    assert [e.loss for e in resumed.epochs] == pytest.approx([e.loss for e in straight.epochs[1:]], abs=1e-5)
    want = load_file(str(tmp_path / "straight" / LAST_DIR / WEIGHTS_FILE))
    got = load_file(str(out / LAST_DIR / WEIGHTS_FILE))
    for name in want:
        assert torch.allclose(want[name], got[name], atol=1e-6), name


def test_cli_flags_choose_augmentation_and_the_corpus_name(colors_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = [
        "train", "--corpus", colors_corpus, "--out", out, "--config", "tiny-test", "--epochs", 1,
        "--batch-size", 12, "--augment", "--flip", "--trained-on-name", "colours", "--quiet",
        "--device", "cpu",
    ]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "train_config.json").read_text())["augment"]
    assert recorded["enabled"] is True and recorded["flip"] is True and recorded["hue"] == 0.0
    assert json.loads((out / CONFIG_FILE).read_text())["trained_on"]["corpus"] == "colours"
    assert (out / AUGMENTATIONS_FILE).is_file()


# -- augmentation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caption", "mirrored"),
    [
        ("a small red circle in the top left", "a small red circle in the top right"),
        ("a blue square left of a red star", "a blue square right of a red star"),
        ("Right: a star, left: a circle", "Left: a star, right: a circle"),
        ("the LEFT one, bright and leftmost", "the RIGHT one, bright and rightmost"),
        ("a green hexagon in the center", "a green hexagon in the center"),
    ],
)
def test_flip_swaps_left_and_right_in_captions(caption: str, mirrored: str) -> None:
    assert swap_left_right(caption) == mirrored
    assert swap_left_right(mirrored) == caption


def _left_red_square() -> Image.Image:
    """Grey, a red square in the left third, a blue one in the top right corner."""
    pixels = np.full((SIDE, SIDE, 3), GREY, dtype=np.uint8)
    pixels[12:20, 2:10] = RED
    pixels[0:6, 26:32] = BLUE
    return Image.fromarray(pixels)


def _seed_that(flips: bool) -> int:
    return next(
        s for s in range(100) if augment(_left_red_square(), FLIP_ONLY, view_rng(s, 1, 0)).flipped == flips
    )


def test_a_flip_mirrors_the_pixels_and_the_batch_captions() -> None:
    image = _left_red_square()
    flipped = augment(image, FLIP_ONLY, view_rng(_seed_that(True), 1, 0))
    pixels = np.asarray(flipped.image)
    assert tuple(pixels[15, 32 - 1 - 5]) == RED and tuple(pixels[15, 5]) == GREY
    assert tuple(pixels[2, 2]) == BLUE and tuple(pixels[2, 29]) == GREY
    kept = augment(image, FLIP_ONLY, view_rng(_seed_that(False), 1, 0))
    assert np.array_equal(np.asarray(kept.image), np.asarray(image))

    # In a training batch the mirrored image's caption (and its partner) swap sides too.
    data = PairData(torch.from_numpy(np.stack([np.asarray(image)] * 2)), [["x"], ["y"]])
    batch = Batch([0, 1], ["a red square on the left", "a red square on the left"], [0], ["left red"])
    seed = _seed_that(True)
    inputs = step_inputs(
        batch, data, load_named_config("tiny-test").preprocess, FLIP_ONLY, seed=seed, epoch=1
    )
    first_flipped = augment(image, FLIP_ONLY, view_rng(seed, 1, 0)).flipped
    second_flipped = augment(image, FLIP_ONLY, view_rng(seed, 1, 1)).flipped
    assert first_flipped
    assert inputs.batch.captions[0] == "a red square on the right"
    assert inputs.batch.partner_captions == ["right red"]
    assert inputs.batch.captions[1].endswith("right" if second_flipped else "left")
    # Pixels are normalised: the red square's column moved to the right half.
    red_channel = inputs.pixels[0, 0]  # (S, S)
    assert red_channel[15, 26] > red_channel[15, 5]


def test_augmentation_is_reproducible_from_the_seed() -> None:
    image = _left_red_square()
    config = AugmentConfig(flip=True)
    first = [np.asarray(augment(image, config, view_rng(7, 2, i)).image) for i in range(5)]
    again = [np.asarray(augment(image, config, view_rng(7, 2, i)).image) for i in range(5)]
    other = [np.asarray(augment(image, config, view_rng(8, 2, i)).image) for i in range(5)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    assert len({a.tobytes() for a in first}) == 5  # a different view per image


def _hue_degrees(pixels: np.ndarray) -> float:
    r, g, b = (pixels.reshape(-1, 3).mean(axis=0) / 255.0).tolist()
    return colorsys.rgb_to_hsv(r, g, b)[0] * 360.0


def _red_square_hues(config: AugmentConfig) -> list[float]:
    """Hue of the middle of a large red square over many random views."""
    pixels = np.full((SIDE, SIDE, 3), GREY, dtype=np.uint8)
    pixels[6:26, 6:26] = RED
    image = Image.fromarray(pixels)
    return [
        _hue_degrees(np.asarray(augment(image, config, view_rng(s, 1, 0)).image)[12:20, 12:20])
        for s in range(40)
    ]


def test_augmentation_never_changes_what_colour_a_red_square_is() -> None:
    def distance_from_red(hue: float) -> float:
        return min(hue, 360.0 - hue)

    assert max(distance_from_red(h) for h in _red_square_hues(AugmentConfig())) < 12.0
    # A config that allows hue shifts does move it: the check above can fail.
    shifted = _red_square_hues(AugmentConfig(hue=0.4))
    assert max(distance_from_red(h) for h in shifted) > 60.0


# -- the evaluator -------------------------------------------------------------------------------

EVAL_COLOURS = {"red": RED, "blue": BLUE, "green": (30, 200, 40), "yellow": (240, 230, 40), "grey": GREY}


@pytest.fixture(scope="module")
def fixed_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An untrained tiny model with fixed weights and a corpus of 5 images, 2 captions each."""
    root = tmp_path_factory.mktemp("fixed")
    rng = np.random.default_rng(0)
    lines = []
    for name, rgb in EVAL_COLOURS.items():
        pixels = np.clip(np.asarray(rgb) + rng.normal(0, 30, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{name}.png")
        for caption in (f"a {name} picture", f"something {name}"):
            lines.append(json.dumps({"image": f"{name}.png", "caption": caption}))
    (root / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    captions = [json.loads(line)["caption"] for line in lines]
    config = load_named_config("tiny-test")
    proto = train_sentencepiece(captions * 4, vocab_size=40)
    tokenizer = tokenizer_from_sentencepiece(proto)
    torch.manual_seed(1)
    model = build_model(replace(config, text=replace(config.text, vocab_size=len(tokenizer))))
    save_model_dir(model, tokenizer, root / "model", spm_proto=proto)
    return root / "corpus.jsonl", root / "model"


def _reference_recall(corpus: Path, model_dir: Path) -> dict[str, dict[str, float]]:
    """Recall@K computed here: PIL + NumPy preprocessing, the model's forward, NumPy ranks."""
    loaded = load_model_dir(model_dir)
    config = loaded.model.config
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    images = list(dict.fromkeys(r["image"] for r in rows))
    arrays = []
    for name in images:
        with Image.open(corpus.parent / name) as image:
            resized = image.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BICUBIC)
        unit = np.asarray(resized, dtype=np.float32) / 255.0
        arrays.append(((unit - np.float32(0.5)) / np.float32(0.25)).transpose(2, 0, 1))
    tokens = tokenize(loaded.tokenizer, [r["caption"] for r in rows], max_length=config.text.max_length)
    with torch.no_grad():
        image_emb = loaded.model.encode_image(torch.from_numpy(np.stack(arrays))).numpy()
        text_emb = loaded.model.encode_text(tokens["input_ids"], tokens["attention_mask"]).numpy()
    scores = text_emb @ image_emb.T  # (captions, images)
    owner = np.array([images.index(r["image"]) for r in rows])
    own = scores[np.arange(len(rows)), owner]
    t2i_ranks = 1 + (scores > own[:, None]).sum(axis=1)
    i2t_ranks = []
    for image in range(len(images)):
        column = scores[:, image]
        best = column[owner == image].max()
        i2t_ranks.append(1 + int((column > best).sum()))
    return {
        "t2i": {f"R@{k}": float(np.mean(t2i_ranks <= k)) for k in (1, 5, 10)},
        "i2t": {f"R@{k}": float(np.mean(np.array(i2t_ranks) <= k)) for k in (1, 5, 10)},
    }


def test_the_evaluator_matches_recall_computed_by_hand(fixed_model: tuple[Path, Path]) -> None:
    corpus, model_dir = fixed_model
    want = _reference_recall(corpus, model_dir)
    got = evaluate_corpus(load_encoder(model_dir, device="cpu"), load_corpus(corpus))
    for direction in ("t2i", "i2t"):
        for k in (1, 5, 10):
            assert got[direction][f"R@{k}"] == pytest.approx(want[direction][f"R@{k}"], abs=1e-4)
    assert got["counts"] == {"images": 5, "captions": 10, "skipped": 0}
    assert 0.0 < want["t2i"]["R@1"] < 1.0  # an untrained model: the numbers are not trivial


# -- eval reports the shift split ----------------------------------------------------------------


def test_eval_reports_the_shift_split_next_to_the_test_split(
    colors_model: Path, make_color_image: Any, tmp_path: Path
) -> None:
    lines = []
    for split, size in (("test", (40, 32)), ("shift", (24, 48))):
        for i, colour in enumerate(("red", "green", "blue")):
            name = f"{split}_{colour}.png"
            make_color_image(colour, seed=500 + i + len(lines), size=size).save(tmp_path / name)
            lines.append(json.dumps({"image": name, "caption": f"a {colour} image", "split": split}))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    args = ["eval", "--corpus", str(corpus), "--model", str(colors_model), "--device", "cpu"]
    result = runner.invoke(app, [*args, "--split", "test", "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["counts"]["images"] == 3 and scores["shift"]["counts"]["images"] == 3
    assert scores["shift"]["t2i"]["R@1"] == 1.0  # the colours model tells these colours apart
    everything = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert everything["counts"]["images"] == 3  # the shift split is reported apart, not mixed in
    text = runner.invoke(app, [*args, "--split", "test"]).stdout
    assert "split=test" in text and "split=shift" in text
    only_shift = json.loads(runner.invoke(app, [*args, "--split", "shift", "--json"]).stdout)
    assert "shift" not in only_shift and only_shift["counts"]["images"] == 3
