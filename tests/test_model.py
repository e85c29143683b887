"""Tokenizer, loss, dual encoder, save/load and the training loop, on tiny real models."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pretrained_parts import write_albert_folder
from safetensors.torch import load_file
from transformers import AlbertTokenizer

from indexer.models.config import (
    INIT_LOGIT_SCALE,
    MAX_LOGIT_SCALE,
    ModelConfig,
    TrainConfig,
    load_named_config,
)
from indexer.models.native import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    DualEncoder,
    ModelLoadError,
    build_model,
    load_model_dir,
    save_model_dir,
)
from indexer.models.tokenizer import (
    load_tokenizer,
    save_tokenizer,
    tokenize,
    tokenizer_from_sentencepiece,
    train_sentencepiece,
    unknown_rate,
)
from indexer.training.corpora import load_corpus
from indexer.training.loop import (
    LAST_DIR,
    STATE_FILE,
    EpochResult,
    PairData,
    TrainError,
    TrainReport,
    epoch_batches,
    train,
)
from indexer.training.loss import clip_loss

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
ROUND_TRIP = [
    "A small RED circle in the top left",
    "two large green triangles",
    "a blue square below a yellow star, and a white hexagon in the center",
]
IMAGE_SIZE = 32  # tiny-test's preprocess size


@pytest.fixture(scope="module")
def captions(sample_corpus: Path) -> list[str]:
    return [p.caption for p in load_corpus(sample_corpus).pairs]


@pytest.fixture(scope="module")
def spm_proto(captions: list[str]) -> bytes:
    return train_sentencepiece(captions, vocab_size=load_named_config("tiny-test").text.vocab_size)


@pytest.fixture(scope="module")
def tokenizer(spm_proto: bytes) -> AlbertTokenizer:
    return tokenizer_from_sentencepiece(spm_proto)


@pytest.fixture(scope="module")
def tiny_config(tokenizer: AlbertTokenizer) -> ModelConfig:
    config = load_named_config("tiny-test")
    return replace(config, text=replace(config.text, vocab_size=len(tokenizer)))


def _round_trips(tok: AlbertTokenizer, text: str) -> str:
    return tok.decode(tok.encode(text, add_special_tokens=False))


def _pixels(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)  # (n, 3, S, S)


def _embed(
    model: DualEncoder, tok: AlbertTokenizer, texts: list[str], pixels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(text embeddings, image embeddings) in eval mode."""
    model.eval()
    with torch.no_grad():
        tokens = tokenize(tok, texts, max_length=model.config.text.max_length)
        text = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
        image = model.encode_image(pixels)
    return text, image


# -- tokenizer ---------------------------------------------------------------------------------


def test_tokenizer_round_trips_real_words(tokenizer: AlbertTokenizer, captions: list[str]) -> None:
    for text in ROUND_TRIP:
        assert _round_trips(tokenizer, text) == text.lower()
    assert unknown_rate(tokenizer, captions) == 0.0
    # A tokenizer that maps words to <unk> would give very few distinct ids.
    ids = {i for c in captions[:50] for i in tokenizer.encode(c, add_special_tokens=False)}
    assert len(ids) > 20


def test_tokenizer_survives_save_and_load(
    tokenizer: AlbertTokenizer, spm_proto: bytes, captions: list[str], tmp_path: Path
) -> None:
    # transformers 5.x: AlbertTokenizer(vocab_file=...) silently maps everything to <unk>.
    save_tokenizer(tokenizer, tmp_path, spm_proto=spm_proto)
    loaded = load_tokenizer(tmp_path)
    assert unknown_rate(loaded, captions) == 0.0
    for text in ROUND_TRIP:
        assert loaded.encode(text) == tokenizer.encode(text)
        assert _round_trips(loaded, text) == text.lower()


def test_tokenize_pads_to_the_batch_and_truncates(tokenizer: AlbertTokenizer) -> None:
    tokens = tokenize(tokenizer, ["a red circle", "a " * 100 + "star"], max_length=16)
    assert tokens["input_ids"].shape == tokens["attention_mask"].shape == (2, 16)
    assert tokens["input_ids"].dtype == torch.int64
    short = tokens["attention_mask"][0]
    assert 0 < int(short.sum()) < 16 and tokens["input_ids"][0][short == 0].eq(0).all()


# -- loss --------------------------------------------------------------------------------------


