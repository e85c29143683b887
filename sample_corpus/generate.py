"""Generate the sample corpus: rendered shape scenes with captions, deterministic per seed.

Run as `python sample_corpus/generate.py --out DIR [--seed 0] [--scale 1.0]`.

The corpus exists so that `make demo` and the default model need no download: every image is a
96x96 scene of coloured shapes on a muted background, and every caption is derived from the
scene's attributes, so captions are always true. The test split is built to measure
generalisation rather than memorisation: it holds (colour, shape) pairs never seen in training,
new background families, slight rotation and size jitter, more JPEG, and paraphrases from
templates that training never uses.

Writes `DIR/images/{split}/{split}_{index:05d}.{png|jpg}`, `DIR/corpus.jsonl` (one line per
(image, caption)) and `DIR/manifest.json`. Uses only the standard library, Pillow and NumPy.
"""

from __future__ import annotations

import argparse
import colorsys
import functools
import json
import math
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

# Bump whenever output bytes change, so `--out` dirs from an older generator are rebuilt.
GENERATOR_VERSION = "1"
GENERATOR_NAME = "mmsearch-sample-corpus"
SPLITS = ("train", "val", "test")

# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------
SHAPES = ("circle", "square", "triangle", "star", "hexagon")
PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "hexagon": "hexagons",
}
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "black", "white")
SIZES = ("small", "large")
# Row-major over the 3x3 grid: index // GRID_CELLS is the row (0 = top), index % GRID_CELLS
# the column.
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
GRID_CELLS = 3
RELATIONS = ("above", "below", "left of", "right of")
INVERSE_RELATION = {
    "above": "below",
    "below": "above",
    "left of": "right of",
    "right of": "left of",
}
COUNT_WORDS = {2: "two", 3: "three"}
VOWELS = frozenset("aeiou")

# Pairs that never occur in train or val, so test can ask about unseen combinations.
HELD_OUT_PAIRS = (
    ("purple", "star"),
    ("orange", "hexagon"),
    ("green", "triangle"),
    ("white", "circle"),
    ("blue", "square"),
)

# Scenes per split and kind at --scale 1.0.
BASE_COUNTS = {
    "train": {"single": 2600, "multi": 1000},
    "val": {"single": 250, "multi": 100},
    "test": {"single": 400, "multi": 150},
}
# Fraction of test scenes (single and multi) that contain a held-out pair.
TEST_UNSEEN_FRACTION = 0.5
# Fraction of multi scenes that repeat one (colour, shape) and are captioned with a count.
COUNT_SCENE_FRACTION = 0.3
MULTI_OBJECT_CHOICES = (2, 3)
SINGLE_PARAPHRASES = 3
MULTI_PARAPHRASES = 2

# ---------------------------------------------------------------------------------------------
# Caption templates. Canonical captions have one fixed form in every split; paraphrases come
# from TRAIN_* templates in train/val and from the disjoint TEST_* templates in test.
# Fields: size, color, shape, position, and `a`, the article that fits before `color`.
# ---------------------------------------------------------------------------------------------
CANONICAL_SINGLE = "a {size} {color} {shape} in the {position}"
TRAIN_SINGLE_TEMPLATES = (
    "there is a {size} {color} {shape} at the {position}",
    "{size} {color} {shape}, {position}",
    "the {position} has a {size} {color} {shape}",
    "a {size} {color} {shape}",
    "{a} {color} {shape} in the {position}",
    "{a} {color} {shape}",
)
TEST_SINGLE_TEMPLATES = (
    "{a} {color} {shape} of {size} size located at the {position}",
    "{position}: one {size} {color} {shape}",
    "in the {position} is a {size} {color} {shape}",
    "a {size} {shape} that is {color}, at the {position}",
    "{a} {color} {shape} that is {size}",
)
# Relation fields: a_full "a small red circle", a_plain "a red circle", a_bare "small red circle"
# (same for b), rel/rev the relation of a to b and its inverse, tail_* the third object or "".
CANONICAL_RELATION = "{a_full} {rel} {b_full}{tail_full}"
TRAIN_RELATION_TEMPLATES = (
    "{b_full} {rev} {a_full}{tail_full}",
    "{a_plain} {rel} {b_plain}{tail_plain}",
    "{b_plain} {rev} {a_plain}{tail_plain}",
)
TEST_RELATION_TEMPLATES = (
    "one {a_bare} located {rel} one {b_bare}{tail_test}",
    "{b_full} with {a_full} {rel} it{tail_test}",
)
TAIL_FULL = ", and {full} in the {position}"
TAIL_PLAIN = ", and {plain}"
TAIL_TEST = "; also one {bare} at the {position}"
# Count fields: count "two", desc_full "small green triangles" (size only when all sizes agree),
# plural, color, by_size "a small green triangle and a large green triangle".
CANONICAL_COUNT = "{count} {desc_full}"
TRAIN_COUNT_TEMPLATES = (
    "there are {count} {desc_full}",
    "{by_size}",
)
TEST_COUNT_TEMPLATES = (
    "{count} {plural}, all {color}",
    "a group of {count} {desc_full}",
)

# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
IMAGE_SIDE = 96
# Draw masks at 4x and downsample with LANCZOS: antialiased edges using Pillow alone.
SUPERSAMPLE = 4
# Nominal diameter as a fraction of the image side, drawn uniformly from the range.
SIZE_FRACTION = {"small": (0.15, 0.18), "large": (0.32, 0.38)}
# Circumradius / nominal radius: squares, stars and triangles reach further than a circle of the
# same visual weight; used to keep objects inside the image and apart from each other.
SHAPE_EXTENT = {"circle": 1.0, "square": 1.22, "triangle": 1.15, "star": 1.15, "hexagon": 1.02}
STAR_INNER_RATIO = 0.45
# Centre jitter in px: small enough that an object never leaves its grid cell.
POSITION_JITTER_PX = 3.0
EDGE_MARGIN_PX = 1.0
MIN_OBJECT_GAP_PX = 2.0
# Rejection sampling of a multi-object layout; far more than ever needed, but bounded.
MAX_LAYOUT_TRIES = 1000
# Extra pixels around an object's patch so the LANCZOS kernel sees its whole edge.
PATCH_MARGIN_PX = 2
# Canvas padding so patches near the border need no clipping.
CANVAS_PAD_PX = 8
# Background value (HSV V) keeps clear of black (15) and white (245) objects.
BACKGROUND_VALUE = (0.35, 0.70)
GRADIENT_VALUE_SPAN = (0.08, 0.20)
# Half the images get mild sensor-like noise; noise-free PNGs stay small and fast to encode.
NOISY_FRACTION = 0.5
NOISE_SIGMA = (1.0, 3.0)
# Noisy 96 px images barely compress: level 6 costs 2.5x the time for files ~15% smaller.
PNG_COMPRESS_LEVEL = 1
# Two processes meet the 30 s budget on a 2-core machine; more cores just finish sooner.
DEFAULT_WORKERS = min(os.cpu_count() or 1, 4)
# fork shares the already-imported module, so workers also run when tests load this file via
# importlib; other platforms have no safe fork and spawn instead.
START_METHOD = "fork" if sys.platform == "linux" else "spawn"
# Scenes per task sent to a worker: large enough to amortise pickling, small enough to balance.
RENDER_CHUNK = 32
# mkdtemp makes 0700 folders; the finished corpus gets ordinary permissions (minus the umask).
DIR_MODE = 0o777
MAX_BYTE = 255.0

# Pure, well separated colours that survive JPEG chroma subsampling on 14+ px objects.
COLOR_RGB = {
    "red": (220, 20, 30),
    "orange": (255, 135, 0),
    "yellow": (255, 225, 0),
    "green": (20, 165, 45),
    "blue": (25, 75, 230),
    "purple": (140, 45, 200),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
}


class BackgroundFamily(NamedTuple):
    """A family of muted backgrounds: hue in degrees, low saturation, optional gradient."""

    name: str
    hue: tuple[float, float]
    saturation: tuple[float, float]
    gradient: bool


# Train and val share flat tints; test gets other hues with gradients, so its renderings are new.
TRAIN_BACKGROUNDS = (
    BackgroundFamily("grey", (0.0, 360.0), (0.0, 0.04), gradient=False),
    BackgroundFamily("beige", (28.0, 45.0), (0.10, 0.20), gradient=False),
    BackgroundFamily("slate", (200.0, 225.0), (0.10, 0.20), gradient=False),
)
TEST_BACKGROUNDS = (
    BackgroundFamily("sage", (85.0, 115.0), (0.10, 0.20), gradient=True),
    BackgroundFamily("mauve", (300.0, 335.0), (0.08, 0.18), gradient=True),
    BackgroundFamily("teal-grey", (165.0, 185.0), (0.10, 0.20), gradient=True),
)


