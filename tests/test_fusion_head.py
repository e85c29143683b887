"""Learned fusion: the head trains, scores missing modalities as promised, round-trips through the
model folder, and is chosen by --fusion at index and query time (CLI, Python, HTTP)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import COLORS, color_image
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from indexer.errors import InvalidInputError, ModelError
from indexer.indexing.fusion import DEFAULT_FUSION_METHOD, DEFAULT_TEXT_WEIGHT, Fusion, FusionError
from indexer.indexing.pipeline import IndexOptions, index_folders
from indexer.models import fusion_head as fh
from indexer.models.encoder import load_encoder
from indexer.store.index_dir import read_index_info
from indexer.training import fusion_head as training
from indexer.training.fusion_head import (
    TEXTLESS_WEIGHTS,
    FrozenSplit,
    FusionTrainConfig,
    FusionTrainError,
    FusionTrainReport,
    Protocol,
    TorchFusionHead,
    fusion_recall,
    head_floor,
    head_scorer,
    linear_scorer,
    select_fusion_head,
    selection_key,
    train_fusion_head,
)
from mmsearch.cli import app
from mmsearch.engine import Engine, QueryError
from mmsearch.query import Query, QueryTerm
from mmsearch.service import create_app

QUERY = "a red image"
DIM = 32


def run_cli(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def random_head(*, dim: int = DIM, seed: int = 0, model_id: str = "native:test") -> fh.FusionHead:
    """A head with random weights of the right shapes."""
    config = fh.FusionHeadConfig(dim=dim, model_id=model_id)
    rng = np.random.default_rng(seed)
    arrays = {name: rng.normal(size=config.shape_of(name)).astype(np.float32) for name in fh.ARRAY_SHAPES}
    return fh.FusionHead(config, arrays)


def text_only_head(dim: int, model_id: str) -> fh.FusionHead:
    """A head whose gate is ~1 everywhere: a document with own text scores its own text."""
    head = random_head(dim=dim, model_id=model_id)
    arrays = {k: np.zeros_like(v) for k, v in head.arrays.items()}
    arrays["out_bias"] = np.array([20.0], np.float32)
    arrays["text_scale"] = np.array([1.0], np.float32)
    return fh.FusionHead(head.config, arrays)


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


# -- a synthetic problem where the right answer is known -------------------------------------------


def synthetic_split(rng: np.random.Generator, images: int) -> FrozenSplit:
    """Scenes with a hidden truth vector each: a blurry image of it, and four sharp captions.

    Pixels are weak evidence (noise 1.5x the signal), a caption of the scene is strong evidence.
    Caption 0 of each scene is the canonical one (queried in evaluation).
    """
    truth = rng.normal(size=(images, DIM))
    pixels = unit(truth + 1.5 * rng.normal(size=truth.shape))
    captions = unit(np.repeat(truth, 4, axis=0) + 0.4 * rng.normal(size=(images * 4, DIM)))
    owners = np.repeat(np.arange(images), 4)
    canonical = np.tile([True, False, False, False], images)
    return FrozenSplit(pixels, captions, owners, canonical)


def mixed_own_texts(split: FrozenSplit, rng: np.random.Generator) -> Protocol:
    """A third of the scenes carry one of their captions as own text, a third a caption of some
    other scene (metadata that does not describe the picture), a third nothing."""
    n = len(split.images)
    queries = np.arange(n) * 4  # the canonical caption
    kind = rng.integers(3, size=n)
    own = np.where(kind == 0, queries + 1, -1)
    strangers = ((np.arange(n) + rng.integers(1, n, size=n)) % n) * 4 + 2
    own = np.where(kind == 1, strangers, own)
    return Protocol(queries, own)


@pytest.fixture(scope="module")
def trained() -> tuple[object, FrozenSplit, Protocol]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train, val, test = (synthetic_split(rng, n) for n in (600, 150, 300))
    config = FusionTrainConfig(steps=300, batch_size=128, eval_every=50, noise_text=0.5, lr=1e-2)
    report = train_fusion_head(train, val, model_id="native:synthetic", config=config)
    return report, test, mixed_own_texts(test, rng)


def test_the_head_learns_when_own_text_is_informative_and_beats_linear(trained) -> None:  # type: ignore[no-untyped-def]
    """When half the own texts describe another picture, no single linear weight serves both kinds;
    the gate learns to trust an own text that agrees with the query and ignore one that does not."""
    report, test, plan = trained
    learned = fusion_recall(test, plan, head_scorer(report.head))
    shift = 0.0  # random pairs of this synthetic space average 0 for both kinds
    linear = {w: fusion_recall(test, plan, linear_scorer(w, shift)) for w in np.linspace(0, 1, 11)}
    best = max(linear.values(), key=lambda m: m["all"]["R@1"])
    pixels = linear[0.0]
    assert learned["all"]["R@1"] > best["all"]["R@1"] + 0.05, (learned, best)
    assert learned["without_text"]["R@1"] >= pixels["without_text"]["R@1"] - 0.02
    assert report.best_step > 0  # selection on val kept a trained step, not the linear start
    assert report.head.config.trained["val"] == report.val


def recall(r1: float, r10: float) -> dict[str, float]:
    return {"R@1": r1, "R@5": (r1 + r10) / 2, "R@10": r10}


def test_selection_keeps_the_weight_val_selects_not_the_highest_recall(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Canned val numbers per text-less weight: the weight with the best pooled R@1 loses images
    without own text (below pixels alone), so the next best, which keeps them, is chosen."""
    pixels = recall(0.30, 0.60)
    canned = {
        1.0: {"all": recall(0.50, 0.80), "with_text": recall(0.7, 0.9), "without_text": recall(0.25, 0.60)},
        2.0: {"all": recall(0.45, 0.75), "with_text": recall(0.6, 0.9), "without_text": recall(0.30, 0.61)},
        4.0: {"all": recall(0.40, 0.75), "with_text": recall(0.5, 0.9), "without_text": recall(0.31, 0.62)},
    }
    linear = {"0.0": {"all": pixels, "with_text": pixels, "without_text": pixels}}
    seen: list[float] = []

    def fake_train(train, val, *, model_id, config, provenance=None, on_eval=None):  # type: ignore[no-untyped-def]
        seen.append(config.textless_weight)
        val_metrics = canned[config.textless_weight]
        trained = {"train_config": {"textless_weight": config.textless_weight}, "val": val_metrics}
        config_ = fh.FusionHeadConfig(dim=DIM, model_id=model_id, trained=trained)
        head = fh.FusionHead(config_, random_head(seed=len(seen)).arrays)
        return FusionTrainReport(head, 10 * len(seen), val_metrics, linear, seconds=1.5)

    monkeypatch.setattr(training, "train_fusion_head", fake_train)
    split = synthetic_split(np.random.default_rng(0), 4)
    report = select_fusion_head(
        split,
        split,
        model_id="native:test",
        config=FusionTrainConfig(textless_weight=9.0),
        textless_weights=(1.0, 2.0, 4.0),
    )
    assert seen == [1.0, 2.0, 4.0]  # every weight tried, the config's own replaced
    assert report.head.config.trained["train_config"]["textless_weight"] == 2.0
    assert report.val == canned[2.0] and report.best_step == 20
    assert report.head.config.trained["trials"] == [{"textless_weight": w, "val": canned[w]} for w in seen]
    assert report.seconds == pytest.approx(4.5)
    with pytest.raises(FusionTrainError, match="at least one"):
        select_fusion_head(split, split, model_id="native:test", textless_weights=())


