"""What every `mmsearch` command shares: the typer app, the error-to-exit-code rule, options."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn, ParamSpec

import typer

from indexer.errors import MMSearchError
from indexer.models.devices import AUTO, Device, DeviceError
from indexer.models.spec import ModelSpec
from mmsearch.paths import default_index_dir

app = typer.Typer(
    name="mmsearch",
    help="Cross-modal semantic search: find images by a sentence, captions by an image.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

P = ParamSpec("P")

# Skipped files named on stderr by `index` and `train` (the rest: --json, or the count).
SKIPPED_LINES_SHOWN = 20

DbOption = Annotated[
    Path | None,
    typer.Option("--db", help="Index folder (default: $MMSEARCH_HOME/index or the user data dir)."),
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Model folder or openclip:ARCH (with --checkpoint or --pretrained); default: the "
        "bundled sample-shapes model, or an existing index's own model.",
    ),
]


def parse_device(value: Device | str) -> Device:
    """--device, parsed once here; a bad name is a usage error (exit 2) naming the choices."""
    try:
        return Device.parse(value)
    except DeviceError as exc:
        raise typer.BadParameter(str(exc)) from exc


DeviceOption = Annotated[
    Device,
    typer.Option("--device", parser=parse_device, metavar="auto|cpu|cuda[:N]", help="auto, cpu or cuda."),
]
DEFAULT_DEVICE = AUTO
CheckpointOption = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        help="Weights of openclip:ARCH (--model; --init in train): a local file, safetensors or "
        "a torch file read with weights_only. Nothing is downloaded.",
    ),
]
PretrainedOption = Annotated[
    str | None,
    typer.Option(
        "--pretrained",
        help="Weights of openclip:ARCH (--model; --init in train): a published tag (e.g. "
        "laion2b_s34b_b79k), downloaded by open_clip on first use.",
    ),
]
IndexTypeOption = Annotated[
    str | None,
    typer.Option(
        "--index-type",
        metavar="auto|flat|ivf|sq8|ivfpq|hnsw",
        help="How image vectors are searched. auto chooses by count and --memory-budget: exact "
        "while small, IVF above ~50,000 (128-d), HNSW from 10^7 when its memory fits, 8-bit or "
        "PQ codes when full vectors do not fit (docs/scaling.md).",
    ),
]
MemoryBudgetOption = Annotated[
    str | None,
    typer.Option(
        "--memory-budget",
        metavar="SIZE",
        help="RAM the image index may use, e.g. 4GiB or 500MB (default: half of this machine's); "
        "auto picks compressed types when full vectors would not fit. Recorded in the index.",
    ),
]


def memory_budget_of(text: str | None) -> int | None:
    """--memory-budget SIZE as bytes (None when not given); a bad size exits 2."""
    if text is None:
        return None
    from indexer.store.index_types import IndexTypeError, parse_size

    try:
        return parse_size(text)
    except IndexTypeError as exc:
        fail(str(exc), 2)


def index_type_of(text: str | None) -> str | None:
    """--index-type as one of the policies (None when not given); anything else exits 2."""
    if text is None:
        return None
    from indexer.store.index_types import POLICIES

    if text not in POLICIES:
        fail(f"--index-type {text!r}: choose one of {', '.join(POLICIES)}", 2)
    return text


def model_option_spec(
    model: str | None, checkpoint: Path | None, pretrained: str | None
) -> ModelSpec | None:
    """--model with --checkpoint/--pretrained as one ModelSpec; None when no model was named
    (an existing index then uses its own, a new one the bundled model)."""
    if model is None and checkpoint is None and pretrained is None:
        return None
    return ModelSpec.parse(model, checkpoint=checkpoint, pretrained=pretrained)


def command(name: str) -> Callable[[Callable[P, None]], Callable[P, None]]:
    """Register a CLI command whose user errors become one stderr line and exit code 1.

    Every user-facing error derives from MMSearchError (indexer/errors.py), so a new one is
    reported as one line without being listed here.
    """

    def register(func: Callable[P, None]) -> Callable[P, None]:
        @functools.wraps(func)
        def run(*args: P.args, **kwargs: P.kwargs) -> None:
            try:
                func(*args, **kwargs)
            except MMSearchError as exc:
                fail(str(exc))

        app.command(name)(run)
        return run

    return register


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one error line to stderr and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def index_dir_of(db: Path | None) -> Path:
    """The --db folder, or the default one, as an absolute path; a --db that names an existing
    file (not a folder) is refused here, before any command reads or creates index files."""
    index_dir = (db or default_index_dir()).expanduser().resolve()
    if index_dir.exists() and not index_dir.is_dir():
        fail(f"--db {index_dir} is a file, not an index folder", 2)
    return index_dir
