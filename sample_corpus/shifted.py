"""The shift renderer: the same scenes as `drawing.py`, drawn by independent code.

It measures whether a model learnt the words or one renderer's habits, so it shares no drawing
code with the main renderer and differs from it on purpose wherever the words leave room:
shapes are rasterised from NumPy signed distances, not Pillow polygons, with other proportions
(rounded squares, taller triangles that may point down, fatter stars, pointy-top hexagons) and
wobbly-edge warps; colours are other shades of the named colours with a light-to-dark sheen;
objects favour the edges of their cell and the ends of their size range; backgrounds are
diamond-square plasma, wave interference, rings, marble veins, fine halftone dots or two-tone
splits through palettes of two or three colours, often saturated; clutter is scratches, specks
and squiggles; images may be slightly blurred and carry luminance grain.

Only the scene vocabulary is shared (`scenes.py`): which objects a scene holds, which cell a
position names and what span a size word allows.
"""

from __future__ import annotations

import colorsys
import math
import random
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image

from sample_corpus.scenes import IMAGE_SIDE, SIZE_SPAN_PX, SceneObject, cell_box

RGB = tuple[float, float, float]
Point = tuple[float, float]
MAX_LEVEL = 255.0  # an 8-bit channel at full intensity

# This renderer's own shades of the colour words: close enough to name, not the main renderer's.
SHADES: dict[str, RGB] = {
    "red": (205.0, 35.0, 45.0),
    "orange": (245.0, 120.0, 25.0),
    "yellow": (245.0, 210.0, 30.0),
    "green": (40.0, 150.0, 60.0),
    "blue": (40.0, 90.0, 215.0),
    "purple": (125.0, 55.0, 185.0),
    "black": (28.0, 26.0, 30.0),
    "white": (238.0, 236.0, 228.0),
}
# Objects are lit from above: value drifts by up to this share from top to bottom.
MAX_SHEEN = 0.07

# Object pixels keep this far from their cell's edge, so neighbours never touch.
CELL_GAP_PX = 1.0
# Beta(a, a) with a < 1 favours both ends: objects hug their cell's sides and sizes their ends.
EDGE_LOVING_BETA = 0.5
MAX_TURN_DEG = 20.0
# x/y stretch of up to +-6%, applied in the shape's own frame before it turns.
MAX_ASPECT = 0.06
SQUARE_ROUNDING = (0.0, 0.3)
STAR_POINTS = 5
STAR_INNER = 0.5
CIRCLE_SAMPLES = 48
# Share of triangles that point down; "a triangle" says nothing about which way it points.
DOWN_TRIANGLE_FRACTION = 0.5
WARPED_FRACTION = 0.5
# A warp bends edges by up to 2.5% of the span over a wavelength about the span: wobbly, not torn.
WARP_AMPLITUDE_SHARE = (0.01, 0.025)
WARP_WAVELENGTH_SHARE = (0.8, 1.6)
NO_WARP = (0.0, 1.0, 0.0, 0.0)
CORNER_SAMPLES = 5
RING_FRACTION = 0.2
# Ring width: 2.5 px at least so the colour survives JPEG chroma subsampling, at most a quarter of the span.
RING_MIN_PX = 2.5
RING_MAX_SHARE = 0.25
BORDER_FRACTION = 0.25
BORDER_PX = (0.8, 1.3)
# Below this span a border would take up much of the fill and muddy the colour.
BORDER_MIN_SPAN_PX = 20.0
BORDER_DARKEN = 0.6
# Edge profiles: a one-pixel ramp, a hard step, or a soft ramp this many pixels wide.
EDGES = ("smooth", "smooth", "hard", "soft")
SOFT_RAMP_PX = 1.8

