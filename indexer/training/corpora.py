"""Caption corpora (JSONL, CSV, COCO, Karpathy, folder with sidecars) -> (image, caption) pairs.

Every reader returns the same record, `CaptionPair`, so training, evaluation and indexing never
care where the captions came from. Image files are not opened or checked here: the stages that
decode images skip and report missing ones at the file boundary.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from types import MappingProxyType
from typing import Any

from indexer.errors import InvalidInputError
from indexer.media import caption_files
from indexer.media.caption_files import CaptionFileError, Line
from indexer.media.formats import IMAGE_EXTENSIONS

__all__ = [
    "CORPUS_FORMATS",
    "IMAGE_SUFFIXES",
    "CaptionPair",
    "Corpus",
    "CorpusError",
    "RetrievalSet",
    "corpus_name",
    "load_corpus",
    "retrieval_set",
]

CORPUS_FORMATS = ("jsonl", "csv", "coco", "karpathy", "folder")
IMAGE_SUFFIXES = IMAGE_EXTENSIONS  # the extensions the indexer decodes without a header check
ACCEPTED = (
    'a .jsonl file (one {"image", "caption", "split"?} object per line), '
    "a .csv file with image and caption columns, "
    "a COCO captions .json, a Karpathy split .json (dataset_flickr30k.json style), "
    "or a folder of images with sidecar .txt captions"
)
CSV_IMAGE_COLUMNS = ("image", "filepath", "file_name", "path")
CSV_CAPTION_COLUMNS = ("caption", "text", "title")
# Karpathy files add "restval" (COCO val images moved into training); it trains like "train".
KARPATHY_SPLITS = {"restval": "train"}
# How many images to try when guessing which folder a JSON's relative file names live under.
ROOT_PROBE_IMAGES = 8
_SPLIT_IN_NAME = re.compile(r"(?:^|[^a-z])(train|val|test)(?:[^a-z]|$)")


class CorpusError(InvalidInputError):
    """An unreadable corpus; the message names the file, the line/entry and what to fix."""


def _empty_meta() -> Mapping[str, Any]:
    """Default for `CaptionPair.meta`; a fresh read-only mapping, never a shared dict."""
    return MappingProxyType({})


@dataclass(frozen=True)
class CaptionPair:
    """One caption of one image; `meta` is read-only and left out of the hash so pairs hash."""

    image: Path
    caption: str
    split: str | None
    meta: Mapping[str, Any] = field(default_factory=_empty_meta, hash=False)

    def __post_init__(self) -> None:
        """Copy `meta` into a read-only view so a caller's dict cannot change a frozen record."""
        if not isinstance(self.meta, MappingProxyType):
            object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))


@dataclass(frozen=True)
class Corpus:
    """All pairs read from one source, in file order; `format` is one of `CORPUS_FORMATS`."""

    pairs: tuple[CaptionPair, ...]
    source: Path
    format: str

    def __len__(self) -> int:
        """Number of (image, caption) pairs, so `len(corpus)` reads naturally."""
        return len(self.pairs)

    def splits(self) -> list[str]:
        """Split names present, sorted; empty when the corpus has no splits."""
        return sorted({p.split for p in self.pairs if p.split is not None})

    def select(self, split: str | None) -> Corpus:
        """Pairs of one split (None keeps all); an unknown split names the ones available."""
        if split is None:
            return self
        available = self.splits()
        if split not in available:
            have = ", ".join(available) if available else "none (the corpus has no splits)"
            raise CorpusError(
                f"{self.source}: no split {split!r}; available splits: {have}. "
                "Pick one of those or load the whole corpus without a split."
            )
        chosen = tuple(p for p in self.pairs if p.split == split)
        return Corpus(pairs=chosen, source=self.source, format=self.format)

    def images(self) -> list[Path]:
        """Unique images in first-seen order (one gallery entry per image)."""
        return list(dict.fromkeys(p.image for p in self.pairs))

    def captions_by_image(self) -> dict[Path, list[str]]:
        """Every caption of each image, images in first-seen order."""
        grouped: dict[Path, list[str]] = {}
        for pair in self.pairs:
            grouped.setdefault(pair.image, []).append(pair.caption)
        return grouped


