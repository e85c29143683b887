"""The sample-corpus generator: counts, true captions, held-out pairs, determinism, reruns,
diverse drawing, and a shift split from an independent renderer.

The generator is a script, not a package module, so it is loaded from its file path. One tiny
corpus (--scale 0.05, about 250 images) is built per module and shared by the read-only tests;
pixel checks re-plan the same scenes to learn where each object was drawn, then read the files.
"""

from __future__ import annotations

import ast
import colorsys
import contextlib
import importlib.util
import io
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image

SAMPLE_CORPUS = Path(__file__).resolve().parents[1] / "sample_corpus"
GENERATOR_PATH = SAMPLE_CORPUS / "generate.py"
SCALE = 0.05
# max(1, round(base * 0.05)) of (2600, 1000), (250, 100), (400, 150) and shift like test; Python
# rounds halves to even.
EXPECTED_COUNTS = {
    "train": {"single": 130, "multi": 50},
    "val": {"single": 12, "multi": 5},
    "test": {"single": 20, "multi": 8},
    "shift": {"single": 20, "multi": 8},
}
SPLITS = tuple(EXPECTED_COUNTS)
EVALUATION_SPLITS = ("test", "shift")
MIN_SIDE = 96
# Written out here rather than imported, so a bug in the generator's vocabulary shows up.
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "black", "white")
SHAPES = ("circle", "square", "triangle", "star", "hexagon")
GRID = {
    "top left": (0, 0), "top": (0, 1), "top right": (0, 2),
    "left": (1, 0), "center": (1, 1), "right": (1, 2),
    "bottom left": (2, 0), "bottom": (2, 1), "bottom right": (2, 2),
}  # fmt: skip
HELD_OUT = {
    ("purple", "star"),
    ("orange", "hexagon"),
    ("green", "triangle"),
    ("white", "circle"),
    ("blue", "square"),
}
NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}

IMAGE_SIDE = 96
CELL = IMAGE_SIDE // 3
# Longest side of an object's bounding box that each size word allows, in px, give or take the
# pixel an edge may straddle. The old renderer drew small circles 14-17 px and large 31-36 px.
SIZE_SPAN = {"small": (10, 16), "large": (21, 29)}
PIXEL_SLACK = 1
# Reference shades of the colour words: every object's pixels must be nearest its own word.
REFERENCE_RGB = {
    "red": (220, 30, 35),
    "orange": (250, 130, 10),
    "yellow": (250, 220, 10),
    "green": (30, 160, 50),
    "blue": (30, 80, 225),
    "purple": (135, 50, 195),
    "black": (20, 20, 20),
    "white": (240, 240, 240),
}
# A pixel this fully covered by an object shows the object's colour, not its edge.
SOLID_COVERAGE = 0.99
# A pixel at least half covered counts toward an object's bounding box.
DRAWN_COVERAGE = 0.5
# Anything drawn this faintly lies outside the object: the cell edge may be crossed only below it.
FAINT_COVERAGE = 0.25
# Background pixels next to an object stay at least this far (RGB) from its colour word, bar a
# few clutter marks; without the renderers' rejection of close backgrounds it drops to ~22.
MIN_BACKGROUND_DISTANCE = 35.0
BACKGROUND_PERCENTILE = 5
CLEAR_BACKGROUND_COUNTS = {"single": 150, "multi": 100}
# Small objects used to sit within 3 px of the cell centre; now they roam the cell (~+-10 px).
MIN_CENTRE_REACH_PX = 7.0
MIN_CENTRE_STD_PX = 3.5
SATURATED = 0.5
MIN_SATURATED_SHARE = 0.2
HUE_SECTORS = 6
MIN_HUE_SECTORS = 5
# Interquartile range of background luminance above which a background is a gradient or
# texture: sensor noise alone (sigma <= 4) stays near 5.
TEXTURED_IQR = 12.0
MIN_TEXTURED_SHARE = 0.3
# A clutter mark visibly changes at most this many pixels; the smallest small object covers ~35.
MAX_MARK_PIXELS = 16
VISIBLE_CHANGE = 16
# Modules the shift renderer may import, and what it may take from the shared vocabulary.
SHIFTED_MAY_IMPORT = {"__future__", "colorsys", "math", "random", "collections.abc", "typing", "numpy"}
SHIFTED_MAY_TAKE = {
    "PIL": {"Image"},
    "sample_corpus.scenes": {
        "IMAGE_SIDE", "CELL_SIDE", "GRID_CELLS", "SIZE_SPAN_PX", "SHAPES", "COLORS", "SIZES",
        "POSITIONS", "SceneObject", "Box", "cell_box", "grid_cell",
    },
}  # fmt: skip