def test_clip_loss_is_symmetric() -> None:
    generator = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(6, 8, generator=generator), dim=-1)
    b = F.normalize(torch.randn(6, 8, generator=generator), dim=-1)
    scale = torch.tensor(7.0)
    assert torch.allclose(clip_loss(a, b, scale), clip_loss(b, a, scale))


@pytest.mark.parametrize("batch", [2, 5, 16])
def test_clip_loss_is_log_batch_for_uninformative_embeddings(batch: int) -> None:
    same = F.normalize(torch.ones(batch, 8), dim=-1)  # every image looks like every text
    loss = clip_loss(same, same, torch.tensor(14.3))
    assert loss.item() == pytest.approx(math.log(batch), rel=1e-5)


def test_clip_loss_falls_as_pairs_align() -> None:
    batch, dim = 8, 16
    generator = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1)
    noise = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1)
    scale = torch.tensor(20.0)
    losses = [
        clip_loss(F.normalize((1 - t) * noise + t * text, dim=-1), text, scale).item()
        for t in (0.0, 0.5, 0.8, 1.0)
    ]
    assert losses == sorted(losses, reverse=True)
    assert losses[-1] < 0.1 < math.log(batch) < losses[0] + 1.0
    # Swapping the pairing makes the same embeddings maximally wrong.
    assert clip_loss(text.roll(1, 0), text, scale).item() > math.log(batch)


# -- dual encoder ------------------------------------------------------------------------------


