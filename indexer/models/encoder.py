"""Loading any model that can fill or query an index, and the native ALBERT+CNN encoder.

Indexing and querying both go through `load_encoder`, so tokenisation and preprocessing are
the same on both sides by construction. The protocol every kind implements is in protocol.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from indexer.media.preprocess import preprocess, preprocess_batch
from indexer.models.devices import AUTO, Device, autocast_for
from indexer.models.native import LoadedModel, load_model_dir
from indexer.models.protocol import TEXT_BATCH_SIZE as TEXT_BATCH_SIZE  # re-exported, as below
from indexer.models.protocol import Encoder as Encoder
from indexer.models.protocol import as_faiss_array, hub_offline
from indexer.models.spec import DEFAULT_MODEL_DIR as DEFAULT_MODEL_DIR
from indexer.models.spec import (
    LEGACY_DEFAULT_MODEL_SUFFIX,
    OPENCLIP_PREFIX,
    ModelLoadError,
    ModelSpec,
    is_model_dir,
    is_openclip_dir,
)
from indexer.models.spec import EncoderInfo as EncoderInfo  # re-exported: its home before spec.py
from indexer.models.tokenizer import tokenize


class NativeEncoder:
    """The ALBERT+ResNet dual encoder from a model directory."""

    def __init__(self, loaded: LoadedModel, *, device: Device) -> None:
        self.loaded = loaded
        self.device = device
        config = loaded.model.config
        self.preprocess_config = config.preprocess
        self.max_length = config.text.max_length
        self.info = EncoderInfo("native", str(loaded.directory), loaded.model_id, config.embed_dim)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> (3, S, S) float32 tensor."""
        return preprocess(image, self.preprocess_config)

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """RGB images -> (n, 3, S, S) float32 tensor."""
        return preprocess_batch(images, self.preprocess_config)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (n, dim) float32, normalised."""
        chunks = [
            self._encode_text_batch(texts[i : i + TEXT_BATCH_SIZE])
            for i in range(0, len(texts), TEXT_BATCH_SIZE)
        ]
        return as_faiss_array(torch.cat(chunks)) if chunks else self._empty()

    def _encode_text_batch(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = tokenize(self.loaded.tokenizer, texts, max_length=self.max_length)
        tokens = {k: v.to(str(self.device)) for k, v in tokens.items()}
        with autocast_for(self.device):
            return self.loaded.model.encode_text(tokens["input_ids"], tokens["attention_mask"])

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """(n, 3, S, S) -> (n, dim) float32, normalised."""
        if len(pixels) == 0:
            return self._empty()
        with autocast_for(self.device):
            return as_faiss_array(self.loaded.model.encode_image(pixels.to(str(self.device))))

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.info.dim), dtype=np.float32)


def is_openclip_spec(spec: str | Path | None) -> bool:
    """True for `openclip:ARCH...` specs and for folders written by OpenCLIP fine-tuning."""
    if spec is None:
        return False
    return str(spec).startswith(OPENCLIP_PREFIX) or is_openclip_dir(Path(spec))


def model_spec(
    model: str | Path | None, *, checkpoint: Path | None = None, pretrained: str | None = None
) -> str | None:
    """Fold --checkpoint/--pretrained into one --model string (what an index records); None stays
    None. Kept for callers of the string form: new code parses a ModelSpec once instead."""
    if checkpoint is None and pretrained is None:
        return None if model is None else str(model)
    return ModelSpec.parse(model, checkpoint=checkpoint, pretrained=pretrained).source()


def bundled_model_moved(source: str | Path) -> str | Path:
    """An index built before the move recorded the bundled model's old folder: use the new one."""
    path = Path(source)
    if path.parts[-2:] == LEGACY_DEFAULT_MODEL_SUFFIX and not path.exists():
        return DEFAULT_MODEL_DIR
    return source


def load_encoder(
    spec: ModelSpec | str | Path | None,
    *,
    device: Device | str = AUTO,
    checkpoint: Path | None = None,
    pretrained: str | None = None,
) -> Encoder:
    """An encoder from a model spec, loaded now: a ModelSpec, or its string forms (None: the
    bundled default, a model directory, openclip:ARCH with `checkpoint` or `pretrained`, or a
    fine-tuned OpenCLIP folder)."""
    target = Device.parse(device).resolve()
    parsed = ModelSpec.parse(spec, checkpoint=checkpoint, pretrained=pretrained)
    if parsed.is_openclip:
        from indexer.models.openclip import load_openclip_encoder  # optional extra, imported lazily

        return load_openclip_encoder(parsed, device=target)
    assert parsed.folder is not None
    if parsed.is_bundled and not is_model_dir(parsed.folder):
        raise ModelLoadError(
            f"the bundled default model is missing from {parsed.folder}; run "
            "`make default-model` to train it, or pass --model DIR"
        )
    with hub_offline():
        loaded = load_model_dir(parsed.folder, device=target)
    return NativeEncoder(loaded, device=target)
