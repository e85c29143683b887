"""Generate the sample corpus: rendered shape scenes with captions, deterministic per seed.

Run as `python sample_corpus/generate.py --out DIR [--seed 0] [--scale 1.0] [--style main]`.

The corpus exists so that `make demo` and the default model need no download: every image is a
96x96 scene of coloured shapes, and every caption is derived from the scene's attributes, so
captions are always true. The test split is built to measure generalisation rather than
memorisation: it holds (colour, shape) pairs never seen in training, a background kind and
rotations training never shows, more JPEG, and paraphrases from templates that training never
uses. The shift split asks the same kind of questions as test about scenes drawn by a second,
independent renderer (`shifted.py`), to measure whether a model learnt the words or one way of
drawing them; it is never for training or model selection.

`--style` says which renderer draws train, val and test; the other one draws the shift split.

Writes `DIR/images/{split}/{split}_{index:05d}.{png|jpg}`, `DIR/corpus.jsonl` (one line per
(image, caption)) and `DIR/manifest.json`. Uses only the standard library, Pillow and NumPy.
"""

from __future__ import annotations

import argparse
import functools
import json
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
from typing import Any, NamedTuple, Protocol

import numpy as np
from PIL import Image

# Run as a script, or loaded by file path as the tests do, this file's package is not on
# sys.path; put this checkout's root first so its own sibling modules are the ones imported.
REPO_ROOT = str(Path(__file__).resolve().parents[1])
if __package__ in (None, "") and sys.path[:1] != [REPO_ROOT]:
    sys.path.insert(0, REPO_ROOT)

from sample_corpus import drawing, shifted  # noqa: E402
from sample_corpus.scenes import (  # noqa: E402
    CANONICAL_COUNT,
    CANONICAL_RELATION,
    CANONICAL_SINGLE,
    COLORS,
    COUNT_WORDS,
    HELD_OUT_PAIRS,
    IMAGE_SIDE,
    PLURALS,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZE_SPAN_PX,
    SIZES,
    TEST_COUNT_TEMPLATES,
    TEST_RELATION_TEMPLATES,
    TEST_SINGLE_TEMPLATES,
    TRAIN_COUNT_TEMPLATES,
    TRAIN_RELATION_TEMPLATES,
    TRAIN_SINGLE_TEMPLATES,
    Caption,
    SceneObject,
    scene_captions,
    split_objects,
)

# Bump whenever output bytes change, so `--out` dirs from an older generator are rebuilt.
GENERATOR_VERSION = "2"
GENERATOR_NAME = "mmsearch-sample-corpus"
SPLITS = ("train", "val", "test", "shift")
# Splits that show held-out pairs and test-only phrasings; train and val never do.
EVALUATION_SPLITS = frozenset({"test", "shift"})

# Scenes per split and kind at --scale 1.0.
BASE_COUNTS = {
    "train": {"single": 2600, "multi": 1000},
    "val": {"single": 250, "multi": 100},
    "test": {"single": 400, "multi": 150},
    "shift": {"single": 400, "multi": 150},
}


class FileFormat(NamedTuple):
    """How a split's images are encoded: the share written as JPEG and its quality."""

    jpeg_fraction: float
    jpeg_quality: int


TRAIN_FORMAT = FileFormat(jpeg_fraction=0.25, jpeg_quality=90)
# Test gets more and harsher JPEG; shift encodes like test, so only the renderer differs.
TEST_FORMAT = FileFormat(jpeg_fraction=0.5, jpeg_quality=85)
SPLIT_FORMAT = {"train": TRAIN_FORMAT, "val": TRAIN_FORMAT, "test": TEST_FORMAT, "shift": TEST_FORMAT}


class Renderer(Protocol):
    """What generate.py needs of a renderer module; each keeps its own look record."""

    def plan_look(self, rng: random.Random, objects: Sequence[SceneObject], *, evaluation: bool) -> Any:
        """Fix every drawing choice of one scene; evaluation splits may get looks of their own."""

    def render(self, objects: Sequence[SceneObject], look: Any) -> Image.Image:
        """The scene's RGB image, a pure function of objects and look."""

    def object_coverages(self, objects: Sequence[SceneObject], look: Any) -> list[np.ndarray]:
        """Per object, how much of each pixel it covers (float32, (side, side), 0..1)."""


RENDERERS: dict[str, Renderer] = {"main": drawing, "shifted": shifted}
# A style names the renderer of train, val and test; the other one draws the shift split.
STYLES = {
    "main": {"train": "main", "val": "main", "test": "main", "shift": "shifted"},
    "shifted": {"train": "shifted", "val": "shifted", "test": "shifted", "shift": "main"},
}
DEFAULT_STYLE = "main"

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


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scene:
    """Everything needed to render one image and write its caption lines, fixed before rendering."""

    split: str
    index: int
    kind: str
    objects: tuple[SceneObject, ...]
    renderer: str
    look: Any  # the renderer's own record of every drawing choice
    suffix: str
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
# Planning
# ---------------------------------------------------------------------------------------------
def scaled_counts(scale: float) -> dict[str, dict[str, int]]:
    """Scene counts per split and kind; at least one of each so tiny scales stay complete."""
    return {
        split: {kind: max(1, round(n * scale)) for kind, n in kinds.items()}
        for split, kinds in BASE_COUNTS.items()
    }


