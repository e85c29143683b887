"""Synthetic benchmark inputs, generated once into benchmarks/work/ and reused on later runs.

Two sets: camera-sized JPEGs (smooth gradients, a few filled shapes and mild sensor-like noise,
so libjpeg does as much work as on a real photo and files are a few MB, with the EXIF preview
every camera and phone writes) and many small PNGs
for the no-change re-index. Files are written under a hidden temporary name and renamed, and a
marker beside the folder records a finished set, so an interrupted generation resumes.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import shutil
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PHOTO_ASPECT = 4 / 3  # most camera and phone sensors
JPEG_QUALITY = 90
# Grey levels of Gaussian noise: makes a q90 12 MP JPEG ~3 MB, like a phone photo; without it
# the smooth synthetic content compresses to a few hundred KB and decodes unrealistically fast.
NOISE_SIGMA = 7.0
# Noise is tiled from one patch per image: generating 36M normal samples costs more than the
# JPEG encode. Sides that are not multiples of 8 keep the repeat off the JPEG block grid.
NOISE_TILE = (509, 499)
GRADIENT_GRID = (4, 5)  # (rows, cols) of random colours bicubically stretched over the frame
SHAPES_PER_PHOTO = (3, 9)  # random count in [low, high)
SMALL_SIZE = 96  # side of the re-index PNGs
FILES_PER_FOLDER = 500  # photo libraries are folders of hundreds, not one flat folder
PHOTO_SEED = 1_000_000  # seed offsets, so the two sets never share content
SMALL_SEED = 2_000_000
# The EXIF preview cameras and phones embed (IFD1): 160x120 baseline JPEG, as DCF specifies.
CAMERA_PREVIEW_SIZE = (160, 120)
CAMERA_PREVIEW_QUALITY = 85
CHUNKS_PER_PROCESS = 16  # pool work units per process: small enough to balance, big enough to batch


@dataclass(frozen=True)
class GeneratedSet:
    """A folder of generated files and what producing it cost (0 s when reused)."""

    folder: Path
    files: list[Path]
    written: int  # files written by this run; 0 when the whole set was reused
    elapsed_s: float
    total_bytes: int


def photo_dimensions(megapixels: float) -> tuple[int, int]:
    """(width, height) of a 4:3 frame of about `megapixels`; 12 -> (4000, 3000)."""
    width = round(math.sqrt(megapixels * 1_000_000 * PHOTO_ASPECT))
    return width, round(width / PHOTO_ASPECT)


def _megapixel_label(megapixels: float) -> str:
    return f"{megapixels:g}mp"


def ensure_photos(work: Path, *, count: int, megapixels: float, processes: int) -> GeneratedSet:
    """`count` JPEGs of `megapixels` in work/photos-{count}-{M}mp/, generated in parallel once."""
    width, height = photo_dimensions(megapixels)
    folder = work / f"photos-{count}-{_megapixel_label(megapixels)}"
    params = {
        "kind": "photos",
        "count": count,
        "width": width,
        "height": height,
        "quality": JPEG_QUALITY,
        "noise_sigma": NOISE_SIGMA,
    }
    paths = _layout(folder, count, "photo", ".jpg")
    jobs = [(str(p), PHOTO_SEED + i, width, height) for i, p in enumerate(paths)]
    _add_previews_to_older_set(folder, paths, params, processes)
    params["exif_preview"] = list(CAMERA_PREVIEW_SIZE)
    return _ensure(folder, paths, jobs, _write_photo, params, processes)


def camera_exif(preview_jpeg: bytes, *, orientation: int = 1) -> bytes:
    """An EXIF APP1 payload as a camera writes it: IFD0 with the orientation, IFD1 with a preview.

    Pillow reads IFD1 but does not write it, hence the few lines of TIFF here (little-endian:
    header, IFD0 with one entry, IFD1 with three, then the preview's bytes).
    """
    short, long_ = 3, 4  # TIFF field types
    ifd0_at, ifd0_entries = 8, 1
    ifd1_at = ifd0_at + 2 + 12 * ifd0_entries + 4
    ifd1_entries = 3
    preview_at = ifd1_at + 2 + 12 * ifd1_entries + 4
    tiff = b"II*\x00" + struct.pack("<L", ifd0_at)
    tiff += struct.pack("<H", ifd0_entries)
    tiff += struct.pack("<HHLHxx", 0x0112, short, 1, orientation)  # Orientation
    tiff += struct.pack("<L", ifd1_at)
    tiff += struct.pack("<H", ifd1_entries)
    tiff += struct.pack("<HHLHxx", 0x0103, short, 1, 6)  # Compression: JPEG
    tiff += struct.pack("<HHLL", 0x0201, long_, 1, preview_at)  # JPEGInterchangeFormat
    tiff += struct.pack("<HHLL", 0x0202, long_, 1, len(preview_jpeg))  # ...Length
    tiff += struct.pack("<L", 0)  # no IFD2
    return b"Exif\x00\x00" + tiff + preview_jpeg


def camera_preview(photo: Image.Image) -> bytes:
    """The CAMERA_PREVIEW_SIZE JPEG a camera would embed for this photo."""
    preview = photo.copy()
    preview.thumbnail(CAMERA_PREVIEW_SIZE, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=CAMERA_PREVIEW_QUALITY)
    return buffer.getvalue()


def _add_previews_to_older_set(
    folder: Path, paths: Sequence[Path], params: dict[str, object], processes: int
) -> None:
    """Sets generated before previews were added get them spliced in: minutes instead of a rebuild."""
    marker = folder.parent / f"{folder.name}.done.json"
    if _read_marker(marker) != params:
        return
    with multiprocessing.Pool(processes) as pool:
        for _ in pool.imap_unordered(_splice_preview, [str(p) for p in paths], chunksize=16):
            pass
    marker.write_text(json.dumps({**params, "exif_preview": list(CAMERA_PREVIEW_SIZE)}, indent=1) + "\n")


def _splice_preview(path: str) -> None:
    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as photo:
        if "exif" in photo.info:
            return
        photo.draft("RGB", (CAMERA_PREVIEW_SIZE[0] * 2, CAMERA_PREVIEW_SIZE[1] * 2))
        preview = camera_preview(photo.convert("RGB"))
    payload = camera_exif(preview)
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    head, name = os.path.split(path)
    partial = os.path.join(head, f".{name}.part")
    Path(partial).write_bytes(data[:2] + app1 + data[2:])  # right after SOI
    os.replace(partial, path)


def ensure_small_files(work: Path, *, count: int, processes: int) -> GeneratedSet:
    """`count` distinct SMALL_SIZE PNGs in work/small-{count}/, generated once."""
    folder = work / f"small-{count}"
    params = {"kind": "small", "count": count, "size": SMALL_SIZE}
    paths = _layout(folder, count, "small", ".png")
    jobs = [(str(p), SMALL_SEED + i, SMALL_SIZE, SMALL_SIZE) for i, p in enumerate(paths)]
    return _ensure(folder, paths, jobs, _write_small, params, processes)


def _layout(folder: Path, count: int, stem: str, suffix: str) -> list[Path]:
    return [folder / f"d{i // FILES_PER_FOLDER:03d}" / f"{stem}_{i:06d}{suffix}" for i in range(count)]


Job = tuple[str, int, int, int]  # (path, seed, width, height)


def _ensure(
    folder: Path,
    paths: Sequence[Path],
    jobs: Sequence[Job],
    writer: Callable[[Job], None],
    params: dict[str, object],
    processes: int,
) -> GeneratedSet:
    marker = folder.parent / f"{folder.name}.done.json"
    started = time.perf_counter()
    recorded = _read_marker(marker)
    if recorded not in (None, params):  # made with other settings: start again from nothing
        marker.unlink()
        shutil.rmtree(folder, ignore_errors=True)
    # Finished, or interrupted: files already renamed into place are whole, so keep them.
    todo = [job for job, path in zip(jobs, paths, strict=True) if not path.exists()]
    if todo:
        for parent in {path.parent for path in paths}:
            parent.mkdir(parents=True, exist_ok=True)
        chunksize = max(1, len(todo) // (processes * CHUNKS_PER_PROCESS))
        with multiprocessing.Pool(processes) as pool:
            for _ in pool.imap_unordered(writer, todo, chunksize=chunksize):
                pass
    if todo or recorded != params:
        marker.write_text(json.dumps(params, indent=1) + "\n")
    elapsed = time.perf_counter() - started if todo else 0.0
    return GeneratedSet(folder, list(paths), len(todo), elapsed, sum(p.stat().st_size for p in paths))


def _read_marker(marker: Path) -> object:
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def _save_atomically(image: Image.Image, path: str, *, image_format: str, **options: object) -> None:
    """Hidden temporary name (the scanner skips dot files), then rename: no half-written files."""
    head, name = os.path.split(path)
    partial = os.path.join(head, f".{name}.part")
    image.save(partial, format=image_format, **options)
    os.replace(partial, path)


def _scene(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour gradients with a few filled ellipses, rectangles and triangles on top."""
    grid = rng.integers(0, 256, size=(*GRADIENT_GRID, 3), dtype=np.uint8)
    image = Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(*SHAPES_PER_PHOTO))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w = int(rng.integers(max(width // 20, 1), max(width // 3, 2)))
        h = int(rng.integers(max(height // 20, 1), max(height // 3, 2)))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=fill)
        elif kind == 1:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=fill)
        else:
            draw.polygon([(x0, y0 + h), (x0 + w // 2, y0), (x0 + w, y0 + h)], fill=fill)
    return image


def _add_noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    height, width = image.height, image.width
    tile = np.rint(rng.normal(0.0, NOISE_SIGMA, size=(*NOISE_TILE, 3))).astype(np.int16)
    reps = (-(-height // NOISE_TILE[0]), -(-width // NOISE_TILE[1]), 1)
    pixels = np.asarray(image, dtype=np.int16)  # (H, W, 3)
    pixels += np.tile(tile, reps)[:height, :width]
    np.clip(pixels, 0, 255, out=pixels)
    return Image.fromarray(pixels.astype(np.uint8))


def _write_photo(job: Job) -> None:
    path, seed, width, height = job
    rng = np.random.default_rng(seed)
    photo = _add_noise(_scene(rng, width, height), rng)
    exif = camera_exif(camera_preview(photo))
    _save_atomically(photo, path, image_format="JPEG", quality=JPEG_QUALITY, exif=exif)


def _write_small(job: Job) -> None:
    path, seed, width, height = job
    _save_atomically(_scene(np.random.default_rng(seed), width, height), path, image_format="PNG")
