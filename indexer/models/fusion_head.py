"""The learned fusion head: a tiny gate that decides, per query and document, how much an image's
own text counts against its pixels.

It lives in the model folder beside the weights it was trained for:

    fusion_head.safetensors   the head's arrays (float32)
    fusion_head.json          FusionHeadConfig: sizes, the model_id it was trained on, provenance

The forward pass is NumPy (no torch on the query path) and works on a candidate pool only:

    text      = text_scale * own_text_score + text_shift        own-text score on the image scale
    query     = tanh(query_weight @ q + query_bias)             (query_dim,), once per query
    features  = [image, text, text - image, query]              (n, 3 + query_dim)
    gate      = sigmoid(out_weight @ relu(hidden_weight @ features + hidden_bias) + out_bias)
    fused     = image + gate * (text - image)                   a document with both
    fused     = image                                           no own text: exactly its image score
    fused     = text                                            no image vector: its aligned text score

The gate is a two-way attention over the document's modalities (a softmax over image and text is
a sigmoid of their difference), masked to the modalities the document has. A head is trained by
`mmsearch train-fusion` (indexer.training.fusion_head) for sentence queries; image queries use
the linear rule (indexer.indexing.fusion).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from indexer.errors import InvalidInputError, ModelError

HEAD_WEIGHTS_FILE = "fusion_head.safetensors"
HEAD_CONFIG_FILE = "fusion_head.json"
HEAD_FORMAT = "mmsearch-fusion-head/1"
# What a head is trained for: sentence queries against images with (some) own text.
HEAD_QUERY_MODALITY = "text"
TRAIN_COMMAND = "mmsearch train-fusion --corpus CORPUS --model MODEL_DIR"
# The arrays of a head and their shapes, in terms of the config's sizes (scalars are stored as
# one-element arrays: safetensors has no zero-dimensional tensors).
ARRAY_SHAPES: dict[str, tuple[str, ...]] = {
    "query_weight": ("query_dim", "dim"),
    "query_bias": ("query_dim",),
    "hidden_weight": ("hidden", "features"),
    "hidden_bias": ("hidden",),
    "out_weight": ("hidden",),
    "out_bias": ("one",),
    "text_scale": ("one",),
    "text_shift": ("one",),
}
# Score features per candidate before the query's own features: image, text, text - image.
SCORE_FEATURES = 3


class NoFusionHeadError(InvalidInputError):
    """Learned fusion was asked for, but the model has no fusion head (or cannot have one)."""


class FusionHeadError(ModelError):
    """A fusion head that cannot be used: unreadable, malformed, or trained for other weights."""


@dataclass(frozen=True)
class FusionHeadConfig:
    """Sizes of a head, the weights it was trained on, and what training measured."""

    dim: int  # query vector length (the model's embedding dimension)
    model_id: str  # EncoderInfo.model_id of the weights whose vectors the head was trained on
    query_dim: int = 8
    hidden: int = 16
    query_modality: str = HEAD_QUERY_MODALITY
    trained: dict[str, Any] = field(default_factory=dict)  # corpus, steps, val metrics

    @property
    def features(self) -> int:
        """Inputs of the hidden layer: the score features and the projected query."""
        return SCORE_FEATURES + self.query_dim

    def shape_of(self, name: str) -> tuple[int, ...]:
        """The expected shape of one array."""
        sizes = {
            "query_dim": self.query_dim,
            "dim": self.dim,
            "hidden": self.hidden,
            "features": self.features,
            "one": 1,
        }
        return tuple(sizes[s] for s in ARRAY_SHAPES[name])


@dataclass(frozen=True)
class FusionHead:
    """A loaded head: its config and float32 arrays (see ARRAY_SHAPES)."""

    config: FusionHeadConfig
    arrays: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        for name in ARRAY_SHAPES:
            array = self.arrays.get(name)
            expected = self.config.shape_of(name)
            if array is None or array.shape != expected:
                got = None if array is None else array.shape
                raise FusionHeadError(f"fusion head array {name!r} has shape {got}, expected {expected}")

    def query_features(self, queries: np.ndarray) -> np.ndarray:
        """Projected queries (n, query_dim) float32 from query vectors (n, dim)."""
        a = self.arrays
        return np.tanh(queries @ a["query_weight"].T + a["query_bias"]).astype(np.float32)

    def align_text(self, text_scores: np.ndarray) -> np.ndarray:
        """Own-text scores (n,) on the image scale, by the affine map learned with the gate."""
        return self.arrays["text_scale"] * text_scores + self.arrays["text_shift"]

    def gates(self, query_features: np.ndarray, image_scores: np.ndarray, text: np.ndarray) -> np.ndarray:
        """The own text's share (n,) in (0, 1) of each candidate: query_features (n, query_dim)
        or (query_dim,) for one query, image and aligned text scores (n,)."""
        a = self.arrays
        query = np.broadcast_to(query_features, (len(image_scores), self.config.query_dim))
        features = np.column_stack([image_scores, text, text - image_scores, query])  # (n, features)
        hidden = np.maximum(features @ a["hidden_weight"].T + a["hidden_bias"], 0.0)  # (n, hidden)
        logits = hidden @ a["out_weight"] + a["out_bias"]  # (n,)
        return 1.0 / (1.0 + np.exp(-logits))

    def fuse(self, queries: np.ndarray, image_scores: np.ndarray, text_scores: np.ndarray) -> np.ndarray:
        """Fused scores (n,) float32 of candidates for a query vector (dim,) or one query row
        per candidate (n, dim). NaN marks a missing modality: no own text gives exactly the
        image score, no image vector gives the aligned text score."""
        image_scores = np.asarray(image_scores, np.float32)
        text_scores = np.asarray(text_scores, np.float32)
        query_features = self.query_features(np.asarray(queries, np.float32))
        has_text, has_image = ~np.isnan(text_scores), ~np.isnan(image_scores)
        text = self.align_text(np.where(has_text, text_scores, 0.0))
        image = np.where(has_image, image_scores, 0.0)
        gate = self.gates(query_features, image, text)
        gate = np.where(has_text, np.where(has_image, gate, 1.0), 0.0)
        fused = image + gate * (text - image)
        fused = np.where(has_text | has_image, fused, np.nan)
        return fused.astype(np.float32)

    def save(self, model_dir: Path) -> None:
        """Write fusion_head.safetensors and fusion_head.json into the model folder (atomically each)."""
        weights = model_dir / HEAD_WEIGHTS_FILE
        tmp = weights.with_name(weights.name + ".tmp")
        arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.arrays.items()}
        save_file(arrays, str(tmp), metadata={"format": HEAD_FORMAT})
        os.replace(tmp, weights)
        config = model_dir / HEAD_CONFIG_FILE
        tmp = config.with_name(config.name + ".tmp")
        tmp.write_text(
            json.dumps({"format": HEAD_FORMAT, **asdict(self.config)}, indent=2, sort_keys=True) + "\n"
        )
        os.replace(tmp, config)


def head_dir(model_source: str) -> Path | None:
    """The folder a model's head lives in: the model folder, or None for a spec that is not a
    folder (openclip:ARCH)."""
    path = Path(model_source)
    return path if path.is_dir() else None


def has_fusion_head(model_source: str, model_id: str) -> bool:
    """True when the model folder holds a head trained for these weights."""
    try:
        load_fusion_head(model_source, model_id)
    except (NoFusionHeadError, FusionHeadError):
        return False
    return True


def usable_fusion_head(model_source: str, model_id: str) -> FusionHead | None:
    """The model's head, or None when its folder has none or an unusable one (linear then)."""
    try:
        return load_fusion_head(model_source, model_id)
    except (NoFusionHeadError, FusionHeadError):
        return None


