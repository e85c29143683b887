"""Training-time augmentation that never makes a caption false (Pillow and NumPy only).

Each view is drawn from its own generator seeded by (run seed, epoch, image), so a run, a
resumed run and the picture of what training saw (`augmentations.png`) all get the same views.
What may change is an `AugmentConfig`: mild square crops that keep an object in its named grid
cell, mirroring only with "left"/"right" swapped in the caption, photometric jitter without a
hue shift unless allowed, blur, sensor noise and JPEG re-compression.
"""

from __future__ import annotations

import colorsys
import io
import math
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from indexer.models.config import AugmentConfig

AUGMENTATIONS_FILE = "augmentations.png"
# Mixed into every view's seed so augmentation draws never coincide with other seeded streams.
AUGMENT_STREAM = 0xA06
# "left"/"right" as words or word stems (leftmost, rightward); "bright" and "lefty's" stay.
_LEFT_RIGHT = re.compile(r"\b(left|right)(?=most\b|wards?\b|\b)", re.IGNORECASE)
_SWAP = {"left": "right", "right": "left"}
UINT8_MAX = 255
# The picture of what training saw: a few images, each with several views, captions below.
GRID_IMAGES = 6
GRID_VIEWS = 5
GRID_TILE = 128  # px per view, whatever the model's input size
GRID_CAPTION_LINES = 3
GRID_LINE_PX = 12
GRID_CHARS_PER_LINE = 21
GRID_MARGIN = 4


@dataclass(frozen=True)
class View:
    """One augmented image and whether it was mirrored (its captions must then swap sides)."""

    image: Image.Image
    flipped: bool


def view_rng(seed: int, epoch: int, image: int) -> np.random.Generator:
    """The generator of one image's view in one epoch: independent of batch order and threads."""
    return np.random.default_rng([AUGMENT_STREAM, seed, epoch, image])


def swap_left_right(caption: str) -> str:
    """The caption of the mirrored image: left <-> right, keeping the writer's capitals."""

    def swap(match: re.Match[str]) -> str:
        word = match.group(1)
        other = _SWAP[word.lower()]
        if word.isupper():
            return other.upper()
        return other.capitalize() if word[0].isupper() else other

    return _LEFT_RIGHT.sub(swap, caption)


def augment(image: Image.Image, config: AugmentConfig, rng: np.random.Generator) -> View:
    """A random view of a square RGB image at the model's input size (same size out)."""
    image = _resized_crop(image, config, rng)
    flipped = config.flip and bool(rng.random() < 0.5)
    if flipped:
        image = ImageOps.mirror(image)
    image = _colour_jitter(image, config, rng)
    if rng.random() < config.blur_probability:
        radius = float(rng.uniform(0.1 * config.blur_max_radius, config.blur_max_radius))
        image = image.filter(ImageFilter.GaussianBlur(radius))
    if rng.random() < config.noise_probability:
        image = _with_noise(image, float(rng.uniform(0.0, config.noise_max_std)), rng)
    if rng.random() < config.jpeg_probability:
        low, high = config.jpeg_quality
        image = _recompressed(image, int(rng.integers(low, high + 1)))
    return View(image, flipped)


def _resized_crop(image: Image.Image, config: AugmentConfig, rng: np.random.Generator) -> Image.Image:
    """A square crop of `crop_min_area`..1 of the area near the centre, resized back."""
    width, height = image.size
    side = math.sqrt(float(rng.uniform(config.crop_min_area, 1.0)))  # fraction of each side
    centre_x = 0.5 + float(rng.uniform(-config.crop_max_shift, config.crop_max_shift))
    centre_y = 0.5 + float(rng.uniform(-config.crop_max_shift, config.crop_max_shift))
    left = min(max(centre_x - side / 2, 0.0), 1.0 - side)
    top = min(max(centre_y - side / 2, 0.0), 1.0 - side)
    box = (left * width, top * height, (left + side) * width, (top + side) * height)
    return image.resize((width, height), Image.Resampling.BICUBIC, box=box)