def test_selection_over_real_trainings_records_every_trial() -> None:
    rng = np.random.default_rng(3)
    train, val = synthetic_split(rng, 200), synthetic_split(rng, 80)
    config = FusionTrainConfig(steps=40, batch_size=64, eval_every=20)
    weights = (1.0, 3.0, 9.0)
    report = select_fusion_head(
        train, val, model_id="native:synthetic", config=config, textless_weights=weights
    )
    trained = report.head.config.trained
    assert [t["textless_weight"] for t in trained["trials"]] == list(weights)
    floor = head_floor(report.linear)
    best = max(trained["trials"], key=lambda t: selection_key(t["val"], floor))
    assert report.val == best["val"] == trained["val"]
    assert trained["train_config"]["textless_weight"] == best["textless_weight"]
    assert fusion_recall(val, training.protocol(val, seed=0), head_scorer(report.head)) == report.val


def test_a_document_without_own_text_scores_exactly_its_image_score() -> None:
    head = random_head()
    rng = np.random.default_rng(1)
    query = unit(rng.normal(size=DIM))
    image = rng.uniform(-0.5, 1, size=50).astype(np.float32)
    text = rng.uniform(-0.5, 1, size=50).astype(np.float32)
    text[::2] = np.nan  # every other document has no own text
    fused = head.fuse(query, image, text)
    np.testing.assert_array_equal(fused[::2], image[::2])  # bit for bit
    assert not np.allclose(fused[1::2], image[1::2])
    # Without an image vector, a document scores its aligned own text; with neither, NaN.
    alone = head.fuse(query, np.array([np.nan, np.nan], np.float32), np.array([0.3, np.nan], np.float32))
    assert alone[0] == pytest.approx(float(head.align_text(np.array([0.3], np.float32))[0]))
    assert np.isnan(alone[1])
    # With both, the fused score lies between the image and the aligned text score.
    aligned = head.align_text(text[1::2])
    low, high = np.minimum(image[1::2], aligned), np.maximum(image[1::2], aligned)
    assert np.all((fused[1::2] >= low - 1e-6) & (fused[1::2] <= high + 1e-6))


