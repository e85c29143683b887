"""What differs between model kinds in training: building or loading, tokenizing, pixels, saving.

The loop (indexer.training.loop) owns everything else: data, augmentation, optimiser,
schedule, evaluation, checkpoints. An adapter wraps the model being trained and hands the
evaluator an `Encoder` view of it, so validation scores exactly what search will compute.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from indexer.errors import ModelError
from indexer.media.images import PreprocessConfig
from indexer.models.config import MAX_LOGIT_SCALE, AugmentConfig, ModelConfig
from indexer.models.devices import Device
from indexer.models.encoder import NativeEncoder
from indexer.models.native import DualEncoder, LoadedModel, build_model, load_model_dir, save_model_dir
from indexer.models.protocol import Encoder, hub_offline
from indexer.models.tokenizer import (
    SPM_MODEL_FILE,
    load_tokenizer,
    tokenize,
    tokenizer_from_sentencepiece,
    train_sentencepiece,
    unknown_rate,
)
from indexer.training.corpora import Corpus

if TYPE_CHECKING:
    from indexer.models.openclip import LoadedOpenClip

# More than this share of <unk> tokens means the tokenizer is broken, not merely imperfect.
MAX_UNKNOWN_RATE = 0.05
# Captions sampled to check the trained tokenizer's <unk> rate.
UNKNOWN_RATE_SAMPLE = 500
# EncoderInfo of a model still in training: evaluation reads only its dimension.
IN_TRAINING = "in-training"


class TrainError(ModelError):
    """Training cannot start or continue; the message says what to change."""


class TrainAdapter(Protocol):
    """One model kind as the training loop sees it."""

    @property
    def model(self) -> torch.nn.Module:
        """The module being trained."""
        ...

    @property
    def preprocess_config(self) -> PreprocessConfig:
        """Input side, resize mode and mean/std of the pixels the model takes."""
        ...

    @property
    def augment(self) -> AugmentConfig:
        """What the model kind's config allows (TrainConfig.augment may override it)."""
        ...

    @property
    def domain(self) -> str:
        """What the model is meant to understand, for the folder's "trained_on"."""
        ...

    def embed(
        self, pixels: torch.Tensor, captions: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image embeddings (B, dim), text embeddings (B, dim), logit scale) for the loss."""
        ...

    def embed_texts(self, captions: Sequence[str]) -> torch.Tensor:
        """Text embeddings (B, dim), normalised, with gradients."""
        ...

    def after_step(self) -> None:
        """Anything the model kind needs after an optimiser step (e.g. capping the temperature)."""
        ...

    def encoder(self) -> Encoder:
        """The model as an Encoder, for evaluation (the loop switches eval()/train())."""
        ...

    def save(self, directory: Path, *, extra: dict[str, Any]) -> None:
        """Write a complete model folder usable as --model; `extra` goes into its config."""
        ...


class NativeAdapter:
    """The ALBERT+ResNet dual encoder, with its SentencePiece tokenizer."""

    def __init__(self, model: DualEncoder, tokenizer: Any, proto: bytes | None, *, device: Device) -> None:
        self.model = model.to(str(device))
        self.tokenizer = tokenizer
        self.proto = proto  # SentencePiece model trained here (None: the --text-init folder's)
        self.device = device
        config = model.config
        self.preprocess_config = config.preprocess
        self.augment = config.augment
        self.domain = config.domain

    @classmethod
    def start(
        cls,
        corpus: Corpus,
        config: ModelConfig,
        *,
        text_init: Path | None,
        image_init: Path | None,
        device: Device,
    ) -> NativeAdapter:
        """A fresh model; its tokenizer is the --text-init folder's or trained on the captions."""
        with hub_offline():  # --text-init/--image-init are local folders: never the Hub
            tokenizer, proto = build_tokenizer(corpus, config, text_init)
            config = replace(config, text=replace(config.text, vocab_size=len(tokenizer)))
            model = build_model(config, text_init=text_init, image_init=image_init)
        return cls(model, tokenizer, proto, device=device)

    @classmethod
    def resume(cls, last: Path, *, device: Device) -> NativeAdapter:
        """The model, tokenizer and SentencePiece model saved in `last`."""
        loaded = load_model_dir(last, device=device)
        spm = last / SPM_MODEL_FILE
        return cls(loaded.model, loaded.tokenizer, spm.read_bytes() if spm.is_file() else None, device=device)

    def _tokens(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        tokens = tokenize(self.tokenizer, list(captions), max_length=self.model.config.text.max_length)
        return {k: v.to(str(self.device)) for k, v in tokens.items()}

    def embed(
        self, pixels: torch.Tensor, captions: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image (B, dim), text (B, dim), logit scale), the scale capped as in CLIP."""
        tokens = self._tokens(captions)
        return self.model(pixels, tokens["input_ids"], tokens["attention_mask"])

    def embed_texts(self, captions: Sequence[str]) -> torch.Tensor:
        """Text embeddings (B, dim)."""
        tokens = self._tokens(captions)
        return self.model.encode_text(tokens["input_ids"], tokens["attention_mask"])

    def after_step(self) -> None:
        """Nothing: the forward pass already caps the temperature."""

    def encoder(self) -> Encoder:
        """The model in training behind the same Encoder that indexing and search use."""
        loaded = LoadedModel(self.model, self.tokenizer, Path(IN_TRAINING), IN_TRAINING)
        return NativeEncoder(loaded, device=self.device)

    def save(self, directory: Path, *, extra: dict[str, Any]) -> None:
        """config.json, model.safetensors and the tokenizer files."""
        save_model_dir(self.model, self.tokenizer, directory, spm_proto=self.proto, extra=extra)


def build_tokenizer(corpus: Corpus, config: ModelConfig, text_init: Path | None) -> tuple[Any, bytes | None]:
    """The pretrained folder's tokenizer, or SentencePiece trained on the training captions."""
    if text_init is not None:
        return load_tokenizer(text_init), None
    proto = train_sentencepiece((p.caption for p in corpus.pairs), vocab_size=config.text.vocab_size)
    tokenizer = tokenizer_from_sentencepiece(proto)
    sample = [p.caption for p in corpus.pairs[:UNKNOWN_RATE_SAMPLE]]
    rate = unknown_rate(tokenizer, sample)
    if rate > MAX_UNKNOWN_RATE:
        raise TrainError(f"tokenizer maps {rate:.0%} of caption tokens to <unk>; it is broken")
    return tokenizer, proto


class OpenClipAdapter:
    """An OpenCLIP model with the tokenizer and transform open_clip pairs with it."""

    def __init__(self, loaded: LoadedOpenClip, *, device: Device) -> None:
        from indexer.models.openclip import preprocess_config_of

        self.loaded = loaded
        self.model = loaded.model.to(str(device))
        self.device = device
        # Training pixels are fitted to the transform's size by the same rule (shorter side,
        # centre crop, or squash) and normalised with its mean/std.
        self.preprocess_config = preprocess_config_of(loaded.preprocess_cfg)
        self.augment = AugmentConfig()  # open_clip configs say nothing about captions: safe defaults
        self.domain = ""

    @classmethod
    def start(
        cls, init: str | Path, *, checkpoint: Path | None, pretrained: str | None, device: Device
    ) -> OpenClipAdapter:
        """openclip:ARCH with --checkpoint/--pretrained, or a folder from an earlier fine-tune."""
        from indexer.models.openclip import load_openclip

        return cls(
            load_openclip(init, device=device, checkpoint=checkpoint, pretrained=pretrained), device=device
        )

    @classmethod
    def resume(cls, last: Path, *, device: Device) -> OpenClipAdapter:
        """The model saved in `last`, still recording the weights the fine-tune started from."""
        from indexer.models.openclip import CONFIG_FILE, is_openclip_dir, load_openclip

        if not is_openclip_dir(last):
            raise TrainError(
                f"--resume: {last} holds no OpenCLIP fine-tune; drop --init to resume a native run"
            )
        loaded = load_openclip(last, device=device)
        init = json.loads((last / CONFIG_FILE).read_text()).get("mmsearch", {}).get("init", {})
        if init:
            loaded = replace(loaded, source=str(init["source"]), model_id=str(init["model_id"]))
        return cls(loaded, device=device)

    def embed(
        self, pixels: torch.Tensor, captions: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image (B, dim), text (B, dim), logit scale)."""
        image_emb = self.model.encode_image(pixels, normalize=True)  # (batch, dim)
        scale = self.model.logit_scale.exp().squeeze()  # scalar
        return image_emb, self.embed_texts(captions), scale

    def embed_texts(self, captions: Sequence[str]) -> torch.Tensor:
        """Text embeddings (B, dim)."""
        tokens = self.loaded.tokenizer(list(captions)).to(str(self.device))  # (batch, context)
        return self.model.encode_text(tokens, normalize=True)

    def after_step(self) -> None:
        """CLIP's cap on the temperature, as open_clip's own training loop applies it."""
        with torch.no_grad():
            self.model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

    def encoder(self) -> Encoder:
        """The model in training behind the same Encoder that indexing and search use."""
        from indexer.models.openclip import OpenClipEncoder

        return OpenClipEncoder(self.loaded, device=self.device)

    def save(self, directory: Path, *, extra: dict[str, Any]) -> None:
        """open_clip's local-dir layout; `extra` goes into the config's "mmsearch" section."""
        from indexer.models.openclip import save_openclip_dir

        save_openclip_dir(self.loaded, directory, extra=extra)
