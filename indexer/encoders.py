"""One interface over every model that can fill or query an index.

Indexing and querying both go through `load_encoder`, so tokenisation and preprocessing are
the same on both sides by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from indexer.devices import autocast_for, resolve_device
from indexer.images import PreprocessConfig, preprocess, preprocess_batch
from indexer.model import LoadedModel, ModelLoadError, is_model_dir, load_model_dir
from indexer.tokenizer import tokenize

DEFAULT_MODEL_DIR = Path(__file__).with_name("default_model")
TEXT_BATCH_SIZE = 256


@dataclass(frozen=True)
class EncoderInfo:
    """What an index records about the model that filled it."""

    kind: str  # "native" | "openclip"
    source: str  # model directory, or openclip:ARCH spec
    model_id: str  # content id of the weights
    dim: int


class Encoder(Protocol):
    """Anything that maps texts and preprocessed images into one normalised space."""

    info: EncoderInfo
    preprocess_config: PreprocessConfig

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> (3, S, S) float32 tensor for encode_pixels."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (n, dim) float32, L2-normalised, C-contiguous."""
        ...

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """(n, 3, S, S) -> (n, dim) float32, L2-normalised, C-contiguous."""
        ...


class NativeEncoder:
    """The ALBERT+ResNet dual encoder from a model directory."""

    def __init__(self, loaded: LoadedModel, *, device: str) -> None:
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
        return _as_faiss_array(torch.cat(chunks)) if chunks else self._empty()

    def _encode_text_batch(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = tokenize(self.loaded.tokenizer, texts, max_length=self.max_length)
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        with autocast_for(self.device):
            return self.loaded.model.encode_text(tokens["input_ids"], tokens["attention_mask"])

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """(n, 3, S, S) -> (n, dim) float32, normalised."""
        if len(pixels) == 0:
            return self._empty()
        with autocast_for(self.device):
            return _as_faiss_array(self.loaded.model.encode_image(pixels.to(self.device)))

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.info.dim), dtype=np.float32)


def _as_faiss_array(embeddings: torch.Tensor) -> np.ndarray:
    """FAISS wants float32, C-contiguous; renormalise after any fp16 autocast rounding."""
    array = embeddings.float().cpu().numpy()
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.ascontiguousarray(array / np.maximum(norms, 1e-12), dtype=np.float32)


def load_encoder(spec: str | Path | None, *, device: str = "auto") -> Encoder:
    """An encoder from a model spec: None (the bundled default), a model directory, or openclip:ARCH."""
    resolved_device = resolve_device(device)
    if spec is None:
        if not is_model_dir(DEFAULT_MODEL_DIR):
            raise ModelLoadError(
                f"the bundled default model is missing from {DEFAULT_MODEL_DIR}; run "
                "`make default-model` to train it, or pass --model DIR"
            )
        spec = DEFAULT_MODEL_DIR
    text = str(spec)
    if text.startswith("openclip:"):
        from indexer.openclip import load_openclip_encoder  # optional extra, imported lazily

        return load_openclip_encoder(text, device=resolved_device)
    return NativeEncoder(load_model_dir(Path(text), device=resolved_device), device=resolved_device)
