"""OpenCLIP fixtures: a tiny random-weight architecture registered with open_clip, saved locally.

These tests run in the separate .venv-openclip (`make test` runs them there after the core
suite, loading mmsearch_torchvision_shim first); where open_clip is not installed, as in the core
.venv, they are not collected. Every test here runs with the network refused and recorded.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from pretrained_parts import NetworkGuard
from safetensors.torch import save_file

collect_ignore_glob = [] if importlib.util.find_spec("open_clip") else ["test_*.py"]

TINY_ARCH = "mmsearch-tiny-vit"
# A ViT CLIP small enough to build in milliseconds; vocab_size is the SimpleTokenizer's (its BPE
# vocabulary ships inside the open_clip package, so tokenising needs no download).
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@dataclass(frozen=True)
class Checkpoint:
    """A saved weights file and the model it was saved from (the reference for embeddings)."""

    path: Path
    model: Any


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetworkGuard]:
    """Nothing in the OpenCLIP paths may open a connection (recorded even if swallowed)."""
    guard = NetworkGuard().install(monkeypatch)
    yield guard
    assert guard.attempts == [], f"network access attempted: {guard.attempts}"


@pytest.fixture(scope="session")
def tiny_arch(tmp_path_factory: pytest.TempPathFactory) -> str:
    """TINY_ARCH registered the way open_clip registers its own: a JSON config in a folder."""
    import open_clip

    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / f"{TINY_ARCH}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder)
    return TINY_ARCH


def save_checkpoint(arch: str, path: Path, *, seed: int) -> Checkpoint:
    """Random weights for `arch` saved as safetensors or a plain torch state dict (by suffix)."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(arch).eval()
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return Checkpoint(path, model)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_arch: str, tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    """The model users would point --checkpoint at, as safetensors."""
    return save_checkpoint(tiny_arch, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", seed=0)
