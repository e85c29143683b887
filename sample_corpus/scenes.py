"""What a sample-corpus scene shows and what its captions say; no pixels.

This module is the vocabulary both renderers share: which objects a scene holds (shape, colour,
size word, grid position), which pixels a position word names (`cell_box`), how big a size word
allows an object to be (`SIZE_SPAN_PX`), and the captions. Drawing lives in `drawing.py` (the
main renderer) and `shifted.py` (an independent renderer for the shift split); neither shares
code with the other, only these definitions. Nothing here imports Pillow or NumPy.

Captions stay true by construction: every object lies wholly inside its own grid cell and
multi-object scenes use distinct cells, so "above"/"left of", read from grid rows and columns,
also hold of the drawn pixels.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple

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

# ---------------------------------------------------------------------------------------------
# What the words mean in pixels
# ---------------------------------------------------------------------------------------------
IMAGE_SIDE = 96
CELL_SIDE = IMAGE_SIDE / GRID_CELLS
# The longest side of an object's bounding box, in px, that each size word allows. "large"
# tops out below CELL_SIDE so a large object still fits inside its cell; the gap between the
# ranges keeps the two words apart, and "small" stays well above the clutter renderers add.
SIZE_SPAN_PX = {"small": (10.0, 16.0), "large": (21.0, 29.0)}

# ---------------------------------------------------------------------------------------------
# Caption templates. Canonical captions have one fixed form in every split; paraphrases come
# from TRAIN_* templates in train/val and from the disjoint TEST_* templates in test and shift.
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

# Fraction of evaluation scenes (single and multi) that contain a held-out pair.
TEST_UNSEEN_FRACTION = 0.5
# Fraction of multi scenes that repeat one (colour, shape) and are captioned with a count.
COUNT_SCENE_FRACTION = 0.3
MULTI_OBJECT_CHOICES = (2, 3)
SINGLE_PARAPHRASES = 3
MULTI_PARAPHRASES = 2


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------
class SceneObject(NamedTuple):
    """The attributes captions talk about; `position` is one of POSITIONS."""

    shape: str
    color: str
    size: str
    position: str


class Caption(NamedTuple):
    """One caption line; `template` says which template set its phrasing belongs to."""

    text: str
    canonical: bool
    template: str


class Box(NamedTuple):
    """An axis-aligned pixel rectangle, edges in output pixels (y down)."""

    left: float
    top: float
    right: float
    bottom: float


# ---------------------------------------------------------------------------------------------
# Geometry of the words
# ---------------------------------------------------------------------------------------------
def grid_cell(position: str) -> tuple[int, int]:
    """(row, column) of a position, row 0 at the top."""
    row, col = divmod(POSITIONS.index(position), GRID_CELLS)
    return row, col


def cell_box(position: str) -> Box:
    """The pixels a position word names: its grid cell. Objects must lie wholly inside it."""
    row, col = grid_cell(position)
    return Box(col * CELL_SIDE, row * CELL_SIDE, (col + 1) * CELL_SIDE, (row + 1) * CELL_SIDE)


def true_relation(rng: random.Random, a: SceneObject, b: SceneObject) -> str:
    """A relation that holds of a with respect to b, picked at random among the true ones.

    Decided by grid rows and columns; since each object stays inside its own cell, a relation
    that holds of the cells also holds of every drawn pixel of the two objects.
    """
    (ra, ca), (rb, cb) = grid_cell(a.position), grid_cell(b.position)
    options = []
    if ra != rb:
        options.append("above" if ra < rb else "below")
    if ca != cb:
        options.append("left of" if ca < cb else "right of")
    return rng.choice(options)


# ---------------------------------------------------------------------------------------------
# Attribute sampling
# ---------------------------------------------------------------------------------------------
def seen_pairs() -> list[tuple[str, str]]:
    """All (colour, shape) pairs allowed in train and val, in vocabulary order."""
    return [(c, s) for c in COLORS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS]


def all_pairs() -> list[tuple[str, str]]:
    """Every (colour, shape) pair, in vocabulary order."""
    return [(c, s) for c in COLORS for s in SHAPES]


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
    rng: random.Random, *, counts: dict[str, int], evaluation: bool
) -> list[tuple[str, tuple[SceneObject, ...]]]:
    """(kind, objects) for every scene of a split, singles and multis shuffled together.

    Evaluation splits (test, shift) give TEST_UNSEEN_FRACTION of their scenes a held-out pair;
    training splits never show one.
    """
    seen = seen_pairs()
    n_single, n_multi = counts["single"], counts["multi"]
    if evaluation:
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


def scene_captions(
    rng: random.Random, kind: str, objects: Sequence[SceneObject], *, template_set: str
) -> tuple[Caption, ...]:
    """All caption lines of a single or multi scene."""
    if kind == "single":
        return single_captions(rng, objects[0], template_set=template_set)
    return multi_captions(rng, objects, template_set=template_set)