def test_numpy_head_is_the_trained_torch_head() -> None:
    torch.manual_seed(3)
    module = TorchFusionHead(DIM, query_dim=8, hidden=16, text_shift=-0.1, text_weight=0.3)
    for param in module.parameters():
        torch.nn.init.normal_(param)  # not the linear start: every path of the gate counts
    head = module.export(fh.FusionHeadConfig(dim=DIM, model_id="native:test"))
    rng = np.random.default_rng(3)
    queries = unit(rng.normal(size=(4, DIM)))
    image = rng.uniform(-0.5, 1, size=(4, 6)).astype(np.float32)
    text = rng.uniform(-0.5, 1, size=(4, 6)).astype(np.float32)
    has_image = np.array([True, True, True, True, False, True])
    has_text = np.array([True, False, True, True, True, False])
    with torch.no_grad():
        expected = module(*(torch.from_numpy(a) for a in (queries, image, text, has_image, has_text))).numpy()
    got = np.stack(
        [
            head.fuse(q, np.where(has_image, i, np.nan), np.where(has_text, t, np.nan))
            for q, i, t in zip(queries, image, text, strict=True)
        ]
    )
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_a_head_starts_as_linear_fusion_at_the_default_weight() -> None:
    assert FusionTrainConfig().start_text_weight == DEFAULT_TEXT_WEIGHT  # restated in training
    module = TorchFusionHead(DIM, query_dim=8, hidden=16, text_shift=0.05, text_weight=0.2)
    head = module.export(fh.FusionHeadConfig(dim=DIM, model_id="native:test"))
    rng = np.random.default_rng(4)
    image = rng.uniform(-0.5, 1, size=20).astype(np.float32)
    text = rng.uniform(-0.5, 1, size=20).astype(np.float32)
    expected = linear_scorer(0.2, 0.05)(None, image[None], text[None])[0]  # type: ignore[arg-type]
    np.testing.assert_allclose(head.fuse(unit(rng.normal(size=DIM)), image, text), expected, atol=1e-6)


# -- the artefact ------------------------------------------------------------------------------------


