"""The `mmsearch` command: turns library results into output and library errors into exit codes."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from indexer.indexing.fusion_spec import (
    DEFAULT_FUSION_METHOD,
    FUSION_METHODS,
    Fusion,
    FusionError,
    FusionMethod,
)
from indexer.media.settings import (
    DECODE_PROCESSES_FLAG,
    DECODE_TIMEOUT_FLAG,
    DEFAULT_DECODE_PROCESSES,
    DEFAULT_DECODE_TIMEOUT_S,
    DEFAULT_MAX_MEGAPIXELS,
)
from indexer.models.devices import Device
from indexer.store.search_params import MAX_RERANK, SearchParams
from mmsearch import cli_admin, cli_fusion, cli_models, cli_serve, cli_train
from mmsearch.cli_common import (
    DEFAULT_DEVICE,
    SKIPPED_LINES_SHOWN,
    CheckpointOption,
    DbOption,
    DeviceOption,
    IndexTypeOption,
    MemoryBudgetOption,
    ModelOption,
    PretrainedOption,
    app,
    command,
    fail,
    index_dir_of,
    index_type_of,
    memory_budget_of,
    model_option_spec,
)

# Re-exported: `serve`'s defaults were defined here, and callers read them from here.
from mmsearch.cli_serve import SERVE_BATCH_WAIT_MS as SERVE_BATCH_WAIT_MS
from mmsearch.cli_serve import SERVE_MAX_BATCH as SERVE_MAX_BATCH
from mmsearch.query import DEFAULT_TEXT_WEIGHT, Query, QuerySpecError, build_terms

if TYPE_CHECKING:  # torch, transformers, FAISS and the catalogue load inside the commands that use them
    from indexer.indexing.report import IndexReport
    from indexer.models.lazy import LazyEncoder
    from indexer.models.spec import ModelSpec
    from mmsearch.engine import ImageHit, SearchResults, TextHit

cli_train.register()  # first in --help, as when it was defined here

# Printed when `mmsearch index` creates an index with the bundled model, which users without
# --model get on their own photos.
BUNDLED_MODEL_NOTE = (
    "note: the bundled sample-shapes model knows only the sample corpus's shapes, colours, sizes "
    "and positions; for real photos use --model openclip:ViT-B-32 --pretrained laion2b_s34b_b79k "
    "(downloaded once by open_clip) or a local checkpoint with --checkpoint FILE "
    "(`mmsearch models` lists what is available; --quiet hides this line)"
)


@command("index")
def index_cmd(
    photo_dirs: Annotated[
        list[Path], typer.Argument(help="Folders of photos (searched recursively).")
    ],
    db: DbOption = None,
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    pretrained: PretrainedOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Glob to skip (repeatable).")
    ] = None,
    include_hidden: Annotated[bool, typer.Option("--include-hidden")] = False,
    max_megapixels: Annotated[
        float, typer.Option("--max-megapixels", min=0.01)
    ] = DEFAULT_MAX_MEGAPIXELS,
    exif_thumbnails: Annotated[
        bool,
        typer.Option(
            "--exif-thumbnails/--no-exif-thumbnails",
            help="Encode a JPEG from the preview its camera embedded when that preview is big "
            "enough for the model and has the photo's shape (many times faster); "
            "--no-exif-thumbnails decodes every photo.",
        ),
    ] = True,
    torch_threads: Annotated[
        int | None,
        typer.Option(
            "--torch-threads",
            min=1,
            help="Torch threads for encoding while decode workers run "
            "(default: every core; a real-sized model indexes about 1.5x as fast so on 2 cores).",
        ),
    ] = None,
    decode_timeout: Annotated[
        float,
        typer.Option(
            DECODE_TIMEOUT_FLAG,
            min=0.1,
            help="Seconds one file may take to read and decode; a slower one (broken or crafted) "
            "is skipped and named, and tried again on the next run.",
        ),
    ] = DEFAULT_DECODE_TIMEOUT_S,
    decode_processes: Annotated[
        bool,
        typer.Option(
            f"{DECODE_PROCESSES_FLAG}/--decode-threads",
            help="Decode files in worker processes instead of threads: a file past "
            f"{DECODE_TIMEOUT_FLAG} is stopped for real, and a decoder crash costs one file, not the run.",
        ),
    ] = DEFAULT_DECODE_PROCESSES,
    device: DeviceOption = DEFAULT_DEVICE,
    quiet: Annotated[bool, typer.Option("--quiet", help="Only errors.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    captions: Annotated[
        Path | None,
        typer.Option(
            "--captions",
            help='JSONL lines {"image": PATH, "caption": TEXT} (PATH relative to the file): '
            "own text for those images, searched together with the image. Without it an "
            "image's own text is a sidecar PHOTO.txt, else its EXIF/XMP/IPTC description.",
        ),
    ] = None,
    vectors: Annotated[
        str | None,
        typer.Option(
            "--vectors",
            help="Where a new index keeps its vectors: faiss (default, files in --db), "
            "milvus:///ABS/PATH.db (Milvus Lite), milvus://HOST:PORT or http(s)://HOST:PORT "
            "(token from $MILVUS_TOKEN). Recorded in --db; later commands need only --db.",
        ),
    ] = None,
    catalog: Annotated[
        str | None,
        typer.Option(
            "--catalog",
            help="Where a new index keeps its metadata: sqlite (default, in --db) or a SQLAlchemy "
            "URL, e.g. postgresql+psycopg://USER@HOST:PORT/DB (password from "
            "$MMSEARCH_CATALOG_PASSWORD or $PGPASSWORD). Recorded in --db.",
        ),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="Decode and encode on Ray: local (a Ray on this machine), auto (the cluster "
            "`ray start` joined) or a cluster ADDRESS (needs mmsearch[ray]).",
        ),
    ] = None,
    index_type: IndexTypeOption = None,
    memory_budget: MemoryBudgetOption = None,
    fusion: Annotated[
        str | None,
        typer.Option(
            "--fusion",
            metavar="linear|learned",
            help="How searches mix an image's own text with its pixels, recorded in the index: "
            "linear (--text-weight) or learned (the model's fusion head, from `mmsearch "
            "train-fusion`). Default: the index's own; a new index gets "
            f"{DEFAULT_FUSION_METHOD} when its model has a fusion head, else linear.",
        ),
    ] = None,
) -> None:
    """Index photo folders: new and changed files are encoded, moved ones recognised, gone ones removed.

    A new index starts with --index-type (default auto) and, under auto, is rebuilt into the
    better type at the end of any run that takes it past a size or memory threshold."""
    from tqdm import tqdm

    from indexer.indexing.pipeline import IndexOptions, index_folders
    from indexer.indexing.ray_encode import RayTarget
    from indexer.media.own_text import read_captions
    from indexer.media.scan import ScanOptions
    from indexer.store.backends import Backends, record_backends
    from indexer.store.index_dir import index_exists
    from indexer.store.vectors import gpu_available

    index_dir = index_dir_of(db)
    method = _fusion_method(fusion)
    wanted = Backends.parse(vectors, catalog)
    ray_target = RayTarget.parse(ray) if ray is not None else None
    new_index = not index_exists(index_dir)
    record_backends(index_dir, wanted, index_exists=not new_index)
    policy = index_type_of(index_type)
    budget = memory_budget_of(memory_budget)
    given = read_captions(captions) if captions is not None else None
    encoder = _encoder_for_index(index_dir, model_option_spec(model, checkpoint, pretrained), device)
    if encoder.spec.is_bundled and new_index and not quiet:
        typer.echo(BUNDLED_MODEL_NOTE, err=True)
    options = IndexOptions(
        batch_size=batch_size,
        max_megapixels=max_megapixels,
        scan=ScanOptions(exclude=tuple(exclude or ()), include_hidden=include_hidden),
        exif_thumbnails=exif_thumbnails,
        torch_threads=torch_threads,
        decode_timeout_s=decode_timeout,
        ray=ray_target,
        index_type=policy,
        memory_budget=budget,
        faiss_gpu=device.is_cuda or (device.is_auto and gpu_available()),
        fusion=method,
        decode_processes=decode_processes,
    )
    bar: tqdm | None = None

    def on_total(total: int) -> None:
        nonlocal bar
        if not (quiet or as_json):
            bar = tqdm(total=total, unit="img", desc="indexing", dynamic_ncols=True)

    def on_progress(done: int, skipped: int) -> None:
        if bar is not None:
            bar.update(done)
            bar.set_postfix(skipped=skipped)

    try:
        report = index_folders(
            photo_dirs,
            index_dir,
            encoder,
            options=options,
            on_total=on_total,
            on_progress=on_progress,
            captions=given,
        )
    finally:
        if bar is not None:
            bar.close()
    if as_json:
        typer.echo(json.dumps({"db": str(index_dir), **report.to_dict()}))
    elif not quiet:
        _print_index_summary(report, index_dir)
        if method is not None:
            typer.echo(f"fusion: {report.fusion} (searches use it unless they pass --fusion)")


def _fusion_method(value: str | None) -> FusionMethod | None:
    """--fusion parsed once: linear, learned, or None (not given)."""
    if value is None:
        return None
    if value not in FUSION_METHODS:
        fail(f"--fusion takes {' or '.join(FUSION_METHODS)}, not {value!r}", 2)
    return value  # type: ignore[return-value]


def _encoder_for_index(index_dir: Path, model: ModelSpec | None, device: Device) -> LazyEncoder:
    """An existing index keeps its own model unless --model is given (then the writer checks it
    matches). The weights load only if something needs encoding."""
    from indexer.models.lazy import LazyEncoder
    from indexer.models.spec import ModelSpec
    from indexer.store.index_dir import IndexNotFoundError, read_index_info

    if model is None:
        try:
            model = ModelSpec.from_recorded(read_index_info(index_dir).model_source)
        except IndexNotFoundError:
            model = ModelSpec.bundled()  # a new index
    return LazyEncoder(model, device=device)


def _print_index_summary(report: IndexReport, index_dir: Path) -> None:
    for item in report.skipped[:SKIPPED_LINES_SHOWN]:
        typer.echo(f"skipped {_display_path(item.path)}: {item.reason}")
    if len(report.skipped) > SKIPPED_LINES_SHOWN:
        typer.echo(f"... and {len(report.skipped) - SKIPPED_LINES_SHOWN} more skipped (see --json)")
    typer.echo(
        f"indexed {report.new + report.changed} (new {report.new}, changed {report.changed}), "
        f"moved {report.moved}, removed {report.removed}, unchanged {report.unchanged}, "
        f"skipped {len(report.skipped)} in {report.elapsed_s:.1f}s "
        f"({report.images_per_s:.1f} images/s) -> {index_dir}"
    )
    if report.repaired:
        typer.echo(f"repaired {report.repaired} ids left inconsistent by an interrupted run")
    if report.rebuilt is not None:
        rebuilt = report.rebuilt
        recall = "" if rebuilt.recall is None else f", recall@10 {rebuilt.recall:.3f}"
        typer.echo(
            f"rebuilt the image index {rebuilt.before} -> {rebuilt.after} from stored vectors in "
            f"{rebuilt.seconds:.1f} s ({rebuilt.reason}{recall})"
        )
    if report.own_texts:
        typer.echo(f"{report.own_texts} images got their own text (caption, sidecar or metadata)")
    if report.captions_unmatched:
        typer.echo(
            f"{report.captions_unmatched} --captions entries name no image under the indexed "
            "folders (paths are relative to the captions file)"
        )


@command("add-texts")
def add_texts_cmd(
    file: Annotated[
        Path, typer.Argument(help='One caption per line, or JSONL with a "caption"/"text" field.')
    ],
    db: DbOption = None,
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    pretrained: PretrainedOption = None,
    device: DeviceOption = DEFAULT_DEVICE,
) -> None:
    """Index a text collection for image-to-text search."""
    from indexer.indexing.edits import add_texts
    from mmsearch.texts import read_texts

    index_dir = index_dir_of(db)
    texts = read_texts(file)
    encoder = _encoder_for_index(index_dir, model_option_spec(model, checkpoint, pretrained), device)
    report = add_texts(index_dir, encoder, texts, source=str(file.resolve()))
    typer.echo(
        f"added {report.added} texts ({report.duplicates} duplicates skipped) -> {index_dir}"
    )


WeightedOption = Annotated[list[str] | None, typer.Option(metavar="[W:]VALUE")]
SEARCH_EPILOG = (
    "Query arithmetic: the main SENTENCE (or --image) has weight 1; --add/--subtract and "
    "--add-image/--subtract-image add or subtract further terms, each optionally weighted as "
    "W:VALUE (e.g. --add 2:sunset). The terms' normalised embeddings are summed with their "
    "weights and renormalised.\n\n"
    "Scores are cosine similarities. An image with its own text (a sidecar PHOTO.txt, its "
    "EXIF/XMP/IPTC description, or index --captions) scores (1-W)*image + W*own-text "
    "similarity under --fusion linear, W = --text-weight (the text similarity shifted onto the "
    "image scale first), for a SENTENCE and an --image query alike; under --fusion learned the "
    "model's fusion head picks the mix per query and image (for a SENTENCE; an --image query "
    "mixes linearly). Images without own text keep their image score. Without --fusion, the "
    "index's recorded method is used (`mmsearch index --fusion`); --text-weight means "
    "linear.\n\n"
    "Relevance: at index time mmsearch records the scores of random caption/image pairs of the "
    "index (see `mmsearch calibrate`); a hit above their 99th percentile is 'likely relevant' "
    "(marked * after its score; --relevant keeps only those). --min-score X instead keeps hits "
    "scoring at least X."
)


@command("search")
def search_cmd(
    query: Annotated[
        str | None, typer.Argument(help="A sentence describing the image you want.")
    ] = None,
    image: Annotated[
        Path | None, typer.Option("--image", help="Search by this image instead.")
    ] = None,
    to: Annotated[
        str,
        typer.Option("--to", help="What to find: image or text (indexed captions), for SENTENCE or --image."),
    ] = "image",
    db: DbOption = None,
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    pretrained: PretrainedOption = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Number of results.")] = 10,
    under: Annotated[Path | None, typer.Option("--under", help="Only images below this folder.")] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help='Print {"results": [...]} as JSON (with --relevant also "relevance": '
            '[{"id", "z", "likely_relevant"}]).',
        ),
    ] = False,
    device: DeviceOption = DEFAULT_DEVICE,
    add: Annotated[
        list[str] | None, typer.Option("--add", metavar="[W:]TEXT", help="Also look for this.")
    ] = None,
    subtract: Annotated[
        list[str] | None,
        typer.Option("--subtract", metavar="[W:]TEXT", help="Look away from this."),
    ] = None,
    add_image: Annotated[
        list[str] | None,
        typer.Option("--add-image", metavar="[W:]IMG", help="Also look like this image."),
    ] = None,
    subtract_image: Annotated[
        list[str] | None,
        typer.Option("--subtract-image", metavar="[W:]IMG", help="Look unlike this image."),
    ] = None,
    text_weight: Annotated[
        float | None,
        typer.Option(
            "--text-weight",
            min=0.0,
            max=1.0,
            help=f"Weight W of an image's own text against its pixels under linear fusion "
            f"(0 = pixels only; default {DEFAULT_TEXT_WEIGHT}, measured on the sample corpus).",
        ),
    ] = None,
    fusion: Annotated[
        str | None,
        typer.Option(
            "--fusion",
            metavar="linear|learned",
            help="Mix own text and pixels linearly (--text-weight) or with the model's learned "
            "fusion head; default: the index's recorded method.",
        ),
    ] = None,
    min_score: Annotated[
        str | None,
        typer.Option(
            "--min-score",
            metavar="X|auto",
            help="Drop hits scoring below X (the raw score shown). `auto` = --relevant.",
        ),
    ] = None,
    relevant: Annotated[
        bool,
        typer.Option(
            "--relevant",
            help="Keep only likely relevant hits: above the 99th percentile of random "
            "caption/image pair scores recorded for this index. May return fewer than k.",
        ),
    ] = False,
    paths_only: Annotated[
        bool,
        typer.Option("--paths-only", help="One path per line (texts for --to text), nothing else."),
    ] = False,
    nprobe: Annotated[
        int | None,
        typer.Option(
            "--nprobe",
            min=1,
            help="IVF lists searched (ivf/sq8/ivfpq index; default: the index's, tuned to "
            "recall@10 >= 0.95). More: higher recall, slower.",
        ),
    ] = None,
    ef_search: Annotated[
        int | None,
        typer.Option(
            "--ef-search",
            min=1,
            help="HNSW search width (hnsw index; default: the index's, tuned to recall@10 >= 0.95).",
        ),
    ] = None,
    rerank: Annotated[
        int | None,
        typer.Option(
            "--rerank",
            min=1,
            max=MAX_RERANK,
            help="Candidates per result scored again exactly from the full vectors (sq8/ivfpq "
            "index; 1: none; default: the index's own, tuned when it was built).",
        ),
    ] = None,
    show_preview: Annotated[
        bool,
        typer.Option(
            "--preview",
            help="Inline thumbnails in iTerm2, kitty or sixel terminals (plain output elsewhere).",
        ),
    ] = False,
) -> None:
    """Text to image, or with --image: image to image / image to text."""
    if query is not None and image is not None:
        fail("give either a SENTENCE or --image IMG (not both)", 2)
    if to not in ("image", "text"):
        fail(f"--to must be image or text, not {to!r}", 2)
    if as_json and paths_only:
        fail("--json and --paths-only are alternatives: pick one", 2)
    threshold, relevant = _cutoff(min_score, relevant)
    try:
        terms = build_terms(
            query,
            image,
            add=add or (),
            subtract=subtract or (),
            add_image=add_image or (),
            subtract_image=subtract_image or (),
        )
    except QuerySpecError as exc:
        fail(str(exc), 2)
    if not terms:
        fail("give either a SENTENCE or --image IMG", 2)
    try:
        mix = Fusion.weighted(text_weight, _fusion_method(fusion))
    except FusionError:
        fail("--text-weight sets the linear fusion: drop it with --fusion learned", 2)
    knobs = SearchParams(nprobe, ef_search, rerank)
    request = Query(
        tuple(terms),
        to=to,  # type: ignore[arg-type]
        k=k,
        under=under,
        fusion=mix,
        min_score=threshold,
        relevant=relevant,
        search_params=None if knobs.is_default else knobs,
    )
    from mmsearch.engine import Engine

    spec = model_option_spec(model, checkpoint, pretrained)
    with Engine.open(index_dir_of(db), model=spec, device=device) as engine:
        results = engine.search(request)
    if as_json:
        data = results.to_json() if relevant else {"results": [asdict(h) for h in results.hits]}
        typer.echo(json.dumps(data))
    elif paths_only:
        for hit in results.hits:
            typer.echo(_shown(hit).replace("\n", " "))
    else:
        _print_hits(results, show_preview=show_preview, empty=_no_results(request))


search_cmd.__doc__ = f"{search_cmd.__doc__}\n\n{SEARCH_EPILOG}"  # typer shows it under --help


def _cutoff(min_score: str | None, relevant: bool) -> tuple[float | None, bool]:
    """--min-score X|auto and --relevant -> (raw threshold, relevant only)."""
    if min_score is None:
        return None, relevant
    if min_score.strip().lower() == "auto":
        return None, True
    try:
        return float(min_score), relevant
    except ValueError:
        fail(f"--min-score takes a number or auto, not {min_score!r}", 2)


def _shown(hit: ImageHit | TextHit) -> str:
    from mmsearch.engine import ImageHit

    return _display_path(hit.path) if isinstance(hit, ImageHit) else hit.text


def _display_path(path: str) -> str:
    """A file name that is not UTF-8 (surrogate escapes from os.scandir) with its odd bytes as
    \\xNN: printing the lone surrogates raises UnicodeEncodeError on a strict UTF-8 stdout."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _no_results(request: Query) -> str:
    """What an empty answer most likely means for this query, and what to do about it."""
    if request.relevant or request.min_score is not None:
        return "no results above the cut-off (try a lower --min-score or drop --relevant)"
    if request.under is not None:
        return f"no results: no indexed image is under {request.under}"
    if request.to == "text":
        return "no results: the index holds no captions (add some with `mmsearch add-texts`)"
    return "no results (is the index empty? add images with `mmsearch index`)"


