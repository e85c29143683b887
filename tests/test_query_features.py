"""Query features: arithmetic, relevance cut-off and calibration, output modes, hybrid documents."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import sqlite3
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import COLORS, color_image
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from typer.testing import CliRunner

from indexer.indexing import calibration as calib
from indexer.indexing.fusion import Fusion, FusionError
from indexer.indexing.pipeline import index_folders, remove_images
from indexer.media import own_text as doc_text
from indexer.models.encoder import Encoder, load_encoder
from indexer.store.catalog import CATALOG_FILE
from indexer.store.index_dir import DOC_TEXTS_FAISS, IMAGES_FAISS, IndexWriter
from indexer.store.vectors import VectorStore
from mmsearch import preview
from mmsearch.cli import app
from mmsearch.engine import MAX_K, Engine, ImageHit, QueryError, SearchResults, TextHit
from mmsearch.query import Query, QuerySpecError, QueryTerm, build_terms, combine, parse_weighted

QUERY = "a red image"
XMP = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
    'xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:description><rdf:Alt>'
    '<rdf:li xml:lang="de">ein Hund</rdf:li><rdf:li xml:lang="x-default">a dog on a beach</rdf:li>'
    "</rdf:Alt></dc:description><dc:subject><rdf:Bag><rdf:li>dog</rdf:li><rdf:li>beach</rdf:li>"
    "</rdf:Bag></dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>"
)


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder(colors_model: Path) -> Encoder:
    return load_encoder(colors_model, device="cpu")


def write_gallery(root: Path) -> dict[str, Path]:
    """Two noisy images per colour, plus two byte-identical blue twins."""
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for c, color in enumerate(COLORS):
        for copy in range(2):
            paths[f"{color}{copy}"] = root / f"{color}{copy}.png"
            color_image(color, seed=700 + 10 * c + copy).save(paths[f"{color}{copy}"])
    paths["twin_a"] = root / "twin_a.png"
    color_image("blue", seed=799).save(paths["twin_a"])
    paths["twin_b"] = root / "twin_b.png"
    shutil.copyfile(paths["twin_a"], paths["twin_b"])
    return paths


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_gallery(tmp_path_factory.mktemp("qf") / "photos")


@pytest.fixture(scope="module")
def index_dir(
    gallery: dict[str, Path], encoder: Encoder, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The gallery indexed; twin_a (a blue image) carries the own text "a red image"."""
    out = tmp_path_factory.mktemp("qf-index") / "index"
    report = index_folders(
        [gallery["red0"].parent], out, encoder, captions={str(gallery["twin_a"]): QUERY}
    )
    assert report.own_texts == 1 and report.calibrated
    return out


@pytest.fixture(scope="module")
def engine(index_dir: Path) -> Engine:
    with Engine.open(index_dir, device="cpu") as opened:
        yield opened


def run_cli(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def state(index_dir: Path, dim: int) -> dict[str, set[int]]:
    """Image rows, own-text rows and the ids of both FAISS files."""
    with sqlite3.connect(index_dir / CATALOG_FILE) as conn:
        images = {r[0] for r in conn.execute("SELECT id FROM images")}
        docs = {r[0] for r in conn.execute("SELECT image_id FROM doc_texts")}
    return {
        "images": images,
        "docs": docs,
        "image_vectors": set(VectorStore.load(index_dir / IMAGES_FAISS, dim=dim).ids().tolist()),
        "doc_vectors": set(VectorStore.load(index_dir / DOC_TEXTS_FAISS, dim=dim).ids().tolist()),
    }


def assert_consistent(s: dict[str, set[int]]) -> None:
    assert s["image_vectors"] == s["images"]
    assert s["doc_vectors"] == s["docs"] <= s["images"]


# -- query arithmetic ----------------------------------------------------------------------


def test_combine_is_the_normalised_weighted_sum() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(4, 16)).astype(np.float32)
    weights = [1.0, 2.0, -1.0, 0.5]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = np.asarray(weights) @ unit
    expected /= np.linalg.norm(expected)
    got = combine(vectors, weights)
    assert got.dtype == np.float32 and got.shape == (16,)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_engine_query_vector_is_the_weighted_sum_of_its_terms(
    engine: Engine, encoder: Encoder, gallery: dict[str, Path]
) -> None:
    terms = build_terms(
        QUERY, add=["2:a blue image"], subtract=["a green image"], add_image=[f"0.5:{gallery['yellow0']}"]
    )
    assert [(t.kind, t.weight) for t in terms] == [("text", 1), ("text", 2), ("text", -1), ("image", 0.5)]
    texts = encoder.encode_texts([QUERY, "a blue image", "a green image"])
    image = engine.encode_query_image(gallery["yellow0"])
    expected = texts[0] + 2 * texts[1] - texts[2] + 0.5 * image
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(engine.encode_terms(terms), expected, atol=1e-5)
    # And the search ranks by that vector: the top hit is the best inner product.
    hits = engine.search_mixed(terms, k=1, text_weight=0)
    vectors = VectorStore.load(engine.index_dir / IMAGES_FAISS, dim=engine.info.dim)
    best = max(float(vectors.reconstruct(i) @ expected) for i in vectors.ids().tolist())
    assert hits[0].score == pytest.approx(best, abs=1e-4)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("2:sunset", (2.0, "sunset")),
        ("0.5:a red car", (0.5, "a red car")),
        ("sunset", (1.0, "sunset")),
        ("note: at noon", (1.0, "note: at noon")),
    ],
)
def test_weight_parsing(spec: str, expected: tuple[float, str]) -> None:
    assert parse_weighted(spec) == expected