def test_save_and_load_round_trip_and_refusals(tmp_path: Path) -> None:
    head = random_head(model_id="native:abc")
    head = fh.FusionHead(
        fh.FusionHeadConfig(**{**head.config.__dict__, "trained": {"best_step": 7}}), head.arrays
    )
    with pytest.raises(fh.NoFusionHeadError, match="mmsearch train-fusion"):
        fh.load_fusion_head(str(tmp_path), "native:abc")
    assert not fh.has_fusion_head(str(tmp_path), "native:abc")
    head.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {fh.HEAD_WEIGHTS_FILE, fh.HEAD_CONFIG_FILE}
    loaded = fh.load_fusion_head(str(tmp_path), "native:abc")
    assert loaded.config == head.config
    for name, array in head.arrays.items():
        np.testing.assert_array_equal(loaded.arrays[name], array)
    assert json.loads((tmp_path / fh.HEAD_CONFIG_FILE).read_text())["format"] == fh.HEAD_FORMAT

    with pytest.raises(fh.FusionHeadError, match="train-fusion") as stale:
        fh.load_fusion_head(str(tmp_path), "native:retrained")
    assert isinstance(stale.value, ModelError)
    with pytest.raises(fh.NoFusionHeadError, match="model folder") as spec:
        fh.load_fusion_head("openclip:ViT-B-32", "openclip:x")
    assert isinstance(spec.value, InvalidInputError)
    (tmp_path / fh.HEAD_WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(fh.FusionHeadError, match="unreadable"):
        fh.load_fusion_head(str(tmp_path), "native:abc")
    with pytest.raises(fh.FusionHeadError, match="shape"):
        fh.FusionHead(head.config, {**head.arrays, "query_bias": np.zeros(3, np.float32)})


def test_a_text_weight_means_linear_fusion() -> None:
    assert Fusion.weighted(None).method is None  # the index's method
    assert Fusion.weighted(0.4).method == "linear"
    assert Fusion.weighted(None, "learned").method == "learned"
    with pytest.raises(FusionError, match="text weight"):
        Fusion.weighted(0.4, "learned")
    with pytest.raises(FusionError, match="linear, learned"):
        Fusion(method="attention")  # type: ignore[arg-type]
    assert Fusion().resolved("learned").method == "learned"
    assert Fusion().resolved(None).method == "linear"
    assert Fusion(method="linear").resolved("learned").method == "linear"


# -- through the index, the engine, the CLI and HTTP -------------------------------------------------


@pytest.fixture(scope="module")
def plain_model(colors_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the colours model without a head (the session fixture stays untouched)."""
    out = tmp_path_factory.mktemp("plain-model") / "model"
    shutil.copytree(colors_model, out, ignore=shutil.ignore_patterns("fusion_head.*", "last"))
    return out


@pytest.fixture(scope="module")
def headed_model(colors_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the colours model with a text-only head: a document with own text scores it."""
    out = tmp_path_factory.mktemp("headed-model") / "model"
    shutil.copytree(colors_model, out, ignore=shutil.ignore_patterns("fusion_head.*", "last"))
    info = load_encoder(out, device="cpu").info
    text_only_head(info.dim, info.model_id).save(out)
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two noisy images per colour, plus a blue one whose own text says it is red."""
    root = tmp_path_factory.mktemp("fusion-photos") / "photos"
    root.mkdir()
    for c, color in enumerate(COLORS):
        for copy in range(2):
            color_image(color, seed=900 + 10 * c + copy).save(root / f"{color}{copy}.png")
    color_image("blue", seed=999).save(root / "liar.png")
    return root


def build_index(photos: Path, model: Path, out: Path, fusion: str | None) -> None:
    encoder = load_encoder(model, device="cpu")
    captions = {str(photos / "liar.png"): QUERY}
    index_folders([photos], out, encoder, options=IndexOptions(fusion=fusion), captions=captions)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def learned_index(photos: Path, headed_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("learned-index") / "index"
    build_index(photos, headed_model, out, "learned")
    return out


def offered_methods(client: TestClient) -> list[list[str]]:
    """The fusion methods /openapi.json offers for GET /search and POST /search/vector."""
    schema = client.get("/openapi.json").json()
    param = next(p for p in schema["paths"]["/search"]["get"]["parameters"] if p["name"] == "fusion")
    body = schema["components"]["schemas"]["VectorSearchRequest"]["properties"]["fusion"]
    return [option["anyOf"][0]["enum"] for option in (param["schema"], body)]


def names(hits: list) -> list[str]:  # type: ignore[type-arg]
    return [Path(h.path).name for h in hits]


def test_learned_fusion_needs_a_head_and_says_how_to_train_one(
    photos: Path, plain_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "index"
    with pytest.raises(fh.NoFusionHeadError, match="mmsearch train-fusion"):
        build_index(photos, plain_model, out, "learned")
    assert not out.exists() or not any(out.iterdir())  # refused before anything was written
    code, _, err = run_cli(
        "index", photos, "--db", out, "--model", plain_model, "--fusion", "learned", "--quiet"
    )
    assert code == 1 and "mmsearch train-fusion" in err

    build_index(photos, plain_model, out, None)
    info = read_index_info(out)
    assert info.fusion == "linear"  # a new index without a head records linear
    code, _, err = run_cli("search", QUERY, "--db", out, "--fusion", "learned", "--device", "cpu")
    assert code == 1 and "mmsearch train-fusion" in err, err
    code, _, err = run_cli("search", QUERY, "--db", out, "--fusion", "attention", "--device", "cpu")
    assert code == 2 and "linear or learned" in err
    with Engine.open(out, device="cpu") as engine:
        with pytest.raises(fh.NoFusionHeadError, match="mmsearch train-fusion"):
            engine.search_text(QUERY, fusion="learned")
        client = TestClient(create_app(engine))
        answer = client.get("/search", params={"q": QUERY, "fusion": "learned"})
        assert answer.status_code == 422 and "mmsearch train-fusion" in answer.json()["detail"]
        assert offered_methods(client) == [["linear"], ["linear"]]  # the schema says what works


def test_the_recorded_method_is_the_default_and_the_flag_overrides_it(
    learned_index: Path, photos: Path, headed_model: Path, tmp_path: Path
) -> None:
    assert read_index_info(learned_index).fusion == "learned"
    with Engine.open(learned_index, device="cpu") as engine:
        assert engine.stats().fusion == "learned"
        default = engine.search_text(QUERY, k=4)
        learned = engine.search_text(QUERY, k=4, fusion="learned")
        linear = engine.search_text(QUERY, k=4, fusion="linear")
        weighted = engine.search_text(QUERY, k=4, text_weight=0.2)
        assert default == learned != linear == weighted
        assert names(learned)[0] == "liar.png"  # its own text is the query itself
        everything = {h.path: h.score for h in engine.search_text(QUERY, k=9)}
        pixels = {h.path: h.score for h in engine.search_text(QUERY, k=9, text_weight=0)}
        for path, score in everything.items():  # no own text: exactly the image score
            assert path.endswith("liar.png") or score == pixels[path]
        assert "liar.png" not in names(linear)[:2]  # the red pictures come first
        with pytest.raises(QueryError, match="text weight"):
            engine.search_text(QUERY, text_weight=0.3, fusion="learned")
        # An image query under learned fusion mixes linearly: the head is for sentences.
        red = photos / "red0.png"
        assert engine.search_image(red, k=10) == engine.search_image(red, k=10, fusion="linear")

        client = TestClient(create_app(engine))
        assert offered_methods(client) == [["linear", "learned"]] * 2
        by_http = {
            method: [
                r["path"]
                for r in client.get("/search", params={"q": QUERY, "k": 4, **extra}).json()["results"]
            ]
            for method, extra in (
                ("default", {}),
                ("learned", {"fusion": "learned"}),
                ("linear", {"fusion": "linear"}),
            )
        }
        assert by_http["default"] == by_http["learned"] == [h.path for h in learned]
        assert by_http["linear"] == [h.path for h in linear]
        vector = engine.encode_query_text(QUERY).tolist()
        answer = client.post("/search/vector", json={"vector": vector, "k": 4, "fusion": "linear"})
        assert [r["path"] for r in answer.json()["results"]] == [h.path for h in linear]

    def cli_paths(*extra: object) -> list[str]:
        code, out, err = run_cli(
            "search", QUERY, "--db", learned_index, "-k", 4, "--json", "--device", "cpu", *extra
        )
        assert code == 0, err
        return [r["path"] for r in json.loads(out)["results"]]

    assert cli_paths() == cli_paths("--fusion", "learned") == [h.path for h in learned]
    assert cli_paths("--fusion", "linear") == cli_paths("--text-weight", 0.2) == [h.path for h in linear]
    code, _, err = run_cli(
        "search", QUERY, "--db", learned_index, "--fusion", "learned", "--text-weight", 0.5
    )
    assert code == 2 and "--text-weight" in err

    # Re-indexing without --fusion keeps the record; --fusion linear changes it.
    code, out, err = run_cli("index", photos, "--db", learned_index, "--json", "--device", "cpu")
    assert code == 0 and json.loads(out)["fusion"] == "learned", err
    copy = tmp_path / "index"
    shutil.copytree(learned_index, copy)
    code, out, err = run_cli("index", photos, "--db", copy, "--fusion", "linear", "--device", "cpu")
    assert code == 0 and "fusion: linear" in out, err
    assert read_index_info(copy).fusion == "linear"
    with Engine.open(copy, device="cpu") as engine:
        assert engine.search_text(QUERY, k=4) == linear


def test_a_batch_answers_each_query_as_it_would_be_answered_alone(
    learned_index: Path, photos: Path, plain_model: Path, tmp_path: Path
) -> None:
    """search_batch groups queries by their resolved fusion: the index's learned default, an
    explicit learned and linear sentence, an image query under learned (which mixes linearly)
    and pixels only never share one scoring; a learned query without a head fails alone."""
    sentence = (QueryTerm("text", QUERY),)
    queries = [
        Query(sentence, k=4),
        Query(sentence, k=4, fusion=Fusion(method="learned")),
        Query(sentence, k=4, fusion=Fusion(method="linear")),
        Query((QueryTerm("image", photos / "red0.png"),), k=4, fusion=Fusion(method="learned")),
        Query(sentence, k=4, fusion=Fusion(0.0, method="linear")),
    ]
    with Engine.open(learned_index, device="cpu") as engine:
        batch = engine.search_batch(queries)
        alone = [engine.search(q) for q in queries]
    assert batch == alone
    assert batch[0] == batch[1] and batch[1].hits != batch[2].hits  # type: ignore[union-attr]

    build_index(photos, plain_model, tmp_path / "index", None)
    with Engine.open(tmp_path / "index", device="cpu") as engine:
        learned, linear = engine.search_batch([queries[1], queries[2]])
        assert isinstance(learned, fh.NoFusionHeadError)
        assert linear == engine.search(queries[2])


def test_a_new_index_records_the_default_its_model_allows(
    photos: Path, headed_model: Path, tmp_path: Path
) -> None:
    build_index(photos, headed_model, tmp_path / "index", None)
    assert read_index_info(tmp_path / "index").fusion == DEFAULT_FUSION_METHOD


def test_learned_hits_are_judged_against_the_heads_random_pair_scores(learned_index: Path) -> None:
    with Engine.open(learned_index, device="cpu") as engine:
        calibration = engine.calibration()
        assert calibration is not None and calibration.learned_fused is not None
        query = Query((QueryTerm("text", QUERY),), k=10, fusion=Fusion(method="learned"))
        results = engine.search(query)
        assert results.relevance is not None
        for hit, relevance in zip(results.hits, results.relevance, strict=True):
            null = calibration.learned_fused if hit.path.endswith("liar.png") else calibration.text_image
            assert relevance.z == pytest.approx(null.z(hit.score), abs=0.01)
            assert relevance.likely_relevant == (hit.score >= null.p99)


def test_train_fusion_command_writes_a_head_the_index_can_use(
    sample_corpus: Path, shapes_model: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(shapes_model, model, ignore=shutil.ignore_patterns("fusion_head.*", "last"))
    code, out, err = run_cli(
        "train-fusion",
        "--corpus",
        sample_corpus,
        "--model",
        model,
        "--steps",
        20,
        "--json",
        "--device",
        "cpu",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["model_dir"] == str(model.resolve())
    assert set(summary["val"]) == {"learned", "linear"}
    head = fh.load_fusion_head(str(model.resolve()), load_encoder(model, device="cpu").info.model_id)
    trained = head.config.trained
    assert trained["train_config"]["steps"] == 20 and "val_linear" in trained
    assert trained["corpus"] == str(sample_corpus)
    assert [t["textless_weight"] for t in trained["trials"]] == list(TEXTLESS_WEIGHTS)