# Background palettes: two or three stops; most colours saturated.
SATURATED_SHARE = 0.65
SATURATION_HIGH = (0.5, 1.0)
SATURATION_LOW = (0.0, 0.5)
PALETTE_VALUE = (0.15, 0.95)
FIELDS = ("plasma", "waves", "rings", "marble", "halftone", "split")
# Weighted RGB ("redmean") distance every palette colour keeps from every object shade on it;
# below ~100 a dark orange ground swallows an orange object and cream swallows white.
MIN_REDMEAN = 110.0
PALETTE_PROBES = 9
MAX_PALETTE_TRIES = 60
NEUTRAL: RGB = (120.0, 124.0, 128.0)
PLASMA_LEVEL = 7  # a 129 px diamond-square grid, cropped to the image
PLASMA_ROUGHNESS = (0.45, 0.7)
WAVE_COUNT = (2, 5)
WAVE_LENGTH_PX = (14.0, 70.0)
RING_LENGTH_PX = (7.0, 30.0)
# Distance of the rings' centre from the image centre, in image sides: always outside.
RING_CENTRE_REACH = (0.75, 1.5)
MARBLE_LENGTH_PX = (10.0, 40.0)
MARBLE_TURBULENCE = (1.0, 4.0)
# Dots at most 4 px across, so the halftone reads as texture, never as small circles.
HALFTONE_PITCH_PX = (3.0, 5.0)
# Dot radius as a share of the pitch, from one side of the image to the other.
HALFTONE_RADIUS = (0.1, 0.4)
# Where the two-tone line crosses, as a share of the side: near the middle, so neither part
# is a corner triangle that could pass for a shape.
SPLIT_OFFSET = (0.42, 0.58)

# Clutter: at most a few thin marks, each far smaller than a small object.
CLUTTER_CHANCE = 0.6
CLUTTER_MARKS = (1, 7)
MARKS = ("scratch", "speck", "squiggle")
SCRATCH_LENGTH_PX = (3.0, 7.0)
SQUIGGLE_LENGTH_PX = (3.5, 6.0)
SQUIGGLE_AMPLITUDE_PX = (0.4, 0.8)
# Two zigzag periods drawn as a polyline of this many segments.
SQUIGGLE_SEGMENTS = 8
MARK_WIDTH_PX = (0.5, 0.9)
SPECK_PIXELS = (1, 3)

BLUR_CHANCE = 0.3
BLUR_SIGMA_PX = (0.35, 0.65)
GRAIN_CHANCE = 0.6
GRAIN_SIGMA = (1.5, 4.5)


class Glyph(NamedTuple):
    """One object as this renderer draws it; lengths in output pixels, angles in radians."""

    shape: str
    center: Point
    scale: float  # pixels per unit of the shape's own frame
    turn: float
    aspect: float  # x is multiplied by (1 + aspect), y divided by it
    flip: bool  # triangles only: apex at the bottom
    rounding: float  # squares only, in units
    warp: tuple[float, float, float, float]  # amplitude px (0 = none), wavelength px, two phases
    ring_px: float  # 0 = filled
    border_px: float  # 0 = none
    edge: str
    sheen: float
    color: RGB


class Mark(NamedTuple):
    """One clutter mark: a polyline of one or more segments, or a speck of single pixels."""

    kind: str
    points: tuple[Point, ...]
    width: float
    color: RGB


class Ground(NamedTuple):
    """A background: a scalar field kind and the palette it is coloured through."""

    field: str
    palette: tuple[RGB, ...]


class Look(NamedTuple):
    """Every drawing choice of one scene; `seed` drives the field, grain and blur."""

    glyphs: tuple[Glyph, ...]
    ground: Ground
    marks: tuple[Mark, ...]
    blur_sigma: float
    grain_sigma: float
    seed: int


# ---------------------------------------------------------------------------------------------
# Shapes in their own frame (unit extent, y down)
# ---------------------------------------------------------------------------------------------
def regular_points(count: int, *, start_deg: float, radii: Sequence[float]) -> np.ndarray:
    """Vertices (float64, (count, 2)) on a circle, radii cycled, starting at `start_deg`."""
    angles = np.radians(start_deg + 360.0 * np.arange(count) / count)
    r = np.resize(np.asarray(radii, np.float64), count)
    return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)