class RenderStyle(NamedTuple):
    """How one split renders: background families, geometric jitter and file formats."""

    backgrounds: tuple[BackgroundFamily, ...]
    max_rotation_deg: float
    size_jitter: float
    jpeg_fraction: float
    jpeg_quality: int


TRAIN_STYLE = RenderStyle(TRAIN_BACKGROUNDS, 0.0, 0.0, jpeg_fraction=0.25, jpeg_quality=90)
TEST_STYLE = RenderStyle(TEST_BACKGROUNDS, 15.0, 0.10, jpeg_fraction=0.5, jpeg_quality=85)
SPLIT_STYLE = {"train": TRAIN_STYLE, "val": TRAIN_STYLE, "test": TEST_STYLE}
SPLIT_TEMPLATES = {"train": "train", "val": "train", "test": "test"}


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------
class SceneObject(NamedTuple):
    """The attributes captions talk about; `position` is one of POSITIONS."""

    shape: str
    color: str
    size: str
    position: str


class Placement(NamedTuple):
    """Where an object is drawn, in output pixels; `extent` is its circumradius."""

    cx: float
    cy: float
    extent: float
    rotation_deg: float


class Background(NamedTuple):
    """Two RGB end colours (equal when flat), the gradient angle and noise sigma (0 = none)."""

    start: tuple[float, float, float]
    end: tuple[float, float, float]
    angle: float
    noise_sigma: float


class Caption(NamedTuple):
    """One caption line; `template` says which template set its phrasing belongs to."""

    text: str
    canonical: bool
    template: str


@dataclass(frozen=True)
class Scene:
    """Everything needed to render one image and write its caption lines, fixed before rendering."""

    split: str
    index: int
    kind: str
    objects: tuple[SceneObject, ...]
    placements: tuple[Placement, ...]
    background: Background
    suffix: str
    noise_seed: int
    captions: tuple[Caption, ...]

    @property
    def relpath(self) -> str:
        """Image path relative to the corpus folder, as written into corpus.jsonl."""
        return f"images/{self.split}/{self.split}_{self.index:05d}.{self.suffix}"

    @property
    def unseen(self) -> bool:
        """True when the scene shows a (colour, shape) pair held out of train and val."""
        return any((o.color, o.shape) in HELD_OUT_PAIRS for o in self.objects)


@dataclass(frozen=True)
class Report:
    """What a run did; `up_to_date` means nothing was written."""

    out: Path
    images: int
    captions: int
    seconds: float
    up_to_date: bool


class GeneratorError(RuntimeError):
    """A problem the caller can fix, e.g. an --out folder that is not a corpus."""


# ---------------------------------------------------------------------------------------------
# Attribute sampling
# ---------------------------------------------------------------------------------------------
def seen_pairs() -> list[tuple[str, str]]:
    """All (colour, shape) pairs allowed in train and val, in vocabulary order."""
    return [(c, s) for c in COLORS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS]


def all_pairs() -> list[tuple[str, str]]:
    """Every (colour, shape) pair, in vocabulary order."""
    return [(c, s) for c in COLORS for s in SHAPES]


def scaled_counts(scale: float) -> dict[str, dict[str, int]]:
    """Scene counts per split and kind; at least one of each so tiny scales stay complete."""
    return {
        split: {kind: max(1, round(n * scale)) for kind, n in kinds.items()}
        for split, kinds in BASE_COUNTS.items()
    }


def balanced_singles(rng: random.Random, pairs: Sequence[tuple[str, str]], *, n: int) -> list[SceneObject]:
    """Single objects that visit every pair once per round and each pair's size/position evenly.

    Every prefix of len(pairs) objects covers all pairs, so every colour and shape occurs even
    at tiny scales; over many rounds each (pair, size, position) combination occurs equally often.
    """
    layouts = [(size, pos) for size in SIZES for pos in POSITIONS]
    queues: dict[tuple[str, str], list[tuple[str, str]]] = {pair: [] for pair in pairs}
    objects: list[SceneObject] = []
    while len(objects) < n:
        order = list(pairs)
        rng.shuffle(order)
        for color, shape in order[: n - len(objects)]:
            queue = queues[(color, shape)]
            if not queue:
                queue.extend(layouts)
                rng.shuffle(queue)
            size, position = queue.pop()
            objects.append(SceneObject(shape, color, size, position))
    return objects


