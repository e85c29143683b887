"""RGB image -> the tensor the image tower sees, defined once for training, indexing and queries.

The resize mirrors torchvision's Resize(S) + CenterCrop(S) rounding (or squashes, as a config
may ask), so weights trained elsewhere see what they were trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from indexer.media.settings import PreprocessConfig

if TYPE_CHECKING:
    import torch  # imported where a tensor is made: decoding alone never needs torch

UINT8_MAX = 255


def preprocess(image: Image.Image, config: PreprocessConfig) -> torch.Tensor:
    """RGB image -> normalised float32 (3, S, S); one function, so training and queries agree."""
    if image.mode != "RGB":
        raise ValueError(f"preprocess needs an RGB image (use open_image), got mode {image.mode}")
    sized = _resize(image, config)
    pixels = np.asarray(sized, dtype=np.float32) / UINT8_MAX  # (S, S, 3) in [0, 1]
    mean = np.asarray(config.mean, dtype=np.float32)
    std = np.asarray(config.std, dtype=np.float32)
    normalised = (pixels - mean) / std  # (S, S, 3)
    import torch

    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))  # (3, S, S)


def model_input_image(image: Image.Image, config: PreprocessConfig) -> Image.Image:
    """RGB image -> the (S, S) image `preprocess` normalises: what the model sees, as pixels.

    Training keeps these (and augments them); `normalise_uint8` then gives exactly what
    `preprocess` would have given for the original image.
    """
    return _resize(image, config)


def normalise_uint8(pixels: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """(B, S, S, 3) uint8 model-input images -> (B, 3, S, S) float32, as `preprocess` computes."""
    import torch

    unit = pixels.to(torch.float32) / UINT8_MAX  # (B, S, S, 3) in [0, 1]
    mean = torch.tensor(config.mean, dtype=torch.float32)
    std = torch.tensor(config.std, dtype=torch.float32)
    return ((unit - mean) / std).permute(0, 3, 1, 2).contiguous()  # (B, 3, S, S)


def preprocess_batch(images: Sequence[Image.Image], config: PreprocessConfig) -> torch.Tensor:
    """RGB images -> (B, 3, S, S) float32; an empty batch gives B = 0 rather than an error."""
    import torch

    if not images:
        return torch.empty((0, 3, config.image_size, config.image_size), dtype=torch.float32)
    return torch.stack([preprocess(image, config) for image in images])  # (B, 3, S, S)


def _resize(image: Image.Image, config: PreprocessConfig) -> Image.Image:
    """Bicubic resize to (S, S); rounding mirrors torchvision's Resize(S) + CenterCrop(S)."""
    size = config.image_size
    if config.resize == "squash":
        return image.resize((size, size), Image.Resampling.BICUBIC)
    width, height = image.size
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    resized = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    left = round((new_width - size) / 2.0)
    top = round((new_height - size) / 2.0)
    return resized.crop((left, top, left + size, top + size))