def frame_polygon(shape: str, *, flip: bool) -> np.ndarray:
    """Corners (float64, (n, 2)) of a triangle, star or hexagon, or points around the circle."""
    if shape == "circle":
        return regular_points(CIRCLE_SAMPLES, start_deg=0.0, radii=(1.0,))
    if shape == "triangle":
        apex = 1.0 if flip else -1.0  # as tall as it is wide, taller than equilateral
        return np.array([[0.0, apex], [1.0, -apex], [-1.0, -apex]])
    if shape == "star":
        return regular_points(2 * STAR_POINTS, start_deg=-90.0, radii=(1.0, STAR_INNER))
    if shape == "hexagon":
        return regular_points(6, start_deg=-90.0, radii=(1.0,))  # pointy top
    raise ValueError(f"{shape} has no polygon here")


def frame_outline(glyph: Glyph) -> np.ndarray:
    """Points (float64, (n, 2)) on the drawn edge in the glyph's frame, for its bounding box."""
    if glyph.shape != "square":
        return frame_polygon(glyph.shape, flip=glyph.flip)
    r = glyph.rounding  # a square from -1 to 1 with corners rounded at radius r
    points = []
    for k, (sx, sy) in enumerate(((1, 1), (-1, 1), (-1, -1), (1, -1))):
        for t in np.linspace(0.0, np.pi / 2, CORNER_SAMPLES):
            angle = k * np.pi / 2 + t
            points.append((sx * (1 - r) + r * np.cos(angle), sy * (1 - r) + r * np.sin(angle)))
    return np.asarray(points)


