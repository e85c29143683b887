"""`mmsearch serve --workers N`: N server processes sharing one index on disk.

uvicorn starts N processes that accept on the same socket; each one calls `worker_app`, which
opens its own Engine over the index (the model is loaded once per process) and builds the app.
Each process batches its own queries. They share the index as any readers do: a write through
one of them (POST /index, DELETE) replaces the files atomically under the writer lock, and every
process answers from the new snapshot on its next query.

The parent passes what it parsed in one environment variable (JSON); the bearer token stays in
MMSEARCH_TOKEN, which the workers inherit.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from mmsearch.service.settings import TOKEN_ENV, ServiceSettings, settings_for

CONFIG_ENV = "MMSEARCH_SERVE_WORKER"
FACTORY = "mmsearch.service.workers:worker_app"  # what uvicorn imports in each process


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker process needs to open the index and build the same app."""

    index_dir: str
    model: str | None
    device: str
    host: str
    roots: tuple[str, ...]
    limits: dict[str, Any]  # ServiceSettings fields the CLI sets (upload size, batching...)
    torch_threads: int

    def to_env(self) -> str:
        """The JSON the parent puts in CONFIG_ENV."""
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> WorkerConfig:
        """The parent's config, in a worker process."""
        raw = os.environ.get(CONFIG_ENV)
        if raw is None:
            raise RuntimeError(f"{FACTORY} runs in the processes of `mmsearch serve --workers N`")
        fields = json.loads(raw)
        return cls(**{**fields, "roots": tuple(fields["roots"])})

    def settings(self) -> ServiceSettings:
        """The same settings the parent checked (bind safety included)."""
        token = os.environ.get(TOKEN_ENV) or None
        roots = tuple(Path(r) for r in self.roots)
        return settings_for(self.host, token=token, roots=roots, **self.limits)


def worker_app() -> FastAPI:
    """uvicorn's factory in each worker process: this process's Engine and app."""
    import torch

    from mmsearch.engine import Engine
    from mmsearch.service.app import create_app

    config = WorkerConfig.from_env()
    torch.set_num_threads(config.torch_threads)
    engine = Engine.open(config.index_dir, model=config.model, device=config.device)
    engine.load_model()  # before this process says it is ready, as the parent did
    return create_app(engine, config.settings())  # the Engine lives as long as the process