def _print_hits(results: SearchResults, *, show_preview: bool, empty: str) -> None:
    """rank, score (* = likely relevant), path or text; the legend goes to stderr. `empty` is
    printed when there are no hits."""
    if not results.hits:
        typer.echo(empty)
        return
    from mmsearch import preview
    from mmsearch.engine import ImageHit

    protocol = preview.detect(os.environ, is_tty=sys.stdout.isatty()) if show_preview else None
    flags = [r.likely_relevant for r in results.relevance] if results.relevance else None
    hits: list[ImageHit | TextHit] = list(results.hits)
    for n, hit in enumerate(hits):
        if protocol is not None and isinstance(hit, ImageHit):
            typer.echo(preview.render(hit.path, protocol), nl=False)
        mark = "*" if flags and flags[n] else " "
        typer.echo(f"{hit.rank:3d}  {hit.score:6.3f}{mark} {_shown(hit)}")
    if flags is not None:
        typer.echo(
            "* likely relevant: above 99% of random pair scores in this index"
            if any(flags)
            else "no hit is likely relevant (none beats 99% of random pair scores in this index)",
            err=True,
        )


cli_serve.register()
cli_admin.register()  # calibrate, optimize, eval, info, remove: listed after the commands above
cli_models.register()
cli_fusion.register()  # train-fusion


def main() -> None:
    """Console entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.formatwarning = lambda msg, *a, **k: f"warning: {msg}\n"  # type: ignore[assignment]
    app()


if __name__ == "__main__":
    main()
