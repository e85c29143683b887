"""The main renderer: draws train, val and test scenes with Pillow polygons on NumPy canvases.

Diversity is the point, so a model learns regions, size words and colour names rather than one
way of drawing them: each object sits anywhere inside its grid cell at any size its size word
allows, filled or outlined, antialiased or not, slightly rotated, stretched and with jittered
vertices; backgrounds take any hue, saturated ones included, flat or as gradients, stripes,
checks, blotches or value noise, always kept clear of the colours of the objects on them; small
clutter (thin lines, dots, irregular blobs far smaller than a small object) sits under the
objects. `plan_look` fixes every random choice of one scene, and `render` is a pure function of
it, so renders are reproducible.
"""

from __future__ import annotations

import colorsys
import math
import random
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from sample_corpus.scenes import IMAGE_SIDE, SIZE_SPAN_PX, SceneObject, cell_box

RGB = tuple[float, float, float]
Point = tuple[float, float]

# Draw masks at 4x and downsample with LANCZOS: antialiased edges using Pillow alone.
SUPERSAMPLE = 4
# Every object pixel stays this far inside its cell, so objects in neighbouring cells never touch.
CELL_MARGIN_PX = 1.0
# Extra pixels around an object's patch so the LANCZOS kernel sees its whole edge.
PATCH_MARGIN_PX = 2
# Canvas padding so patches at the image border need no clipping.
CANVAS_PAD_PX = 8
MAX_BYTE = 255.0

# Pure, well separated colours that survive JPEG chroma subsampling on 10+ px objects.
COLOR_RGB: dict[str, RGB] = {
    "red": (220, 20, 30),
    "orange": (255, 135, 0),
    "yellow": (255, 225, 0),
    "green": (20, 165, 45),
    "blue": (25, 75, 230),
    "purple": (140, 45, 200),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
}

# Shape outlines at circumradius 1: (vertex count, angle of the first vertex, radii cycled).
STAR_INNER_RATIO = 0.45
CIRCLE_VERTICES = 64
SHAPE_OUTLINES = {
    "circle": (CIRCLE_VERTICES, 0.0, (1.0,)),
    "square": (4, 45.0, (1.0,)),
    "triangle": (3, -90.0, (1.0,)),
    "star": (10, -90.0, (1.0, STAR_INNER_RATIO)),
    "hexagon": (6, 0.0, (1.0,)),
}
# Share of objects drawn as an outline only; the rest are filled.
OUTLINE_FRACTION = 0.25
# Outline width: at least 2.5 px so the colour survives JPEG chroma subsampling, at most this
# share of the span; smaller objects are always filled, or the outline would leave no hole.
OUTLINE_MIN_PX = 2.5
OUTLINE_MAX_SPAN_SHARE = 0.18
OUTLINE_MIN_SPAN_PX = 13.0
# Share of objects drawn with hard, aliased edges: pixels at least half covered are filled.
ALIASED_FRACTION = 0.25
ALIAS_THRESHOLD = 0.5
# Width/height stretch of up to +-8%: a circle becomes a barely visible ellipse, never an oval.
MAX_STRETCH = 0.08
# Each polygon vertex moves radially by up to 6% of the radius; circles stay smooth.
MAX_VERTEX_JITTER = 0.06

# Background colours: any hue; half muted, half saturated; value from dark to light.
MUTED_SATURATION = (0.0, 0.3)
SATURATED_SATURATION = (0.45, 1.0)
SATURATED_FRACTION = 0.5
BACKGROUND_VALUE = (0.2, 0.92)
# The second colour of a two-colour background: a shade of the first, or another hue.
SHADE_VALUE_STEP = (0.1, 0.3)
OTHER_HUE_STEP = (0.08, 0.5)
SHADE_FRACTION = 0.5
# CIE76 distance every background colour keeps from every object colour drawn on it: below ~35
# a pale yellow background and a white object, or a brown one and an orange object, blur.
MIN_BACKGROUND_DELTA_E = 40.0
# Points along the blend of two background colours that must all pass the distance check.
BLEND_CHECKS = (0.0, 0.25, 0.5, 0.75, 1.0)
# Redraws before falling back to mid grey, which is far from all eight object colours.
MAX_BACKGROUND_TRIES = 50
FALLBACK_GREY: RGB = (128.0, 128.0, 128.0)
TRAIN_BACKGROUNDS = ("flat", "gradient", "stripes", "checks", "blotches", "value-noise")
# Test also gets radial gradients, a background kind training never shows.
TEST_BACKGROUNDS = (*TRAIN_BACKGROUNDS, "radial")
STRIPE_PERIOD_PX = (5.0, 18.0)
# Check squares at most 6 px: a texture, never mistaken for a small square (10+ px).
CHECK_SIDE_PX = (2.0, 6.0)
NOISE_GRID_PX = (8.0, 24.0)
# Blotches are value noise cut at a level with a soft edge: irregular patches, never discs.
BLOTCH_GRID_PX = (10.0, 20.0)
BLOTCH_LEVEL = (0.35, 0.65)
BLOTCH_EDGE = 0.06
# Half the images get mild sensor-like noise; noise-free PNGs stay small and fast to encode.
NOISY_FRACTION = 0.5
NOISE_SIGMA = (1.0, 3.5)