@pytest.mark.parametrize("spec", ["2:", "2:  ", "0:sunset", "-1:sunset", "nan:x", "inf:x", "", "  "])
def test_bad_weights_are_refused(spec: str) -> None:
    with pytest.raises(QuerySpecError):
        parse_weighted(spec)


def test_subtract_only_and_cancelling_queries_are_refused(engine: Engine) -> None:
    with pytest.raises(QueryError, match="only subtractions"):
        engine.search_mixed([QueryTerm("text", QUERY, -1.0)])
    with pytest.raises(QueryError, match="cancel"):
        engine.search_mixed([QueryTerm("text", QUERY, 1.0), QueryTerm("text", QUERY, -1.0)])
    with pytest.raises(QuerySpecError):
        QueryTerm("text", QUERY, 0.0)


def test_cli_arithmetic_errors(index_dir: Path) -> None:
    code, out, err = run_cli("search", "--subtract", "red", "--db", index_dir, "--device", "cpu")
    assert code == 1 and out == "" and "only subtractions" in err
    code, out, err = run_cli("search", QUERY, "--add", "0:blue", "--db", index_dir, "--device", "cpu")
    assert code == 2 and out == "" and "positive" in err


# -- output ---------------------------------------------------------------------------------


def test_paths_only_prints_exactly_the_paths(index_dir: Path) -> None:
    base = ("search", QUERY, "-k", "3", "--db", index_dir, "--device", "cpu")
    code, out, _ = run_cli(*base, "--json")
    paths = [h["path"] for h in json.loads(out)["results"]]
    code, out, _ = run_cli(*base, "--paths-only")
    assert code == 0 and out == "".join(p + "\n" for p in paths)
    code, out, _ = run_cli(*base, "--paths-only", "--json")
    assert code == 2


