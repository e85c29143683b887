"""One interface over every model that can fill or query an index.

Indexing and querying both go through `load_encoder`, so tokenisation and preprocessing are
the same on both sides by construction.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from indexer.media.images import PreprocessConfig, preprocess, preprocess_batch
from indexer.models.devices import autocast_for, resolve_device
from indexer.models.native import LoadedModel, ModelLoadError, is_model_dir, load_model_dir
from indexer.models.tokenizer import tokenize

DEFAULT_MODEL_DIR = Path(__file__).with_name("default_model")
TEXT_BATCH_SIZE = 256
# Where the bundled model lived before indexer/ was split into subpackages; indexes record it.
LEGACY_DEFAULT_MODEL_SUFFIX = ("indexer", "default_model")


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
        return as_faiss_array(torch.cat(chunks)) if chunks else self._empty()

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
            return as_faiss_array(self.loaded.model.encode_image(pixels.to(self.device)))

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.info.dim), dtype=np.float32)


def as_faiss_array(embeddings: torch.Tensor) -> np.ndarray:
    """(n, dim) embeddings -> (n, dim) float32, C-contiguous, renormalised after fp16 rounding."""
    array = embeddings.float().cpu().numpy()
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.ascontiguousarray(array / np.maximum(norms, 1e-12), dtype=np.float32)


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Local loads must never reach the Hugging Face Hub, even through a library default.

    `local_files_only=True` covers transformers' own loaders; this also covers code we do not
    control (open_clip's tokenizers). huggingface_hub reads HF_HUB_OFFLINE once, at import, so
    the module constant is set beside the variable and both are restored afterwards.
    """
    import huggingface_hub.constants as hub_constants

    saved_env = os.environ.get("HF_HUB_OFFLINE")
    saved_flag = hub_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved_flag
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def is_openclip_spec(spec: str | Path | None) -> bool:
    """True for `openclip:ARCH...` specs and for folders written by OpenCLIP fine-tuning."""
    if spec is None:
        return False
    from indexer.models.openclip import OPENCLIP_PREFIX, is_openclip_dir  # no open_clip import here

    return str(spec).startswith(OPENCLIP_PREFIX) or is_openclip_dir(Path(spec))


def model_spec(
    model: str | Path | None, *, checkpoint: Path | None = None, pretrained: str | None = None
) -> str | None:
    """Fold the CLI's --checkpoint/--pretrained into one --model spec (what an index records)."""
    if checkpoint is None and pretrained is None:
        return None if model is None else str(model)
    if model is None or not str(model).startswith("openclip:"):
        raise ModelLoadError(
            "--checkpoint and --pretrained choose the weights of an OpenCLIP model: add "
            "--model openclip:ARCH (e.g. --model openclip:ViT-B-32)"
        )
    from indexer.models.openclip import OpenClipSpec

    return OpenClipSpec.parse(str(model), checkpoint=checkpoint, pretrained=pretrained).source()


def bundled_model_moved(source: str | Path) -> str | Path:
    """An index built before the move recorded the bundled model's old folder: use the new one."""
    path = Path(source)
    if path.parts[-2:] == LEGACY_DEFAULT_MODEL_SUFFIX and not path.exists():
        return DEFAULT_MODEL_DIR
    return source


def load_encoder(
    spec: str | Path | None,
    *,
    device: str = "auto",
    checkpoint: Path | None = None,
    pretrained: str | None = None,
) -> Encoder:
    """An encoder from a model spec: None (the bundled default), a model directory, openclip:ARCH
    (with `checkpoint` or `pretrained`, or both folded into the spec), or a fine-tuned OpenCLIP folder.
    """
    resolved_device = resolve_device(device)
    spec = model_spec(spec, checkpoint=checkpoint, pretrained=pretrained)
    if spec is None:
        if not is_model_dir(DEFAULT_MODEL_DIR):
            raise ModelLoadError(
                f"the bundled default model is missing from {DEFAULT_MODEL_DIR}; run "
                "`make default-model` to train it, or pass --model DIR"
            )
        spec = DEFAULT_MODEL_DIR
    if is_openclip_spec(spec):
        from indexer.models.openclip import load_openclip_encoder  # optional extra, imported lazily

        return load_openclip_encoder(spec, device=resolved_device)
    with hub_offline():
        loaded = load_model_dir(Path(spec), device=resolved_device)
    return NativeEncoder(loaded, device=resolved_device)