def build_scene(
    rng: random.Random, split: str, *, index: int, kind: str, objects: tuple[SceneObject, ...], renderer: str
) -> Scene:
    """Fix captions, format and look of one scene.

    The look comes from its own stream seeded here, so a change in how a renderer draws never
    shifts the objects or captions of later scenes.
    """
    evaluation = split in EVALUATION_SPLITS
    captions = scene_captions(rng, kind, objects, template_set="test" if evaluation else "train")
    suffix = "jpg" if rng.random() < SPLIT_FORMAT[split].jpeg_fraction else "png"
    look_rng = random.Random(rng.getrandbits(64))
    look = RENDERERS[renderer].plan_look(look_rng, objects, evaluation=evaluation)
    return Scene(split, index, kind, objects, renderer, look, suffix, captions)


def split_rng(seed: int, split: str) -> random.Random:
    """An independent stream per split; str seeds hash with SHA-512, not Python's salted hash."""
    return random.Random(f"{GENERATOR_NAME}:{seed}:{split}")


def plan_split(seed: int, split: str, *, counts: dict[str, int], style: str = DEFAULT_STYLE) -> list[Scene]:
    """All scenes of one split, deterministic in (seed, split, counts, style)."""
    rng = split_rng(seed, split)
    renderer = STYLES[style][split]
    kinds_and_objects = split_objects(rng, counts=counts, evaluation=split in EVALUATION_SPLITS)
    return [
        build_scene(rng, split, index=index, kind=kind, objects=objects, renderer=renderer)
        for index, (kind, objects) in enumerate(kinds_and_objects)
    ]


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def render(scene: Scene) -> Image.Image:
    """The scene's RGB image, drawn by its renderer; a pure function of the scene."""
    return RENDERERS[scene.renderer].render(scene.objects, scene.look)


def object_coverages(scene: Scene) -> list[np.ndarray]:
    """Per object, how much of each pixel it covers (float32, (IMAGE_SIDE, IMAGE_SIDE), 0..1)."""
    return RENDERERS[scene.renderer].object_coverages(scene.objects, scene.look)


def save(scene: Scene, root: Path) -> None:
    """Render and write one image in the scene's format."""
    path = root / scene.relpath
    image = render(scene)
    if scene.suffix == "jpg":
        image.save(path, format="JPEG", quality=SPLIT_FORMAT[scene.split].jpeg_quality)
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


def manifest(seed: int, scale: float, style: str, scenes: dict[str, list[Scene]]) -> dict[str, Any]:
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
        "style": style,
        "splits": list(SPLITS),
        "renderers": STYLES[style],
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
        "size_span_px": {size: list(span) for size, span in SIZE_SPAN_PX.items()},
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


def write_corpus(root: Path, *, seed: int, scale: float, style: str, workers: int) -> tuple[int, int]:
    """Plan, render and write every split into `root`; returns (images, captions)."""
    counts = scaled_counts(scale)
    scenes = {split: plan_split(seed, split, counts=counts[split], style=style) for split in SPLITS}
    everything = [scene for split in SPLITS for scene in scenes[split]]
    for split in SPLITS:
        (root / "images" / split).mkdir(parents=True)
    save_all(everything, root, workers)
    with (root / "corpus.jsonl").open("w", encoding="utf-8", newline="\n") as handle:
        for scene in everything:
            handle.writelines(jsonl_lines(scene))
    text = json.dumps(manifest(seed, scale, style, scenes), indent=2) + "\n"
    (root / "manifest.json").write_text(text, encoding="utf-8")
    return len(everything), sum(len(scene.captions) for scene in everything)


def read_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest in `out`, or None when there is none or it is not this generator's."""
    try:
        data = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("generator") == GENERATOR_NAME else None


def is_up_to_date(out: Path, seed: int, scale: float, style: str) -> bool:
    """True when `out` holds a complete corpus from this version with the same seed, scale, style."""
    data = read_manifest(out)
    if data is None:
        return False
    made_by = (data.get("version"), data.get("seed"), data.get("scale"), data.get("style"))
    if made_by != (GENERATOR_VERSION, seed, scale, style):
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


def generate(
    out: Path, *, seed: int = 0, scale: float = 1.0, style: str = DEFAULT_STYLE, workers: int = 1
) -> Report:
    """Build the corpus in a temp folder beside `out` and swap it in; no-op when up to date."""
    started = time.perf_counter()
    if is_up_to_date(out, seed, scale, style):
        return Report(out, 0, 0, time.perf_counter() - started, up_to_date=True)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    tmp.chmod(DIR_MODE & ~current_umask())
    try:
        images, captions = write_corpus(tmp, seed=seed, scale=scale, style=style, workers=workers)
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
    parser.add_argument(
        "--style",
        choices=sorted(STYLES),
        default=DEFAULT_STYLE,
        help="renderer of train/val/test; the other renderer draws the shift split",
    )
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
        report = generate(args.out, seed=args.seed, scale=args.scale, style=args.style, workers=args.workers)
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