# Clutter: up to a few marks under the objects, each far smaller than a "small" object.
CLUTTER_FREE_FRACTION = 0.4
CLUTTER_COUNT = (1, 8)
CLUTTER_KINDS = ("line", "dot", "blob")
LINE_LENGTH_PX = (3.0, 8.0)
DOT_RADIUS_PX = (0.5, 1.2)
BLOB_RADIUS_PX = (0.8, 2.0)
BLOB_VERTICES = (5, 8)
BLOB_VERTEX_SHARE = (0.5, 1.0)


class RenderStyle(NamedTuple):
    """What differs between training looks and test looks."""

    backgrounds: tuple[str, ...]
    max_rotation_deg: float


TRAIN_STYLE = RenderStyle(TRAIN_BACKGROUNDS, max_rotation_deg=10.0)
TEST_STYLE = RenderStyle(TEST_BACKGROUNDS, max_rotation_deg=15.0)


class Placement(NamedTuple):
    """How one object is drawn: its polygon in output pixels (y down) and its stroke."""

    vertices: tuple[Point, ...]
    outline_px: float  # 0 = filled
    antialias: bool


class Background(NamedTuple):
    """A background kind, its two RGB colours (equal when flat) and its pattern geometry."""

    kind: str
    colors: tuple[RGB, RGB]
    angle: float
    period_px: float
    noise_sigma: float


class Clutter(NamedTuple):
    """One small mark: a line (two points), a dot (one point) or a blob (a polygon)."""

    kind: str
    points: tuple[Point, ...]
    width: float
    color: RGB


class Look(NamedTuple):
    """Every drawing choice of one scene; `seed` drives textures and sensor noise."""

    placements: tuple[Placement, ...]
    background: Background
    clutter: tuple[Clutter, ...]
    seed: int


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------
def unit_outline(rng: random.Random, shape: str, *, rotation_deg: float) -> list[Point]:
    """The shape's polygon at circumradius 1, stretched, vertex-jittered and rotated."""
    n, start_deg, radii = SHAPE_OUTLINES[shape]
    stretch = rng.uniform(-MAX_STRETCH, MAX_STRETCH)
    jitter = 0.0 if shape == "circle" else MAX_VERTEX_JITTER
    turn = math.radians(rotation_deg)
    points = []
    for k in range(n):
        angle = math.radians(start_deg + 360.0 * k / n)
        r = radii[k % len(radii)] * (1.0 + rng.uniform(-jitter, jitter))
        x, y = r * math.cos(angle) * (1.0 + stretch), r * math.sin(angle) * (1.0 - stretch)
        points.append((x * math.cos(turn) - y * math.sin(turn), x * math.sin(turn) + y * math.cos(turn)))
    return points


def place(rng: random.Random, obj: SceneObject, *, style: RenderStyle) -> Placement:
    """Span uniform over the size word's range, position uniform over every spot inside the cell."""
    rotation = rng.uniform(-style.max_rotation_deg, style.max_rotation_deg)
    outline = unit_outline(rng, obj.shape, rotation_deg=rotation)
    xs, ys = [p[0] for p in outline], [p[1] for p in outline]
    span = rng.uniform(*SIZE_SPAN_PX[obj.size])
    scale = span / max(max(xs) - min(xs), max(ys) - min(ys))
    cell, margin = cell_box(obj.position), CELL_MARGIN_PX
    cx = rng.uniform(cell.left + margin - min(xs) * scale, cell.right - margin - max(xs) * scale)
    cy = rng.uniform(cell.top + margin - min(ys) * scale, cell.bottom - margin - max(ys) * scale)
    outline_px = 0.0
    if span >= OUTLINE_MIN_SPAN_PX and rng.random() < OUTLINE_FRACTION:
        outline_px = rng.uniform(OUTLINE_MIN_PX, max(OUTLINE_MIN_PX, OUTLINE_MAX_SPAN_SHARE * span))
    vertices = tuple((cx + x * scale, cy + y * scale) for x, y in outline)
    return Placement(vertices, outline_px, antialias=rng.random() >= ALIASED_FRACTION)


