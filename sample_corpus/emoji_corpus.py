"""A real caption corpus nobody here wrote: emoji renderings by three vendors, captioned by name.

`python sample_corpus/emoji_corpus.py --cache .cache/emoji --out .cache/emoji/corpus.jsonl` fetches the
emoji-datasource npm packages, extracts them safely and writes a JSONL corpus for
`indexer.training.corpora.load_corpus`. Concepts are split train/val/test by a stable hash of their name, and
every rendering of one vendor is held out as "test_unseen_vendor" so a drawing style is never
seen in training. Licences differ by vendor (see the packages' README): keep the cache local.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

__all__ = [
    "EmojiCorpusError",
    "EmojiReport",
    "build_corpus",
    "captions_for",
    "extract_package",
    "fetch_packages",
    "main",
    "split_for",
]

PACKAGE_VERSION = "16.0.0"
VENDORS = ("google", "twitter", "facebook")
# Held out entirely so evaluation measures transfer to a drawing style never seen in training.
UNSEEN_VENDOR = "facebook"
UNSEEN_SPLIT = "test_unseen_vendor"
# Skin-tone swatches and country flags: their names say little a picture can show.
SKIP_CATEGORIES = frozenset({"Component", "Flags"})
# A concept drawn by one vendor only gives no cross-style signal.
MIN_VENDORS = 2
IMAGE_SIZE = 64
# Cumulative percent thresholds of the concept split: 80% train, 10% val, rest test.
SPLIT_THRESHOLDS = (("train", 80), ("val", 90), ("test", 100))


# tarfile's "data" filter (3.10.12+/3.11.4+) adds a second line of defence where it exists.
_DATA_FILTER: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


class EmojiCorpusError(RuntimeError):
    """Fetching, extracting or reading the emoji packages failed; the message says what to do."""


@dataclass(frozen=True)
class EmojiReport:
    """What one build wrote, for the one-line summary."""

    out: Path
    concepts: int
    renderings: int
    lines: int
    by_split: Mapping[str, int]

    def summary(self) -> str:
        """One line: counts per split and where the corpus went."""
        splits = ", ".join(f"{name} {count}" for name, count in sorted(self.by_split.items()))
        return (
            f"emoji corpus: {self.concepts} concepts, {self.renderings} renderings, "
            f"{self.lines} pairs ({splits}) -> {self.out}"
        )


def package_name(vendor: str, version: str = PACKAGE_VERSION) -> str:
    """The npm package spec of one vendor's images, e.g. emoji-datasource-google@16.0.0."""
    return f"emoji-datasource-{vendor}@{version}"


def tarball_name(vendor: str, version: str = PACKAGE_VERSION) -> str:
    """The file `npm pack` writes for that package."""
    return f"emoji-datasource-{vendor}-{version}.tgz"


def fetch_packages(
    cache: Path, *, vendors: Sequence[str] = VENDORS, version: str = PACKAGE_VERSION
) -> dict[str, Path]:
    """Run `npm pack` in `cache` for packages not fetched yet; vendor -> tarball path."""
    cache.mkdir(parents=True, exist_ok=True)
    tarballs = {v: cache / tarball_name(v, version) for v in vendors}
    missing = [v for v, path in tarballs.items() if not path.exists()]
    if missing:
        _npm_pack([package_name(v, version) for v in missing], cache)
    absent = [str(path) for path in tarballs.values() if not path.exists()]
    if absent:
        raise EmojiCorpusError(f"npm pack did not write {', '.join(absent)}")
    return tarballs


def _npm_pack(specs: Sequence[str], cwd: Path) -> None:
    """Download package tarballs with the ordinary npm client."""
    try:
        subprocess.run(["npm", "pack", *specs], cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise EmojiCorpusError(
            f"npm not found; install Node.js, or put the tarballs ({', '.join(specs)}) in {cwd}"
        ) from exc
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or "").strip().splitlines()[-3:]
        raise EmojiCorpusError(f"npm pack {' '.join(specs)} failed: {' | '.join(tail)}") from exc


def extract_package(tarball: Path, dest: Path, *, vendor: str) -> Path:
    """Extract the files the corpus needs into `dest` once; returns the `package/` folder."""
    package = dest / "package"
    if _is_extracted(dest):
        return package
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            members = [m for m in archive.getmembers() if _wanted(_safe_name(m, tarball), vendor)]
            archive.extractall(partial, members=members, **_DATA_FILTER)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise EmojiCorpusError(f"cannot extract {tarball} ({exc}); delete it and rerun") from exc
    shutil.rmtree(dest, ignore_errors=True)
    partial.replace(dest)  # atomic: a present `dest` is always a complete extraction
    return package


def _is_extracted(dest: Path) -> bool:
    """True once `dest` holds a finished extraction (it only appears by an atomic rename)."""
    return (dest / "package" / "emoji.json").is_file()


def _safe_name(member: tarfile.TarInfo, tarball: Path) -> PurePosixPath:
    """The member's path, refusing absolute paths, `..` and links that could escape the cache."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
        raise EmojiCorpusError(f"{tarball}: refusing unsafe member {member.name!r}")
    return name


def _wanted(name: PurePosixPath, vendor: str) -> bool:
    """Metadata, licence and the vendor's 64px images; sprite sheets are skipped to save space."""
    if name.parts[:1] != ("package",):
        return False
    if len(name.parts) == 2:
        return name.name in {"emoji.json", "LICENSE", "README.md", "package.json"}
    return name.parts[1:4] == ("img", vendor, str(IMAGE_SIZE))


