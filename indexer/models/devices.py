"""Device choice with an honest fallback: asking for CUDA on a machine without it warns once.

"Once" is per process, not per call site: one command resolves the device in several places
(model load, training, FAISS), and a user should read one warning line, not three.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from indexer.errors import warn_once


def resolve_device(requested: str = "auto") -> str:
    """'auto' -> cuda when torch sees a GPU, else cpu; 'cuda' without a GPU falls back with a warning."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        warn_once("--device cuda: no CUDA device visible to torch; using the CPU")
        return "cpu"
    if requested not in {"cpu"} and not requested.startswith("cuda"):
        raise ValueError(f"unknown device {requested!r}: use auto, cpu or cuda[:N]")
    return requested


def autocast_for(device: str) -> torch.autocast:
    """Mixed precision on the GPU (fp16), a no-op context on the CPU."""
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cpu", enabled=False)


def indexing_threads() -> int:
    """Torch intra-op threads while decode workers share the cores: half of them, at least one,
    and never more than torch is set to already (OMP_NUM_THREADS, an embedding application).

    Measured on 2 cores (benchmarks/RESULTS.md): with decoding in worker threads, one torch thread
    indexes as fast or faster than torch's default of one per core, which oversubscribes.
    """
    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // 2))


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run a block with `count` intra-op threads (None: unchanged), then restore the setting.

    The setting is process-wide: queries served meanwhile by the same process use it too.
    """
    if count is None:
        yield
        return
    if count < 1:
        raise ValueError(f"torch threads must be at least 1, got {count}")
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
