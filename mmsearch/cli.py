"""The `mmsearch` command: turns library results into output and library errors into exit codes."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from indexer.indexing.fusion import Fusion
from indexer.indexing.pipeline import (
    IndexOptions,
    IndexReport,
    add_texts,
    index_folders,
)
from indexer.media.images import (
    DECODE_PROCESSES_FLAG,
    DECODE_TIMEOUT_FLAG,
    DEFAULT_DECODE_PROCESSES,
    DEFAULT_DECODE_TIMEOUT_S,
    DEFAULT_MAX_MEGAPIXELS,
)
from indexer.media.own_text import read_captions
from indexer.media.scan import ScanOptions
from indexer.models.config import TrainConfig, load_named_config
from indexer.models.encoder import load_encoder, model_spec
from indexer.training.corpora import load_corpus
from indexer.training.loop import FINETUNE_LR, EpochResult, train, train_openclip
from mmsearch import cli_admin, preview
from mmsearch.cli_common import (
    CheckpointOption,
    DbOption,
    DeviceOption,
    ModelOption,
    PretrainedOption,
    app,
    command,
    fail,
    index_dir_of,
)
from mmsearch.engine import Engine, ImageHit, SearchResults, TextHit
from mmsearch.query import DEFAULT_TEXT_WEIGHT, Query, QuerySpecError, build_terms
from mmsearch.texts import read_texts

DEFAULT_TRAIN_CONFIG = "sample-shapes"
SKIPPED_LINES_SHOWN = 20


@command("train")
def train_cmd(
    corpus: Annotated[
        Path, typer.Option("--corpus", help="Caption corpus: JSONL, CSV, COCO, Karpathy or folder.")
    ],
    out: Annotated[
        Path,
        typer.Option("--out", help="Model folder to write (best checkpoint; last/ for resume)."),
    ],
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = TrainConfig.epochs,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2)] = TrainConfig.batch_size,
    seed: Annotated[int, typer.Option("--seed")] = TrainConfig.seed,
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr", help=f"Learning rate (default {TrainConfig.lr}; {FINETUNE_LR} with --init)."
        ),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option("--config", help=f"Named model config or JSON file (default {DEFAULT_TRAIN_CONFIG})."),
    ] = None,
    text_init: Annotated[
        Path | None, typer.Option("--text-init", help="Local pretrained ALBERT folder.")
    ] = None,
    image_init: Annotated[
        Path | None, typer.Option("--image-init", help="Local ResNet weights.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/last.")] = False,
    caption_agreement: Annotated[
        float,
        typer.Option(
            "--caption-agreement",
            min=0.0,
            help="Weight of an extra InfoNCE term pulling two captions of one image together "
            "(0: off). Makes an image's own text a better match for queries (hybrid documents); "
            "needs images with several captions.",
        ),
    ] = TrainConfig.caption_agreement,
    device: DeviceOption = "auto",
    quiet: Annotated[bool, typer.Option("--quiet")] = False,
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            help="Fine-tune an OpenCLIP model instead: openclip:ARCH with --checkpoint or "
            "--pretrained (or a folder from an earlier fine-tune). OUT is usable as --model.",
        ),
    ] = None,
    checkpoint: CheckpointOption = None,
    pretrained: PretrainedOption = None,
) -> None:
    """Train the ALBERT+CNN dual encoder (or fine-tune OpenCLIP: --init); keeps the best by val recall."""
    if init is None and (checkpoint is not None or pretrained is not None):
        fail("in `train`, --checkpoint/--pretrained give the weights of --init openclip:ARCH", 2)
    if init is not None and (text_init or image_init or resume or config):
        fail("--init fine-tunes an OpenCLIP model: drop --config, --text-init, --image-init, --resume", 2)
    data = load_corpus(corpus)
    default_lr = TrainConfig.lr if init is None else FINETUNE_LR
    train_config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        lr=default_lr if lr is None else lr,
        caption_agreement=caption_agreement,
    )

    def show(result: EpochResult) -> None:
        if quiet:
            return
        recall = ""
        if result.metrics:
            m = result.metrics
            recall = (
                f"  val t2i R@1 {m['t2i']['R@1']:.3f} R@10 {m['t2i']['R@10']:.3f}"
                f"  i2t R@1 {m['i2t']['R@1']:.3f} R@10 {m['i2t']['R@10']:.3f}"
            )
        best = "  *best" if result.is_best else ""
        typer.echo(
            f"epoch {result.epoch:3d}  loss {result.loss:.4f}{recall}  {result.seconds:.1f}s{best}"
        )

    if init is not None:
        report = train_openclip(
            data,
            out,
            init=init,
            checkpoint=checkpoint,
            pretrained=pretrained,
            train_config=train_config,
            device=device,
            progress=not quiet,
            on_epoch=show,
        )
    else:
        report = train(
            data,
            out,
            model_config=load_named_config(config or DEFAULT_TRAIN_CONFIG),
            train_config=train_config,
            text_init=text_init,
            image_init=image_init,
            resume=resume,
            device=device,
            progress=not quiet,
            on_epoch=show,
        )
    for item in report.skipped[:SKIPPED_LINES_SHOWN]:
        typer.echo(f"skipped {item}", err=True)
    typer.echo(f"best epoch {report.best_epoch}; model saved to {out}")


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
            "(default: half the cores, measured fastest on 2 cores).",
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
    device: DeviceOption = "auto",
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
) -> None:
    """Index photo folders: new and changed files are encoded, moved ones recognised, gone ones removed."""
    index_dir = index_dir_of(db)
    given = read_captions(captions) if captions is not None else None
    encoder = _encoder_for_index(
        index_dir, model_spec(model, checkpoint=checkpoint, pretrained=pretrained), device
    )
    options = IndexOptions(
        batch_size=batch_size,
        max_megapixels=max_megapixels,
        scan=ScanOptions(exclude=tuple(exclude or ()), include_hidden=include_hidden),
        exif_thumbnails=exif_thumbnails,
        torch_threads=torch_threads,
        decode_timeout_s=decode_timeout,
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


def _encoder_for_index(index_dir: Path, model: str | None, device: str):  # type: ignore[no-untyped-def]
    """An existing index keeps its own model unless --model is given (then it must match)."""
    if model is None and (index_dir / "catalog.sqlite3").exists():
        with Engine.open(index_dir, device=device) as engine:
            return engine.encoder
    return load_encoder(model, device=device)


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
    device: DeviceOption = "auto",
) -> None:
    """Index a text collection for image-to-text search."""
    index_dir = index_dir_of(db)
    texts = read_texts(file)
    encoder = _encoder_for_index(
        index_dir, model_spec(model, checkpoint=checkpoint, pretrained=pretrained), device
    )
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
    "similarity, W = --text-weight (the text similarity shifted onto the image scale first), "
    "for a SENTENCE and an --image query alike; images without own text keep their image "
    "score.\n\n"
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
        str, typer.Option("--to", help="With --image: find similar images or describing texts.")
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
    device: DeviceOption = "auto",
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
            help=f"Weight W of an image's own text against its pixels "
            f"(0 = pixels only; default {DEFAULT_TEXT_WEIGHT}, measured on the sample corpus).",
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
    request = Query(
        tuple(terms),
        to=to,  # type: ignore[arg-type]
        k=k,
        under=under,
        fusion=Fusion.weighted(text_weight),
        min_score=threshold,
        relevant=relevant,
    )
    spec = model_spec(model, checkpoint=checkpoint, pretrained=pretrained)
    with Engine.open(index_dir_of(db), model=spec, device=device) as engine:
        results = engine.search(request)
    if as_json:
        data = results.to_json() if relevant else {"results": [asdict(h) for h in results.hits]}
        typer.echo(json.dumps(data))
    elif paths_only:
        for hit in results.hits:
            typer.echo(_shown(hit).replace("\n", " "))
    else:
        _print_hits(results, show_preview=show_preview, filtered=relevant or threshold is not None)


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
    return _display_path(hit.path) if isinstance(hit, ImageHit) else hit.text


def _display_path(path: str) -> str:
    """A file name that is not UTF-8 (surrogate escapes from os.scandir) with its odd bytes as
    \\xNN: printing the lone surrogates raises UnicodeEncodeError on a strict UTF-8 stdout."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _print_hits(results: SearchResults, *, show_preview: bool, filtered: bool) -> None:
    """rank, score (* = likely relevant), path or text; the legend goes to stderr."""
    if not results.hits:
        typer.echo(
            "no results above the cut-off (try a lower --min-score or drop --relevant)"
            if filtered
            else "no results (is the index empty? add images with `mmsearch index`)"
        )
        return
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