def load_fusion_head(model_source: str, model_id: str) -> FusionHead:
    """The head saved in a model folder, checked against the weights it must belong to.

    NoFusionHeadError when there is none, FusionHeadError when it is unusable or stale.
    """
    folder = head_dir(model_source)
    if folder is None or not (folder / HEAD_CONFIG_FILE).is_file():
        where = f"the model folder {folder}" if folder is not None else f"the model {model_source}"
        hint = "" if folder is not None else " (learned fusion needs a model folder)"
        raise NoFusionHeadError(
            f"learned fusion needs a fusion head, and {where} has none{hint}: train one with "
            f"`{TRAIN_COMMAND}`, or use --fusion linear"
        )
    config = _read_config(folder / HEAD_CONFIG_FILE)
    if config.model_id != model_id:
        raise FusionHeadError(
            f"the fusion head in {folder} was trained for the weights {config.model_id}, but the "
            f"model there is now {model_id}: train it again with `{TRAIN_COMMAND}`, or use --fusion linear"
        )
    try:
        arrays = load_file(str(folder / HEAD_WEIGHTS_FILE))
    except (OSError, SafetensorError) as exc:
        raise FusionHeadError(f"{folder / HEAD_WEIGHTS_FILE}: unreadable fusion head weights: {exc}") from exc
    return FusionHead(config, {k: v.astype(np.float32) for k, v in arrays.items()})


def _read_config(path: Path) -> FusionHeadConfig:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FusionHeadError(f"{path}: unreadable fusion head config: {exc}") from exc
    if not isinstance(data, dict) or data.pop("format", None) != HEAD_FORMAT:
        raise FusionHeadError(f"{path}: not a fusion head config (expected format {HEAD_FORMAT!r})")
    try:
        return FusionHeadConfig(**data)
    except TypeError as exc:
        raise FusionHeadError(f"{path}: malformed fusion head config: {exc}") from exc