def srgb_to_lab(rgb: RGB) -> tuple[float, float, float]:
    """CIE L*a*b* (D65) of an sRGB colour in 0..255: distances there track perceived difference."""

    def linear(c: float) -> float:
        c /= MAX_BYTE
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116

    r, g, b = (linear(c) for c in rgb)
    x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883
    fx, fy, fz = f(x), f(y), f(z)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def delta_e(a: RGB, b: RGB) -> float:
    """CIE76 colour difference between two sRGB colours."""
    return math.dist(srgb_to_lab(a), srgb_to_lab(b))


def mix(first: RGB, second: RGB, t: float) -> RGB:
    """The colour a share t of the way from first to second."""
    r0, g0, b0 = first
    r1, g1, b1 = second
    return r0 + t * (r1 - r0), g0 + t * (g1 - g0), b0 + t * (b1 - b0)


def clear_of(colors: tuple[RGB, RGB], object_colors: Sequence[RGB]) -> bool:
    """True when every blend of the two background colours stays far from every object colour."""
    blends = [mix(*colors, t) for t in BLEND_CHECKS]
    return all(delta_e(blend, obj) >= MIN_BACKGROUND_DELTA_E for blend in blends for obj in object_colors)


def hsv_rgb(hue: float, saturation: float, value: float) -> RGB:
    """HSV in 0..1 (hue wraps) to RGB in 0..255."""
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, min(max(saturation, 0.0), 1.0), min(max(value, 0.0), 1.0))
    return r * MAX_BYTE, g * MAX_BYTE, b * MAX_BYTE


def background_colors(rng: random.Random, *, flat: bool) -> tuple[RGB, RGB]:
    """Two colours of any hue, muted or saturated; the second a shade or another hue."""
    saturated = rng.random() < SATURATED_FRACTION
    hue = rng.random()
    sat = rng.uniform(*(SATURATED_SATURATION if saturated else MUTED_SATURATION))
    value = rng.uniform(*BACKGROUND_VALUE)
    first = hsv_rgb(hue, sat, value)
    if flat:
        return first, first
    if rng.random() < SHADE_FRACTION:
        step = rng.uniform(*SHADE_VALUE_STEP) * rng.choice((-1, 1))
        return first, hsv_rgb(hue, sat, value + step)
    return first, hsv_rgb(hue + rng.uniform(*OTHER_HUE_STEP), sat, rng.uniform(*BACKGROUND_VALUE))


def sample_background(
    rng: random.Random, objects: Sequence[SceneObject], *, style: RenderStyle
) -> Background:
    """A background of a random kind whose colours all stay clear of the objects' colours."""
    kind = rng.choice(style.backgrounds)
    object_colors = [COLOR_RGB[o.color] for o in objects]
    colors = (FALLBACK_GREY, FALLBACK_GREY)
    for _ in range(MAX_BACKGROUND_TRIES):
        candidate = background_colors(rng, flat=kind == "flat")
        if clear_of(candidate, object_colors):
            colors = candidate
            break
    angle = rng.uniform(0.0, math.pi)
    period = rng.uniform(*(CHECK_SIDE_PX if kind == "checks" else STRIPE_PERIOD_PX))
    noise = rng.uniform(*NOISE_SIGMA) if rng.random() < NOISY_FRACTION else 0.0
    return Background(kind, colors, angle, period, noise)


