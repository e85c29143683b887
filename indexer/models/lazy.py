"""An encoder that loads its weights the first time something needs encoding.

Its `info` (kind, recorded source, weights id, dimension) is read from the model's files up
front, so an index checks the model, and refuses a mismatched one, before anything is written;
a run that finds nothing to encode (a no-change `mmsearch index`, `mmsearch info`) never imports
torch or transformers. OpenCLIP `openclip:ARCH` specs are the exception: their dimension comes
from open_clip itself, which imports torch.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from indexer.models.devices import AUTO, Device
from indexer.models.spec import (
    NATIVE_CONFIG_FILE,
    NATIVE_FORMAT,
    OPENCLIP_CONFIG_FILE,
    EncoderInfo,
    ModelLoadError,
    ModelSpec,
    is_model_dir,
    native_weights_id,
    openclip_folder_model_id,
    openclip_model_id,
    read_folder_config,
)

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from indexer.media.images import PreprocessConfig
    from indexer.models.encoder import Encoder


def expected_info(spec: ModelSpec) -> EncoderInfo:
    """What the encoder of `spec` will report once loaded, from its files alone."""
    if spec.openclip is not None:
        from indexer.models.openclip import architecture_dim  # the optional extra: imports torch

        return EncoderInfo(
            "openclip", spec.source(), openclip_model_id(spec.openclip), architecture_dim(spec.openclip.arch)
        )
    folder = spec.folder
    assert folder is not None, f"a {spec.kind} model spec names a folder"
    if spec.kind == "openclip-folder":
        config = read_folder_config(folder / OPENCLIP_CONFIG_FILE)
        try:
            dim = int(config["model_cfg"]["embed_dim"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{folder}: unreadable {OPENCLIP_CONFIG_FILE}: {exc!r}") from exc
        return EncoderInfo("openclip", str(folder), openclip_folder_model_id(folder, config), dim)
    if not is_model_dir(folder):
        raise ModelLoadError(missing_model_message(spec))
    config = read_folder_config(folder / NATIVE_CONFIG_FILE)
    if config.get("format") != NATIVE_FORMAT:
        raise ModelLoadError(f"{folder}: not an mmsearch model (format {config.get('format')!r})")
    try:
        dim = int(config["model"]["embed_dim"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{folder}: unreadable {NATIVE_CONFIG_FILE}: {exc!r}") from exc
    return EncoderInfo("native", str(folder), native_weights_id(folder), dim)


def missing_model_message(spec: ModelSpec) -> str:
    """What to do when a native model folder (or the bundled one) is not there."""
    if spec.is_bundled:
        return (
            f"the bundled default model is missing from {spec.folder}; run `make default-model` to "
            "train it, or pass --model DIR"
        )
    return (
        f"no model at {spec.folder}: expected {NATIVE_CONFIG_FILE} and model.safetensors. Train one "
        "with `mmsearch train --corpus FILE --out DIR` or pass --model DIR."
    )


class LazyEncoder:
    """An Encoder whose model loads (once, thread-safely) on the first preprocess or encode."""

    def __init__(self, spec: ModelSpec, *, device: Device = AUTO) -> None:
        self.spec = spec
        self.device = device
        self.info = expected_info(spec)
        self._encoder: Encoder | None = None
        self._lock = threading.Lock()

    @property
    def is_loaded(self) -> bool:
        """True once the weights are in memory."""
        return self._encoder is not None

    def load(self) -> Encoder:
        """The real encoder, loaded on first call; refuses weights that changed since `info`."""
        if self._encoder is None:
            with self._lock:  # decode workers ask for preprocess_config from several threads
                if self._encoder is None:
                    from indexer.models.encoder import load_encoder

                    encoder = load_encoder(self.spec, device=self.device)
                    if encoder.info != self.info:
                        raise ModelLoadError(
                            f"the model at {self.spec.source()} changed while in use (it was "
                            f"{self.info.model_id}, now {encoder.info.model_id}): run the command again"
                        )
                    self._encoder = encoder
        return self._encoder

    @property
    def preprocess_config(self) -> PreprocessConfig:
        """Image size and normalisation of the model (loads it)."""
        return self.load().preprocess_config

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> (3, S, S) float32 tensor for encode_pixels."""
        return self.load().preprocess(image)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (n, dim) float32, L2-normalised, C-contiguous."""
        return self.load().encode_texts(texts)

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """(n, 3, S, S) -> (n, dim) float32, L2-normalised, C-contiguous."""
        return self.load().encode_pixels(pixels)