def _colour_jitter(image: Image.Image, config: AugmentConfig, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast and saturation by factors near 1; hue only when the config allows."""
    for enhancer, strength in (
        (ImageEnhance.Brightness, config.brightness),
        (ImageEnhance.Contrast, config.contrast),
        (ImageEnhance.Color, config.saturation),
    ):
        factor = float(rng.uniform(1.0 - strength, 1.0 + strength))
        image = enhancer(image).enhance(factor)
    if config.hue > 0:
        image = _hue_shifted(image, float(rng.uniform(-config.hue, config.hue)))
    return image


def _hue_shifted(image: Image.Image, shift: float) -> Image.Image:
    """Rotate every pixel's hue by `shift` of the circle (PIL's HSV hue is 0-255)."""
    hsv = np.asarray(image.convert("HSV"), dtype=np.int16).copy()  # (H, W, 3)
    hsv[..., 0] = (hsv[..., 0] + round(shift * 256)) % 256
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")


def _with_noise(image: Image.Image, std: float, rng: np.random.Generator) -> Image.Image:
    """Gaussian sensor-like noise of `std` (0-255 scale) on every channel."""
    pixels = np.asarray(image, dtype=np.float32)  # (H, W, 3)
    noisy = pixels + rng.normal(0.0, std, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(noisy), 0, UINT8_MAX).astype(np.uint8))


def _recompressed(image: Image.Image, quality: int) -> Image.Image:
    """The image after a JPEG round trip at `quality`: the blocking real photos carry."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


class GridSample(NamedTuple):
    """One training image for the grid: its index in the training data, pixels and a caption."""

    image_index: int
    image: Image.Image
    caption: str


def hue_of(rgb: Sequence[float]) -> float:
    """Hue in degrees of one RGB colour (0-255 channels); for tests and the README's checks."""
    r, g, b = (c / UINT8_MAX for c in rgb)
    return colorsys.rgb_to_hsv(r, g, b)[0] * 360.0


def write_augmentation_grid(
    path: Path,
    samples: Sequence[GridSample],
    *,
    config: AugmentConfig,
    seed: int,
) -> None:
    """A PNG of what training saw: each image as the model sees it, then its view per epoch.

    The views are the training loop's own (same generator per seed, epoch and image index);
    a mirrored view's caption is swapped left/right exactly as in the training batch.
    """
    shown = list(samples)[:GRID_IMAGES]
    cell_height = GRID_TILE + GRID_CAPTION_LINES * GRID_LINE_PX + GRID_MARGIN
    columns = 1 + GRID_VIEWS
    sheet = Image.new(
        "RGB",
        (columns * (GRID_TILE + GRID_MARGIN) + GRID_MARGIN, len(shown) * cell_height + GRID_MARGIN),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for row, (image_index, image, caption) in enumerate(shown):
        cells = [("as decoded", image, caption)]
        for epoch in range(1, GRID_VIEWS + 1):
            view = augment(image, config, view_rng(seed, epoch, image_index))
            text = swap_left_right(caption) if view.flipped else caption
            cells.append((f"epoch {epoch}" + (" (mirrored)" if view.flipped else ""), view.image, text))
        for column, (label, picture, text) in enumerate(cells):
            x = GRID_MARGIN + column * (GRID_TILE + GRID_MARGIN)
            y = GRID_MARGIN + row * cell_height
            sheet.paste(picture.resize((GRID_TILE, GRID_TILE), Image.Resampling.NEAREST), (x, y))
            lines = [label, *textwrap.wrap(text, GRID_CHARS_PER_LINE)][:GRID_CAPTION_LINES]
            for i, line in enumerate(lines):
                draw.text((x, y + GRID_TILE + i * GRID_LINE_PX), line, fill=(0, 0, 0), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