def multi_objects(
    rng: random.Random, pool: Sequence[tuple[str, str]], *, required: tuple[str, str] | None
) -> tuple[SceneObject, ...]:
    """Two or three objects in distinct cells; a count scene repeats one pair, else all differ.

    `required`, when given, is a pair the scene must contain (a held-out pair for unseen tests).
    """
    n = rng.choice(MULTI_OBJECT_CHOICES)
    cells = rng.sample(POSITIONS, n)
    if rng.random() < COUNT_SCENE_FRACTION:
        pairs = [required or rng.choice(pool)] * n
    else:
        fixed = [required] if required else []
        others = [p for p in pool if p != required]
        pairs = fixed + rng.sample(others, n - len(fixed))
        rng.shuffle(pairs)
    return tuple(
        SceneObject(shape, color, rng.choice(SIZES), cell)
        for (color, shape), cell in zip(pairs, cells, strict=True)
    )


def split_objects(
    rng: random.Random, split: str, *, counts: dict[str, int]
) -> list[tuple[str, tuple[SceneObject, ...]]]:
    """(kind, objects) for every scene of a split, singles and multis shuffled together."""
    seen = seen_pairs()
    n_single, n_multi = counts["single"], counts["multi"]
    if split == "test":
        n_unseen = round(n_single * TEST_UNSEEN_FRACTION)
        singles = balanced_singles(rng, HELD_OUT_PAIRS, n=n_unseen)
        singles += balanced_singles(rng, seen, n=n_single - n_unseen)
        n_multi_unseen = round(n_multi * TEST_UNSEEN_FRACTION)
        multis = [
            multi_objects(rng, all_pairs(), required=rng.choice(HELD_OUT_PAIRS))
            for _ in range(n_multi_unseen)
        ]
        multis += [multi_objects(rng, seen, required=None) for _ in range(n_multi - n_multi_unseen)]
    else:
        singles = balanced_singles(rng, seen, n=n_single)
        multis = [multi_objects(rng, seen, required=None) for _ in range(n_multi)]
    scenes = [("single", (obj,)) for obj in singles] + [("multi", objs) for objs in multis]
    rng.shuffle(scenes)
    return scenes


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------
def grid_cell(position: str) -> tuple[int, int]:
    """(row, column) of a position, row 0 at the top."""
    row, col = divmod(POSITIONS.index(position), GRID_CELLS)
    return row, col


def cell_center(position: str) -> tuple[float, float]:
    """Pixel centre (x, y) of a position's grid cell."""
    row, col = grid_cell(position)
    cell = IMAGE_SIDE / GRID_CELLS
    return (col + 0.5) * cell, (row + 0.5) * cell


def place(rng: random.Random, obj: SceneObject, *, style: RenderStyle) -> Placement:
    """Jittered centre, size and rotation for one object, clamped so it stays inside the image."""
    low, high = SIZE_FRACTION[obj.size]
    diameter = rng.uniform(low, high) * IMAGE_SIDE
    diameter *= 1.0 + rng.uniform(-style.size_jitter, style.size_jitter)
    extent = diameter / 2 * SHAPE_EXTENT[obj.shape]
    x, y = cell_center(obj.position)
    lo, hi = extent + EDGE_MARGIN_PX, IMAGE_SIDE - extent - EDGE_MARGIN_PX
    cx = min(max(x + rng.uniform(-POSITION_JITTER_PX, POSITION_JITTER_PX), lo), hi)
    cy = min(max(y + rng.uniform(-POSITION_JITTER_PX, POSITION_JITTER_PX), lo), hi)
    rotation = rng.uniform(-style.max_rotation_deg, style.max_rotation_deg)
    return Placement(cx, cy, extent, rotation)


def overlaps(placements: Sequence[Placement]) -> bool:
    """True when any two objects' circumcircles come closer than MIN_OBJECT_GAP_PX."""
    for i, a in enumerate(placements):
        for b in placements[i + 1 :]:
            if math.hypot(a.cx - b.cx, a.cy - b.cy) < a.extent + b.extent + MIN_OBJECT_GAP_PX:
                return True
    return False