def test_dual_encoder_outputs_normalised_batches(
    tiny_config: ModelConfig, tokenizer: AlbertTokenizer
) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config).eval()
    texts = ["a red circle", "two blue stars", "a small white hexagon in the top left"]
    text, image = _embed(model, tokenizer, texts, _pixels(4))
    assert text.shape == (3, tiny_config.embed_dim) and image.shape == (4, tiny_config.embed_dim)
    assert torch.allclose(text.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(image.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert not torch.allclose(text[0], text[1])  # different inputs, different points
    raw = model.encode_image(_pixels(4), normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(4), atol=1e-3)


def test_text_embedding_ignores_padding(tiny_config: ModelConfig, tokenizer: AlbertTokenizer) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config).eval()
    tokens = tokenize(tokenizer, ["a red circle"], max_length=32)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    padded_ids = torch.cat([ids, torch.zeros(1, 5, dtype=ids.dtype)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 5, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        plain = model.encode_text(ids, mask)
        padded = model.encode_text(padded_ids, padded_mask)
    assert torch.allclose(plain, padded, atol=1e-5)


def test_logit_scale_starts_at_clip_temperature_and_is_capped(tiny_config: ModelConfig) -> None:
    model = build_model(tiny_config)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert math.isclose(INIT_LOGIT_SCALE, math.log(1 / 0.07))
    assert model.clamped_logit_scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.clamped_logit_scale().item() == pytest.approx(100.0, rel=1e-5)
    assert math.isclose(MAX_LOGIT_SCALE, math.log(100))
    with torch.no_grad():
        model.logit_scale.fill_(-3.0)
    assert model.clamped_logit_scale().item() == pytest.approx(1.0)


def test_save_and_load_reproduce_embeddings_without_pickle(
    tiny_config: ModelConfig,
    tokenizer: AlbertTokenizer,
    spm_proto: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(1)
    model = build_model(tiny_config)
    save_model_dir(model, tokenizer, tmp_path, spm_proto=spm_proto)

    def no_unpickling(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_model_dir must not unpickle anything")

    monkeypatch.setattr(torch, "load", no_unpickling)
    loaded = load_model_dir(tmp_path)

    texts = ["a large purple star in the bottom right", "three black circles"]
    pixels = _pixels(3, seed=5)
    want_text, want_image = _embed(model, tokenizer, texts, pixels)
    got_text, got_image = _embed(loaded.model, loaded.tokenizer, texts, pixels)
    assert torch.equal(want_text, got_text) and torch.equal(want_image, got_image)
    assert loaded.model.config == model.config
    assert loaded.model_id.startswith("native:")

    names = {p.name for p in tmp_path.rglob("*")}
    assert {CONFIG_FILE, WEIGHTS_FILE, "tokenizer_config.json"} <= names
    assert names & {"tokenizer.json", "spiece.model"}
    assert not {p for p in tmp_path.rglob("*") if p.suffix in PICKLE_SUFFIXES}
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["model"]["embed_dim"] == 32


def test_load_model_dir_refuses_a_folder_without_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="mmsearch train"):
        load_model_dir(tmp_path)


def test_two_training_steps_lower_the_loss(tiny_config: ModelConfig, tokenizer: AlbertTokenizer) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config).train()
    pixels = _pixels(6, seed=3)
    texts = ["a red circle", "a blue square", "a green star", "two yellow hexagons",
             "a white triangle", "a black circle"]  # fmt: skip
    tokens = tokenize(tokenizer, texts, max_length=tiny_config.text.max_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def loss() -> torch.Tensor:
        return clip_loss(*model(pixels, tokens["input_ids"], tokens["attention_mask"]))

    before = loss()
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()
    assert loss().item() < before.item() - 0.05


# -- training loop -----------------------------------------------------------------------------

RESUME_TRAIN = TrainConfig(epochs=3, batch_size=8, lr=3e-3, warmup_steps=2)
AGREEMENT_TRAIN = TrainConfig(epochs=4, batch_size=32, lr=3e-3, warmup_steps=5)


class _Interrupted(Exception):
    pass


def _train_colors(corpus: Path, out: Path, **kwargs: Any) -> TrainReport:
    return train(
        load_corpus(corpus),
        out,
        model_config=load_named_config("tiny-test"),
        train_config=kwargs.pop("train_config", RESUME_TRAIN),
        device="cpu",
        progress=False,
        **kwargs,
    )


def test_resume_continues_from_last_exactly(colors_corpus: Path, tmp_path: Path) -> None:
    straight = _train_colors(colors_corpus, tmp_path / "straight")
    assert [e.epoch for e in straight.epochs] == [1, 2, 3]

    def stop_after_two(result: EpochResult) -> None:
        if result.epoch == 2:
            raise _Interrupted

    out = tmp_path / "interrupted"
    with pytest.raises(_Interrupted):
        _train_colors(colors_corpus, out, on_epoch=stop_after_two)
    assert json.loads((out / LAST_DIR / STATE_FILE).read_text())["epoch"] == 2

    resumed = _train_colors(colors_corpus, out, resume=True)
    assert [e.epoch for e in resumed.epochs] == [3]
    state = json.loads((out / LAST_DIR / STATE_FILE).read_text())
    straight_state = json.loads((tmp_path / "straight" / LAST_DIR / STATE_FILE).read_text())
    assert state["epoch"] == 3 and state["step"] == straight_state["step"]
    # Same weights as the uninterrupted run: optimizer state and schedule were restored.
    want = load_file(str(tmp_path / "straight" / LAST_DIR / WEIGHTS_FILE))
    got = load_file(str(out / LAST_DIR / WEIGHTS_FILE))
    assert want.keys() == got.keys()
    for name in want:
        assert torch.allclose(want[name], got[name], atol=1e-6), name
    assert resumed.epochs[0].loss == pytest.approx(straight.epochs[2].loss, abs=1e-5)


def test_resume_to_more_epochs_reports_only_the_new_ones(colors_corpus: Path, tmp_path: Path) -> None:
    two = replace(RESUME_TRAIN, epochs=2)
    first = _train_colors(colors_corpus, tmp_path, train_config=two)
    assert [e.epoch for e in first.epochs] == [1, 2]
    resumed = _train_colors(colors_corpus, tmp_path, train_config=RESUME_TRAIN, resume=True)
    assert [e.epoch for e in resumed.epochs] == [3]
    assert json.loads((tmp_path / LAST_DIR / STATE_FILE).read_text())["epoch"] == 3
    load_model_dir(tmp_path)  # the best checkpoint at the top stays a usable model


def test_resume_without_checkpoint_is_a_train_error(colors_corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="--resume"):
        _train_colors(colors_corpus, tmp_path, resume=True)


# -- --text-init -------------------------------------------------------------------------------


@pytest.fixture
def local_albert(captions: list[str], tmp_path: Path) -> Path:
    """A tiny 'pretrained' ALBERT folder as save_pretrained writes it: no download involved."""
    return write_albert_folder(tmp_path / "albert-tiny", captions)


def test_text_init_loads_local_albert_weights(
    local_albert: Path, tiny_config: ModelConfig, tmp_path: Path
) -> None:
    saved = load_file(str(local_albert / "model.safetensors"))
    key = next(k for k in saved if k.endswith("word_embeddings.weight"))
    model = build_model(tiny_config, text_init=local_albert)
    loaded = model.text.albert.embeddings.word_embeddings.weight
    assert torch.equal(loaded, saved[key])
    assert model.config.albert_config is not None
    assert model.config.albert_config["hidden_size"] == 24
    tokenizer = load_tokenizer(local_albert)  # the folder's own, matching its vocabulary

    # The pretrained sizes travel in config.json, so the saved model loads back identically.
    out = tmp_path / "model"
    save_model_dir(model, tokenizer, out)
    again = load_model_dir(out)
    pixels = _pixels(2)
    want = _embed(model, tokenizer, ["a red circle"], pixels)
    got = _embed(again.model, again.tokenizer, ["a red circle"], pixels)
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])


def test_train_with_text_init_uses_the_folder_tokenizer(
    local_albert: Path, colors_corpus: Path, tmp_path: Path
) -> None:
    one = replace(RESUME_TRAIN, epochs=1)
    _train_colors(colors_corpus, tmp_path, train_config=one, text_init=local_albert)
    loaded = load_model_dir(tmp_path)
    assert loaded.model.text.albert.config.hidden_size == 24
    assert len(loaded.tokenizer) == len(load_tokenizer(local_albert))


def test_text_init_without_config_names_the_flag(tiny_config: ModelConfig, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="--text-init"):
        build_model(tiny_config, text_init=tmp_path)


# -- caption agreement -------------------------------------------------------------------------


def _pair_data(captions: list[list[str]]) -> PairData:
    return PairData(torch.zeros((len(captions), 3, IMAGE_SIZE, IMAGE_SIZE)), captions)


def test_partners_are_other_captions_of_the_same_image() -> None:
    captions = [[f"image {i} caption {j}" for j in range(i % 3 + 1)] for i in range(40)]
    batches = epoch_batches(_pair_data(captions), 16, random.Random(0), partners=True)
    seen_partner = False
    for batch in batches:
        assert len(batch.partner_rows) == len(batch.partner_captions)
        for row, partner in zip(batch.partner_rows, batch.partner_captions, strict=True):
            image = batch.images[row]
            assert partner in captions[image] and partner != batch.captions[row]
            seen_partner = True
        with_one_caption = {r for r, i in enumerate(batch.images) if len(captions[i]) == 1}
        assert not with_one_caption & set(batch.partner_rows)
    assert seen_partner
    plain = epoch_batches(_pair_data(captions), 16, random.Random(0))
    assert all(not b.partner_rows for b in plain)


def _caption_to_caption_r1(model_dir: Path, corpus: Path) -> float:
    """How often an image's first caption finds another caption of the same image first."""
    loaded = load_model_dir(model_dir)
    by_image = load_corpus(corpus).captions_by_image()
    groups = [caps[:2] for caps in by_image.values() if len(caps) >= 2]
    firsts = [g[0] for g in groups]
    seconds = [g[1] for g in groups]
    with torch.no_grad():
        a = loaded.model.encode_text(**_tokens(loaded.tokenizer, firsts))
        b = loaded.model.encode_text(**_tokens(loaded.tokenizer, seconds))
    hits = (a @ b.T).argmax(dim=1) == torch.arange(len(groups))
    return float(hits.float().mean())


def _tokens(tokenizer: Any, texts: list[str]) -> dict[str, torch.Tensor]:
    tokens = tokenize(tokenizer, texts, max_length=load_named_config("tiny-test").text.max_length)
    return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


def test_caption_agreement_teaches_captions_of_one_image_to_find_each_other(
    sample_corpus: Path, tmp_path: Path
) -> None:
    corpus = sample_corpus
    rates = {}
    for weight in (0.0, 1.0):
        out = tmp_path / f"agreement-{weight}"
        train(
            load_corpus(corpus),
            out,
            model_config=load_named_config("tiny-test"),
            train_config=replace(AGREEMENT_TRAIN, caption_agreement=weight),
            device="cpu",
            progress=False,
        )
        rates[weight] = _caption_to_caption_r1(out, corpus)
        recorded = json.loads((out / "train_config.json").read_text())
        assert recorded["caption_agreement"] == weight
    assert rates[1.0] > rates[0.0] + 0.1, rates