SERVER_MODULES = ("fastapi", "uvicorn")
MULTIPART_MODULES = ("python_multipart", "multipart")  # python-multipart's new and old names


@command("serve")
def serve_cmd(
    db: DbOption = None,
    host: Annotated[
        str,
        typer.Option("--host", help="Address to listen on; any but loopback needs $MMSEARCH_TOKEN."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8000,
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    pretrained: PretrainedOption = None,
    root: Annotated[
        list[Path] | None,
        typer.Option(
            "--root", help="Folder that POST /index may add or refresh (repeatable; default: none)."
        ),
    ] = None,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.01, help="Largest request body accepted.")
    ] = 16.0,
    max_megapixels: Annotated[
        float, typer.Option("--max-megapixels", min=0.01, help="Largest uploaded image, decoded.")
    ] = DEFAULT_MAX_MEGAPIXELS,
    device: DeviceOption = "auto",
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Serve the HTTP API and the web search page at http://HOST:PORT/ (needs the server extra)."""
    import importlib.util

    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if not any(importlib.util.find_spec(m) for m in MULTIPART_MODULES):
        missing.append("python-multipart")
    if missing:
        fail(f"`mmsearch serve` needs {', '.join(missing)}: pip install 'mmsearch[server]'")
    import uvicorn

    from mmsearch import service

    token = os.environ.get(service.TOKEN_ENV) or None
    try:
        settings = service.settings_for(
            host,
            token=token,
            roots=tuple(root or ()),
            max_upload_bytes=int(max_upload_mb * 1024 * 1024),
            max_megapixels=max_megapixels,
        )
    except service.ServiceConfigError as exc:
        fail(str(exc), 2)
    spec = model_spec(model, checkpoint=checkpoint, pretrained=pretrained)
    with Engine.open(index_dir_of(db), model=spec, device=device) as engine:
        web_app = service.create_app(engine, settings)
        shown = f"[{host}]" if ":" in host else host
        typer.echo(
            f"serving {engine.stats().images} images from {engine.index_dir} at "
            f"http://{shown}:{port}/" + (" (bearer token required)" if token else ""),
            err=True,
        )
        uvicorn.run(web_app, host=host, port=port, log_level=log_level, server_header=False)


cli_admin.register()  # calibrate, optimize, eval, info, remove: listed after the commands above


def main() -> None:
    """Console entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.formatwarning = lambda msg, *a, **k: f"warning: {msg}\n"  # type: ignore[assignment]
    app()


if __name__ == "__main__":
    main()
