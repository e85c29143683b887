"""Caption corpora: every format read from real files in tmp_path, plus the emoji corpus builder."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from support import REPO, load_script

from indexer.training.corpora import (
    CaptionPair,
    Corpus,
    CorpusError,
    RetrievalSet,
    load_corpus,
    retrieval_set,
)

emoji_corpus = load_script(REPO / "sample_corpus" / "emoji_corpus.py", "mmsearch_emoji_corpus")


def _png(path: Path) -> Path:
    """A real 2x2 PNG, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2), (200, 30, 30)).save(path)
    return path


def _jsonl(path: Path, records: list[Any]) -> Path:
    """Write one JSON value per line."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# --- JSONL -------------------------------------------------------------------------------------


def test_jsonl_relative_absolute_meta_and_stripping(tmp_path: Path) -> None:
    a = _png(tmp_path / "imgs" / "a.png")
    b = _png(tmp_path / "elsewhere" / "b.png")
    corpus_file = tmp_path / "corpus.jsonl"
    corpus_file.write_text(
        json.dumps({"image": "imgs/a.png", "caption": "  a red square ", "split": "train"})
        + "\n\n   \n"
        + json.dumps({"image": str(b), "caption": "b square", "split": "val", "kind": "x"})
        + "\n"
        + json.dumps({"image": "imgs/a.png", "caption": "   ", "split": "train"})
        + "\n"
        + json.dumps({"image": "imgs/a.png", "caption": "another caption of a"})
        + "\n",
        encoding="utf-8",
    )
    corpus = load_corpus(str(corpus_file))
    assert corpus.format == "jsonl"
    assert corpus.source == corpus_file.resolve()
    assert len(corpus) == 3  # the blank-caption line is dropped
    first, second, third = corpus.pairs
    assert first == CaptionPair(image=a.resolve(), caption="a red square", split="train")
    assert second.image == b.resolve() and second.split == "val"
    assert dict(second.meta) == {"kind": "x"}
    assert third.split is None
    assert corpus.splits() == ["train", "val"]
    assert corpus.images() == [a.resolve(), b.resolve()]
    assert corpus.captions_by_image() == {
        a.resolve(): ["a red square", "another caption of a"],
        b.resolve(): ["b square"],
    }


def test_bad_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"image": "a.png", "caption": "ok"}\n\n{"image": "b.png", caption}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:3: invalid JSON"):
        load_corpus(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"image": "a.png"}, r":2: missing key\(s\) caption"),
        ({"caption": "x"}, r":2: missing key\(s\) image"),
        ({"image": "a.png", "caption": 3}, r":2: 'caption' must be a string"),
        ({"image": "", "caption": "x"}, r":2: 'image' is empty"),
        (["a.png", "x"], r":2: expected a JSON object"),
    ],
)
def test_jsonl_record_errors(tmp_path: Path, line: Any, message: str) -> None:
    path = _jsonl(tmp_path / "c.jsonl", [{"image": "a.png", "caption": "ok"}, line])
    with pytest.raises(CorpusError, match=message):
        load_corpus(path)


def test_empty_corpus_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text('\n{"image": "a.png", "caption": "  "}\n\n', encoding="utf-8")
    with pytest.raises(CorpusError, match="no caption pairs found"):
        load_corpus(path)


def test_missing_file_and_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"corpus not found: .*nope\.jsonl"):
        load_corpus(tmp_path / "nope.jsonl")
    odd = tmp_path / "corpus.parquet"
    odd.write_bytes(b"PAR1")
    with pytest.raises(CorpusError, match=r"unknown corpus format '\.parquet'.*\.jsonl.*\.csv"):
        load_corpus(odd)


# --- splits ------------------------------------------------------------------------------------


def test_split_selection_and_unknown_split(tmp_path: Path) -> None:
    records = [
        {"image": "a.png", "caption": "a", "split": "train"},
        {"image": "b.png", "caption": "b", "split": "test"},
        {"image": "c.png", "caption": "c", "split": "train"},
    ]
    path = _jsonl(tmp_path / "c.jsonl", records)
    corpus = load_corpus(path)
    train = corpus.select("train")
    assert [p.caption for p in train.pairs] == ["a", "c"]
    assert train.source == corpus.source and train.format == "jsonl"
    assert corpus.select(None) is corpus
    assert [p.caption for p in load_corpus(path, split="test").pairs] == ["b"]
    with pytest.raises(CorpusError, match="no split 'val'; available splits: test, train"):
        corpus.select("val")


def test_select_on_corpus_without_splits(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "c.jsonl", [{"image": "a.png", "caption": "a"}])
    with pytest.raises(CorpusError, match="the corpus has no splits"):
        load_corpus(path, split="train")


# --- CSV ---------------------------------------------------------------------------------------


def test_csv_quoted_commas_quotes_aliases_and_meta(tmp_path: Path) -> None:
    a = _png(tmp_path / "a.png")
    b = _png(tmp_path / "sub" / "b.png")
    path = tmp_path / "captions.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "text", "split", "source"])
        writer.writerow(["a.png", 'a dog, a cat and a "quoted" word', "train", "web"])
        writer.writerow([str(b), "  b  ", "", "scan"])
        writer.writerow(["a.png", "", "train", "web"])  # empty caption: dropped
    corpus = load_corpus(path)
    assert corpus.format == "csv"
    assert [(p.image, p.caption, p.split) for p in corpus.pairs] == [
        (a.resolve(), 'a dog, a cat and a "quoted" word', "train"),
        (b.resolve(), "b", None),
    ]
    assert dict(corpus.pairs[0].meta) == {"source": "web"}


def test_csv_header_and_row_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("file,words\na.png,hello\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="needs an image column"):
        load_corpus(path)
    path.write_text("image,caption\na.png,hello\nb.png,unquoted, comma\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad\.csv:3: more fields than the header"):
        load_corpus(path)


# --- COCO --------------------------------------------------------------------------------------


def _coco(path: Path, file_names: list[str]) -> Path:
    """A COCO captions file: two captions for the first image, one for the others."""
    images = [{"id": 10 + i, "file_name": name, "width": 2} for i, name in enumerate(file_names)]
    annotations = [
        {"id": 1, "image_id": 10, "caption": "first image, caption one "},
        {"id": 2, "image_id": 11, "caption": "second image"},
        {"id": 3, "image_id": 10, "caption": "first image, caption two"},
        {"id": 4, "image_id": 11, "caption": ""},
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations}), encoding="utf-8")
    return path


def test_coco_under_split_folder_infers_split(tmp_path: Path) -> None:
    a = _png(tmp_path / "val2017" / "000010.jpg")
    b = _png(tmp_path / "val2017" / "000011.jpg")
    path = _coco(tmp_path / "captions_val2017.json", ["000010.jpg", "000011.jpg"])
    corpus = load_corpus(path)
    assert corpus.format == "coco"
    assert corpus.splits() == ["val"]
    assert corpus.captions_by_image() == {
        a.resolve(): ["first image, caption one", "first image, caption two"],
        b.resolve(): ["second image"],
    }
    assert corpus.pairs[0].meta["image_id"] == 10


def test_coco_standard_layout_and_images_folder(tmp_path: Path) -> None:
    a = _png(tmp_path / "coco" / "train2014" / "a.jpg")
    path = _coco(tmp_path / "coco" / "annotations" / "captions_train2014.json", ["a.jpg", "b.jpg"])
    corpus = load_corpus(path)
    assert corpus.images()[0] == a.resolve() and corpus.splits() == ["train"]

    c = _png(tmp_path / "flat" / "images" / "c.jpg")
    flat = _coco(tmp_path / "flat" / "captions.json", ["c.jpg", "d.jpg"])
    corpus = load_corpus(flat)
    assert corpus.images()[0] == c.resolve() and corpus.splits() == []


def test_coco_unknown_image_id(tmp_path: Path) -> None:
    data = {
        "images": [{"id": 1, "file_name": "a.jpg"}],
        "annotations": [{"image_id": 2, "caption": "x"}],
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(CorpusError, match=r"annotations\[0\]: image_id 2 is not in 'images'"):
        load_corpus(path)


# --- Karpathy ----------------------------------------------------------------------------------


def _karpathy_image(filename: str, split: str, raws: list[str], **extra: Any) -> dict[str, Any]:
    sentences = [{"raw": raw, "tokens": raw.split(), "sentid": i} for i, raw in enumerate(raws)]
    return {"filename": filename, "split": split, "sentences": sentences, **extra}


def test_karpathy_flickr_restval_and_image_folder(tmp_path: Path) -> None:
    a = _png(tmp_path / "flickr30k-images" / "1.jpg")
    b = _png(tmp_path / "flickr30k-images" / "2.jpg")
    c = _png(tmp_path / "flickr30k-images" / "3.jpg")
    data = {
        "dataset": "flickr30k",
        "images": [
            _karpathy_image("1.jpg", "train", ["A dog runs . ", "A dog."]),
            _karpathy_image("2.jpg", "restval", ["Two cats"]),
            _karpathy_image("3.jpg", "test", ["A bird", "  "]),
        ],
    }
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    corpus = load_corpus(path)
    assert corpus.format == "karpathy"
    assert [(p.image, p.caption, p.split) for p in corpus.pairs] == [
        (a.resolve(), "A dog runs .", "train"),
        (a.resolve(), "A dog.", "train"),
        (b.resolve(), "Two cats", "train"),
        (c.resolve(), "A bird", "test"),
    ]
    assert corpus.pairs[0].meta["dataset"] == "flickr30k"
    assert corpus.splits() == ["test", "train"]
    assert len(load_corpus(path, split="train")) == 3


def test_karpathy_coco_filepath_defaults_to_json_folder(tmp_path: Path) -> None:
    data = {"images": [_karpathy_image("x.jpg", "val", ["x"], filepath="val2014")]}
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    (pair,) = load_corpus(path).pairs
    assert pair.image == (tmp_path / "val2014" / "x.jpg").resolve()  # not checked to exist
    assert pair.split == "val"


def test_unrecognised_json_lists_formats(tmp_path: Path) -> None:
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"image": "a.png", "caption": "x"}]), encoding="utf-8")
    with pytest.raises(CorpusError, match=r"not a recognised caption JSON.*COCO.*Karpathy.*jsonl"):
        load_corpus(path)


# --- folder ------------------------------------------------------------------------------------


def test_folder_sidecars_nested_and_unicode(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    a = _png(root / "a.png")
    (root / "a.txt").write_text("first caption\n\n  second caption  \n", encoding="utf-8")
    cafe = _png(root / "trips" / "2024" / "café ☕.PNG")
    (root / "trips" / "2024" / "café ☕.txt").write_text("coffee in paris\n", encoding="utf-8")
    _png(root / "no_sidecar.png")
    _png(root / ".hidden" / "h.png")
    (root / ".hidden" / "h.txt").write_text("hidden\n", encoding="utf-8")
    (root / "notes.txt").write_text("a text file without an image\n", encoding="utf-8")
    corpus = load_corpus(root)
    assert corpus.format == "folder"
    assert [(p.image, p.caption, p.split) for p in corpus.pairs] == [
        (a.resolve(), "first caption", None),
        (a.resolve(), "second caption", None),
        (cafe.resolve(), "coffee in paris", None),
    ]


def test_folder_without_sidecars_is_empty(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    with pytest.raises(CorpusError, match=r"no caption pairs found; .*photo\.txt"):
        load_corpus(tmp_path)


# --- records and retrieval sets ----------------------------------------------------------------


def test_caption_pair_is_hashable_and_meta_read_only() -> None:
    source = {"kind": "photo"}
    pair = CaptionPair(image=Path("/x.png"), caption="x", split=None, meta=source)
    source["kind"] = "changed"
    assert pair.meta["kind"] == "photo"
    with pytest.raises(TypeError):
        pair.meta["kind"] = "y"  # type: ignore[index]
    same = CaptionPair(image=Path("/x.png"), caption="x", split=None, meta={"kind": "photo"})
    assert pair == same and len({pair, same}) == 1


def test_retrieval_set_maps_captions_to_unique_images() -> None:
    img = [Path(f"/g/{n}.png") for n in "abc"]
    pairs = (
        CaptionPair(img[0], "a1", "test"),
        CaptionPair(img[1], "b1", "test"),
        CaptionPair(img[0], "a2", "test"),
        CaptionPair(img[2], "c1", "test"),
        CaptionPair(img[1], "b2", "test"),
    )
    rs = retrieval_set(Corpus(pairs=pairs, source=Path("/g/c.jsonl"), format="jsonl"))
    assert rs.images == tuple(img)
    assert rs.captions == ("a1", "b1", "a2", "c1", "b2")
    assert rs.caption_to_image == (0, 1, 0, 2, 1)
    assert rs.image_to_captions() == [[0, 2], [1, 4], [3]]
    for caption_index, image_index in enumerate(rs.caption_to_image):
        assert pairs[caption_index].image == rs.images[image_index]


def test_retrieval_set_rejects_bad_input() -> None:
    with pytest.raises(CorpusError):
        retrieval_set(Corpus(pairs=(), source=Path("/c.jsonl"), format="jsonl"))
    with pytest.raises(ValueError, match="outside images"):
        RetrievalSet(images=(Path("/a.png"),), captions=("a",), caption_to_image=(1,))


# --- emoji corpus (offline: a fake, tiny package tree) -----------------------------------------

_EMOJI = [
    {"name": "GRINNING FACE", "unified": "1F600", "image": "1f600.png", "short_names": ["grinning"],
     "category": "Smileys & Emotion", "subcategory": "face-smiling",
     "has_img_google": True, "has_img_twitter": True, "has_img_facebook": True},
    {"name": "CAT", "unified": "1F408", "image": "1f408.png", "short_names": ["cat2"],
     "category": "Animals & Nature", "subcategory": "animal-mammal",
     "has_img_google": True, "has_img_twitter": True, "has_img_facebook": False},
    {"name": "CAT FACE", "unified": "1F431", "image": "1f431.png", "short_names": ["cat"],
     "category": "Animals & Nature", "subcategory": "animal-mammal",
     "has_img_google": True, "has_img_twitter": False, "has_img_facebook": True},
    {"name": "ONLY GOOGLE", "unified": "1F999", "image": "1f999.png", "short_names": ["only"],
     "category": "Objects", "subcategory": "tool",
     "has_img_google": True, "has_img_twitter": False, "has_img_facebook": False},
    {"name": "EMOJI MODIFIER FITZPATRICK TYPE-1-2", "unified": "1F3FB", "image": "1f3fb.png",
     "short_names": ["skin-tone-2"], "category": "Component", "subcategory": "skin-tone",
     "has_img_google": True, "has_img_twitter": True, "has_img_facebook": True},
    {"name": "FLAG: FRANCE", "unified": "1F1EB-1F1F7", "image": "1f1eb-1f1f7.png",
     "short_names": ["fr"], "category": "Flags", "subcategory": "country-flag",
     "has_img_google": True, "has_img_twitter": True, "has_img_facebook": True},
]  # fmt: skip


def _fake_packages(root: Path) -> dict[str, Path]:
    """vendor -> package/ folder with emoji.json and 64px images for every flagged emoji."""
    packages = {}
    for vendor in emoji_corpus.VENDORS:
        package = root / f"emoji-datasource-{vendor}" / "package"
        package.mkdir(parents=True)
        (package / "emoji.json").write_text(json.dumps(_EMOJI), encoding="utf-8")
        for entry in _EMOJI:
            if entry[f"has_img_{vendor}"]:
                _png(package / "img" / vendor / "64" / str(entry["image"]))
        packages[vendor] = package
    return packages


def test_emoji_corpus_lines_splits_and_captions(tmp_path: Path) -> None:
    packages = _fake_packages(tmp_path / "cache")
    out = tmp_path / "cache" / "corpus.jsonl"
    report = emoji_corpus.build_corpus(packages, out)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert {r["unified"] for r in records} == {"1F600", "1F408", "1F431"}  # 2+ vendors, no skips
    grinning = {r["caption"] for r in records if r["unified"] == "1F600"}
    assert grinning == {"grinning face", "grinning", "grinning face, face smiling"}
    # "cat" is CAT FACE's short name but CAT's name: kept only for CAT
    assert {r["caption"] for r in records if r["unified"] == "1F431"} == {
        "cat face", "cat face, animal mammal"
    }  # fmt: skip
    for r in records:
        concept_split = emoji_corpus.split_for(_name_of(r["unified"]))
        assert r["split"] == ("test_unseen_vendor" if r["vendor"] == "facebook" else concept_split)
        assert set(r) >= {"image", "caption", "split", "vendor", "category", "subcategory"}
    assert report.concepts == 3 and report.lines == len(records)
    assert report.renderings == 3 + 2 + 2
    assert sum(report.by_split.values()) == len(records)
    corpus = load_corpus(out)  # the JSONL reads back with images resolved under the cache
    assert all(p.exists() for p in corpus.images())
    unseen = corpus.select("test_unseen_vendor").pairs
    assert Counter(p.meta["vendor"] for p in unseen) == {"facebook": 3 + 2}


def _name_of(unified: str) -> str:
    """The fake emoji's name by code point."""
    return next(str(e["name"]) for e in _EMOJI if e["unified"] == unified)