def layout(
    rng: random.Random, objects: tuple[SceneObject, ...], *, style: RenderStyle
) -> tuple[tuple[SceneObject, ...], tuple[Placement, ...]]:
    """Place objects; while any overlap, redraw cells and sizes (keeping colours and shapes)."""
    for _ in range(MAX_LAYOUT_TRIES):
        placements = tuple(place(rng, obj, style=style) for obj in objects)
        if not overlaps(placements):
            return objects, placements
        cells = rng.sample(POSITIONS, len(objects))
        objects = tuple(
            obj._replace(position=cell, size=rng.choice(SIZES))
            for obj, cell in zip(objects, cells, strict=True)
        )
    raise GeneratorError(f"no overlap-free layout in {MAX_LAYOUT_TRIES} tries; check SIZE_FRACTION")


def true_relation(rng: random.Random, a: SceneObject, b: SceneObject) -> str:
    """A relation that holds of a with respect to b, picked at random among the true ones."""
    (ra, ca), (rb, cb) = grid_cell(a.position), grid_cell(b.position)
    options = []
    if ra != rb:
        options.append("above" if ra < rb else "below")
    if ca != cb:
        options.append("left of" if ca < cb else "right of")
    return rng.choice(options)


# ---------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------
def article(word: str) -> str:
    """English indefinite article for the word that follows ('an orange star')."""
    return "an" if word[0] in VOWELS else "a"


def single_fields(obj: SceneObject) -> dict[str, str]:
    """Template fields for a single object."""
    return {**obj._asdict(), "a": article(obj.color)}


def single_captions(rng: random.Random, obj: SceneObject, *, template_set: str) -> tuple[Caption, ...]:
    """The canonical caption plus SINGLE_PARAPHRASES distinct paraphrases from one template set."""
    templates = TRAIN_SINGLE_TEMPLATES if template_set == "train" else TEST_SINGLE_TEMPLATES
    fields = single_fields(obj)
    chosen = rng.sample(templates, SINGLE_PARAPHRASES)
    return (
        Caption(CANONICAL_SINGLE.format(**fields), canonical=True, template="train"),
        *(Caption(t.format(**fields), canonical=False, template=template_set) for t in chosen),
    )


def relation_fields(rng: random.Random, objects: Sequence[SceneObject]) -> dict[str, str]:
    """Template fields for a relation between objects[0] and objects[1], plus the optional third."""
    a, b = objects[0], objects[1]
    rel = true_relation(rng, a, b)
    fields = {"rel": rel, "rev": INVERSE_RELATION[rel]}
    for name, obj in (("a", a), ("b", b)):
        fields[f"{name}_bare"] = f"{obj.size} {obj.color} {obj.shape}"
        fields[f"{name}_full"] = f"a {obj.size} {obj.color} {obj.shape}"
        fields[f"{name}_plain"] = f"{article(obj.color)} {obj.color} {obj.shape}"
    fields |= {"tail_full": "", "tail_plain": "", "tail_test": ""}
    if len(objects) > 2:
        c = objects[2]
        bare = f"{c.size} {c.color} {c.shape}"
        fields["tail_full"] = TAIL_FULL.format(full=f"a {bare}", position=c.position)
        fields["tail_plain"] = TAIL_PLAIN.format(plain=f"{article(c.color)} {c.color} {c.shape}")
        fields["tail_test"] = TAIL_TEST.format(bare=bare, position=c.position)
    return fields


def count_fields(objects: Sequence[SceneObject]) -> dict[str, str]:
    """Template fields for objects that share colour and shape."""
    color, shape, plural = objects[0].color, objects[0].shape, PLURALS[objects[0].shape]
    sizes = [o.size for o in objects]
    uniform = len(set(sizes)) == 1
    by_size = []
    for size in SIZES:
        n = sizes.count(size)
        if n == 1:
            by_size.append(f"a {size} {color} {shape}")
        elif n > 1:
            by_size.append(f"{COUNT_WORDS[n]} {size} {color} {plural}")
    count = COUNT_WORDS[len(objects)]
    return {
        "count": count,
        "color": color,
        "plural": plural,
        "desc_full": f"{sizes[0]} {color} {plural}" if uniform else f"{color} {plural}",
        # With one size the breakdown would repeat the canonical caption, so drop the size instead.
        "by_size": f"{count} {color} {plural}" if uniform else " and ".join(by_size),
    }