def test_preview_falls_back_to_plain_output_off_a_terminal(
    index_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TERM_PROGRAM", "iTerm.app")
    base = ("search", QUERY, "-k", "2", "--db", index_dir, "--device", "cpu")
    assert run_cli(*base, "--preview")[1] == run_cli(*base)[1]


def test_preview_protocol_detection_and_encodings(gallery: dict[str, Path]) -> None:
    assert preview.detect({"TERM_PROGRAM": "iTerm.app"}, is_tty=True) == "iterm"
    assert preview.detect({"KITTY_WINDOW_ID": "1", "TERM": "xterm-kitty"}, is_tty=True) == "kitty"
    assert preview.detect({"TERM": "mlterm"}, is_tty=True) == "sixel"
    assert preview.detect({"TERM_PROGRAM": "iTerm.app"}, is_tty=False) is None
    assert preview.detect({"TERM_PROGRAM": "iTerm.app", "TMUX": "/tmp/x"}, is_tty=True) is None
    assert preview.detect({"TERM": "xterm-256color"}, is_tty=True) is None
    assert preview.render(gallery["red0"], "iterm").startswith("\x1b]1337;File=inline=1")
    kitty = preview.render(gallery["red0"], "kitty")
    assert kitty.startswith("\x1b_Ga=T,f=100") and kitty.endswith("\x1b\\\n")
    assert preview.render(gallery["red0"], "sixel").startswith("\x1bPq")
    assert preview.render(gallery["red0"].parent / "missing.png", "kitty") == ""


# -- relevance cut-off ------------------------------------------------------------------------


def test_min_score_filters_by_raw_score(engine: Engine, index_dir: Path) -> None:
    everything = engine.search_text(QUERY, k=10, text_weight=0)
    threshold = (everything[2].score + everything[3].score) / 2
    kept = engine.search_text(QUERY, k=10, text_weight=0, min_score=threshold)
    assert [h.id for h in kept] == [h.id for h in everything[:3]]
    assert [h.rank for h in kept] == [1, 2, 3]
    code, out, _ = run_cli(
        "search", QUERY, "--min-score", threshold, "--text-weight", "0", "--json",
        "--db", index_dir, "--device", "cpu",
    )
    assert code == 0
    assert [h["id"] for h in json.loads(out)["results"]] == [h.id for h in everything[:3]]


def test_calibration_is_recorded_and_decides_relevance(engine: Engine, index_dir: Path) -> None:
    cal = engine.calibration()
    assert cal is not None and cal.images == 10 and cal.doc_texts == 1
    for stats in (cal.text_image, cal.image_image, cal.text_doc):
        assert stats is not None and stats.n > 1000 and stats.p50 <= stats.p90 <= stats.p99
    assert len(cal.fused) == len(calib.FUSION_GRID)
    results = engine.search_scored([QueryTerm("text", QUERY)], k=10, text_weight=0)
    assert results.relevance is not None
    for hit, rel in zip(results.hits, results.relevance, strict=True):
        assert rel.likely_relevant == (hit.score >= cal.text_image.p99)
        assert rel.z == pytest.approx(cal.text_image.z(hit.score), abs=0.01)
    relevant = engine.search_text(QUERY, k=10, text_weight=0, relevant=True)
    assert [h.id for h in relevant] == [
        h.id for h, r in zip(results.hits, results.relevance, strict=True) if r.likely_relevant
    ]
    assert {Path(h.path).name for h in relevant} >= {"red0.png", "red1.png"}
    assert all(h.score >= cal.text_image.p99 for h in relevant)
    code, out, err = run_cli(
        "search", QUERY, "--min-score", "auto", "--text-weight", "0", "--json",
        "--db", index_dir, "--device", "cpu",
    )
    data = json.loads(out)
    assert [h["id"] for h in data["results"]] == [h.id for h in relevant]
    assert [r["likely_relevant"] for r in data["relevance"]] == [True] * len(relevant)
    code, out, err = run_cli("search", QUERY, "--text-weight", "0", "--db", index_dir, "--device", "cpu")
    assert code == 0
    marked = [line.split()[2] for line in out.splitlines() if line.split()[1].endswith("*")]
    assert marked == [h.path for h in relevant] and "likely relevant" in err


def test_index_without_calibration_or_own_texts_still_searches(
    index_dir: Path, tmp_path: Path
) -> None:
    """An index from before these features: no calibration row, no doc_texts table or file."""
    old = tmp_path / "old"
    shutil.copytree(index_dir, old)
    with sqlite3.connect(old / CATALOG_FILE) as conn:
        conn.execute("DELETE FROM index_info WHERE key = ?", (calib.CALIBRATION_KEY,))
        conn.execute("DROP TABLE doc_texts")
    (old / DOC_TEXTS_FAISS).unlink()
    with Engine.open(old, device="cpu") as eng:
        assert eng.calibration() is None and eng.doc_text(1) is None
        results = eng.search_scored([QueryTerm("text", QUERY)], k=3)
        assert len(results.hits) == 3 and results.relevance is None
        with pytest.raises(QueryError, match="calibrat"):
            eng.search_text(QUERY, relevant=True)
        eng.calibrate()  # on demand: takes the writer lock, recreates the table, records it
        assert eng.calibration() is not None
        assert eng.search_scored([QueryTerm("text", QUERY)], k=3).relevance is not None


# -- own text extraction ------------------------------------------------------------------------


def _jpeg_with_iptc(image: Image.Image, caption: bytes, keywords: list[bytes]) -> bytes:
    """A JPEG whose APP13 Photoshop block carries IPTC caption (2:120) and keywords (2:25)."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    data = buffer.getvalue()
    datasets = b"".join(
        b"\x1c\x02" + bytes([tag]) + struct.pack(">H", len(value)) + value
        for tag, value in [(120, caption)] + [(25, k) for k in keywords]
    )
    if len(datasets) % 2:
        datasets += b"\x00"
    block = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(datasets)) + datasets
    payload = b"Photoshop 3.0\x00" + block
    segment = b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + segment + data[2:]


def test_own_text_sources(tmp_path: Path) -> None:
    image = color_image("red", seed=1)
    plain = tmp_path / "plain.png"
    image.save(plain)
    assert doc_text.own_text(str(plain)) is None

    sidecar = tmp_path / "side.jpg"
    image.save(sidecar)
    (tmp_path / "side.txt").write_text("  a red square\non white \n", encoding="utf-8")
    own = doc_text.own_text(str(sidecar))
    assert own is not None and (own.text, own.source) == ("a red square on white", "sidecar")
    assert own.sidecar_mtime_ns == (tmp_path / "side.txt").stat().st_mtime_ns
    long_form = tmp_path / "other.png"
    image.save(long_form)
    (tmp_path / "other.png.txt").write_text("second form", encoding="utf-8")
    assert doc_text.own_text(str(long_form)).text == "second form"  # type: ignore[union-attr]

    exif_file = tmp_path / "exif.jpg"
    exif = Image.Exif()
    exif[doc_text.EXIF_IMAGE_DESCRIPTION] = "a red car at night"
    exif[doc_text.EXIF_XP_KEYWORDS] = "car;night".encode("utf-16-le") + b"\x00\x00"
    image.save(exif_file, exif=exif)
    own = doc_text.own_text(str(exif_file))
    assert own is not None and own.source == "metadata"
    assert own.text == "a red car at night; car, night"

    camera = tmp_path / "camera.jpg"
    exif = Image.Exif()
    exif[doc_text.EXIF_IMAGE_DESCRIPTION] = "OLYMPUS DIGITAL CAMERA         "
    image.save(camera, exif=exif)
    assert doc_text.own_text(str(camera)) is None  # a camera's placeholder is not a description

    xmp_png = tmp_path / "xmp.png"
    info = PngInfo()
    info.add_itxt("XML:com.adobe.xmp", XMP)
    image.save(xmp_png, pnginfo=info)
    assert doc_text.embedded_text(str(xmp_png)) == "a dog on a beach; dog, beach"
    xmp_jpeg = tmp_path / "xmp.jpg"
    image.save(xmp_jpeg, xmp=XMP.encode())
    assert doc_text.embedded_text(str(xmp_jpeg)) == "a dog on a beach; dog, beach"

    iptc = tmp_path / "iptc.jpg"
    iptc.write_bytes(_jpeg_with_iptc(image, "Sunset über dem Meer".encode(), [b"sea", b"sunset"]))
    assert doc_text.embedded_text(str(iptc)) == "Sunset über dem Meer; sea, sunset"

    given = doc_text.own_text(str(sidecar), caption="given wins")
    assert given is not None and (given.text, given.source) == ("given wins", "caption")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    assert doc_text.embedded_text(str(broken)) is None


def test_captions_file(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text(
        '{"image": "a.png", "caption": "one"}\n\n{"path": "/x/b.png", "text": "two"}\n'
        '{"image": "a.png", "caption": "three"}\n',
        encoding="utf-8",
    )
    assert doc_text.read_captions(tmp_path / "c.jsonl") == {
        str(tmp_path / "a.png"): "one; three",
        "/x/b.png": "two",
    }
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png"}\n', encoding="utf-8")
    with pytest.raises(doc_text.CaptionsFileError, match=r"bad\.jsonl:1"):
        doc_text.read_captions(tmp_path / "bad.jsonl")


# -- hybrid scoring ---------------------------------------------------------------------------


def test_own_text_lifts_a_document_whose_image_is_equally_similar(
    engine: Engine, encoder: Encoder, gallery: dict[str, Path]
) -> None:
    """twin_a and twin_b are the same blue picture; only twin_a says "a red image"."""
    hits = {Path(h.path).name: h for h in engine.search_text(QUERY, k=10)}
    query = encoder.encode_texts([QUERY])[0]
    image_score = float(engine.encode_query_image(gallery["twin_b"]) @ query)
    assert hits["twin_a.png"].rank < hits["twin_b.png"].rank
    assert hits["twin_b.png"].score == pytest.approx(image_score, abs=1e-3)  # image alone, no penalty
    image_only = {Path(h.path).name: h for h in engine.search_text(QUERY, k=10, text_weight=0)}
    assert image_only["twin_a.png"].score == pytest.approx(image_only["twin_b.png"].score, abs=1e-4)
    for name, hit in image_only.items():
        if name != "twin_a.png":  # every document without own text keeps its exact score
            assert hits[name].score == pytest.approx(hit.score, abs=1e-4)
    assert engine.doc_text(hits["twin_a.png"].id) == QUERY


# Own texts of the fusion test: one that says exactly what the query says, one that contradicts it.
OWN_TEXTS = {"twin_a": QUERY, "red0": "a green image"}
FUSION_WEIGHTS = (0.0, 0.2, 0.5, 1.0)


def test_fused_score_is_the_weighted_sum_of_image_and_shifted_own_text_similarity(
    encoder: Encoder, gallery: dict[str, Path], tmp_path: Path
) -> None:
    """The documented rule (search --help, benchmarks/FUSION.md): a sentence query scores an image
    with own text (1 - w) * image similarity + w * own-text similarity, the text similarity first
    shifted by the index's random-pair means (text/image minus text/own-text), matching or not."""
    index = tmp_path / "index"
    captions = {str(gallery[name]): text for name, text in OWN_TEXTS.items()}
    index_folders([gallery["red0"].parent], index, encoder, captions=captions)
    with Engine.open(index, device="cpu") as engine:
        cal = engine.calibration()
        assert cal is not None and cal.text_doc is not None
        shift = cal.text_image.mean - cal.text_doc.mean
        query = engine.encode_query_text(QUERY)
        scores = {
            w: {Path(h.path).stem: h.score for h in engine.search_text(QUERY, k=len(gallery), text_weight=w)}
            for w in FUSION_WEIGHTS
        }
        for name, own_text in OWN_TEXTS.items():
            image_similarity = float(engine.encode_query_image(gallery[name]) @ query)
            text_similarity = float(engine.encode_query_text(own_text) @ query)
            for w in FUSION_WEIGHTS:
                expected = (1 - w) * image_similarity + w * (text_similarity + shift)
                assert scores[w][name] == pytest.approx(expected, abs=1e-3), (name, w)
    # Known by hand: an own text equal to the query has similarity 1, so at w = 1 twin_a scores
    # 1 + shift; red0's contradicting text pulls it below its image score (not "never below").
    assert scores[1.0]["twin_a"] == pytest.approx(1.0 + shift, abs=1e-3)
    assert scores[0.5]["red0"] < scores[0.0]["red0"] - 0.05
    # Images without own text keep their image similarity at every weight.
    for name in ("red1", "green0", "twin_b"):
        assert {scores[w][name] for w in FUSION_WEIGHTS} == {scores[0.0][name]}


# -- one search entry ---------------------------------------------------------------------------


def fused_reference(
    index_dir: Path, vector: np.ndarray, *, weight: float, image_mean: float, text_mean: float
) -> dict[int, float]:
    """Every image's score for a query vector, from all stored vectors with NumPy: the image
    similarity, fused linearly with the own-text similarity shifted by the random-pair means."""
    dim = len(vector)
    image_ids, image_vectors = VectorStore.load(index_dir / IMAGES_FAISS, dim=dim).all_vectors()
    doc_ids, doc_vectors = VectorStore.load(index_dir / DOC_TEXTS_FAISS, dim=dim).all_vectors()
    scores = {int(i): float(v @ vector) for i, v in zip(image_ids, image_vectors, strict=True)}
    for i, v in zip(doc_ids.tolist(), doc_vectors, strict=True):
        text = float(v @ vector) - text_mean + image_mean
        scores[i] = (1 - weight) * scores[i] + weight * text
    return scores


def scores_of(hits: list[ImageHit] | list[TextHit]) -> dict[int, float]:
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    return {h.id: h.score for h in hits}


def test_one_frozen_query_value_answers_text_and_image_searches(
    engine: Engine, index_dir: Path, gallery: dict[str, Path]
) -> None:
    cal = engine.calibration()
    assert cal is not None and cal.text_doc is not None and cal.image_image is not None
    everything = 10  # every image: no tie can fall on the cut
    by_text = Query((QueryTerm("text", QUERY),), k=everything)
    with pytest.raises(dataclasses.FrozenInstanceError):
        by_text.k = 3  # type: ignore[misc]
    text_vector = engine.encode_query_text(QUERY)
    expected = fused_reference(
        index_dir, text_vector, weight=0.2, image_mean=cal.text_image.mean, text_mean=cal.text_doc.mean
    )
    assert scores_of(engine.search(by_text).hits) == pytest.approx(expected, abs=1e-4)

    image = gallery["green0"]
    image_vector = engine.encode_query_image(image)
    by_image = Query((QueryTerm("image", image),), k=everything)
    expected = fused_reference(
        index_dir, image_vector, weight=0.2, image_mean=cal.image_image.mean, text_mean=cal.text_image.mean
    )
    assert scores_of(engine.search(by_image).hits) == pytest.approx(expected, abs=1e-4)
    pixels_only = dataclasses.replace(by_image, fusion=Fusion(0.0))
    expected = fused_reference(index_dir, image_vector, weight=0.0, image_mean=0, text_mean=0)
    assert scores_of(engine.search(pixels_only).hits) == pytest.approx(expected, abs=1e-4)

    # The wrappers are these queries.
    green_id = next(h.id for h in engine.search(by_image).hits if h.path == str(image.resolve()))
    same = [
        (
            engine.search_text(QUERY, k=4, text_weight=0.5),
            Query((QueryTerm("text", QUERY),), k=4, fusion=Fusion(0.5)),
        ),
        (engine.search_image(image, k=everything), by_image),
        (engine.search_image(image, k=5, text_weight=0), dataclasses.replace(pixels_only, k=5)),
        (engine.search_by_id(green_id, k=3), Query((QueryTerm("image", green_id),), k=3)),
        (engine.search_texts(QUERY, k=2), Query((QueryTerm("text", QUERY),), to="text", k=2)),
        (
            engine.search_text(QUERY, k=5, under=image.parent, min_score=0.1, relevant=True),
            Query((QueryTerm("text", QUERY),), k=5, under=image.parent, min_score=0.1, relevant=True),
        ),
    ]
    for hits, query in same:
        assert hits == engine.search(query).hits, query
    # An indexed image by id scores like the same file decoded again.
    by_id = engine.search(Query((QueryTerm("image", green_id),), k=everything))
    assert scores_of(by_id.hits) == pytest.approx(scores_of(engine.search(by_image).hits), abs=2e-3)
    assert engine.search(dataclasses.replace(by_text, under=image.parent / "elsewhere")).hits == []


def test_image_queries_fuse_own_text_and_carry_relevance(
    engine: Engine, encoder: Encoder, gallery: dict[str, Path], index_dir: Path
) -> None:
    """twin_a, a blue picture whose own text says "a red image", rises above the yellow images
    for a red query image once its own text counts; twin_b (the same picture, no text) stays."""
    cal = engine.calibration()
    assert cal is not None and cal.image_image is not None
    query = Query((QueryTerm("image", gallery["red0"]),), k=10)
    pixels = engine.search(dataclasses.replace(query, fusion=Fusion(0.0)))
    fused = engine.search(query)
    names = [Path(h.path).name for h in pixels.hits]
    assert names.index("twin_a.png") > names.index("yellow0.png")
    assert names.index("twin_a.png") > names.index("yellow1.png")
    names = [Path(h.path).name for h in fused.hits]
    assert names.index("twin_a.png") < min(names.index("yellow0.png"), names.index("yellow1.png"))

    before = {Path(h.path).name: h for h in pixels.hits}
    after = {Path(h.path).name: h for h in fused.hits}
    assert after["twin_b.png"].score == before["twin_b.png"].score  # no own text: untouched
    vector = engine.encode_query_image(gallery["red0"])
    s_img = float(engine.encode_query_image(gallery["twin_a"]) @ vector)
    s_txt = float(encoder.encode_texts([QUERY])[0] @ vector)
    expected = 0.8 * s_img + 0.2 * (s_txt - cal.text_image.mean + cal.image_image.mean)
    assert after["twin_a.png"].score == pytest.approx(expected, abs=1e-3)

    # Relevance: the fused document against fused scores of random image queries, the others
    # against random image pairs.
    assert len(cal.image_fused) == len(calib.FUSION_GRID) and fused.relevance is not None
    fused_null = cal.fused_null("image", 0.2)
    assert fused_null is not None
    for hit, relevance in zip(fused.hits, fused.relevance, strict=True):
        null = fused_null if hit.path.endswith("twin_a.png") else cal.image_image
        assert relevance.z == pytest.approx(null.z(hit.score), abs=0.01)
        assert relevance.likely_relevant == (hit.score >= null.p99)

    # The CLI's --image search is the same query.
    code, out, err = run_cli(
        "search", "--image", gallery["red0"], "-k", 10, "--json", "--db", index_dir, "--device", "cpu"
    )
    assert code == 0, err
    assert [h["id"] for h in json.loads(out)["results"]] == [h.id for h in fused.hits]


def test_queries_and_vectors_are_checked(engine: Engine) -> None:
    for bad in (
        lambda: Query((QueryTerm("text", QUERY),), k=0),
        lambda: Query((QueryTerm("text", QUERY),), k=MAX_K + 1),
        lambda: Query((QueryTerm("text", QUERY),), to="audio"),  # type: ignore[arg-type]
        lambda: Query((QueryTerm("text", QUERY),), min_score=float("nan")),
        lambda: QueryTerm("text", 3),
    ):
        with pytest.raises(QuerySpecError):
            bad()
    for weight in (-0.1, 1.5, float("nan")):
        with pytest.raises(FusionError, match="between 0 and 1"):
            Fusion(weight)
    with pytest.raises(QueryError, match="empty query"):
        engine.search(Query(()))

    vector = engine.encode_query_text(QUERY)
    expected = engine.search_text(QUERY, k=5)
    longer = engine.search_vector(vector * 3.0, k=5).hits  # renormalised
    assert [h.id for h in longer] == [h.id for h in expected]
    assert [h.score for h in longer] == pytest.approx([h.score for h in expected], abs=1e-4)
    assert engine.search_vector(vector, k=5).hits == expected  # a unit vector is used as it is
    broken = vector.copy()
    broken[3] = np.nan
    for wrong, words in (
        (vector[:-1], "shape"),
        (np.append(vector, 0.0), "shape"),
        (vector[None, :], "shape"),
        (broken, "not finite"),
        (np.zeros_like(vector), "all zeros"),
    ):
        with pytest.raises(QueryError, match=words):
            engine.search_vector(wrong)
    with pytest.raises(QueryError, match="modality"):
        engine.search_vector(vector, modality="audio")  # type: ignore[arg-type]


def test_calibrations_without_image_fusion_are_read_and_recomputed(engine: Engine) -> None:
    cal = engine.calibration()
    assert cal is not None and cal.image_fused
    data = json.loads(cal.to_json())
    del data["image_fused"]  # as written before image queries were fused
    old = calib.Calibration.from_json(json.dumps(data))
    assert old is not None and old.image_fused == () and old.fused_null("image", 0.2) is None
    assert calib.needs_calibration(old, images=cal.images, doc_texts=cal.doc_texts)
    assert not calib.needs_calibration(cal, images=cal.images, doc_texts=cal.doc_texts)


def test_an_open_engine_sees_what_other_writers_change(encoder: Encoder, tmp_path: Path) -> None:
    """What an Engine keeps between searches (the vector stores per snapshot, the calibration it
    last read) never answers stale: after another writer adds images (and recalibrates),
    rewrites only the calibration, or removes images, the open Engine's next search answers
    exactly as a freshly opened one does."""
    photos, more, index = tmp_path / "photos", tmp_path / "more", tmp_path / "index"
    write_gallery(photos)
    more.mkdir()
    for n in range(6):  # 10 -> 16 images: the index run recalibrates (> RECALIBRATE_FRACTION)
        color_image("red", seed=900 + n).save(more / f"late red{n}.png")
    index_folders([photos], index, encoder, captions={str(photos / "twin_a.png"): QUERY})
    terms = [QueryTerm("text", QUERY)]

    def fresh(**options: object) -> SearchResults:
        with Engine.open(index, device="cpu") as opened:
            return opened.search_scored(terms, k=MAX_K, **options)  # type: ignore[arg-type]

    with Engine.open(index, device="cpu") as reader:
        first_calibration = reader.calibration()
        first = reader.search_scored(terms, k=MAX_K)
        assert first == fresh() and first.relevance is not None

        # Other writers, never through `reader`: an index run, a calibration, a removal.
        report = index_folders([more], index, encoder)
        assert report.new == 6 and report.calibrated
        added = reader.search_scored(terms, k=MAX_K)
        assert added == fresh()
        assert {Path(h.path).parent for h in added.hits} == {photos, more}
        with Engine.open(index, device="cpu") as other:
            added_calibration = other.calibration()
        assert first_calibration is not None and added_calibration is not None
        assert added_calibration.text_image != first_calibration.text_image

        shifted = dataclasses.replace(  # written alone: no vector file changes
            added_calibration,
            text_image=dataclasses.replace(added_calibration.text_image, mean=-3.0, p99=-2.0),
        )
        with IndexWriter(index, encoder.info) as writer, writer.session() as session:
            calib.write_calibration(session, shifted)
            session.commit()
        recalibrated = reader.search_scored(terms, k=MAX_K, text_weight=0)
        assert recalibrated == fresh(text_weight=0)
        assert recalibrated.relevance and all(r.likely_relevant for r in recalibrated.relevance)

        assert remove_images(index, [more]) == 6
        removed = reader.search_scored(terms, k=MAX_K)
        assert removed == fresh()
        assert {Path(h.path).parent for h in removed.hits} == {photos}


# -- indexing own texts: refresh, removal, crash safety ----------------------------------------------


def test_sidecar_edit_refreshes_only_the_text_and_removal_drops_it(
    encoder: Encoder, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    paths = write_gallery(photos)
    index = tmp_path / "index"
    sidecar = photos / "green0.txt"
    sidecar.write_text("a yellow image", encoding="utf-8")
    first = index_folders([photos], index, encoder)
    assert first.own_texts == 1 and not any(s.path == str(sidecar) for s in first.skipped)
    with Engine.open(index, device="cpu") as eng:
        green = next(h for h in eng.search_text("a green image", k=10) if h.path.endswith("green0.png"))
        assert eng.doc_text(green.id) == "a yellow image"
    sidecar.write_text("a blue image", encoding="utf-8")
    second = index_folders([photos], index, encoder)
    assert (second.new, second.changed, second.own_texts) == (0, 0, 1)
    with Engine.open(index, device="cpu") as eng:
        assert eng.doc_text(green.id) == "a blue image"  # same row: the image was not re-encoded
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"image": str(paths["red1"]), "caption": QUERY}) + "\n")
    code, out, err = run_cli("index", photos, "--db", index, "--captions", captions, "--device", "cpu")
    assert code == 0, err
    assert "1 images got their own text" in out
    assert_consistent(s := state(index, encoder.info.dim))
    assert len(s["docs"]) == 2
    paths["green0"].unlink()
    index_folders([photos], index, encoder)
    assert_consistent(s := state(index, encoder.info.dim))
    assert len(s["docs"]) == 1  # the removed image's own text and vector went with it


