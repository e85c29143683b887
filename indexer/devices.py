"""Device choice with an honest fallback: asking for CUDA on a machine without it warns once.

"Once" is per process, not per call site: one command resolves the device in several places
(model load, training, FAISS), and a user should read one warning line, not three.
"""

from __future__ import annotations

import warnings

import torch

_warned: set[str] = set()


def warn_once(message: str) -> None:
    """Emit a fallback warning the first time it happens in this process, then stay quiet."""
    if message in _warned:
        return
    _warned.add(message)
    warnings.warn(message, stacklevel=3)


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
