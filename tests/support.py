"""Helpers shared by several test modules (plain functions; fixtures stay in the test files)."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image

from indexer.media.images import open_image
from indexer.models.config import load_named_config
from indexer.models.native import build_model, save_model_dir
from indexer.models.tokenizer import tokenizer_from_sentencepiece, train_sentencepiece

SERVER_START_TIMEOUT_S = 20
REPO = Path(__file__).resolve().parents[1]
BENCH_SYNTH_PATH = REPO / "benchmarks" / "synth.py"
RECALL_KS = (1, 5, 10)  # the cut-offs `mmsearch eval` reports
MODEL_MODULES = ("torch", "transformers")
# Libraries `mmsearch --help` has no use for either: arrays, images, vectors, the catalogue.
DATA_MODULES = ("numpy", "PIL", "faiss", "sqlalchemy")
# Runs the real CLI entry point, then reports which of those libraries the process imported.
IMPORT_PROBE = (
    "import atexit, json, sys\n"
    f"heavy = {MODEL_MODULES + DATA_MODULES!r}\n"
    "atexit.register(lambda: print('IMPORTED ' + json.dumps(sorted(m for m in heavy if m in sys.modules)),"
    " file=sys.stderr))\n"
    "from mmsearch.cli import main\n"
    "sys.argv = ['mmsearch', *sys.argv[1:]]\n"
    "main()\n"
)


@dataclass(frozen=True)
class ProcessRun:
    """One `mmsearch` process: exit code, output, the model libraries it imported, and every
    watched library (MODEL_MODULES + DATA_MODULES) it imported."""

    code: int
    stdout: str
    stderr: str
    imported: list[str]
    loaded: list[str]


def mmsearch_process(*args: object) -> ProcessRun:
    """`mmsearch ARGS` in a fresh interpreter importing this checkout (this test process has torch
    loaded already, so only a new process can tell what a command imports)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-c", IMPORT_PROBE, *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    lines = done.stderr.splitlines()
    marker = [line for line in lines if line.startswith("IMPORTED ")]
    assert marker, f"the probe did not report (exit {done.returncode}):\n{done.stderr}"
    stderr = "\n".join(line for line in lines if not line.startswith("IMPORTED "))
    loaded = json.loads(marker[-1].removeprefix("IMPORTED "))
    imported = [m for m in loaded if m in MODEL_MODULES]
    return ProcessRun(done.returncode, done.stdout, stderr, imported, loaded)


def load_script(path: Path, name: str) -> ModuleType:
    """Import a script that is not a package module (sample_corpus/generate.py, benchmarks/*)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@functools.cache
def bench_synth() -> ModuleType:
    """benchmarks/synth.py: the camera-EXIF writer the benchmark photos use."""
    return load_script(BENCH_SYNTH_PATH, "mmsearch_bench_synth")


def camera_jpeg(
    photo: Image.Image,
    *,
    preview: Image.Image | bytes | None = None,
    orientation: int = 1,
) -> bytes:
    """A JPEG as a camera writes it: EXIF orientation and an embedded preview (IFD1).

    preview defaults to the photo shrunk to 160x120; an Image or raw bytes lets a test tell
    which pixels were decoded, or hand over a broken preview.
    """
    synth = bench_synth()
    if preview is None:
        preview_bytes = synth.camera_preview(photo)
    elif isinstance(preview, Image.Image):
        buffer = io.BytesIO()
        preview.save(buffer, format="JPEG", quality=95)
        preview_bytes = buffer.getvalue()
    else:
        preview_bytes = preview
    out = io.BytesIO()
    photo.save(out, format="JPEG", quality=90, exif=synth.camera_exif(preview_bytes, orientation=orientation))
    return out.getvalue()


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


def reference_recall(encoder: Any, pairs: Sequence[tuple[Path, str]]) -> dict[str, dict[str, float]]:
    """What `mmsearch eval` should print for (image, caption) pairs, from the encoder's own
    embeddings (images decoded as index and query time decode them) and `recall_of`."""
    gallery = list(dict.fromkeys(path for path, _ in pairs))
    size = encoder.preprocess_config.image_size
    pixels = [encoder.preprocess(open_image(path, target_size=size)) for path in gallery]
    images = encoder.encode_pixels(torch.stack(pixels))  # (I, dim)
    texts = encoder.encode_texts([caption for _, caption in pairs])  # (T, dim)
    return recall_of(images, texts, [gallery.index(path) for path, _ in pairs], [c for _, c in pairs])


def recall_of(
    images: np.ndarray, texts: np.ndarray, owner: Sequence[int], captions: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Recall@1/5/10 and median rank both ways, written from the protocol with NumPy alone: a
    reference that shares no code with indexer.training.evaluate.

    images (I, dim) and texts (T, dim) normalised; owner[t] is the image caption t describes.
    A caption's correct images are all images carrying that caption (case and spacing folded);
    an image is found when any of its captions ranks within K; ties count for the query.
    """
    scores = texts @ images.T  # (T, I)
    owns = np.asarray(owner)[:, None] == np.arange(len(images))[None, :]  # (T, I)
    folded = np.array([" ".join(caption.lower().split()) for caption in captions])
    same_text = folded[:, None] == folded[None, :]  # (T, T)
    t2i_correct = same_text.astype(np.int64) @ owns.astype(np.int64) > 0  # (T, I)
    return {
        "t2i": _recall_summary(_best_correct_ranks(scores, t2i_correct)),
        "i2t": _recall_summary(_best_correct_ranks(scores.T, owns.T)),
    }


def _best_correct_ranks(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """1-based rank of each row's best-scoring correct column: 1 + how many columns beat it."""
    best = np.where(correct, scores, -np.inf).max(axis=1)  # (rows,)
    return 1 + (scores > best[:, None]).sum(axis=1)


def _recall_summary(ranks: np.ndarray) -> dict[str, float]:
    recall = {f"R@{k}": float(np.mean(ranks <= k)) for k in RECALL_KS}
    return {**recall, "medr": float(np.median(ranks))}