@dataclass(frozen=True)
class RetrievalSet:
    """Gallery and queries for Recall@K with several captions per image (Flickr30k/COCO)."""

    images: tuple[Path, ...]
    captions: tuple[str, ...]
    caption_to_image: tuple[int, ...]

    def __post_init__(self) -> None:
        """Refuse a mapping that would silently score the wrong image."""
        if len(self.captions) != len(self.caption_to_image):
            raise ValueError("captions and caption_to_image must have the same length")
        if any(not 0 <= i < len(self.images) for i in self.caption_to_image):
            raise ValueError("caption_to_image holds an index outside images")

    def image_to_captions(self) -> list[list[int]]:
        """For each image, the indices of its captions (the correct answers for image->text)."""
        owned: list[list[int]] = [[] for _ in self.images]
        for caption_index, image_index in enumerate(self.caption_to_image):
            owned[image_index].append(caption_index)
        return owned


def retrieval_set(corpus: Corpus) -> RetrievalSet:
    """Deduplicate images so each is one gallery entry and each caption points at its image."""
    if not corpus.pairs:
        raise CorpusError(f"{corpus.source}: no pairs to evaluate on")
    index_of: dict[Path, int] = {}
    for pair in corpus.pairs:
        index_of.setdefault(pair.image, len(index_of))
    return RetrievalSet(
        images=tuple(index_of),
        captions=tuple(p.caption for p in corpus.pairs),
        caption_to_image=tuple(index_of[p.image] for p in corpus.pairs),
    )


# File stems that say nothing about the corpus: its folder's name says more.
GENERIC_CORPUS_STEMS = frozenset({"corpus", "captions", "dataset", "data", "pairs", "train"})
MANIFEST_FILE = "manifest.json"


def corpus_name(corpus: Corpus) -> str:
    """A short name for what a model was trained on: the generator named in a manifest.json
    beside the corpus, else the file's (or a generic file's folder's) name."""
    source = corpus.source
    folder = source if source.is_dir() else source.parent
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if isinstance(manifest, dict) and isinstance(manifest.get("generator"), str):
        version = manifest.get("version")
        return f"{manifest['generator']}/{version}" if version is not None else manifest["generator"]
    if source.is_dir() or source.stem.lower() in GENERIC_CORPUS_STEMS:
        return folder.name
    return source.stem


def load_corpus(path: Path | str, *, split: str | None = None) -> Corpus:
    """Detect the format and read it; relative image paths resolve against the corpus's folder."""
    source = Path(path).expanduser().resolve()
    if not source.exists():
        raise CorpusError(f"corpus not found: {source}")
    fmt, pairs = _read(source)
    if not pairs:
        raise CorpusError(f"{source}: no caption pairs found; {_EMPTY_HINTS[fmt]}")
    return Corpus(pairs=tuple(pairs), source=source, format=fmt).select(split)


_EMPTY_HINTS = {
    "jsonl": "every line was blank or had an empty caption",
    "csv": "the file has a header but no rows with a non-empty caption",
    "coco": "no annotation with a non-empty caption refers to a listed image",
    "karpathy": "no image has a sentence with a non-empty 'raw' caption",
    "folder": "images need a sidecar caption file beside them (photo.jpg + photo.txt, "
    "or photo.jpg.txt; one caption per line)",
}


def _read(source: Path) -> tuple[str, list[CaptionPair]]:
    """Pick the reader from the path: a folder, or the file's extension (and JSON's keys)."""
    if source.is_dir():
        return "folder", _read_folder(source)
    suffix = source.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl", _read_jsonl(source)
    if suffix == ".csv":
        return "csv", _read_csv(source)
    if suffix == ".json":
        return _read_json(source)
    kind = suffix or "(no extension)"
    raise CorpusError(f"{source}: unknown corpus format {kind!r}; use {ACCEPTED}")