def split_for(name: str) -> str:
    """A concept's split from a stable hash of its name (Python's hash() is salted per run)."""
    digest = hashlib.sha256(name.lower().encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    return next(split for split, upper in SPLIT_THRESHOLDS if bucket < upper)


def captions_for(
    entry: Mapping[str, Any], *, reserved: AbstractSet[str] = frozenset()
) -> list[str]:
    """Name, short names and "name, subcategory", lower-cased and deduplicated in that order.

    A short name that is another emoji's name (`reserved`) is dropped: "cat" is the short name of
    CAT FACE but the name of CAT, and one caption with two right answers muddies Recall@K.
    """
    name = _name(entry)
    subcategory = str(entry.get("subcategory") or "").replace("-", " ").strip()
    short = [s.replace("_", " ").strip().lower() for s in entry.get("short_names") or []]
    candidates = [name, *(s for s in short if s == name or s not in reserved)]
    if subcategory:
        candidates.append(f"{name}, {subcategory}")
    return [c for c in dict.fromkeys(candidates) if c]


def _name(entry: Mapping[str, Any]) -> str:
    """The emoji's name as a caption: "GRINNING FACE" -> "grinning face"."""
    return str(entry.get("name") or "").strip().lower()


def _renderings(entry: Mapping[str, Any], packages: Mapping[str, Path]) -> dict[str, Path]:
    """vendor -> image file for the vendors that draw this emoji natively (flag set, file there)."""
    file_name = entry.get("image")
    found = {}
    for vendor, package in packages.items():
        if not (file_name and entry.get(f"has_img_{vendor}")):
            continue
        image = package / "img" / vendor / str(IMAGE_SIZE) / str(file_name)
        if image.is_file():
            found[vendor] = image
    return found


def _read_entries(packages: Mapping[str, Path]) -> list[dict[str, Any]]:
    """emoji.json of the first package (every vendor package ships the same list)."""
    first = next(iter(packages.values()))
    path = first / "emoji.json"
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EmojiCorpusError(f"cannot read {path} ({exc}); delete its folder and rerun") from exc
    if not isinstance(entries, list):
        raise EmojiCorpusError(f"{path}: expected a list of emoji entries")
    return entries


def _kept_entries(
    packages: Mapping[str, Path],
) -> Iterator[tuple[dict[str, Any], dict[str, Path]]]:
    """Named, non-skipped emoji drawn natively by at least `MIN_VENDORS` vendors, in file order."""
    for entry in _read_entries(packages):
        if entry.get("category") in SKIP_CATEGORIES or not _name(entry):
            continue
        renderings = _renderings(entry, packages)
        if len(renderings) >= MIN_VENDORS:
            yield entry, renderings


def corpus_lines(packages: Mapping[str, Path], out_dir: Path) -> Iterator[dict[str, Any]]:
    """One JSONL record per (rendering, caption), images relative to `out_dir`, in file order."""
    entries = list(_kept_entries(packages))
    names = frozenset(_name(entry) for entry, _ in entries)
    for entry, renderings in entries:
        captions = captions_for(entry, reserved=names)
        concept_split = split_for(_name(entry))
        for vendor, image in renderings.items():
            split = UNSEEN_SPLIT if vendor == UNSEEN_VENDOR else concept_split
            relative = Path(os.path.relpath(image, out_dir)).as_posix()
            for caption in captions:
                yield {
                    "image": relative,
                    "caption": caption,
                    "split": split,
                    "vendor": vendor,
                    "category": entry.get("category"),
                    "subcategory": entry.get("subcategory"),
                    "unified": entry.get("unified"),
                }


def build_corpus(packages: Mapping[str, Path], out: Path) -> EmojiReport:
    """Write the JSONL corpus atomically from extracted packages (vendor -> `package/` folder)."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    by_split: Counter[str] = Counter()
    concepts: set[str] = set()
    renderings: set[str] = set()
    with tmp.open("w", encoding="utf-8") as handle:
        for record in corpus_lines(packages, out.parent):
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            by_split[record["split"]] += 1
            concepts.add(str(record["unified"]))
            renderings.add(record["image"])
    tmp.replace(out)
    return EmojiReport(
        out=out,
        concepts=len(concepts),
        renderings=len(renderings),
        lines=sum(by_split.values()),
        by_split=MappingProxyType(dict(by_split)),
    )


def prepare(cache: Path, out: Path, *, vendors: Sequence[str] = VENDORS) -> EmojiReport:
    """Fetch, extract and build: the whole pipeline, safe to rerun (and cheap once extracted)."""
    dests = {v: cache / tarball_name(v).removesuffix(".tgz") for v in vendors}
    pending = [v for v, dest in dests.items() if not _is_extracted(dest)]
    tarballs = fetch_packages(cache, vendors=pending)
    for vendor, tarball in tarballs.items():
        extract_package(tarball, dests[vendor], vendor=vendor)
    return build_corpus({v: dest / "package" for v, dest in dests.items()}, out)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line edge: build, print one summary line; on error a message and exit code 1."""
    parser = argparse.ArgumentParser(description="Build the emoji caption corpus (JSONL).")
    parser.add_argument("--cache", type=Path, default=Path(".cache/emoji"), help="download folder")
    parser.add_argument("--out", type=Path, help="corpus file (default CACHE/corpus.jsonl)")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else args.cache / "corpus.jsonl"
    try:
        report = prepare(args.cache, out)
    except EmojiCorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
