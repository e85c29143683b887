"""`mmsearch models` where open_clip is installed: its architectures and published weights come
from open_clip itself, and weights already in the local caches are marked, without the network."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

open_clip = pytest.importorskip("open_clip", reason="needs mmsearch[openclip]: make test-openclip")

import huggingface_hub.constants as hub_constants  # noqa: E402
from pretrained_parts import NetworkGuard  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from indexer.models import available  # noqa: E402
from mmsearch.cli import app  # noqa: E402
from mmsearch.paths import HOME_ENV  # noqa: E402

ARCH = "ViT-B-32"
CACHED_TAG = "laion2b_s34b_b79k"  # published on the Hugging Face hub
URL_TAG = "openai"  # also downloadable by URL into open_clip's own cache
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Fresh, empty Hugging Face and open_clip caches, a fresh data dir, and no network."""
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(available, "OPENCLIP_URL_CACHE", tmp_path / "clip")
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    guard = NetworkGuard().install(monkeypatch)
    yield tmp_path
    assert guard.attempts == [], f"listing models reached the network: {guard.attempts}"


def hub_cache_file(cache: Path, repo_id: str, filename: str) -> Path:
    """Put a file where huggingface_hub caches `repo_id`'s main revision."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    path = repo / "snapshots" / SNAPSHOT / filename
    path.parent.mkdir(parents=True)
    path.write_bytes(b"weights")
    return path


def listing() -> dict:  # type: ignore[type-arg]
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def tags_of(data: dict) -> dict[tuple[str, str], bool]:  # type: ignore[type-arg]
    return {
        (arch["arch"], weights["tag"]): weights["cached"]
        for arch in data["openclip"]["architectures"]
        for weights in arch["pretrained"]
    }


def test_every_published_weight_open_clip_knows_is_listed_uncached() -> None:
    data = listing()
    assert data["openclip"]["installed"] is True
    tags = tags_of(data)
    assert set(tags) == set(open_clip.list_pretrained())
    assert not any(tags.values())
    archs = {arch["arch"]: arch["model"] for arch in data["openclip"]["architectures"]}
    assert set(open_clip.list_models()) <= set(archs)  # bare architectures take --checkpoint
    assert archs[ARCH] == f"openclip:{ARCH}"


def test_weights_in_the_hugging_face_cache_are_marked(empty_caches: Path) -> None:
    repo_id = open_clip.get_pretrained_cfg(ARCH, CACHED_TAG)["hf_hub"].rstrip("/")
    hub_cache_file(empty_caches / "hf", repo_id, available.OPENCLIP_HF_SAFE_WEIGHTS)
    tags = tags_of(listing())
    assert tags[(ARCH, CACHED_TAG)] is True
    assert [key for key, cached in tags.items() if cached] == [(ARCH, CACHED_TAG)]


def test_weights_in_open_clips_url_cache_are_marked(empty_caches: Path) -> None:
    url = open_clip.get_pretrained_cfg(ARCH, URL_TAG)["url"]
    (empty_caches / "clip").mkdir()
    (empty_caches / "clip" / url.rsplit("/", 1)[-1]).write_bytes(b"weights")
    assert tags_of(listing())[(ARCH, URL_TAG)] is True


def test_the_text_listing_marks_cached_weights(empty_caches: Path) -> None:
    repo_id = open_clip.get_pretrained_cfg(ARCH, CACHED_TAG)["hf_hub"].rstrip("/")
    hub_cache_file(empty_caches / "hf", repo_id, available.OPENCLIP_HF_SAFE_WEIGHTS)
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.stdout.splitlines() if line.startswith(f"  {ARCH}: ")]
    assert f"{CACHED_TAG}*" in line.split(", ") and URL_TAG in line.split(": ", 1)[1].split(", ")
    assert "pip install" not in result.stdout