def to_frame(glyph: Glyph, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates to the glyph's own frame (undo warp, shift, turn, stretch and scale)."""
    if glyph.warp[0] > 0:
        amplitude, wavelength, phase_x, phase_y = glyph.warp
        x = x + amplitude * np.sin(2 * np.pi * y / wavelength + phase_x)
        y = y + amplitude * np.sin(2 * np.pi * x / wavelength + phase_y)
    dx, dy = x - glyph.center[0], y - glyph.center[1]
    cos, sin = math.cos(glyph.turn), math.sin(glyph.turn)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    return u / (glyph.scale * (1 + glyph.aspect)), v * (1 + glyph.aspect) / glyph.scale


def polygon_distance(u: np.ndarray, v: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Signed distance to a closed polygon, negative inside (even-odd rule)."""
    best = np.full(u.shape, np.inf)
    inside = np.zeros(u.shape, bool)
    for (ax, ay), (bx, by) in zip(corners, np.roll(corners, -1, axis=0), strict=True):
        ex, ey = bx - ax, by - ay
        wx, wy = u - ax, v - ay
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        best = np.minimum(best, (wx - t * ex) ** 2 + (wy - t * ey) ** 2)
        crosses = (ay > v) != (by > v)
        inside ^= crosses & (u < ax + (v - ay) * ex / np.where(ey == 0, 1.0, ey))
    return np.where(inside, -1.0, 1.0) * np.sqrt(best)


def frame_distance(glyph: Glyph, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance in frame units: exact for circles and rounded squares, else polygonal."""
    if glyph.shape == "circle":
        return np.hypot(u, v) - 1.0
    if glyph.shape == "square":
        r = glyph.rounding
        qx, qy = np.abs(u) - (1.0 - r), np.abs(v) - (1.0 - r)
        outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
        return outside + np.minimum(np.maximum(qx, qy), 0.0) - r
    return polygon_distance(u, v, frame_polygon(glyph.shape, flip=glyph.flip))


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------
def outline_in_pixels(glyph: Glyph) -> np.ndarray:
    """The glyph's bounding outline (float64, (n, 2)) in pixels, relative to its centre."""
    edge = frame_outline(glyph)
    u, v = edge[:, 0] * (1 + glyph.aspect), edge[:, 1] / (1 + glyph.aspect)
    cos, sin = math.cos(glyph.turn), math.sin(glyph.turn)
    return glyph.scale * np.stack([cos * u - sin * v, sin * u + cos * v], axis=1)


def edge_loving(rng: random.Random, low: float, high: float) -> float:
    """A value in [low, high], more often near either end than in the middle."""
    return low + (high - low) * rng.betavariate(EDGE_LOVING_BETA, EDGE_LOVING_BETA)


def glyph_for(rng: random.Random, obj: SceneObject) -> Glyph:
    """Shape proportions, stroke, size and spot inside the cell for one object."""
    glyph = Glyph(
        shape=obj.shape,
        center=(0.0, 0.0),
        scale=1.0,
        turn=math.radians(rng.uniform(-MAX_TURN_DEG, MAX_TURN_DEG)),
        aspect=rng.uniform(-MAX_ASPECT, MAX_ASPECT),
        flip=obj.shape == "triangle" and rng.random() < DOWN_TRIANGLE_FRACTION,
        rounding=rng.uniform(*SQUARE_ROUNDING),
        warp=NO_WARP,
        ring_px=0.0,
        border_px=0.0,
        edge=rng.choice(EDGES),
        sheen=rng.uniform(0.0, MAX_SHEEN),
        color=SHADES[obj.color],
    )
    return fit_in_cell(rng, glyph, obj)


def fit_in_cell(rng: random.Random, glyph: Glyph, obj: SceneObject) -> Glyph:
    """Scale the glyph to an edge-loving span of its size word and put it inside its cell."""
    low, high = SIZE_SPAN_PX[obj.size]
    wobble, warp = 0.0, NO_WARP
    if rng.random() < WARPED_FRACTION:
        wobble = high * rng.uniform(*WARP_AMPLITUDE_SHARE)
        phases = rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi)
        warp = (wobble, high * rng.uniform(*WARP_WAVELENGTH_SHARE), *phases)
    # A warp moves each edge by up to its amplitude either way: keep that far from both ends of
    # the size word's range and from the cell's sides, so the drawn object still honours both.
    span = edge_loving(rng, low + 2 * wobble, high - 2 * wobble)
    outline = outline_in_pixels(glyph)  # glyph.scale is still 1
    scale = span / float(max(np.ptp(outline[:, 0]), np.ptp(outline[:, 1])))
    outline *= scale
    cell, gap = cell_box(obj.position), CELL_GAP_PX + wobble
    cx = edge_loving(rng, cell.left + gap - outline[:, 0].min(), cell.right - gap - outline[:, 0].max())
    cy = edge_loving(rng, cell.top + gap - outline[:, 1].min(), cell.bottom - gap - outline[:, 1].max())
    ring = 0.0
    if rng.random() < RING_FRACTION:
        ring = rng.uniform(RING_MIN_PX, max(RING_MIN_PX, RING_MAX_SHARE * span))
    bordered = not ring and span >= BORDER_MIN_SPAN_PX and rng.random() < BORDER_FRACTION
    border = rng.uniform(*BORDER_PX) if bordered else 0.0
    return glyph._replace(center=(cx, cy), scale=scale, warp=warp, ring_px=ring, border_px=border)


def redmean(a: RGB, b: RGB) -> float:
    """Weighted RGB distance that tracks perceived difference better than plain RGB."""
    mean_red = (a[0] + b[0]) / 2
    dr, dg, db = a[0] - b[0], a[1] - b[1], a[2] - b[2]
    return math.sqrt((2 + mean_red / 256) * dr * dr + 4 * dg * dg + (2 + (255 - mean_red) / 256) * db * db)


def palette_probes(palette: Sequence[RGB]) -> list[RGB]:
    """Colours the palette passes through: its stops and points between them."""
    stops = np.asarray(palette, np.float64)
    positions = np.linspace(0.0, 1.0, len(palette))
    probes = np.linspace(0.0, 1.0, PALETTE_PROBES)
    channels = [np.interp(probes, positions, stops[:, c]) for c in range(3)]
    return [(float(r), float(g), float(b)) for r, g, b in zip(*channels, strict=True)]


def random_color(rng: random.Random) -> RGB:
    """Any hue; mostly saturated; dark to light."""
    high = rng.random() < SATURATED_SHARE
    saturation = rng.uniform(*(SATURATION_HIGH if high else SATURATION_LOW))
    r, g, b = colorsys.hsv_to_rgb(rng.random(), saturation, rng.uniform(*PALETTE_VALUE))
    return r * MAX_LEVEL, g * MAX_LEVEL, b * MAX_LEVEL


def ground_for(rng: random.Random, glyphs: Sequence[Glyph]) -> Ground:
    """A field kind and a palette whose every colour keeps clear of every object's shade."""
    field = rng.choice(FIELDS)
    for _ in range(MAX_PALETTE_TRIES):
        palette = tuple(random_color(rng) for _ in range(rng.choice((2, 3))))
        probes = palette_probes(palette)
        if all(redmean(p, g.color) >= MIN_REDMEAN for p in probes for g in glyphs):
            return Ground(field, palette)
    return Ground(field, (NEUTRAL, NEUTRAL))


def mark_for(rng: random.Random) -> Mark:
    """One scratch, speck or squiggle somewhere in the image."""
    kind = rng.choice(MARKS)
    x, y = rng.uniform(1, IMAGE_SIDE - 1), rng.uniform(1, IMAGE_SIDE - 1)
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.random(), rng.random())
    color = (r * MAX_LEVEL, g * MAX_LEVEL, b * MAX_LEVEL)
    angle = rng.uniform(0, 2 * math.pi)
    if kind == "speck":
        pixels = [(x, y)]
        for _ in range(rng.randint(*SPECK_PIXELS) - 1):
            pixels.append((pixels[-1][0] + rng.choice((-1, 0, 1)), pixels[-1][1] + rng.choice((-1, 0, 1))))
        return Mark(kind, tuple(pixels), 1.0, color)
    width = rng.uniform(*MARK_WIDTH_PX)
    if kind == "scratch":
        length = rng.uniform(*SCRATCH_LENGTH_PX)
        end = (x + length * math.cos(angle), y + length * math.sin(angle))
        return Mark(kind, ((x, y), end), width, color)
    length, amplitude = rng.uniform(*SQUIGGLE_LENGTH_PX), rng.uniform(*SQUIGGLE_AMPLITUDE_PX)
    cos, sin = math.cos(angle), math.sin(angle)
    points = []
    for k in range(SQUIGGLE_SEGMENTS + 1):
        along, off = length * k / SQUIGGLE_SEGMENTS, amplitude * math.sin(4 * math.pi * k / SQUIGGLE_SEGMENTS)
        points.append((x + along * cos - off * sin, y + along * sin + off * cos))
    return Mark(kind, tuple(points), width, color)