def test_emoji_build_is_idempotent(tmp_path: Path) -> None:
    packages = _fake_packages(tmp_path)
    out = tmp_path / "out" / "corpus.jsonl"
    emoji_corpus.build_corpus(packages, out)
    first = out.read_bytes()
    emoji_corpus.build_corpus(packages, out)
    assert out.read_bytes() == first
    assert not out.with_name("corpus.jsonl.tmp").exists()


def test_split_for_is_stable_and_roughly_80_10_10() -> None:
    assert emoji_corpus.split_for("GRINNING FACE") == emoji_corpus.split_for("grinning face")
    counts = Counter(emoji_corpus.split_for(f"concept {i}") for i in range(2000))
    assert 0.75 < counts["train"] / 2000 < 0.85
    assert 0.07 < counts["val"] / 2000 < 0.13 and 0.07 < counts["test"] / 2000 < 0.13


def _tarball(path: Path, members: dict[str, bytes]) -> Path:
    """A gzip tarball with the given file members."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_extract_package_keeps_needed_files_once(tmp_path: Path) -> None:
    tgz = _tarball(
        tmp_path / "pkg.tgz",
        {
            "package/emoji.json": b"[]",
            "package/img/google/64/1f600.png": b"png",
            "package/img/google/sheets/64.png": b"big",
            "package/img/twitter/64/1f600.png": b"other vendor",
        },
    )
    dest = tmp_path / "cache" / "pkg"
    package = emoji_corpus.extract_package(tgz, dest, vendor="google")
    assert (package / "emoji.json").read_bytes() == b"[]"
    assert (package / "img" / "google" / "64" / "1f600.png").exists()
    assert not (package / "img" / "google" / "sheets").exists()
    assert not (package / "img" / "twitter").exists()
    tgz.unlink()  # a second call must not need the tarball again
    assert emoji_corpus.extract_package(tgz, dest, vendor="google") == package


@pytest.mark.parametrize("name", ["../escape.txt", "/abs/emoji.json", "package/../../x"])
def test_extract_package_refuses_unsafe_members(tmp_path: Path, name: str) -> None:
    tgz = _tarball(tmp_path / "evil.tgz", {"package/emoji.json": b"[]", name: b"x"})
    with pytest.raises(emoji_corpus.EmojiCorpusError, match="unsafe member"):
        emoji_corpus.extract_package(tgz, tmp_path / "cache" / "evil", vendor="google")
    assert not (tmp_path / "escape.txt").exists()


def test_fetch_skips_packages_already_fetched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for vendor in emoji_corpus.VENDORS:
        (tmp_path / emoji_corpus.tarball_name(vendor)).write_bytes(b"")
    calls: list[list[str]] = []
    monkeypatch.setattr(emoji_corpus.subprocess, "run", lambda cmd, **_: calls.append(cmd))
    tarballs = emoji_corpus.fetch_packages(tmp_path)
    assert calls == [] and set(tarballs) == set(emoji_corpus.VENDORS)
    (tmp_path / emoji_corpus.tarball_name("twitter")).unlink()
    with pytest.raises(emoji_corpus.EmojiCorpusError, match="did not write"):
        emoji_corpus.fetch_packages(tmp_path)  # the fake npm writes nothing
    assert calls == [["npm", "pack", "emoji-datasource-twitter@16.0.0"]]


def test_prepare_skips_fetching_extracted_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for vendor, package in _fake_packages(tmp_path / "staging").items():
        dest = tmp_path / "cache" / emoji_corpus.tarball_name(vendor).removesuffix(".tgz")
        dest.mkdir(parents=True)
        package.rename(dest / "package")

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("npm must not run when every package is extracted")

    monkeypatch.setattr(emoji_corpus.subprocess, "run", no_network)
    report = emoji_corpus.prepare(tmp_path / "cache", tmp_path / "cache" / "corpus.jsonl")
    assert report.concepts == 3
    assert report.summary().startswith("emoji corpus: 3 concepts, 7 renderings")
