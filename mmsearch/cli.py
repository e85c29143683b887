"""The `mmsearch` command: turns library results into output and library errors into exit codes."""

from __future__ import annotations

import functools
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, NoReturn, ParamSpec

import typer
from tqdm import tqdm

from indexer.config import ConfigError, TrainConfig, load_named_config
from indexer.data import CorpusError, load_corpus
from indexer.encoders import load_encoder
from indexer.evaluate import evaluate_corpus
from indexer.images import DEFAULT_MAX_MEGAPIXELS, ImageLoadError
from indexer.index_store import IndexStoreError
from indexer.model import ModelLoadError
from indexer.pipeline import (
    IndexOptions,
    IndexReport,
    PipelineError,
    add_texts,
    index_folders,
    remove_images,
)
from indexer.scan import ScanOptions
from indexer.tokenizer import TokenizerError
from indexer.train import EpochResult, TrainError, train
from mmsearch.engine import Engine, EngineError, ImageHit, TextHit
from mmsearch.paths import default_index_dir
from mmsearch.texts import read_texts

app = typer.Typer(
    name="mmsearch",
    help="Cross-modal semantic search: find images by a sentence, captions by an image.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Errors whose message already tells the user what to do: printed as one line, exit 1.
USER_ERRORS = (
    EngineError,
    IndexStoreError,
    ModelLoadError,
    PipelineError,
    CorpusError,
    TrainError,
    ConfigError,
    TokenizerError,
    ImageLoadError,
)
SKIPPED_LINES_SHOWN = 20
P = ParamSpec("P")

DbOption = Annotated[
    Path | None,
    typer.Option("--db", help="Index folder (default: $MMSEARCH_HOME/index or the user data dir)."),
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model", help="Model folder or openclip:ARCH (default: the bundled sample-shapes model)."
    ),
]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]