_COLOR = "|".join(COLORS)
_SHAPE = "|".join(SHAPES)
# Longest alternatives first so "top left" is not read as "top".
_POSITION = "|".join(sorted(GRID, key=len, reverse=True))
_REL = "above|below|left of|right of"
CANONICAL_SINGLE = re.compile(rf"^a (small|large) ({_COLOR}) ({_SHAPE}) in the ({_POSITION})$")
_OBJ = rf"(?:a|an|one) (?:(small|large) )?({_COLOR}) ({_SHAPE})"
# "X rel Y" and "one X located rel one Y": X stands in the relation to Y.
FORWARD = re.compile(rf"^{_OBJ}(?: located)? ({_REL}) {_OBJ}(?:,|;|$)")
# "Y with X rel it": X stands in the relation to Y.
WITH_IT = re.compile(rf"^{_OBJ} with {_OBJ} ({_REL}) it(?:;|$)")
THIRD = re.compile(rf"(?:, and|; also one) .*?({_COLOR}) ({_SHAPE})(?: (?:in|at) the ({_POSITION}))?$")
COUNTED = re.compile(rf"\b(a|an|one|two|three) (?:(?:small|large) )?(?:(?:{_COLOR}) )?(?:{_SHAPE})s?\b")

Record = dict[str, Any]
# (size or None, colour, shape) of an object as a caption names it.
Named = tuple[str | None, str, str]
# One drawn object: its attributes, its coverage (float32, (96, 96), 0..1) and the image (96, 96, 3).
Drawn = tuple[Record, np.ndarray, np.ndarray]


