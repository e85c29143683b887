"""The web search page in a real headless Chromium (Debian's), driven by Playwright.

A real uvicorn serves an index of noisy colour images on 127.0.0.1 at a free port; the colors
model from conftest separates the four colours, so "a red image" must put a red file first.
Install the browser with `make browser-deps` (apt-get install chromium); Playwright's own browser
download is never used.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import COLORS, caption_for, color_image
from support import serve

from indexer.indexing.pipeline import add_texts, index_folders
from indexer.models.encoder import load_encoder
from mmsearch.engine import Engine, ImageHit, TextHit
from mmsearch.service import ServiceSettings, create_app

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is missing: pip install -e '.[dev]' (the browser test needs it)"
)

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 20_000
TOKEN = "page-token-0123456789abcdef"
COPIES = 3  # images per colour
PAGE_K = 24  # the page's default "Results" choice


def find_chromium() -> str:
    """Debian's chromium, or skip saying how to install it."""
    for candidate in (*CHROMIUM_CANDIDATES, shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip("Debian chromium not found at /usr/bin/chromium: run `make browser-deps` (needs root)")


@dataclass
class Site:
    """An indexed colour gallery behind a real server."""

    engine: Engine
    photos: dict[str, list[Path]]


@pytest.fixture(scope="module")
def site(colors_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("web")
    photos: dict[str, list[Path]] = {}
    for c, color in enumerate(COLORS):
        (base / "photos" / color).mkdir(parents=True)
        photos[color] = []
        for i in range(COPIES):
            path = base / "photos" / color / f"{color} {i}.png"
            color_image(color, seed=9000 + 10 * c + i, size=(96, 72)).save(path)
            photos[color].append(path)
    encoder = load_encoder(colors_model, device="cpu")
    index_folders([base / "photos"], base / "index", encoder)
    add_texts(base / "index", encoder, [caption_for(c) for c in COLORS], source="test")
    with Engine.open(base / "index", device="cpu") as engine:
        yield Site(engine, photos)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Chromium with a fresh profile (module-scoped: launching costs ~1-2 s)."""
    executable = find_chromium()
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1100, "height": 760},
        )
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()


@pytest.fixture
def page(browser_context: Any) -> Iterator[Any]:
    tab = browser_context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    tab.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


@dataclass(frozen=True)
class Shown:
    """One result as the page shows it: the card's image id, the file or caption text, the score."""

    id: int
    label: str
    score: str


def shown(page: Any, items: str, label: str) -> list[Shown]:
    """A result list top to bottom: `items` selects its entries, `label` the text in each."""
    rows = page.eval_on_selector_all(
        items,
        "(items, label) => items.map((li) => [li.dataset.id, li.querySelector(label).textContent,"
        " li.querySelector('.score').textContent])",
        label,
    )
    return [Shown(int(id_), text, score) for id_, text, score in rows]


def shown_images(page: Any) -> list[Shown]:
    return shown(page, "#results li.result", ".name")


def shown_captions(page: Any) -> list[Shown]:
    return shown(page, "#captions li.caption", ".text")


def as_shown(hits: Sequence[ImageHit] | Sequence[TextHit]) -> list[Shown]:
    """What the page must show for the engine's hits: file name (or caption) and a 3-digit score."""
    return [
        Shown(h.id, Path(h.path).name if isinstance(h, ImageHit) else h.text, f"{h.score:.3f}")
        for h in hits
    ]


# Predicates are written as functions: Playwright evaluates a bare expression with eval() on
# every poll, which the page's Content-Security-Policy (no 'unsafe-eval') rightly refuses.
def wait_for_first(page: Any, image_id: int) -> None:
    """Until the grid's first card is image_id and its thumbnail has decoded."""
    page.wait_for_function(
        """(id) => {
            const first = document.querySelector('#results li.result');
            const img = first && first.querySelector('img');
            return first && first.dataset.id === String(id) && img.complete && img.naturalWidth > 0;
        }""",
        arg=image_id,
    )


def image_id_of(engine: Engine, path: Path) -> int:
    return next(h.id for h in engine.search_image(path, k=1))


def names(paths: Sequence[Path]) -> set[str]:
    return {p.name for p in paths}


def shows_similar_to_file(page: Any, site: Site, photo: Path) -> list[Shown]:
    """After a gallery file was picked or dropped: the engine's answer for it, its own indexed
    copy first and the rest of its colour next, and the file named in the query line."""
    wait_for_first(page, image_id_of(site.engine, photo))
    shown = shown_images(page)
    assert shown == as_shown(site.engine.search_image(photo, k=PAGE_K))
    assert shown[0].label == photo.name
    assert {s.label for s in shown[:COPIES]} == names(site.photos[photo.parent.name])
    assert page.inner_text("#query-label") == f"Similar to your image “{photo.name}”"
    return shown


def test_search_by_sentence_by_upload_and_by_click(site: Site, page: Any) -> None:
    engine = site.engine
    everything = len(COLORS) * COPIES
    with serve(create_app(engine)) as base:
        page.goto(base + "/")
        page.wait_for_function("() => document.querySelector('#stats').textContent.includes('12 images')")
        assert page.inner_text("#stats") == f"{everything} images · {len(COLORS)} captions"

        # Type a sentence: every image, a red file first, each with its name and score.
        page.fill("#q", "a red image")
        page.press("#q", "Enter")
        expected = engine.search_text("a red image", k=PAGE_K)
        wait_for_first(page, expected[0].id)
        shown = shown_images(page)
        assert len(shown) == everything
        assert shown == as_shown(expected)
        assert {s.label for s in shown[:COPIES]} == names(site.photos["red"])
        assert page.inner_text("#status").startswith(f"{everything} images in ")
        assert page.is_hidden("#query-line") and shown_captions(page) == []
        all_loaded = "() => [...document.querySelectorAll('#results img')].every((i) => i.naturalWidth)"
        page.wait_for_function(all_loaded)

        # Pick a file: its own indexed copy first, then the rest of its colour.
        upload = site.photos["blue"][1]
        page.set_input_files("#file", str(upload))
        shown = shows_similar_to_file(page, site, upload)

        # Click a result: search by that indexed image, named in the query line.
        clicked = shown[COPIES]
        page.locator("#results li.result").nth(COPIES).locator("button.thumb").click()
        wait_for_first(page, clicked.id)
        shown = shown_images(page)
        assert shown == as_shown(engine.search_by_id(clicked.id, k=PAGE_K))
        assert shown[0].label == clicked.label
        assert page.inner_text("#query-label") == f"Similar to {clicked.label}"

        # Image to text: the captions view lists every caption, the clicked colour's first.
        clicked_color = Path(engine.get_image(clicked.id).path).parent.name
        page.check("input[name=to][value=text]")
        page.wait_for_selector("#captions li.caption")
        captions = shown_captions(page)
        assert captions == as_shown(engine.search_by_id(clicked.id, k=PAGE_K, to="text"))
        assert captions[0].label == caption_for(clicked_color)
        assert sorted(c.label for c in captions) == sorted(caption_for(c) for c in COLORS)
        assert shown_images(page) == []
        assert page.inner_text("#status").startswith(f"{len(COLORS)} captions in ")
        page.check("input[name=to][value=image]")
        wait_for_first(page, clicked.id)
        assert shown_captions(page) == [] and len(shown_images(page)) == everything

        # Drag and drop a file onto the page.
        dropped = site.photos["yellow"][2]
        page.evaluate(
            """([name, data]) => {
                const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
                const transfer = new DataTransfer();
                transfer.items.add(new File([bytes], name, { type: 'image/png' }));
                document.body.dispatchEvent(new DragEvent('drop', { dataTransfer: transfer, bubbles: true }));
            }""",
            [dropped.name, base64.b64encode(dropped.read_bytes()).decode()],
        )
        shows_similar_to_file(page, site, dropped)


def test_errors_are_shown_on_the_page(site: Site, page: Any) -> None:
    with serve(create_app(site.engine)) as base:
        page.goto(base + "/")
        page.set_input_files(
            "#file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not pixels at all"}]
        )
        page.wait_for_selector("#error:not([hidden])")
        assert "notes.png" in page.inner_text("#error") and "not an image" in page.inner_text("#error")
        assert page.locator("#results li").count() == 0

        page.fill("#q", "   ")
        page.press("#q", "Enter")
        page.wait_for_function(
            "() => document.querySelector('#error').textContent.includes('Type a sentence')"
        )
        assert page.inner_text("#error") == "Type a sentence describing the picture, or drop an image."
        assert shown_images(page) == [] and page.inner_text("#status") == ""


def test_a_token_protected_server_asks_for_the_token(site: Site, page: Any) -> None:
    with serve(create_app(site.engine, ServiceSettings(token=TOKEN))) as base:
        page.goto(base + "/")
        page.wait_for_selector("#token-form:not([hidden])")
        page.fill("#token", "wrong-token")
        page.click("#token-form button")
        page.fill("#q", "a green image")
        page.press("#q", "Enter")
        page.wait_for_selector("#error:not([hidden])")
        assert "token" in page.inner_text("#error")

        page.fill("#token", TOKEN)
        page.click("#token-form button")
        wait_for_first(page, site.engine.search_text("a green image", k=1)[0].id)
        assert page.is_hidden("#token-form") and page.is_hidden("#error")
        assert page.evaluate("sessionStorage.getItem('mmsearch-token')") == TOKEN