def _resolver(base: Path) -> Callable[[str], Path]:
    """Resolve image strings against `base`, cached since corpora repeat images per caption."""
    cache: dict[str, Path] = {}

    def resolve(raw: str) -> Path:
        hit = cache.get(raw)
        if hit is None:
            hit = cache[raw] = (base / Path(raw).expanduser()).resolve()
        return hit

    return resolve


def _lines(source: Path) -> Iterator[Line]:
    """Non-blank lines through the shared caption-file reader, its errors as CorpusError."""
    try:
        yield from caption_files.iter_lines(source)
    except CaptionFileError as exc:
        raise CorpusError(str(exc)) from exc


def _read_jsonl(source: Path) -> list[CaptionPair]:
    """One JSON object per line; blank lines skipped, extra keys kept in `meta`."""
    resolve = _resolver(source.parent)
    pairs = []
    for line in _lines(source):
        where = f"{source}:{line.number}"
        pair = _jsonl_pair(_parse_line(line, source), where, resolve)
        if pair is not None:
            pairs.append(pair)
    return pairs


def _parse_line(line: Line, source: Path) -> dict[str, Any]:
    """Decode one JSONL line into an object; the error names file:line and shows a good line."""
    example = '{"image": "photos/a.jpg", "caption": "a dog on a beach"}'
    try:
        return caption_files.parse_record(line, source)
    except CaptionFileError as exc:
        raise CorpusError(f"{exc}; each line must be one object like {example}") from exc


def _jsonl_pair(
    record: dict[str, Any], where: str, resolve: Callable[[str], Path]
) -> CaptionPair | None:
    """Validate one JSONL record; None when its caption is empty after stripping."""
    missing = [key for key in ("image", "caption") if key not in record]
    if missing:
        raise CorpusError(
            f"{where}: missing key(s) {', '.join(missing)}; the line has {sorted(record)}"
        )
    image = _required_text(record["image"], "image", where)
    caption = _text(record["caption"], "caption", where)
    if not caption:
        return None
    meta = {k: v for k, v in record.items() if k not in ("image", "caption", "split")}
    split = _split_value(record.get("split"), where)
    return CaptionPair(image=resolve(image), caption=caption, split=split, meta=meta)


def _text(value: object, key: str, where: str) -> str:
    """A string field, stripped; other types are a corpus error, not a silent str()."""
    if not isinstance(value, str):
        raise CorpusError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value.strip()


def _required_text(value: object, key: str, where: str) -> str:
    """A string field that must not be empty (an empty image path would resolve to a folder)."""
    text = _text(value, key, where)
    if not text:
        raise CorpusError(f"{where}: {key!r} is empty")
    return text


def _split_value(value: object, where: str) -> str | None:
    """A split name, or None when absent/blank."""
    if value is None:
        return None
    return _text(value, "split", where) or None


def _read_csv(source: Path) -> list[CaptionPair]:
    """A CSV with a header naming the image and caption columns; other columns go to `meta`."""
    resolve = _resolver(source.parent)
    pairs = []
    try:
        with source.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            image_col, caption_col = _csv_columns(reader.fieldnames, source)
            for row in reader:
                where = f"{source}:{reader.line_num}"
                pair = _csv_pair(row, image_col, caption_col, where, resolve)
                if pair is not None:
                    pairs.append(pair)
    except csv.Error as exc:
        raise CorpusError(f"{source}: malformed CSV ({exc}); quote fields with commas") from exc
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{source}: not UTF-8 text ({exc.reason}); re-save it as UTF-8") from exc
    return pairs


def _csv_columns(fieldnames: Sequence[str] | None, source: Path) -> tuple[str, str]:
    """The header's image and caption column names, by the first alias present."""
    header = list(fieldnames or [])
    normalized = {name.strip().lower(): name for name in header}
    image = next((normalized[c] for c in CSV_IMAGE_COLUMNS if c in normalized), None)
    caption = next((normalized[c] for c in CSV_CAPTION_COLUMNS if c in normalized), None)
    if image is None or caption is None:
        raise CorpusError(
            f"{source}:1: header {header} needs an image column (one of "
            f"{', '.join(CSV_IMAGE_COLUMNS)}) and a caption column (one of "
            f"{', '.join(CSV_CAPTION_COLUMNS)})"
        )
    return image, caption