def plan_look(rng: random.Random, objects: Sequence[SceneObject], *, evaluation: bool) -> Look:
    """Fix every drawing choice of a scene. One look for all splits: `evaluation` is unused."""
    del evaluation
    glyphs = tuple(glyph_for(rng, obj) for obj in objects)
    ground = ground_for(rng, glyphs)
    cluttered = rng.random() < CLUTTER_CHANCE
    marks = tuple(mark_for(rng) for _ in range(rng.randint(*CLUTTER_MARKS))) if cluttered else ()
    blur = rng.uniform(*BLUR_SIGMA_PX) if rng.random() < BLUR_CHANCE else 0.0
    grain = rng.uniform(*GRAIN_SIGMA) if rng.random() < GRAIN_CHANCE else 0.0
    return Look(glyphs, ground, marks, blur, grain, seed=rng.getrandbits(63))


# ---------------------------------------------------------------------------------------------
# Fields for backgrounds: each (IMAGE_SIDE, IMAGE_SIDE) float64 in 0..1
# ---------------------------------------------------------------------------------------------
def pixel_grid() -> tuple[np.ndarray, np.ndarray]:
    """x and y of every pixel centre (float64, (IMAGE_SIDE, IMAGE_SIDE) each)."""
    centres = np.arange(IMAGE_SIDE, dtype=np.float64) + 0.5
    return np.meshgrid(centres, centres)