def command(name: str) -> Callable[[Callable[P, None]], Callable[P, None]]:
    """Register a CLI command whose user errors become one stderr line and exit code 1."""

    def register(func: Callable[P, None]) -> Callable[P, None]:
        @functools.wraps(func)
        def run(*args: P.args, **kwargs: P.kwargs) -> None:
            try:
                func(*args, **kwargs)
            except USER_ERRORS as exc:
                fail(str(exc))

        app.command(name)(run)
        return run

    return register


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one error line to stderr and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _db(db: Path | None) -> Path:
    return (db or default_index_dir()).expanduser().resolve()


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
    lr: Annotated[float, typer.Option("--lr")] = TrainConfig.lr,
    config: Annotated[
        str, typer.Option("--config", help="Named model config or JSON file.")
    ] = "sample-shapes",
    text_init: Annotated[
        Path | None, typer.Option("--text-init", help="Local pretrained ALBERT folder.")
    ] = None,
    image_init: Annotated[
        Path | None, typer.Option("--image-init", help="Local ResNet weights.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/last.")] = False,
    device: DeviceOption = "auto",
    quiet: Annotated[bool, typer.Option("--quiet")] = False,
) -> None:
    """Train the ALBERT+CNN dual encoder contrastively; keeps the best checkpoint by validation recall."""
    data = load_corpus(corpus)
    train_config = TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, lr=lr)

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

    report = train(
        data,
        out,
        model_config=load_named_config(config),
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
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Glob to skip (repeatable).")
    ] = None,
    include_hidden: Annotated[bool, typer.Option("--include-hidden")] = False,
    max_megapixels: Annotated[
        float, typer.Option("--max-megapixels", min=0.01)
    ] = DEFAULT_MAX_MEGAPIXELS,
    device: DeviceOption = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", help="Only errors.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Index photo folders: new and changed files are encoded, moved ones recognised, gone ones removed."""
    index_dir = _db(db)
    encoder = _encoder_for_index(index_dir, model, device)
    options = IndexOptions(
        batch_size=batch_size,
        max_megapixels=max_megapixels,
        scan=ScanOptions(exclude=tuple(exclude or ()), include_hidden=include_hidden),
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
        return Engine.open(index_dir, device=device).encoder
    return load_encoder(model, device=device)


def _print_index_summary(report: IndexReport, index_dir: Path) -> None:
    for item in report.skipped[:SKIPPED_LINES_SHOWN]:
        typer.echo(f"skipped {item.path}: {item.reason}")
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


@command("add-texts")
def add_texts_cmd(
    file: Annotated[
        Path, typer.Argument(help='One caption per line, or JSONL with a "caption"/"text" field.')
    ],
    db: DbOption = None,
    model: ModelOption = None,
    device: DeviceOption = "auto",
) -> None:
    """Index a text collection for image-to-text search."""
    index_dir = _db(db)
    texts = read_texts(file)
    encoder = _encoder_for_index(index_dir, model, device)
    report = add_texts(index_dir, encoder, texts, source=str(file.resolve()))
    typer.echo(
        f"added {report.added} texts ({report.duplicates} duplicates skipped) -> {index_dir}"
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
    k: Annotated[int, typer.Option("-k", "--k", help="Number of results.")] = 10,
    under: Annotated[Path | None, typer.Option("--under", help="Only images below this folder.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"results": [...]} as JSON.')
    ] = False,
    device: DeviceOption = "auto",
) -> None:
    """Text to image, or with --image: image to image / image to text."""
    if (query is None) == (image is None):
        fail("give either a SENTENCE or --image IMG (not both)", 2)
    if to not in ("image", "text"):
        fail(f"--to must be image or text, not {to!r}", 2)
    with Engine.open(_db(db), model=model, device=device) as engine:
        if image is not None:
            hits = engine.search_image(image, k=k, to=to, under=under)  # type: ignore[arg-type]
        else:
            hits = engine.search_text(query or "", k=k, under=under)
    if as_json:
        typer.echo(json.dumps({"results": [asdict(h) for h in hits]}))
        return
    if not hits:
        typer.echo("no results (is the index empty? add images with `mmsearch index`)")
    for hit in hits:
        shown = (
            hit.path if isinstance(hit, ImageHit) else hit.text if isinstance(hit, TextHit) else ""
        )
        typer.echo(f"{hit.rank:3d}  {hit.score:6.3f}  {shown}")


@command("eval")
def eval_cmd(
    corpus: Annotated[Path, typer.Option("--corpus", help="Caption corpus with images.")],
    split: Annotated[
        str | None, typer.Option("--split", help="Split to score (default: whole corpus).")
    ] = None,
    model: ModelOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    device: DeviceOption = "auto",
) -> None:
    """Recall@1/5/10 and median rank for text->image and image->text."""
    data = load_corpus(corpus, split=split)
    result = evaluate_corpus(load_encoder(model, device=device), data, batch_size=batch_size)
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(
        f"{corpus} split={split or 'all'}: "
        f"{result['counts']['images']} images, {result['counts']['captions']} captions"
    )
    _print_metrics("all captions", result)
    for name, group in result.get("breakdown", {}).items():
        _print_metrics(f"{name} (n={group['n']})", group)


def _print_metrics(label: str, metrics: dict) -> None:  # type: ignore[type-arg]
    for direction in ("t2i", "i2t"):
        m = metrics[direction]
        typer.echo(
            f"{label:28s} {direction}  R@1 {m['R@1']:.3f}  R@5 {m['R@5']:.3f}"
            f"  R@10 {m['R@10']:.3f}  medr {m['medr']:.1f}"
        )


@command("info")
def info_cmd(db: DbOption = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Model, counts, dimension, index type and size on disk."""
    with Engine.open(_db(db)) as engine:
        stats = engine.stats()
    if as_json:
        typer.echo(json.dumps(asdict(stats)))
        return
    for key, value in asdict(stats).items():
        typer.echo(f"{key:14s} {value}")


@command("remove")
def remove_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to drop from the index.")],
    db: DbOption = None,
) -> None:
    """Remove files (or everything under folders) from the index; the files themselves are untouched."""
    removed = remove_images(_db(db), paths)
    typer.echo(f"removed {removed} images from {_db(db)}")


def main() -> None:
    """Console entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.formatwarning = lambda msg, *a, **k: f"warning: {msg}\n"  # type: ignore[assignment]
    app()


if __name__ == "__main__":
    main()