def _csv_pair(
    row: dict[str | None, Any],
    image_col: str,
    caption_col: str,
    where: str,
    resolve: Callable[[str], Path],
) -> CaptionPair | None:
    """Validate one CSV row; None when its caption is empty."""
    if None in row:
        raise CorpusError(f"{where}: more fields than the header; quote captions that hold commas")
    if any(value is None for value in row.values()):
        raise CorpusError(f"{where}: fewer fields than the header")
    image = (row[image_col] or "").strip()
    caption = (row[caption_col] or "").strip()
    if not caption:
        return None
    if not image:
        raise CorpusError(f"{where}: column {image_col!r} is empty")
    split_col = next((k for k in row if k is not None and k.strip().lower() == "split"), None)
    split = (row[split_col] or "").strip() if split_col else ""
    skip = {image_col, caption_col, split_col}
    meta = {k: v for k, v in row.items() if k is not None and k not in skip}
    return CaptionPair(image=resolve(image), caption=caption, split=split or None, meta=meta)


def _read_json(source: Path) -> tuple[str, list[CaptionPair]]:
    """A whole-file JSON: COCO captions if it has annotations, Karpathy if images have sentences."""
    try:
        data = json.loads(source.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{source}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{source}: not UTF-8 text ({exc.reason}); re-save it as UTF-8") from exc
    if isinstance(data, dict) and "annotations" in data:
        return "coco", _read_coco(source, data)
    if isinstance(data, dict) and _has_sentences(data.get("images")):
        return "karpathy", _read_karpathy(source, data)
    raise CorpusError(
        f"{source}: not a recognised caption JSON (COCO needs 'images' and 'annotations'; "
        f"Karpathy needs 'images' with 'sentences'); accepted formats: {ACCEPTED}"
    )


def _has_sentences(images: object) -> bool:
    """True when the first image entry looks like a Karpathy entry."""
    if not isinstance(images, list) or not images:
        return False
    return isinstance(images[0], dict) and "sentences" in images[0]


def _entries(data: Mapping[str, Any], key: str, source: Path) -> list[dict[str, Any]]:
    """A top-level list of objects, e.g. COCO's 'images'; names the key when it is malformed."""
    entries = data.get(key)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CorpusError(f"{source}: {key!r} must be a list of objects")
    return entries


def _field(entry: Mapping[str, Any], key: str, where: str) -> Any:
    """A required field of a JSON entry, naming the entry when it is missing."""
    if key not in entry:
        raise CorpusError(f"{where}: missing {key!r}; the entry has {sorted(entry)}")
    return entry[key]


def _read_coco(source: Path, data: Mapping[str, Any]) -> list[CaptionPair]:
    """COCO captions: images listed by id, one annotation per caption; pairs in image order."""
    images = _entries(data, "images", source)
    file_names: dict[Any, str] = {}
    for i, entry in enumerate(images):
        where = f"{source}: images[{i}]"
        file_names[_field(entry, "id", where)] = _required_text(
            _field(entry, "file_name", where), "file_name", where
        )
    captions = _coco_captions(_entries(data, "annotations", source), file_names, source)
    resolve = _resolver(_pick_root(_coco_roots(source), file_names.values()))
    split = _split_from_name(source.stem)
    return [
        CaptionPair(image=resolve(file_names[image_id]), caption=text, split=split, meta=meta)
        for image_id in file_names
        for text, meta in captions.get(image_id, [])
    ]


def _coco_captions(
    annotations: list[dict[str, Any]], file_names: Mapping[Any, str], source: Path
) -> dict[Any, list[tuple[str, dict[str, Any]]]]:
    """Non-empty captions grouped by image id, with the ids kept as `meta`."""
    grouped: dict[Any, list[tuple[str, dict[str, Any]]]] = {}
    for i, ann in enumerate(annotations):
        where = f"{source}: annotations[{i}]"
        image_id = _field(ann, "image_id", where)
        if image_id not in file_names:
            raise CorpusError(f"{where}: image_id {image_id!r} is not in 'images'")
        text = _text(_field(ann, "caption", where), "caption", where)
        if text:
            meta = {"image_id": image_id, "annotation_id": ann.get("id")}
            grouped.setdefault(image_id, []).append((text, meta))
    return grouped


def _coco_roots(source: Path) -> list[Path]:
    """Folders COCO file names may be relative to, most specific layout last."""
    folder = source.parent
    token = source.stem.rsplit("_", 1)[-1]  # captions_val2017 -> val2017
    return [folder, folder / "images", folder / token, folder.parent / token]


def _split_from_name(stem: str) -> str | None:
    """'train'/'val'/'test' when the file name says so (captions_val2017), else None."""
    match = _SPLIT_IN_NAME.search(stem.lower())
    return match.group(1) if match else None


def _pick_root(candidates: Sequence[Path], relative_names: Iterable[str]) -> Path:
    """The first candidate under which one of the first few images exists, else the first one."""
    probes = list(islice(relative_names, ROOT_PROBE_IMAGES))
    for root in candidates:
        if any((root / name).exists() for name in probes):
            return root
    return candidates[0]


def _read_karpathy(source: Path, data: Mapping[str, Any]) -> list[CaptionPair]:
    """Karpathy split JSON: each image lists its split and its sentences; `raw` is the caption."""
    images = _entries(data, "images", source)
    relative = [_karpathy_path(entry, f"{source}: images[{i}]") for i, entry in enumerate(images)]
    folder = source.parent
    roots = [folder, folder / "images", folder / "flickr30k-images"]
    resolve = _resolver(_pick_root(roots, relative))
    dataset = data.get("dataset")
    pairs = []
    for i, (entry, rel) in enumerate(zip(images, relative, strict=True)):
        where = f"{source}: images[{i}]"
        split = _split_value(entry.get("split"), where)
        split = KARPATHY_SPLITS.get(split, split) if split else None
        image = resolve(rel)
        for text, meta in _karpathy_sentences(entry, where):
            meta.update(dataset=dataset, imgid=entry.get("imgid"))
            pairs.append(CaptionPair(image=image, caption=text, split=split, meta=meta))
    return pairs


def _karpathy_path(entry: Mapping[str, Any], where: str) -> str:
    """`filepath/filename` (COCO-style entries) or `filename` (Flickr-style entries)."""
    filename = _required_text(_field(entry, "filename", where), "filename", where)
    filepath = entry.get("filepath")
    if filepath:
        return os.path.join(_text(filepath, "filepath", where), filename)
    return filename


def _karpathy_sentences(entry: Mapping[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    """Non-empty stripped `raw` captions of one image, each with its sentence id."""
    sentences = _field(entry, "sentences", where)
    if not isinstance(sentences, list):
        raise CorpusError(f"{where}: 'sentences' must be a list")
    out = []
    for j, sentence in enumerate(sentences):
        here = f"{where}.sentences[{j}]"
        if not isinstance(sentence, dict):
            raise CorpusError(f"{here}: expected an object with 'raw'")
        text = _text(_field(sentence, "raw", here), "raw", here)
        if text:
            out.append((text, {"sentid": sentence.get("sentid")}))
    return out


def _read_folder(root: Path) -> list[CaptionPair]:
    """Images with a sidecar (caption_files: `photo.txt` or `photo.jpg.txt`, one caption per
    non-blank line), recursively, in path order."""
    pairs = []
    for image in _walk_images(root):
        sidecar = caption_files.find_sidecar(str(image))
        if sidecar is not None:
            for line in _lines(Path(sidecar)):
                pairs.append(CaptionPair(image=image, caption=line.text, split=None))
    return pairs


def _walk_images(root: Path) -> Iterator[Path]:
    """Image files under `root` in sorted order, skipping hidden entries (.git, macOS ._ files)."""
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(folder, name).resolve()