def normalised(values: np.ndarray) -> np.ndarray:
    """Stretch values to span 0..1 (a constant field becomes zeros)."""
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def plasma(rng: np.random.Generator) -> np.ndarray:
    """Diamond-square fractal terrain, cropped at random from a 129 px grid."""
    n = 2**PLASMA_LEVEL
    grid = np.full((n + 1, n + 1), np.nan)
    grid[::n, ::n] = rng.random((2, 2))
    step, amplitude, roughness = n, 1.0, rng.uniform(*PLASMA_ROUGHNESS)
    while step > 1:
        diamond_step(grid, rng, step=step, amplitude=amplitude)
        square_step(grid, rng, step=step, amplitude=amplitude)
        step, amplitude = step // 2, amplitude * roughness
    top, left = rng.integers(0, n + 1 - IMAGE_SIDE, size=2)
    return normalised(grid[top : top + IMAGE_SIDE, left : left + IMAGE_SIDE])


def diamond_step(grid: np.ndarray, rng: np.random.Generator, *, step: int, amplitude: float) -> None:
    """Set the centre of every step-sized square to the mean of its corners plus noise."""
    half, squares = step // 2, (grid.shape[0] - 1) // step
    corners = [grid[a::step, b::step][:squares, :squares] for a in (0, step) for b in (0, step)]
    noise = amplitude * rng.uniform(-0.5, 0.5, (squares, squares))
    grid[half::step, half::step] = sum(corners) / 4 + noise


def square_step(grid: np.ndarray, rng: np.random.Generator, *, step: int, amplitude: float) -> None:
    """Set every edge midpoint to the mean of its (up to four) known neighbours plus noise."""
    half, side = step // 2, grid.shape[0]
    padded = np.pad(grid, half, constant_values=np.nan)  # missing neighbours read as NaN
    on, off = np.arange(0, side, step), np.arange(half, side, step)
    for rows, cols in ((off, on), (on, off)):
        r, c = np.meshgrid(rows + half, cols + half, indexing="ij")  # padded coordinates
        around = [padded[r - half, c], padded[r + half, c], padded[r, c - half], padded[r, c + half]]
        noise = amplitude * rng.uniform(-0.5, 0.5, r.shape)
        grid[r - half, c - half] = np.nanmean(np.stack(around), axis=0) + noise


def waves(rng: np.random.Generator) -> np.ndarray:
    """Interference of a few plane waves of random direction, length and phase."""
    x, y = pixel_grid()
    total = np.zeros_like(x)
    for _ in range(rng.integers(WAVE_COUNT[0], WAVE_COUNT[1] + 1)):
        angle, length = rng.uniform(0, np.pi), rng.uniform(*WAVE_LENGTH_PX)
        along = x * np.cos(angle) + y * np.sin(angle)
        total += np.sin(2 * np.pi * along / length + rng.uniform(0, 2 * np.pi))
    return normalised(total)


def rings(rng: np.random.Generator) -> np.ndarray:
    """Concentric arcs around a centre outside the image (inside, the bullseye is a disc)."""
    x, y = pixel_grid()
    angle, reach = rng.uniform(0, 2 * np.pi), rng.uniform(*RING_CENTRE_REACH) * IMAGE_SIDE
    cx, cy = IMAGE_SIDE / 2 + reach * np.cos(angle), IMAGE_SIDE / 2 + reach * np.sin(angle)
    return 0.5 + 0.5 * np.sin(2 * np.pi * np.hypot(x - cx, y - cy) / rng.uniform(*RING_LENGTH_PX))