def sample_clutter(rng: random.Random) -> tuple[Clutter, ...]:
    """A few small marks anywhere in the image, none shaped like a named shape."""
    if rng.random() < CLUTTER_FREE_FRACTION:
        return ()
    marks = []
    for _ in range(rng.randint(*CLUTTER_COUNT)):
        kind = rng.choice(CLUTTER_KINDS)
        x, y = rng.uniform(0, IMAGE_SIDE), rng.uniform(0, IMAGE_SIDE)
        color = hsv_rgb(rng.random(), rng.random(), rng.random())
        if kind == "line":
            length, angle = rng.uniform(*LINE_LENGTH_PX), rng.uniform(0, math.pi)
            end = (x + length * math.cos(angle), y + length * math.sin(angle))
            marks.append(Clutter(kind, ((x, y), end), 1.0, color))
        elif kind == "dot":
            marks.append(Clutter(kind, ((x, y),), rng.uniform(*DOT_RADIUS_PX), color))
        else:
            marks.append(Clutter(kind, blob_points(rng, x, y), 0.0, color))
    return tuple(marks)


def blob_points(rng: random.Random, x: float, y: float) -> tuple[Point, ...]:
    """An irregular polygon around (x, y): each vertex at its own share of the radius."""
    n = rng.randint(*BLOB_VERTICES)
    radius = rng.uniform(*BLOB_RADIUS_PX)
    points = []
    for k in range(n):
        angle, r = 2 * math.pi * k / n, radius * rng.uniform(*BLOB_VERTEX_SHARE)
        points.append((x + r * math.cos(angle), y + r * math.sin(angle)))
    return tuple(points)


def plan_look(rng: random.Random, objects: Sequence[SceneObject], *, evaluation: bool) -> Look:
    """Fix every drawing choice of a scene; evaluation scenes get test-only looks."""
    style = TEST_STYLE if evaluation else TRAIN_STYLE
    placements = tuple(place(rng, obj, style=style) for obj in objects)
    background = sample_background(rng, objects, style=style)
    return Look(placements, background, sample_clutter(rng), seed=rng.getrandbits(63))


# ---------------------------------------------------------------------------------------------
# Rasterising
# ---------------------------------------------------------------------------------------------
def polygon_alpha(placement: Placement) -> tuple[np.ndarray, int, int]:
    """Coverage (float32, (h, w), 0..1) of one object's patch and the patch's top-left pixel."""
    xs, ys = [p[0] for p in placement.vertices], [p[1] for p in placement.vertices]
    x0, y0 = math.floor(min(xs)) - PATCH_MARGIN_PX, math.floor(min(ys)) - PATCH_MARGIN_PX
    width = math.ceil(max(xs)) + PATCH_MARGIN_PX - x0
    height = math.ceil(max(ys)) + PATCH_MARGIN_PX - y0
    mask = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    points = [((x - x0) * SUPERSAMPLE, (y - y0) * SUPERSAMPLE) for x, y in placement.vertices]
    draw = ImageDraw.Draw(mask)
    if placement.outline_px > 0:
        draw.polygon(points, outline=255, width=round(placement.outline_px * SUPERSAMPLE))
    else:
        draw.polygon(points, fill=255)
    alpha = np.asarray(mask.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32) / MAX_BYTE
    if not placement.antialias:
        # Hard edges from the same supersampled shape: Pillow's own 1x outlines have ragged joins.
        alpha = (alpha >= ALIAS_THRESHOLD).astype(np.float32)
    return alpha, x0, y0


def object_coverages(objects: Sequence[SceneObject], look: Look) -> list[np.ndarray]:
    """How much of each output pixel every object covers (float32, (IMAGE_SIDE, IMAGE_SIDE), 0..1).

    For checks that captions are true of the pixels; `render` composites the same patches.
    """
    coverages = []
    for _, placement in zip(objects, look.placements, strict=True):
        padded = np.zeros((IMAGE_SIDE + 2 * CANVAS_PAD_PX,) * 2, np.float32)
        alpha, x0, y0 = polygon_alpha(placement)
        top, left = y0 + CANVAS_PAD_PX, x0 + CANVAS_PAD_PX
        padded[top : top + alpha.shape[0], left : left + alpha.shape[1]] = alpha
        coverages.append(padded[CANVAS_PAD_PX:-CANVAS_PAD_PX, CANVAS_PAD_PX:-CANVAS_PAD_PX])
    return coverages