def load_generator() -> ModuleType:
    """Import sample_corpus/generate.py by path; registered so worker processes can find it."""
    spec = importlib.util.spec_from_file_location("sample_corpus_generate", GENERATOR_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run(gen: ModuleType, out: Path, *extra: str) -> tuple[int, str]:
    """Run the generator's CLI entry point; returns (exit code, stdout)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = gen.main(["--out", str(out), "--scale", str(SCALE), *extra])
    return code, buffer.getvalue()


def read_records(corpus: Path) -> list[Record]:
    """corpus.jsonl as a list of dicts."""
    lines = (corpus / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def by_image(records: list[Record]) -> dict[str, list[Record]]:
    """Caption records grouped by image path, in file order."""
    grouped: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        grouped[record["image"]].append(record)
    return grouped


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return load_generator()


@pytest.fixture(scope="module")
def corpus(gen: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "sample"
    code, stdout = run(gen, out, "--workers", "2")
    assert code == 0, stdout
    assert "images" in stdout and "captions" in stdout
    return out


@pytest.fixture(scope="module")
def records(corpus: Path) -> list[Record]:
    return read_records(corpus)


@pytest.fixture(scope="module")
def images(records: list[Record]) -> dict[str, list[Record]]:
    return by_image(records)


@pytest.fixture(scope="module")
def drawn(gen: ModuleType, corpus: Path) -> dict[str, list[list[Drawn]]]:
    """Per split, per scene on disk: each object with its coverage and the decoded image."""
    counts = gen.scaled_counts(SCALE)
    out: dict[str, list[list[Drawn]]] = {}
    for split in SPLITS:
        out[split] = []
        for scene in gen.plan_split(0, split, counts=counts[split]):
            with Image.open(corpus / scene.relpath) as image:
                pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
            coverages = gen.object_coverages(scene)
            objects = [o._asdict() for o in scene.objects]
            out[split].append([(o, c, pixels) for o, c in zip(objects, coverages, strict=True)])
    return out


def cell_of(position: str) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) pixel bounds of a position's grid cell, bottom/right exclusive."""
    row, col = GRID[position]
    return row * CELL, col * CELL, (row + 1) * CELL, (col + 1) * CELL


def bounds(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the True pixels, bottom/right exclusive."""
    rows, cols = np.nonzero(mask)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def span(coverage: np.ndarray) -> int:
    """Longest side, in px, of the bounding box of the pixels an object mostly covers."""
    top, left, bottom, right = bounds(coverage >= DRAWN_COVERAGE)
    return max(bottom - top, right - left)


def nearest_color(rgb: np.ndarray) -> str:
    """The colour word whose reference shade is nearest."""
    return min(REFERENCE_RGB, key=lambda name: float(np.linalg.norm(rgb - REFERENCE_RGB[name])))


def background_pixels(scene: list[Drawn]) -> np.ndarray:
    """(n, 3) pixels of a scene that no object touches."""
    touched = np.max([coverage for _, coverage, _ in scene], axis=0) > 0
    return scene[0][2][~touched]


def test_counts_per_split_and_kind(corpus: Path, images: dict[str, list[Record]]) -> None:
    counted: dict[str, dict[str, int]] = {s: {"single": 0, "multi": 0} for s in EXPECTED_COUNTS}
    for recs in images.values():
        counted[recs[0]["split"]][recs[0]["kind"]] += 1
    assert counted == EXPECTED_COUNTS
    manifest = json.loads((corpus / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["splits"] == ["train", "val", "test", "shift"]
    assert manifest["seed"] == 0 and manifest["scale"] == SCALE
    assert manifest["style"] == "main"
    assert manifest["renderers"] == {"train": "main", "val": "main", "test": "main", "shift": "shifted"}
    for split, kinds in EXPECTED_COUNTS.items():
        assert {k: manifest["counts"][split][k] for k in kinds} == kinds
        on_disk = list((corpus / "images" / split).iterdir())
        assert len(on_disk) == sum(kinds.values())


def test_records_are_consistent_per_image(images: dict[str, list[Record]]) -> None:
    for path, recs in images.items():
        split = recs[0]["split"]
        assert re.fullmatch(rf"images/{split}/{split}_\d{{5}}\.(png|jpg)", path)
        for key in ("split", "kind", "unseen", "objects"):
            assert len({json.dumps(r[key]) for r in recs}) == 1, (path, key)
        expected_lines = 4 if recs[0]["kind"] == "single" else 3
        assert len(recs) == expected_lines, path
        assert len({r["caption"] for r in recs}) == len(recs), f"{path}: repeated caption"


def test_every_image_opens_at_full_size(corpus: Path, images: dict[str, list[Record]]) -> None:
    suffixes = set()
    for path in images:
        with Image.open(corpus / path) as image:
            image.load()
            assert image.mode == "RGB"
            assert image.width >= MIN_SIDE and image.height >= MIN_SIDE
        suffixes.add(Path(path).suffix)
    assert suffixes == {".png", ".jpg"}


def test_single_images_have_one_true_canonical_caption(images: dict[str, list[Record]]) -> None:
    for path, recs in images.items():
        if recs[0]["kind"] != "single":
            continue
        canonical = [r["caption"] for r in recs if r["canonical"]]
        assert len(canonical) == 1, path
        match = CANONICAL_SINGLE.match(canonical[0])
        assert match, canonical[0]
        (obj,) = recs[0]["objects"]
        assert match.groups() == (obj["size"], obj["color"], obj["shape"], obj["position"])


def test_held_out_pairs_only_in_evaluation_splits(images: dict[str, list[Record]]) -> None:
    unseen_counts = {split: {"single": 0, "multi": 0} for split in EVALUATION_SPLITS}
    for recs in images.values():
        pairs = {(o["color"], o["shape"]) for o in recs[0]["objects"]}
        unseen = bool(pairs & HELD_OUT)
        assert recs[0]["unseen"] == unseen
        if recs[0]["split"] in EVALUATION_SPLITS:
            unseen_counts[recs[0]["split"]][recs[0]["kind"]] += unseen
        else:
            assert not unseen, recs[0]
    # About half the test and shift scenes of each kind show a held-out pair.
    for split, kinds in unseen_counts.items():
        for kind, n in kinds.items():
            assert 0 < n < EXPECTED_COUNTS[split][kind], (split, kind)


def test_every_colour_and_shape_is_trained(images: dict[str, list[Record]]) -> None:
    train = [o for recs in images.values() if recs[0]["split"] == "train" for o in recs[0]["objects"]]
    assert {o["color"] for o in train} == set(COLORS)
    assert {o["shape"] for o in train} == set(SHAPES)


def find(objects: list[Record], size: str | None, color: str, shape: str) -> Record:
    """The one object a relation caption names (relation scenes never repeat colour+shape)."""
    found = [o for o in objects if (o["color"], o["shape"]) == (color, shape)]
    assert len(found) == 1, (color, shape, objects)
    assert size in (None, found[0]["size"])
    return found[0]


def relation_holds(first: Record, relation: str, second: Record) -> bool:
    """Grid truth: above/below need strictly different rows, left/right different columns."""
    (r1, c1), (r2, c2) = GRID[first["position"]], GRID[second["position"]]
    return {"above": r1 < r2, "below": r1 > r2, "left of": c1 < c2, "right of": c1 > c2}[relation]


def parse_relation(caption: str) -> tuple[Named, str, Named]:
    """(first object, relation, second object) from any relation caption template."""
    if match := FORWARD.match(caption):
        g = match.groups()
        return (g[0], g[1], g[2]), g[3], (g[4], g[5], g[6])
    match = WITH_IT.match(caption)
    assert match, f"no relation parsed from {caption!r}"
    g = match.groups()
    return (g[3], g[4], g[5]), g[6], (g[0], g[1], g[2])


def check_third(caption: str, objects: list[Record]) -> None:
    """A three-object relation caption names the third object, and its position when given."""
    match = THIRD.search(caption)
    assert match, f"third object missing from {caption!r}"
    color, shape, position = match.groups()
    third = find(objects, None, color, shape)
    assert position in (None, third["position"])


def check_count(caption: str, objects: list[Record]) -> None:
    """Count captions name the shared colour and shape and add up to the number of objects."""
    assert len({(o["color"], o["shape"]) for o in objects}) == 1
    assert objects[0]["color"] in caption and objects[0]["shape"] in caption
    total = sum(NUMBERS[m.group(1)] for m in COUNTED.finditer(caption))
    assert total == len(objects), caption


def test_multi_captions_are_true(images: dict[str, list[Record]]) -> None:
    relations = 0
    for recs in images.values():
        objects = recs[0]["objects"]
        if recs[0]["kind"] != "multi":
            continue
        assert len(objects) in (2, 3)
        assert len({o["position"] for o in objects}) == len(objects)
        for caption in (r["caption"] for r in recs):
            if not re.search(rf"\b({_REL})\b", caption):
                check_count(caption, objects)
                continue
            relations += 1
            first, relation, second = parse_relation(caption)
            assert relation_holds(find(objects, *first), relation, find(objects, *second)), caption
            if len(objects) == 3:
                check_third(caption, objects)
    assert relations > 0


def test_test_paraphrases_use_unseen_templates(records: list[Record]) -> None:
    train_captions = {r["caption"] for r in records if r["split"] == "train"}
    for record in records:
        expected = "test" if record["split"] in EVALUATION_SPLITS and not record["canonical"] else "train"
        assert record["template"] == expected
        if record["template"] == "test":
            assert record["caption"] not in train_captions


def test_same_seed_gives_identical_bytes(gen: ModuleType, corpus: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    code, _ = run(gen, again, "--workers", "1")
    assert code == 0
    assert (again / "corpus.jsonl").read_bytes() == (corpus / "corpus.jsonl").read_bytes()
    for split in SPLITS:
        for path in sorted((corpus / "images" / split).iterdir())[:4]:
            assert (again / "images" / split / path.name).read_bytes() == path.read_bytes()


def test_other_seed_differs(gen: ModuleType, corpus: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    code, _ = run(gen, other, "--seed", "1", "--workers", "1")
    assert code == 0
    assert (other / "corpus.jsonl").read_bytes() != (corpus / "corpus.jsonl").read_bytes()


def test_second_run_is_up_to_date(gen: ModuleType, corpus: Path) -> None:
    before = (corpus / "corpus.jsonl").stat().st_mtime_ns
    code, stdout = run(gen, corpus)
    assert code == 0
    assert "up to date" in stdout
    assert (corpus / "corpus.jsonl").stat().st_mtime_ns == before


def test_missing_image_triggers_rebuild(gen: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "sample"
    assert run(gen, out, "--workers", "1")[0] == 0
    victim = next((out / "images" / "val").iterdir())
    victim.unlink()
    code, stdout = run(gen, out, "--workers", "1")
    assert code == 0 and "up to date" not in stdout
    assert victim.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp dirs left behind"


def test_refuses_to_replace_a_foreign_folder(gen: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    with contextlib.redirect_stderr(io.StringIO()):
        code, _ = run(gen, out)
    assert code != 0
    assert (out / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_objects_lie_inside_their_own_cell(drawn: dict[str, list[list[Drawn]]]) -> None:
    """All of an object stays in the cell its position names, so relations hold of the pixels.

    The cell's outermost pixels stay clear too: an object reaching them could meet its neighbour
    or be cut off by a renderer that draws each object only within its cell.
    """
    for split, scenes in drawn.items():
        for scene in scenes:
            for obj, coverage, _ in scene:
                top, left, bottom, right = bounds(coverage >= FAINT_COVERAGE)
                cell_top, cell_left, cell_bottom, cell_right = cell_of(obj["position"])
                assert cell_top < top and bottom < cell_bottom, (split, obj)
                assert cell_left < left and right < cell_right, (split, obj)


@pytest.mark.parametrize("split", ["train", "shift"])
def test_small_objects_roam_their_whole_cell(drawn: dict[str, list[list[Drawn]]], split: str) -> None:
    offsets = []
    for scene in drawn[split]:
        for obj, coverage, _ in scene:
            if obj["size"] == "small":
                top, left, bottom, right = bounds(coverage >= DRAWN_COVERAGE)
                cell_top, cell_left, cell_bottom, cell_right = cell_of(obj["position"])
                dx = (left + right - cell_left - cell_right) / 2
                dy = (top + bottom - cell_top - cell_bottom) / 2
                offsets.append((dx, dy))
    spread = np.asarray(offsets)  # (objects, 2): x and y of box centre minus cell centre
    assert (spread.min(axis=0) <= -MIN_CENTRE_REACH_PX).all(), spread.min(axis=0)
    assert (spread.max(axis=0) >= MIN_CENTRE_REACH_PX).all(), spread.max(axis=0)
    assert (spread.std(axis=0) >= MIN_CENTRE_STD_PX).all(), spread.std(axis=0)


@pytest.mark.parametrize("split", ["train", "shift"])
def test_sizes_span_what_each_size_word_allows(drawn: dict[str, list[list[Drawn]]], split: str) -> None:
    spans: dict[str, list[int]] = {size: [] for size in SIZE_SPAN}
    for scene in drawn[split]:
        for obj, coverage, _ in scene:
            spans[obj["size"]].append(span(coverage))
    for size, (low, high) in SIZE_SPAN.items():
        assert low - PIXEL_SLACK <= min(spans[size]) and max(spans[size]) <= high + PIXEL_SLACK, size
        # Both ends of the range are drawn, not one typical size.
        assert min(spans[size]) <= low + 2 and max(spans[size]) >= high - 2, (size, sorted(spans[size]))


def test_objects_show_their_colour_word(drawn: dict[str, list[list[Drawn]]]) -> None:
    for split, scenes in drawn.items():
        for scene in scenes:
            for obj, coverage, pixels in scene:
                solid = pixels[coverage >= SOLID_COVERAGE]  # (n, 3)
                assert len(solid) > 0, (split, obj)
                assert nearest_color(solid.mean(axis=0)) == obj["color"], (split, obj, solid.mean(axis=0))


@pytest.mark.parametrize("split", ["train", "shift"])
def test_backgrounds_keep_clear_of_the_colours_drawn_on_them(gen: ModuleType, split: str) -> None:
    """Rendered in memory: a close background is rare, so this needs more scenes than the corpus."""
    for scene in gen.plan_split(0, split, counts=CLEAR_BACKGROUND_COUNTS):
        pixels = np.asarray(gen.render(scene), dtype=np.float64)  # (h, w, 3)
        untouched = np.max(gen.object_coverages(scene), axis=0) == 0
        for obj in scene.objects:
            top, left, bottom, right = cell_of(obj.position)
            around = pixels[top:bottom, left:right][untouched[top:bottom, left:right]]  # (n, 3)
            distance = np.linalg.norm(around - REFERENCE_RGB[obj.color], axis=1)
            assert np.percentile(distance, BACKGROUND_PERCENTILE) >= MIN_BACKGROUND_DISTANCE, (split, obj)


@pytest.mark.parametrize("split", ["train", "shift"])
def test_backgrounds_take_any_hue_including_saturated(
    drawn: dict[str, list[list[Drawn]]], split: str
) -> None:
    saturated_hues = []
    for scene in drawn[split]:
        red, green, blue = np.median(background_pixels(scene), axis=0) / 255
        hue, saturation, _ = colorsys.rgb_to_hsv(red, green, blue)
        if saturation >= SATURATED:
            saturated_hues.append(hue)
    assert len(saturated_hues) >= MIN_SATURATED_SHARE * len(drawn[split])
    assert len({int(hue * HUE_SECTORS) % HUE_SECTORS for hue in saturated_hues}) >= MIN_HUE_SECTORS


@pytest.mark.parametrize("split", ["train", "shift"])
def test_backgrounds_include_gradients_and_textures(drawn: dict[str, list[list[Drawn]]], split: str) -> None:
    textured = 0
    for scene in drawn[split]:
        luminance = background_pixels(scene) @ np.array([0.299, 0.587, 0.114])
        low, high = np.percentile(luminance, [25, 75])
        textured += high - low > TEXTURED_IQR
    assert textured >= MIN_TEXTURED_SHARE * len(drawn[split])


def quiet_looks(gen: ModuleType, renderer: str, look: Any) -> tuple[Any, list[Any]]:
    """(the look without clutter, noise or blur; that look plus each clutter mark alone)."""
    if renderer == "main":
        quiet = look._replace(clutter=(), background=look.background._replace(noise_sigma=0.0))
        return quiet, [quiet._replace(clutter=(mark,)) for mark in look.clutter]
    quiet = look._replace(marks=(), blur_sigma=0.0, grain_sigma=0.0)
    return quiet, [quiet._replace(marks=(mark,)) for mark in look.marks]


@pytest.mark.parametrize(("split", "renderer"), [("train", "main"), ("shift", "shifted")])
def test_clutter_marks_are_far_smaller_than_small_objects(
    gen: ModuleType, drawn: dict[str, list[list[Drawn]]], split: str, renderer: str
) -> None:
    marks = 0
    for scene in gen.plan_split(0, split, counts=gen.scaled_counts(SCALE)[split]):
        draw = gen.RENDERERS[renderer].render
        quiet, with_one_mark = quiet_looks(gen, renderer, scene.look)
        plain = np.asarray(draw(scene.objects, quiet), dtype=np.int16)
        for look in with_one_mark:
            change = np.abs(np.asarray(draw(scene.objects, look), dtype=np.int16) - plain).max(axis=-1)
            changed = change >= VISIBLE_CHANGE
            assert changed.sum() <= MAX_MARK_PIXELS, scene.index
            marks += 1
    assert marks > len(drawn[split]), "clutter is missing"
    smallest = min(c.sum() for scene in drawn[split] for o, c, _ in scene if o["size"] == "small")
    assert smallest >= 2 * MAX_MARK_PIXELS


def imported(tree: ast.Module) -> dict[str, set[str]]:
    """Module -> names taken from it ('*' for a plain `import module`)."""
    found: dict[str, set[str]] = defaultdict(set)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found[alias.name].add("*")
        elif isinstance(node, ast.ImportFrom):
            found["." * node.level + (node.module or "")].update(alias.name for alias in node.names)
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            assert name not in {"__import__", "import_module", "spec_from_file_location"}, "dynamic import"
    return found


def test_shifted_renderer_shares_no_drawing_code() -> None:
    shifted = imported(ast.parse((SAMPLE_CORPUS / "shifted.py").read_text(encoding="utf-8")))
    for module, names in shifted.items():
        if module not in SHIFTED_MAY_IMPORT:
            assert module in SHIFTED_MAY_TAKE, f"shifted.py imports {module}"
            assert names <= SHIFTED_MAY_TAKE[module], f"shifted.py takes {names - SHIFTED_MAY_TAKE[module]}"
    # What it may take from scenes.py cannot carry drawing code either: scenes.py draws nothing.
    scenes = imported(ast.parse((SAMPLE_CORPUS / "scenes.py").read_text(encoding="utf-8")))
    assert set(scenes) <= {"__future__", "random", "collections.abc", "typing"}, set(scenes)


def test_style_shifted_draws_the_same_scenes_with_the_other_renderer(
    gen: ModuleType, corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "swapped"
    code, _ = run(gen, out, "--style", "shifted", "--workers", "1")
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["renderers"] == {"train": "shifted", "val": "shifted", "test": "shifted", "shift": "main"}
    assert (out / "corpus.jsonl").read_bytes() == (corpus / "corpus.jsonl").read_bytes()
    first = sorted((corpus / "images" / "train").iterdir())[0]
    assert (out / "images" / "train" / first.name).read_bytes() != first.read_bytes()
    assert not gen.is_up_to_date(out, 0, SCALE, "main")