def marble(rng: np.random.Generator) -> np.ndarray:
    """Veins: a plane wave whose phase is pushed around by plasma turbulence."""
    x, y = pixel_grid()
    angle, length = rng.uniform(0, np.pi), rng.uniform(*MARBLE_LENGTH_PX)
    phase = 2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / length
    return 0.5 + 0.5 * np.sin(phase + rng.uniform(*MARBLE_TURBULENCE) * 2 * np.pi * plasma(rng))


def halftone(rng: np.random.Generator) -> np.ndarray:
    """A turned grid of dots whose radius grows across the image."""
    x, y = pixel_grid()
    pitch, angle = rng.uniform(*HALFTONE_PITCH_PX), rng.uniform(0, np.pi)
    u, v = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
    du, dv = (u % pitch) - pitch / 2, (v % pitch) - pitch / 2
    radius = pitch * (HALFTONE_RADIUS[0] + (HALFTONE_RADIUS[1] - HALFTONE_RADIUS[0]) * normalised(u))
    return np.clip(radius - np.hypot(du, dv) + 0.5, 0.0, 1.0)


def split(rng: np.random.Generator) -> np.ndarray:
    """Two regions divided by a straight line anywhere across the image."""
    x, y = pixel_grid()
    angle = rng.uniform(0, 2 * np.pi)
    middle = IMAGE_SIDE / 2
    along = (x - middle) * np.cos(angle) + (y - middle) * np.sin(angle) + middle
    return np.clip(along - rng.uniform(*SPLIT_OFFSET) * IMAGE_SIDE + 0.5, 0.0, 1.0)


FIELD_MAKERS = {
    "plasma": plasma,
    "waves": waves,
    "rings": rings,
    "marble": marble,
    "halftone": halftone,
    "split": split,
}


def paint_ground(ground: Ground, rng: np.random.Generator) -> np.ndarray:
    """The background (float64, (IMAGE_SIDE, IMAGE_SIDE, 3)): its field through its palette."""
    field = FIELD_MAKERS[ground.field](rng)
    stops = np.asarray(ground.palette, np.float64)
    positions = np.linspace(0.0, 1.0, len(stops))
    return np.stack([np.interp(field, positions, stops[:, c]) for c in range(3)], axis=-1)


# ---------------------------------------------------------------------------------------------
# Rasterising
# ---------------------------------------------------------------------------------------------
def edge_coverage(distance_px: np.ndarray, edge: str) -> np.ndarray:
    """Coverage 0..1 from a signed distance in pixels, by edge profile."""
    if edge == "hard":
        return (distance_px < 0).astype(np.float64)
    ramp = SOFT_RAMP_PX if edge == "soft" else 1.0
    return np.clip(0.5 - distance_px / ramp, 0.0, 1.0)