def multi_captions(
    rng: random.Random, objects: Sequence[SceneObject], *, template_set: str
) -> tuple[Caption, ...]:
    """Canonical relation or count caption plus MULTI_PARAPHRASES from one template set."""
    templates: Sequence[str]
    if len({(o.color, o.shape) for o in objects}) == 1:
        fields, canonical = count_fields(objects), CANONICAL_COUNT
        templates = TRAIN_COUNT_TEMPLATES if template_set == "train" else TEST_COUNT_TEMPLATES
    else:
        fields, canonical = relation_fields(rng, objects), CANONICAL_RELATION
        templates = TRAIN_RELATION_TEMPLATES if template_set == "train" else TEST_RELATION_TEMPLATES
    chosen = rng.sample(templates, MULTI_PARAPHRASES)
    return (
        Caption(canonical.format(**fields), canonical=True, template="train"),
        *(Caption(t.format(**fields), canonical=False, template=template_set) for t in chosen),
    )


# ---------------------------------------------------------------------------------------------
# Scene assembly
# ---------------------------------------------------------------------------------------------
def hsv_bytes(hue: float, saturation: float, value: float) -> tuple[float, float, float]:
    """HSV in 0..1 to RGB in 0..255 (floats; rounded only once, after noise)."""
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return r * MAX_BYTE, g * MAX_BYTE, b * MAX_BYTE


def sample_background(rng: random.Random, style: RenderStyle) -> Background:
    """A muted background: low saturation, mid value, a gradient only for gradient families."""
    family = rng.choice(style.backgrounds)
    hue = rng.uniform(*family.hue) / 360.0
    sat = rng.uniform(*family.saturation)
    low, high = BACKGROUND_VALUE
    if family.gradient:
        span = rng.uniform(*GRADIENT_VALUE_SPAN)
        v0 = rng.uniform(low, high - span)
        v1 = v0 + span
    else:
        v0 = v1 = rng.uniform(low, high)
    angle = rng.uniform(0.0, 2 * math.pi)
    noise = rng.uniform(*NOISE_SIGMA) if rng.random() < NOISY_FRACTION else 0.0
    return Background(hsv_bytes(hue, sat, v0), hsv_bytes(hue, sat, v1), angle, noise)


def build_scene(
    rng: random.Random, split: str, *, index: int, kind: str, objects: tuple[SceneObject, ...]
) -> Scene:
    """Fix layout, background, format, noise seed and captions of one scene."""
    style = SPLIT_STYLE[split]
    objects, placements = layout(rng, objects, style=style)
    if kind == "single":
        captions = single_captions(rng, objects[0], template_set=SPLIT_TEMPLATES[split])
    else:
        captions = multi_captions(rng, objects, template_set=SPLIT_TEMPLATES[split])
    suffix = "jpg" if rng.random() < style.jpeg_fraction else "png"
    return Scene(
        split=split,
        index=index,
        kind=kind,
        objects=objects,
        placements=placements,
        background=sample_background(rng, style),
        suffix=suffix,
        noise_seed=rng.getrandbits(63),
        captions=captions,
    )


def split_rng(seed: int, split: str) -> random.Random:
    """An independent stream per split; str seeds hash with SHA-512, not Python's salted hash."""
    return random.Random(f"{GENERATOR_NAME}:{seed}:{split}")


def plan_split(seed: int, split: str, *, counts: dict[str, int]) -> list[Scene]:
    """All scenes of one split, deterministic in (seed, split, counts)."""
    rng = split_rng(seed, split)
    return [
        build_scene(rng, split, index=index, kind=kind, objects=objects)
        for index, (kind, objects) in enumerate(split_objects(rng, split, counts=counts))
    ]


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def shape_vertices(shape: str, placement: Placement) -> list[tuple[float, float]]:
    """Polygon vertices in output pixels (y down); circles use 64 vertices."""
    spec = {
        "circle": (64, 0.0, (1.0,)),
        "square": (4, 45.0, (1.0,)),
        "triangle": (3, -90.0, (1.0,)),
        "star": (10, -90.0, (1.0, STAR_INNER_RATIO)),
        "hexagon": (6, 0.0, (1.0,)),
    }
    n, start_deg, radii = spec[shape]
    points = []
    for k in range(n):
        angle = math.radians(start_deg + placement.rotation_deg + 360.0 * k / n)
        r = placement.extent * radii[k % len(radii)]
        points.append((placement.cx + r * math.cos(angle), placement.cy + r * math.sin(angle)))
    return points