def test_reconcile_keeps_own_text_vectors_consistent(encoder: Encoder, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    paths = write_gallery(photos)
    (photos / "red0.txt").write_text("a red image", encoding="utf-8")
    (photos / "blue0.txt").write_text("a blue image", encoding="utf-8")
    index = tmp_path / "index"
    index_folders([photos], index, encoder)
    dim = encoder.info.dim
    before = state(index, dim)
    assert_consistent(before) and len(before["docs"]) == 2
    # An orphan own-text vector (its transaction never committed) and a lost one.
    docs = VectorStore.load(index / DOC_TEXTS_FAISS, dim=dim)
    lost = min(before["docs"])
    docs.remove([lost])
    docs.add(np.array([9999], np.int64), np.ones((1, dim), np.float32) / np.sqrt(dim))
    docs.save(index / DOC_TEXTS_FAISS)
    with IndexWriter(index, encoder.info) as writer:
        assert writer.repaired == 2
    after = state(index, dim)
    assert_consistent(after)
    assert 9999 not in after["doc_vectors"] and lost not in after["images"]  # re-encoded next run
    report = index_folders([photos], index, encoder)
    assert report.new == 1 and report.own_texts == 1
    assert_consistent(final := state(index, dim))
    assert len(final["docs"]) == 2 and len(final["images"]) == len(paths)


class SimulatedCrash(RuntimeError):
    """Stands in for a kill between the FAISS writes and the SQL commit."""


def _die() -> None:
    raise SimulatedCrash("killed before the SQL commit")


def test_crash_before_sql_commit_leaves_no_own_text_orphans(
    encoder: Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = tmp_path / "photos"
    write_gallery(photos)
    (photos / "yellow1.txt").write_text("a yellow image", encoding="utf-8")
    index = tmp_path / "index"
    original = IndexWriter.commit_vectors

    def crash(self: IndexWriter, session, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs.get("doc_texts") and kwargs["doc_texts"][0]:
            session.commit = _die
        return original(self, session, **kwargs)

    monkeypatch.setattr(IndexWriter, "commit_vectors", crash)
    with pytest.raises(SimulatedCrash):
        index_folders([photos], index, encoder)
    monkeypatch.undo()
    dim = encoder.info.dim
    crashed = state(index, dim)
    assert crashed["doc_vectors"] and not crashed["docs"]  # FAISS written, rows rolled back
    report = index_folders([photos], index, encoder)
    assert report.repaired > 0 and report.own_texts == 1
    assert_consistent(final := state(index, dim))
    assert len(final["docs"]) == 1