def glyph_distance(glyph: Glyph, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Approximate signed distance in pixels from the glyph's edge."""
    u, v = to_frame(glyph, x, y)
    shrink = min(1 + glyph.aspect, 1 / (1 + glyph.aspect))
    return frame_distance(glyph, u, v) * glyph.scale * shrink


def glyph_layers(glyph: Glyph, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, border share) over the given pixels; the border is the inner rim of a fill."""
    distance = glyph_distance(glyph, x, y)
    if glyph.ring_px > 0:
        distance = np.maximum(distance, -(distance + glyph.ring_px))
    coverage = edge_coverage(distance, glyph.edge)
    if not glyph.border_px:
        return coverage, np.zeros_like(coverage)
    return coverage, edge_coverage(-(distance + glyph.border_px), "smooth")


def cell_pixels(position: str) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Row and column slices of a position's cell and the pixel-centre x, y inside it."""
    cell = cell_box(position)
    rows = slice(math.floor(cell.top), math.ceil(cell.bottom))
    cols = slice(math.floor(cell.left), math.ceil(cell.right))
    x, y = np.meshgrid(np.arange(cols.start, cols.stop) + 0.5, np.arange(rows.start, rows.stop) + 0.5)
    return rows, cols, x, y


def object_coverages(objects: Sequence[SceneObject], look: Look) -> list[np.ndarray]:
    """How much of each pixel every object covers (float32, (IMAGE_SIDE, IMAGE_SIDE), 0..1)."""
    coverages = []
    for obj, glyph in zip(objects, look.glyphs, strict=True):
        rows, cols, x, y = cell_pixels(obj.position)
        full = np.zeros((IMAGE_SIDE, IMAGE_SIDE), np.float32)
        full[rows, cols] = glyph_layers(glyph, x, y)[0]
        coverages.append(full)
    return coverages


def paint_glyph(image: np.ndarray, obj: SceneObject, glyph: Glyph) -> None:
    """Composite one object into its cell of the (h, w, 3) image in place."""
    rows, cols, x, y = cell_pixels(obj.position)
    coverage, border = glyph_layers(glyph, x, y)
    lit = 1.0 + glyph.sheen * (glyph.center[1] - y) / max(glyph.scale, 1.0)  # lighter above centre
    color = np.clip(np.asarray(glyph.color)[None, None, :] * lit[..., None], 0.0, MAX_LEVEL)
    color = color + border[..., None] * (color * BORDER_DARKEN - color)
    region = image[rows, cols]
    region += coverage[..., None] * (color - region)


def segment_distance(x: np.ndarray, y: np.ndarray, a: Point, b: Point) -> np.ndarray:
    """Distance in pixels from each pixel centre to the segment a-b."""
    ex, ey = b[0] - a[0], b[1] - a[1]
    wx, wy = x - a[0], y - a[1]
    t = np.clip((wx * ex + wy * ey) / max(ex * ex + ey * ey, 1e-9), 0.0, 1.0)
    return np.hypot(wx - t * ex, wy - t * ey)


def paint_mark(image: np.ndarray, mark: Mark) -> None:
    """Composite one clutter mark into the (h, w, 3) image in place."""
    color = np.asarray(mark.color)
    if mark.kind == "speck":
        for px, py in mark.points:
            row, col = min(max(int(py), 0), IMAGE_SIDE - 1), min(max(int(px), 0), IMAGE_SIDE - 1)
            image[row, col] = color
        return
    x, y = pixel_grid()
    segments = zip(mark.points[:-1], mark.points[1:], strict=True)
    distance = np.min([segment_distance(x, y, a, b) for a, b in segments], axis=0)
    coverage = np.clip(mark.width / 2 + 0.5 - distance, 0.0, 1.0)
    image += coverage[..., None] * (color - image)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (h, w, 3) image, edges extended."""
    radius = max(1, math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (0, 1):
        padded = np.pad(image, [(radius, radius) if a == axis else (0, 0) for a in range(3)], mode="edge")
        image = sum(w * np.take(padded, np.arange(k, k + IMAGE_SIDE), axis=axis) for k, w in enumerate(taps))
    return image


def render(objects: Sequence[SceneObject], look: Look) -> Image.Image:
    """The scene's RGB image; a pure function of its objects and look."""
    rng = np.random.default_rng(look.seed)
    image = paint_ground(look.ground, rng)  # (h, w, 3)
    for mark in look.marks:
        paint_mark(image, mark)
    for obj, glyph in zip(objects, look.glyphs, strict=True):
        paint_glyph(image, obj, glyph)
    if look.blur_sigma > 0:
        image = gaussian_blur(image, look.blur_sigma)
    if look.grain_sigma > 0:
        image = image + rng.normal(0.0, look.grain_sigma, image.shape[:2])[..., None]
    return Image.fromarray(np.clip(np.rint(image), 0, MAX_LEVEL).astype(np.uint8), mode="RGB")