def object_alpha(shape: str, placement: Placement) -> tuple[np.ndarray, int, int]:
    """Antialiased coverage (float32, (h, w), 0..1) of one object and its patch's top-left pixel."""
    half = math.ceil(placement.extent) + PATCH_MARGIN_PX
    x0, y0 = math.floor(placement.cx) - half, math.floor(placement.cy) - half
    side = 2 * half + 1
    big = Image.new("L", (side * SUPERSAMPLE, side * SUPERSAMPLE), 0)
    points = [((x - x0) * SUPERSAMPLE, (y - y0) * SUPERSAMPLE) for x, y in shape_vertices(shape, placement)]
    ImageDraw.Draw(big).polygon(points, fill=255)
    small = big.resize((side, side), Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.float32) / MAX_BYTE, x0, y0


def background_array(background: Background) -> np.ndarray:
    """Padded canvas (float32, (3, h, w)); channel-first so per-channel arithmetic vectorises."""
    coords = np.arange(IMAGE_SIDE + 2 * CANVAS_PAD_PX, dtype=np.float32) - CANVAS_PAD_PX
    cos, sin = math.cos(background.angle), math.sin(background.angle)
    along = cos * coords[None, :] + sin * coords[:, None]  # (h, w)
    t = (along - along.min()) / max(float(along.max() - along.min()), 1.0)  # (h, w) in 0..1
    channels = [lo + t * (hi - lo) for lo, hi in zip(background.start, background.end, strict=True)]
    return np.stack(channels).astype(np.float32)


def render(scene: Scene) -> Image.Image:
    """The scene's RGB image; a pure function of the scene, so renders are reproducible."""
    canvas = background_array(scene.background)  # (3, h, w)
    for obj, placement in zip(scene.objects, scene.placements, strict=True):
        alpha, x0, y0 = object_alpha(obj.shape, placement)  # (ph, pw)
        top, left = y0 + CANVAS_PAD_PX, x0 + CANVAS_PAD_PX
        region = canvas[:, top : top + alpha.shape[0], left : left + alpha.shape[1]]
        color = np.asarray(COLOR_RGB[obj.color], np.float32)[:, None, None]
        region += alpha[None] * (color - region)
    image = canvas[:, CANVAS_PAD_PX:-CANVAS_PAD_PX, CANVAS_PAD_PX:-CANVAS_PAD_PX]
    if scene.background.noise_sigma > 0:
        noise_rng = np.random.default_rng(scene.noise_seed)
        image = image + noise_rng.normal(0.0, scene.background.noise_sigma, image.shape)
    pixels = np.clip(np.rint(image), 0, MAX_BYTE).astype(np.uint8).transpose(1, 2, 0)
    return Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")


def save(scene: Scene, root: Path) -> None:
    """Render and write one image in the scene's format."""
    path = root / scene.relpath
    image = render(scene)
    if scene.suffix == "jpg":
        image.save(path, format="JPEG", quality=SPLIT_STYLE[scene.split].jpeg_quality)
    else:
        image.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------
def jsonl_lines(scene: Scene) -> Iterator[str]:
    """One corpus.jsonl line per caption of the scene."""
    objects = [o._asdict() for o in scene.objects]
    for caption in scene.captions:
        record = {
            "image": scene.relpath,
            "caption": caption.text,
            "split": scene.split,
            "kind": scene.kind,
            "canonical": caption.canonical,
            "unseen": scene.unseen,
            "template": caption.template,
            "objects": objects,
        }
        yield json.dumps(record) + "\n"


def manifest(seed: int, scale: float, scenes: dict[str, list[Scene]]) -> dict[str, Any]:
    """The manifest: what was generated and how, so a rerun can tell whether it is up to date."""
    counts = {
        split: {
            "single": sum(s.kind == "single" for s in split_scenes),
            "multi": sum(s.kind == "multi" for s in split_scenes),
            "images": len(split_scenes),
            "captions": sum(len(s.captions) for s in split_scenes),
            "unseen": sum(s.unseen for s in split_scenes),
        }
        for split, split_scenes in scenes.items()
    }
    return {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "seed": seed,
        "scale": scale,
        "splits": list(SPLITS),
        "counts": counts,
        "held_out_pairs": [list(pair) for pair in HELD_OUT_PAIRS],
        "vocabulary": {
            "shapes": list(SHAPES),
            "plurals": PLURALS,
            "colors": list(COLORS),
            "sizes": list(SIZES),
            "positions": list(POSITIONS),
            "relations": list(RELATIONS),
            "counts": list(COUNT_WORDS.values()),
        },
        "templates": {
            "canonical": [CANONICAL_SINGLE, CANONICAL_RELATION, CANONICAL_COUNT],
            "train": [*TRAIN_SINGLE_TEMPLATES, *TRAIN_RELATION_TEMPLATES, *TRAIN_COUNT_TEMPLATES],
            "test": [*TEST_SINGLE_TEMPLATES, *TEST_RELATION_TEMPLATES, *TEST_COUNT_TEMPLATES],
        },
        "image_side": IMAGE_SIDE,
        "corpus": "corpus.jsonl",
    }