def canvas_coords() -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre x and y of the padded canvas (float32, (h, w) each)."""
    coords = np.arange(IMAGE_SIDE + 2 * CANVAS_PAD_PX, dtype=np.float32) - CANVAS_PAD_PX + 0.5
    return np.meshgrid(coords, coords)


def pattern(background: Background, rng: np.random.Generator) -> np.ndarray:
    """Blend weight of the second colour per pixel (float32, (h, w), 0..1) for a background kind."""
    x, y = canvas_coords()
    along = math.cos(background.angle) * x + math.sin(background.angle) * y
    across = -math.sin(background.angle) * x + math.cos(background.angle) * y
    period = background.period_px
    if background.kind == "flat":
        return np.zeros_like(x)
    if background.kind == "gradient":
        return (along - along.min()) / max(float(along.max() - along.min()), 1.0)
    if background.kind == "radial":
        cx, cy = rng.uniform(0, IMAGE_SIDE, size=2)
        distance = np.hypot(x - cx, y - cy)
        return distance / float(distance.max())
    if background.kind == "stripes":
        return (np.sin(2 * np.pi * along / period) > 0).astype(np.float32)
    if background.kind == "checks":
        return ((np.floor(along / period) + np.floor(across / period)) % 2).astype(np.float32)
    if background.kind == "blotches":
        noise = value_noise(x.shape, rng, grid_px=BLOTCH_GRID_PX)
        level = rng.uniform(*BLOTCH_LEVEL)
        return np.clip((noise - level) / BLOTCH_EDGE + 0.5, 0.0, 1.0)
    return value_noise(x.shape, rng, grid_px=NOISE_GRID_PX)


def value_noise(
    shape: tuple[int, ...], rng: np.random.Generator, *, grid_px: tuple[float, float]
) -> np.ndarray:
    """Random values on a coarse grid, bilinearly upsampled (float32, shape, 0..1)."""
    cell = rng.uniform(*grid_px)
    grid = rng.random((math.ceil(shape[0] / cell) + 2,) * 2).astype(np.float32)
    image = Image.fromarray(grid, mode="F").resize(
        (round(grid.shape[1] * cell), round(grid.shape[0] * cell)), Image.Resampling.BILINEAR
    )
    return np.asarray(image)[: shape[0], : shape[1]]


def background_array(background: Background, rng: np.random.Generator) -> np.ndarray:
    """Padded canvas (float32, (3, h, w)); channel-first so per-channel arithmetic vectorises."""
    weight = pattern(background, rng)  # (h, w)
    first, second = background.colors
    channels = [lo + weight * (hi - lo) for lo, hi in zip(first, second, strict=True)]
    return np.stack(channels).astype(np.float32)


def clutter_alpha(mark: Clutter) -> np.ndarray:
    """Aliased coverage (float32, padded canvas (h, w)) of one clutter mark."""
    side = IMAGE_SIDE + 2 * CANVAS_PAD_PX
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    points = [(x + CANVAS_PAD_PX - 0.5, y + CANVAS_PAD_PX - 0.5) for x, y in mark.points]
    if mark.kind == "line":
        draw.line(points, fill=255, width=round(mark.width))
    elif mark.kind == "dot":
        (x, y), r = points[0], mark.width
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    else:
        draw.polygon(points, fill=255)
    return np.asarray(mask, dtype=np.float32) / MAX_BYTE


def blend(canvas: np.ndarray, alpha: np.ndarray, color: RGB) -> None:
    """Paint `color` over the (3, h, w) canvas region in place, weighted by alpha (h, w)."""
    canvas += alpha[None] * (np.asarray(color, np.float32)[:, None, None] - canvas)


def render(objects: Sequence[SceneObject], look: Look) -> Image.Image:
    """The scene's RGB image; a pure function of its objects and look."""
    rng = np.random.default_rng(look.seed)
    canvas = background_array(look.background, rng)  # (3, h, w)
    for mark in look.clutter:
        blend(canvas, clutter_alpha(mark), mark.color)
    for obj, placement in zip(objects, look.placements, strict=True):
        alpha, x0, y0 = polygon_alpha(placement)  # (ph, pw)
        top, left = y0 + CANVAS_PAD_PX, x0 + CANVAS_PAD_PX
        region = canvas[:, top : top + alpha.shape[0], left : left + alpha.shape[1]]
        blend(region, alpha, COLOR_RGB[obj.color])
    image = canvas[:, CANVAS_PAD_PX:-CANVAS_PAD_PX, CANVAS_PAD_PX:-CANVAS_PAD_PX]
    if look.background.noise_sigma > 0:
        image = image + rng.normal(0.0, look.background.noise_sigma, image.shape)
    pixels = np.clip(np.rint(image), 0, MAX_BYTE).astype(np.uint8).transpose(1, 2, 0)
    return Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")
