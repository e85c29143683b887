"""`make demo`: index the sample corpus's test scenes and answer sentence queries with the default model.

Everything the demo shows goes through the public API (`mmsearch.Engine`) and the same
pipeline the CLI uses; it only adds printing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from indexer.indexing.pipeline import IndexOptions, IndexReport, add_texts, index_folders
from indexer.models.encoder import Encoder, load_encoder
from indexer.store.index_dir import IndexMismatchError
from mmsearch.engine import Engine, ImageHit, TextHit

DEMO_QUERIES = (
    "a large red circle in the center",
    "a small blue star in the top left",
    "there is a large purple star at the bottom",  # purple stars never occur in training
    "a yellow hexagon in the right",
    "a green triangle in the top right",
    "two black squares",
)
SHOWN = 3


def _canonical_captions(corpus_dir: Path, split: str) -> dict[str, str]:
    """Absolute image path -> its one fully specified caption, for the split's scenes."""
    captions = {}
    with open(corpus_dir / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            if record["split"] == split and record.get("canonical"):
                captions[str((corpus_dir / record["image"]).resolve())] = record["caption"]
    return captions


def index_demo_scenes(photos: Path, db: Path, encoder: Encoder, *, rebuild_if_stale: bool) -> IndexReport:
    """Index the scenes; a demo index left by an older bundled model is rebuilt when allowed."""
    try:
        return index_folders([photos], db, encoder, options=IndexOptions(batch_size=64))
    except IndexMismatchError as exc:
        if not rebuild_if_stale:
            raise SystemExit(f"error: {exc}") from exc
        print(f"the demo index was built with another model; rebuilding {db}")
        shutil.rmtree(db)
        return index_folders([photos], db, encoder, options=IndexOptions(batch_size=64))


def main() -> None:
    """Index, add captions, query, print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, required=True, help="generated sample corpus folder")
    parser.add_argument("--db", type=Path, required=True, help="index folder to (re)build")
    parser.add_argument(
        "--rebuild-if-stale",
        action="store_true",
        help="delete and rebuild --db when it was built with another model (make demo's own index)",
    )
    parser.add_argument("--split", default="test")
    args = parser.parse_args()

    photos = args.corpus / "images" / args.split
    encoder = load_encoder(None)
    print(f"model: {encoder.info.source} ({encoder.info.model_id}, {encoder.info.dim}-d)")
    report = index_demo_scenes(photos, args.db, encoder, rebuild_if_stale=args.rebuild_if_stale)
    print(
        f"indexed {report.new + report.changed} new/changed, {report.unchanged} unchanged, "
        f"skipped {len(report.skipped)} in {report.elapsed_s:.1f}s -> {args.db}"
    )
    truth = _canonical_captions(args.corpus, args.split)
    texts = add_texts(args.db, encoder, list(truth.values()), source="demo")
    print(
        f"captions for image->text search: {texts.added} added, {texts.duplicates} skipped "
        "(the same words as a caption already indexed)\n"
    )

    with Engine.open(args.db) as engine:
        for query in DEMO_QUERIES:
            started = time.perf_counter()
            hits = engine.search_text(query, k=SHOWN)
            ms = (time.perf_counter() - started) * 1000
            print(f'search "{query}"  ({ms:.0f} ms)')
            for hit in hits:
                assert isinstance(hit, ImageHit)
                print(f"  {hit.rank}. {hit.score:.3f}  {hit.path}")
                print(f"       shows: {truth.get(hit.path, '?')}")
        example = next(iter(sorted(photos.iterdir())))
        print(f"\nsearch --image {example} --to text")
        print(f"       (the image shows: {truth.get(str(example.resolve()), '?')})")
        for text_hit in engine.search_image(example, k=SHOWN, to="text"):
            assert isinstance(text_hit, TextHit)
            print(f"  {text_hit.rank}. {text_hit.score:.3f}  {text_hit.text}")
    print(f"\nTry it yourself: .venv/bin/mmsearch search \"a small white circle\" --db {args.db}")


if __name__ == "__main__":
    main()
