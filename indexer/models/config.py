"""Frozen configuration records, serialised to JSON beside the artefact they describe."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from indexer.errors import InvalidInputError
from indexer.media.settings import PreprocessConfig

MODEL_CONFIG_DIR = Path(__file__).with_name("configs")
# CLIP's initial temperature 0.07 and its cap of 100 on the logit scale.
INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)
# Pretrained CLIP weights are destroyed by the from-scratch learning rate; fine-tuning uses
# the small rate common for CLIP fine-tuning unless --lr says otherwise.
FINETUNE_LR = 1e-5


class ConfigError(InvalidInputError):
    """A configuration file or name that cannot be used; the message says which."""


@dataclass(frozen=True)
class TextTowerConfig:
    """ALBERT text tower: small from-scratch sizes, or `pretrained_dir` for a local HF folder."""

    vocab_size: int = 256
    embedding_size: int = 64  # factorised embedding: vocab -> 64 -> hidden
    hidden_size: int = 192
    num_hidden_layers: int = 2  # one shared layer applied twice (cross-layer sharing)
    num_attention_heads: int = 4
    intermediate_size: int = 384
    max_length: int = 48
    dropout: float = 0.0

    def albert_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for transformers.AlbertConfig."""
        return {
            "vocab_size": self.vocab_size,
            "embedding_size": self.embedding_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": max(64, self.max_length),
            "hidden_dropout_prob": self.dropout,
            "attention_probs_dropout_prob": self.dropout,
            "classifier_dropout_prob": self.dropout,
            "pad_token_id": 0,
        }


@dataclass(frozen=True)
class ImageTowerConfig:
    """ResNet image tower (transformers ResNetModel) with optional coordinate channels."""

    embedding_size: int = 32
    hidden_sizes: tuple[int, ...] = (32, 64, 128, 256)
    depths: tuple[int, ...] = (1, 1, 1, 1)
    layer_type: str = "basic"
    # Two extra input channels holding x/y coordinates, so a globally pooled CNN
    # can still tell "top left" from "bottom right".
    coord_channels: bool = True

    def resnet_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for transformers.ResNetConfig."""
        return {
            "num_channels": 3 + (2 if self.coord_channels else 0),
            "embedding_size": self.embedding_size,
            "hidden_sizes": list(self.hidden_sizes),
            "depths": list(self.depths),
            "layer_type": self.layer_type,
            "downsample_in_first_stage": False,
        }


@dataclass(frozen=True)
class AugmentConfig:
    """What the training loader may change in an image without changing what its captions say.

    Defaults are safe for any corpus: no flips (a caption may say "left") and no hue shift (a
    caption may name a colour). A model config for a corpus whose captions allow more says so.
    """

    enabled: bool = True
    # Random resized crop, always square: the kept area and how far the crop's centre may move,
    # as fractions of the image. Small enough that an object keeps its 3x3 grid cell: a cell
    # boundary moves by at most ~4% of the side (1/6 * (1/sqrt(0.9) - 1) + 0.03).
    crop_min_area: float = 0.9
    crop_max_shift: float = 0.03
    # Mirror the image and swap "left"/"right" in its caption; only where captions allow it.
    flip: bool = False
    # Colour jitter factors drawn from [1 - x, 1 + x]; hue shifts by up to `hue` of the circle.
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.3
    hue: float = 0.0
    blur_probability: float = 0.2
    blur_max_radius: float = 0.8  # pixels at the model's input size
    noise_probability: float = 0.3
    noise_max_std: float = 8.0  # on the 0-255 scale
    jpeg_probability: float = 0.3
    jpeg_quality: tuple[int, int] = (40, 90)

    def __post_init__(self) -> None:
        """Refuse settings that would change what a caption says or break at the first batch."""
        if not 0.0 < self.crop_min_area <= 1.0:
            raise ConfigError(f"augment.crop_min_area must be in (0, 1], got {self.crop_min_area}")
        if not 0.0 <= self.hue <= 0.5:
            raise ConfigError(f"augment.hue must be in [0, 0.5], got {self.hue}")
        low, high = self.jpeg_quality
        if not 1 <= low <= high <= 100:
            raise ConfigError(f"augment.jpeg_quality must be 1 <= low <= high <= 100, got {low, high}")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a DualEncoder from its safetensors weights."""

    embed_dim: int = 128
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    init_logit_scale: float = INIT_LOGIT_SCALE
    max_logit_scale: float = MAX_LOGIT_SCALE
    # Full HF configs when a tower started from pretrained weights (their sizes win).
    albert_config: dict[str, Any] | None = None
    resnet_config: dict[str, Any] | None = None
    name: str = "custom"
    # What the model is meant to understand, in words (written into a trained folder's
    # "trained_on"), and how its training data may be augmented without lying.
    domain: str = ""
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of to_dict; unknown keys are an error so typos do not pass silently."""
        data = dict(data)
        _reject_unknown(cls, data)
        text = _build(TextTowerConfig, data.pop("text", {}))
        image = _build(ImageTowerConfig, data.pop("image", {}))
        preprocess = PreprocessConfig.from_dict(data.pop("preprocess", {}))
        augment = _build(AugmentConfig, data.pop("augment", {}))
        return cls(text=text, image=image, preprocess=preprocess, augment=augment, **data)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; saved as train_config.json beside the checkpoint."""

    epochs: int = 12
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    grad_clip: float = 1.0
    seed: int = 0
    recall_k: int = 10  # the Recall@K that picks the best checkpoint
    # Weight of a second InfoNCE term between two captions of one image (0: off). It teaches the
    # text tower that captions of the same picture agree, which own-text fusion relies on.
    caption_agreement: float = 0.0
    # None: the model config's augmentation (OpenCLIP: AugmentConfig's safe defaults).
    augment: AugmentConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


def _reject_unknown(cls: type, data: dict[str, Any]) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")


def _build(cls: type, data: dict[str, Any]) -> Any:
    _reject_unknown(cls, data)
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**converted)


def load_named_config(name_or_path: str) -> ModelConfig:
    """A ModelConfig from indexer/models/configs/NAME.json or from a JSON file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = MODEL_CONFIG_DIR / f"{name_or_path}.json"
    if not path.is_file():
        names = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))
        raise ConfigError(f"no model config {name_or_path!r}; named configs: {', '.join(names)}")
    return ModelConfig.from_dict(json.loads(path.read_text()))


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write pretty JSON atomically enough for configs (temp file, then rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
