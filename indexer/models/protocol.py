"""What every model kind shares, without importing any of them (or torch).

`encoder.py` loads models and imports each kind; each kind (native in `encoder.py`, OpenCLIP in
`openclip.py`) implements the protocol from here, so no model module imports another.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from indexer.models.spec import EncoderInfo

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from indexer.media.images import PreprocessConfig

TEXT_BATCH_SIZE = 256  # texts per forward pass: bounded memory for any number of captions


class Encoder(Protocol):
    """Anything that maps texts and preprocessed images into one normalised space."""

    info: EncoderInfo

    @property
    def preprocess_config(self) -> PreprocessConfig:
        """Image size (decoders draft to it) and normalisation of the model's input."""
        ...

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> (3, S, S) float32 tensor for encode_pixels."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (n, dim) float32, L2-normalised, C-contiguous."""
        ...

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """(n, 3, S, S) -> (n, dim) float32, L2-normalised, C-contiguous."""
        ...


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
