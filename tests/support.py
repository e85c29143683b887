"""Helpers shared by several test modules (plain functions; fixtures stay in the test files)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from indexer.config import load_named_config
from indexer.model import build_model, save_model_dir
from indexer.tokenizer import tokenizer_from_sentencepiece, train_sentencepiece

SERVER_START_TIMEOUT_S = 20


def save_random_model(directory: Path, captions: Sequence[str], *, vocab_size: int, seed: int) -> Path:
    """A random-init tiny-test model saved as a model folder: enough where ranking does not matter."""
    proto = train_sentencepiece(captions, vocab_size=vocab_size)
    tokenizer = tokenizer_from_sentencepiece(proto)
    config = load_named_config("tiny-test")
    config = replace(config, text=replace(config.text, vocab_size=len(tokenizer)))
    torch.manual_seed(seed)
    save_model_dir(build_model(config), tokenizer, directory, spm_proto=proto)
    return directory


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """A real uvicorn on 127.0.0.1 at a free port, in a thread; yields the base URL."""
    import uvicorn  # the server extra; only the HTTP tests need it

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
