"""`mmsearch eval`'s fusion block: text->image with own text on half the images, measured by the
protocol the fusion head is selected by (indexer.training.fusion_protocol), on the split asked
for and on the shift split; learned fusion when the model has a head, null and a note without."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from indexer.indexing.fusion_spec import DEFAULT_TEXT_WEIGHT, FUSION_ALIGN
from indexer.models.encoder import load_encoder
from indexer.models.fusion_head import FusionHead, load_fusion_head
from indexer.training.corpora import load_corpus
from indexer.training.fusion_head import FusionTrainConfig, frozen_split, train_and_val, train_fusion_head
from indexer.training.fusion_protocol import (
    LINEAR_ALIGN,
    fusion_recall,
    head_scorer,
    linear_scorer,
    modality_gap,
    protocol,
)
from mmsearch.cli import app

# A few steps are enough: the test checks that eval measures the head it is given, not the head.
HEAD_CONFIG = FusionTrainConfig(steps=20, batch_size=64, eval_every=10)
GROUPS = {"all", "with_text", "without_text"}
RECALLS = {"R@1", "R@5", "R@10"}


def run_eval(corpus: Path, model: Path, *args: str) -> tuple[int, str]:
    argv = ["eval", "--corpus", str(corpus), "--model", str(model), "--device", "cpu", *args]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.stderr
    return result.exit_code, result.stdout


def copy_without_head(model: Path, out: Path) -> Path:
    shutil.copytree(model, out, ignore=shutil.ignore_patterns("fusion_head.*", "last"))
    return out


@pytest.fixture(scope="module")
def plain_model(shapes_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_without_head(shapes_model, tmp_path_factory.mktemp("eval-plain") / "model")


@pytest.fixture(scope="module")
def headed_model(
    sample_corpus: Path, shapes_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, dict[str, float]]]:
    """The shapes model with a head trained on its train split; and the head's val numbers."""
    model = copy_without_head(shapes_model, tmp_path_factory.mktemp("eval-headed") / "model")
    encoder = load_encoder(model, device="cpu")
    train, val = train_and_val(encoder, load_corpus(sample_corpus), seed=HEAD_CONFIG.seed)
    report = train_fusion_head(train, val, model_id=encoder.info.model_id, config=HEAD_CONFIG)
    report.head.save(model)
    return model, report.val


def expected_block(encoder_model: Path, corpus: Path, split: str, head: FusionHead | None) -> dict:  # type: ignore[type-arg]
    """The fusion numbers computed here, from the protocol's own pieces."""
    encoder = load_encoder(encoder_model, device="cpu")
    vectors = frozen_split(encoder, load_corpus(corpus).select(split))
    plan = protocol(vectors, seed=0)
    own = plan.own_text >= 0
    m = len(vectors.captions)
    # Seeded: the query caption of an image is never its own text (nor that text shortened).
    assert not np.any((plan.own_text[own] % m) == plan.queries[own])
    shift = float(np.subtract(*modality_gap(vectors, seed=0)))
    return {
        "images": len(vectors.images),
        "images_with_text": int(own.sum()),
        "image_only": fusion_recall(vectors, plan, lambda queries, image, text: image),
        "linear": fusion_recall(vectors, plan, linear_scorer(DEFAULT_TEXT_WEIGHT, shift)),
        "learned": None if head is None else fusion_recall(vectors, plan, head_scorer(head)),
    }


def assert_block_is(block: dict, want: dict) -> None:  # type: ignore[type-arg]
    """The reported block holds the numbers computed here, and says how they were measured."""
    assert 0 < want["images_with_text"] < want["images"], want  # both groups are measured
    assert block["images"] == want["images"] and block["images_with_text"] == want["images_with_text"]
    assert (block["own_text_share"], block["short_text_share"], block["seed"]) == (0.5, 0.5, 0)
    assert block["image_only"] == want["image_only"]
    linear = dict(block["linear"])
    assert (linear.pop("text_weight"), linear.pop("align")) == (DEFAULT_TEXT_WEIGHT, "mean")
    assert isinstance(linear.pop("text_shift"), float)
    assert linear == want["linear"]
    assert block["learned"] == want["learned"]


def test_eval_reports_learned_fusion_as_the_protocol_measures_it(
    sample_corpus: Path, headed_model: tuple[Path, dict[str, dict[str, float]]]
) -> None:
    model, val_at_training = headed_model
    encoder = load_encoder(model, device="cpu")
    head = load_fusion_head(str(model), encoder.info.model_id)
    _, out = run_eval(sample_corpus, model, "--split", "test", "--json")
    result = json.loads(out)
    assert {"t2i", "i2t", "counts", "shift", "fusion"} <= set(result)
    for split, block in (("test", result["fusion"]), ("shift", result["shift"]["fusion"])):
        assert_block_is(block, expected_block(model, sample_corpus, split, head))
        assert set(block["learned"]) == GROUPS and set(block["learned"]["all"]) == RECALLS
        assert "note" not in block

    # On val, eval gives exactly the numbers the head was selected by.
    _, out = run_eval(sample_corpus, model, "--split", "val", "--json")
    assert json.loads(out)["fusion"]["learned"] == val_at_training


def test_without_a_head_learned_is_null_and_the_text_says_how_to_train_one(
    sample_corpus: Path, plain_model: Path
) -> None:
    _, out = run_eval(sample_corpus, plain_model, "--split", "test", "--json")
    result = json.loads(out)
    for split, block in (("test", result["fusion"]), ("shift", result["shift"]["fusion"])):
        assert_block_is(block, expected_block(plain_model, sample_corpus, split, None))
        assert block["learned"] is None
        assert "no head" in block["note"] and "mmsearch train-fusion" in block["note"]

    _, text = run_eval(sample_corpus, plain_model, "--split", "test")
    assert text.count("learned fusion: no head (train one with `mmsearch train-fusion`)") == 2
    assert text.count("fusion, t2i with own text on ") == 2 and "linear w=0.2" in text

    _, out = run_eval(sample_corpus, plain_model, "--split", "test", "--json", "--no-fusion")
    result = json.loads(out)
    assert "fusion" not in result and "fusion" not in result["shift"]


def test_eval_text_lists_each_fusion_method_by_group(
    sample_corpus: Path, headed_model: tuple[Path, dict[str, dict[str, float]]]
) -> None:
    model, _ = headed_model
    _, text = run_eval(sample_corpus, model, "--split", "val")
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("fusion, t2i with own text on "))
    block = lines[start + 1 : start + 10]
    assert [line.split()[0] for line in block[::3]] == ["image", "linear", "learned"]
    assert all("R@1" in line and "R@10" in line for line in block)
    assert "no head" not in text


def test_the_linear_alignment_is_the_engines() -> None:
    assert LINEAR_ALIGN == FUSION_ALIGN
