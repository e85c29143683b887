"""Camera JPEGs are encoded from their embedded EXIF preview when it can stand in for the photo,
and the catalogue keeps recognising files hashed before content ids changed algorithm."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from support import bench_synth, camera_jpeg

from indexer.indexing.pipeline import IndexOptions, index_folders
from indexer.media.content_id import CURRENT_PREFIX, file_content_id
from indexer.media.images import ImageLoadError, PreprocessConfig, decode_bytes, open_image, preprocess
from indexer.models.encoder import Encoder, load_encoder
from indexer.store.catalog import CATALOG_FILE

RED = (220, 30, 30)
BLUE = (30, 30, 220)
TOLERANCE = 40  # two JPEG generations and chroma subsampling on a flat colour
PHOTO_SIZE = (1600, 1200)
MODEL_SIZE = 64


def _near(pixel: tuple[int, ...], colour: tuple[int, int, int]) -> bool:
    return all(abs(int(a) - b) <= TOLERANCE for a, b in zip(pixel, colour, strict=True))


def _centre(image: Image.Image) -> tuple[int, ...]:
    return image.getpixel((image.width // 2, image.height // 2))  # type: ignore[return-value]


def _red_photo_blue_preview(photo_size: tuple[int, int] = PHOTO_SIZE) -> bytes:
    """Preview and photo disagree on purpose, so the pixels show which one was decoded."""
    preview = Image.new("RGB", (160, 120), BLUE)
    return camera_jpeg(Image.new("RGB", photo_size, RED), preview=preview)


def test_preview_stands_in_for_a_big_photo_and_the_size_is_the_photos() -> None:
    decoded = decode_bytes(_red_photo_blue_preview(), target_size=MODEL_SIZE)
    assert decoded.source == "exif thumbnail"
    assert _near(_centre(decoded.image), BLUE)
    assert (decoded.width, decoded.height) == PHOTO_SIZE


def test_turning_previews_off_decodes_the_photo() -> None:
    decoded = decode_bytes(_red_photo_blue_preview(), target_size=MODEL_SIZE, embedded_thumbnail=False)
    assert decoded.source == "draft"
    assert _near(_centre(decoded.image), RED)
    assert (decoded.width, decoded.height) == PHOTO_SIZE


def test_preview_smaller_than_the_model_input_is_not_used() -> None:
    decoded = decode_bytes(_red_photo_blue_preview(), target_size=200)
    assert decoded.source == "draft" and _near(_centre(decoded.image), RED)


def test_without_a_target_size_the_photo_is_decoded_in_full() -> None:
    decoded = decode_bytes(_red_photo_blue_preview())
    assert decoded.source == "full" and decoded.image.size == PHOTO_SIZE


def test_letterboxed_preview_of_another_shape_is_not_used() -> None:
    # A 3:2 photo with a 4:3 preview: black bars, or a stale preview from before a crop.
    decoded = decode_bytes(_red_photo_blue_preview((1800, 1200)), target_size=MODEL_SIZE)
    assert decoded.source == "draft" and _near(_centre(decoded.image), RED)


@pytest.mark.parametrize("preview", [b"\xff\xd8\xff\xdb broken", b"not a jpeg at all"])
def test_broken_preview_falls_back_to_the_photo(preview: bytes) -> None:
    data = camera_jpeg(Image.new("RGB", PHOTO_SIZE, RED), preview=preview)
    decoded = decode_bytes(data, target_size=MODEL_SIZE)
    assert decoded.source == "draft" and _near(_centre(decoded.image), RED)


def _left_red_right_blue() -> Image.Image:
    photo = Image.new("RGB", PHOTO_SIZE, BLUE)
    ImageDraw.Draw(photo).rectangle((0, 0, PHOTO_SIZE[0] // 2, PHOTO_SIZE[1]), fill=RED)
    return photo


def test_preview_is_turned_upright_like_the_photo(tmp_path: Path) -> None:
    # Orientation 6: the sensor's left edge is the top of the upright picture.
    path = tmp_path / "portrait.jpg"
    path.write_bytes(camera_jpeg(_left_red_right_blue(), orientation=6))
    for embedded in (True, False):
        decoded = decode_bytes(path.read_bytes(), target_size=MODEL_SIZE, embedded_thumbnail=embedded)
        image = decoded.image
        assert (decoded.width, decoded.height) == (PHOTO_SIZE[1], PHOTO_SIZE[0])
        assert image.height > image.width
        assert _near(image.getpixel((image.width // 2, image.height // 8)), RED)  # type: ignore[arg-type]
        assert _near(image.getpixel((image.width // 2, 7 * image.height // 8)), BLUE)  # type: ignore[arg-type]
    assert open_image(path, target_size=MODEL_SIZE).height > open_image(path, target_size=MODEL_SIZE).width


def test_preview_gives_nearly_the_pixels_the_model_would_see_from_the_photo() -> None:
    rng = np.random.default_rng(7)
    photo = bench_synth()._scene(rng, *PHOTO_SIZE)
    data = camera_jpeg(photo)
    config = PreprocessConfig(image_size=MODEL_SIZE)
    from_preview = preprocess(decode_bytes(data, target_size=MODEL_SIZE).image, config)
    from_photo = preprocess(
        decode_bytes(data, target_size=MODEL_SIZE, embedded_thumbnail=False).image, config
    )
    # Normalised units (std 0.25): 0.1 is ~6 grey levels on average over the 64x64 input.
    assert float((from_preview - from_photo).abs().mean()) < 0.1


@pytest.fixture(scope="module")
def encoder(colors_model: Path) -> Encoder:
    return load_encoder(colors_model, device="cpu")


def _sql(index_dir: Path, query: str, *params: object) -> list[tuple]:
    with closing(sqlite3.connect(index_dir / CATALOG_FILE)) as conn, conn:
        return conn.execute(query, params).fetchall()


def test_index_records_the_photos_own_size_and_honours_the_switch(
    tmp_path: Path, encoder: Encoder
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "camera.jpg").write_bytes(_red_photo_blue_preview())
    with_previews = index_folders([folder], tmp_path / "fast", encoder)
    without = index_folders(
        [folder], tmp_path / "full", encoder, options=IndexOptions(exif_thumbnails=False)
    )
    assert with_previews.encoded == without.encoded == 1
    for index_dir in (tmp_path / "fast", tmp_path / "full"):
        assert _sql(index_dir, "SELECT width, height FROM images") == [PHOTO_SIZE]


def _to_legacy_ids(index_dir: Path) -> None:
    """Rewrite the catalogue as the BLAKE2b-hashing release wrote it."""
    for row_id, path in _sql(index_dir, "SELECT id, path FROM images"):
        legacy = hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()
        _sql(index_dir, "UPDATE images SET content_hash = ? WHERE id = ?", legacy, row_id)


def test_files_hashed_by_the_previous_algorithm_stay_recognised(
    tmp_path: Path, encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    touched, moved = folder / "touched.jpg", folder / "moved.jpg"
    touched.write_bytes(_red_photo_blue_preview())
    moved.write_bytes(camera_jpeg(_left_red_right_blue()))
    index_dir = tmp_path / "index"
    index_folders([folder], index_dir, encoder)
    _to_legacy_ids(index_dir)
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    moved.rename(folder / "sub" / "moved.jpg")

    monkeypatch.setattr(encoder, "encode_pixels", lambda pixels: pytest.fail("re-encoded"))
    report = index_folders([folder], index_dir, encoder)
    assert (report.unchanged, report.moved, report.encoded, report.removed) == (1, 1, 0, 0)
    ids = [content_id for (content_id,) in _sql(index_dir, "SELECT content_hash FROM images")]
    assert not any(i.startswith(CURRENT_PREFIX) for i in ids)  # kept, still valid
    assert file_content_id(str(touched)).startswith(CURRENT_PREFIX)


def test_truncated_photo_is_reported_not_hidden_behind_its_preview() -> None:
    # Noise, so that cutting the file really loses image data (a flat colour survives a cut).
    rng = np.random.default_rng(3)
    photo = Image.fromarray(rng.integers(0, 256, (PHOTO_SIZE[1], PHOTO_SIZE[0], 3), dtype=np.uint8))
    data = camera_jpeg(photo)
    with pytest.raises(ImageLoadError, match="truncated"):
        decode_bytes(data[: len(data) * 2 // 3], target_size=MODEL_SIZE)
    padded = decode_bytes(data + b"\x00" * 16, target_size=MODEL_SIZE)  # zero padding is fine
    assert padded.source == "exif thumbnail"


def test_preview_larger_than_the_photo_is_not_a_preview() -> None:
    big = Image.new("RGB", (2000, 1500), BLUE)  # 4:3 like the photo, but more pixels than it
    data = camera_jpeg(Image.new("RGB", (800, 600), RED), preview=big)
    decoded = decode_bytes(data, target_size=MODEL_SIZE)
    assert decoded.source == "draft" and _near(_centre(decoded.image), RED)