def save_all(scenes: Sequence[Scene], root: Path, workers: int) -> None:
    """Render and write every image; the bytes never depend on `workers`, only the time does."""
    save_to = functools.partial(save, root=root)
    if workers <= 1:
        for scene in scenes:
            save_to(scene)
        return
    with multiprocessing.get_context(START_METHOD).Pool(workers) as pool:
        pool.map(save_to, scenes, chunksize=RENDER_CHUNK)


def write_corpus(root: Path, *, seed: int, scale: float, workers: int) -> tuple[int, int]:
    """Plan, render and write every split into `root`; returns (images, captions)."""
    counts = scaled_counts(scale)
    scenes = {split: plan_split(seed, split, counts=counts[split]) for split in SPLITS}
    everything = [scene for split in SPLITS for scene in scenes[split]]
    for split in SPLITS:
        (root / "images" / split).mkdir(parents=True)
    save_all(everything, root, workers)
    with (root / "corpus.jsonl").open("w", encoding="utf-8", newline="\n") as handle:
        for scene in everything:
            handle.writelines(jsonl_lines(scene))
    text = json.dumps(manifest(seed, scale, scenes), indent=2) + "\n"
    (root / "manifest.json").write_text(text, encoding="utf-8")
    return len(everything), sum(len(scene.captions) for scene in everything)


def read_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest in `out`, or None when there is none or it is not this generator's."""
    try:
        data = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("generator") == GENERATOR_NAME else None


def is_up_to_date(out: Path, seed: int, scale: float) -> bool:
    """True when `out` holds a complete corpus from this version with the same seed and scale."""
    data = read_manifest(out)
    if data is None or (data.get("version"), data.get("seed"), data.get("scale")) != (
        GENERATOR_VERSION,
        seed,
        scale,
    ):
        return False
    try:
        with (out / "corpus.jsonl").open(encoding="utf-8") as handle:
            images = {json.loads(line)["image"] for line in handle if line.strip()}
    except (OSError, ValueError, KeyError):
        return False
    expected = sum(c["images"] for c in data.get("counts", {}).values())
    return len(images) == expected and all((out / image).is_file() for image in images)


def replace_dir(tmp: Path, out: Path) -> None:
    """Swap the finished corpus into place; the old one is removed only after the swap."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{time.time_ns()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old)


def check_replaceable(out: Path) -> None:
    """Refuse to replace a folder that is neither empty nor a corpus this generator wrote."""
    if out.exists() and not out.is_dir():
        raise GeneratorError(f"--out {out} is a file; pass a folder path")
    if out.is_dir() and any(out.iterdir()) and read_manifest(out) is None:
        raise GeneratorError(
            f"--out {out} is not empty and holds no sample-corpus manifest.json; "
            "pass a new or empty folder so nothing of yours is replaced"
        )


def current_umask() -> int:
    """The process umask; os offers no read-only getter, so set it and put it back."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def generate(out: Path, *, seed: int = 0, scale: float = 1.0, workers: int = 1) -> Report:
    """Build the corpus in a temp folder beside `out` and swap it in; no-op when up to date."""
    started = time.perf_counter()
    if is_up_to_date(out, seed, scale):
        return Report(out, 0, 0, time.perf_counter() - started, up_to_date=True)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    tmp.chmod(DIR_MODE & ~current_umask())
    try:
        images, captions = write_corpus(tmp, seed=seed, scale=scale, workers=workers)
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return Report(out, images, captions, time.perf_counter() - started, up_to_date=False)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="corpus folder to (re)build")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply scene counts (tests)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="render processes (same bytes)")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be positive")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: generate, print one summary line, return an exit code."""
    args = parse_args(argv)
    try:
        report = generate(args.out, seed=args.seed, scale=args.scale, workers=args.workers)
    except GeneratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if report.up_to_date:
        print(f"{report.out}: up to date")
    else:
        print(f"{report.out}: {report.images} images, {report.captions} captions in {report.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
