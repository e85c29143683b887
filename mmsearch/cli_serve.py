"""`mmsearch serve`: the HTTP API and web page over one index, in one process or several."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from indexer.media.settings import DEFAULT_MAX_MEGAPIXELS
from mmsearch.cli_common import (
    DEFAULT_DEVICE,
    CheckpointOption,
    DbOption,
    DeviceOption,
    ModelOption,
    PretrainedOption,
    command,
    fail,
    index_dir_of,
    model_option_spec,
)

SERVER_MODULES = ("fastapi", "uvicorn")
MULTIPART_MODULES = ("python_multipart", "multipart")  # python-multipart's new and old names
# service.settings.DEFAULT_MAX_BATCH and DEFAULT_MAX_WAIT_MS (a test keeps them equal): that
# package imports FastAPI, which the other commands must not need.
SERVE_MAX_BATCH = 32
SERVE_BATCH_WAIT_MS = 5.0
# uvicorn kills a worker process that does not answer its health check in time; importing torch
# and loading the model can hold the GIL for many seconds on a busy machine (its default is 5 s).
WORKER_START_TIMEOUT_S = 120


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
    max_batch: Annotated[
        int,
        typer.Option(
            "--max-batch",
            min=1,
            help="Most sentence queries encoded and searched together (1: each alone).",
        ),
    ] = SERVE_MAX_BATCH,
    batch_wait_ms: Annotated[
        float,
        typer.Option(
            "--batch-wait-ms",
            min=0.0,
            help="Longest a sentence query waits for others to share its batch.",
        ),
    ] = SERVE_BATCH_WAIT_MS,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            help="Server processes sharing the index on disk, each with its own copy of the model.",
        ),
    ] = 1,
    torch_threads: Annotated[
        int | None,
        typer.Option(
            "--torch-threads",
            min=1,
            help="Torch and FAISS threads per process for queries "
            "(default: half of its share of the cores, at least 1).",
        ),
    ] = None,
    device: DeviceOption = DEFAULT_DEVICE,
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

    from indexer.models.devices import serving_threads
    from mmsearch import service

    token = os.environ.get(service.TOKEN_ENV) or None
    threads = torch_threads or serving_threads(workers)
    try:
        settings = service.settings_for(
            host,
            token=token,
            roots=tuple(root or ()),
            max_upload_bytes=int(max_upload_mb * 1024 * 1024),
            max_megapixels=max_megapixels,
            max_batch=max_batch,
            batch_wait_ms=batch_wait_ms,
            search_threads=threads,
            query_slots=max(1, (os.cpu_count() or 1) // workers),  # the cores, shared by the processes
        )
    except service.ServiceConfigError as exc:
        fail(str(exc), 2)
    from mmsearch.engine import Engine

    spec = model_option_spec(model, checkpoint, pretrained)
    shown = f"[{host}]" if ":" in host else host
    with Engine.open(index_dir_of(db), model=spec, device=device) as engine:
        if workers == 1:  # with more, each worker sets its threads and loads its own model
            import torch

            torch.set_num_threads(threads)
            engine.load_model()  # now, not on the first request: a broken model stops here
        typer.echo(
            f"serving {engine.stats().images} images from {engine.index_dir} at "
            f"http://{shown}:{port}/"
            + (" (bearer token required)" if token else "")
            + (f" from {workers} processes" if workers > 1 else ""),
            err=True,
        )
        if workers == 1:
            web_app = service.create_app(engine, settings)
            uvicorn.run(web_app, host=host, port=port, log_level=log_level, server_header=False)
            return
    from mmsearch.service.workers import CONFIG_ENV, FACTORY, WorkerConfig

    os.environ[CONFIG_ENV] = WorkerConfig(
        index_dir=str(index_dir_of(db)),
        model=None if spec is None else spec.source(),
        device=str(device),
        host=host,
        roots=tuple(str(r) for r in settings.roots),
        limits={
            "max_upload_bytes": settings.max_upload_bytes,
            "max_megapixels": settings.max_megapixels,
            "max_batch": settings.max_batch,
            "batch_wait_ms": settings.batch_wait_ms,
            "search_threads": settings.search_threads,
            "query_slots": settings.query_slots,
        },
        torch_threads=threads,
    ).to_env()
    uvicorn.run(
        FACTORY,
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level=log_level,
        server_header=False,
        timeout_worker_healthcheck=WORKER_START_TIMEOUT_S,
    )


def register() -> None:
    """Add `serve` to the shared app."""
    command("serve")(serve_cmd)
