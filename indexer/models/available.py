"""What models can be used here: the bundled one, model folders on disk, OpenCLIP's published weights.

Torch-free unless open_clip is installed (open_clip imports torch itself). Whether published
weights are cached is read from the file system only (Hugging Face's cache, open_clip's URL
cache); nothing here touches the network.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from indexer.models.spec import (
    DEFAULT_MODEL_DIR,
    NATIVE_CONFIG_FILE,
    ModelLoadError,
    TrainedOn,
    is_model_dir,
    is_openclip_dir,
    read_folder_config,
    trained_on,
)

# What open_clip calls the default weights file of a Hugging Face repo, and the safetensors file
# it tries first (open_clip.constants HF_WEIGHTS_NAME / HF_SAFE_WEIGHTS_NAME).
OPENCLIP_HF_WEIGHTS = "open_clip_pytorch_model.bin"
OPENCLIP_HF_SAFE_WEIGHTS = "open_clip_model.safetensors"
# Where open_clip's download_pretrained_from_url puts weights without a cache_dir.
OPENCLIP_URL_CACHE = Path("~/.cache/clip")
OPENCLIP_MODULE = "open_clip"
OPENCLIP_EXTRA_HINT = "pip install 'mmsearch[openclip]'"


@dataclass(frozen=True)
class ModelFolder:
    """A model folder that `--model` accepts, with what it says it was trained on."""

    name: str
    path: Path
    kind: str  # "native" | "openclip"
    trained_on: TrainedOn | None


@dataclass(frozen=True)
class PretrainedWeights:
    """One of open_clip's published weights for an architecture, and whether it is on disk."""

    tag: str
    cached: bool


@dataclass(frozen=True)
class OpenClipArchitecture:
    """An open_clip architecture; weights come from a published tag or from --checkpoint FILE."""

    arch: str
    pretrained: tuple[PretrainedWeights, ...]


def bundled_models() -> list[ModelFolder]:
    """The model shipped in the package (empty if it was never trained into this checkout)."""
    folder = model_folder(DEFAULT_MODEL_DIR.resolve())
    return [] if folder is None else [folder]


def model_folders(parent: Path) -> list[ModelFolder]:
    """Model folders directly inside `parent` (none if it does not exist), sorted by name."""
    if not parent.is_dir():
        return []
    found = (model_folder(child) for child in sorted(parent.iterdir()) if child.is_dir())
    return [folder for folder in found if folder is not None]


def model_folder(path: Path) -> ModelFolder | None:
    """A native or fine-tuned OpenCLIP model folder, or None for any other folder."""
    if is_model_dir(path):
        return ModelFolder(_native_name(path), path, "native", trained_on(path))
    if is_openclip_dir(path):
        return ModelFolder(path.name, path, "openclip", trained_on(path))
    return None


def _native_name(path: Path) -> str:
    """The config's model name (e.g. sample-shapes), else the folder's name."""
    try:
        model = read_folder_config(path / NATIVE_CONFIG_FILE).get("model", {})
    except ModelLoadError:  # an unreadable config still lists the folder; loading it reports why
        return path.name
    name = model.get("name") if isinstance(model, dict) else None
    return name if isinstance(name, str) and name else path.name


def openclip_installed() -> bool:
    """True when open_clip can be found (checked without importing it, so without torch)."""
    return importlib.util.find_spec(OPENCLIP_MODULE) is not None


def openclip_architectures(open_clip: ModuleType) -> list[OpenClipArchitecture]:
    """Every architecture open_clip knows, with its published weights (list_pretrained) and
    which of them are already cached on this machine."""
    tags: dict[str, list[str]] = {}
    for arch, tag in open_clip.list_pretrained():
        tags.setdefault(arch, []).append(tag)
    names = list(dict.fromkeys([*tags, *open_clip.list_models()]))
    return [
        OpenClipArchitecture(
            arch,
            tuple(
                PretrainedWeights(tag, pretrained_cached(open_clip, arch, tag)) for tag in tags.get(arch, [])
            ),
        )
        for arch in names
    ]


def pretrained_cached(open_clip: ModuleType, arch: str, tag: str) -> bool:
    """True when open_clip would load these published weights without downloading them."""
    config = open_clip.get_pretrained_cfg(arch, tag) or {}
    if config.get("file"):
        return Path(config["file"]).is_file()
    hub = config.get("hf_hub")
    if hub and _in_hf_cache(*os.path.split(hub)):
        return True
    url = str(config.get("url") or "")
    return bool(url) and (OPENCLIP_URL_CACHE.expanduser() / os.path.basename(url)).is_file()


def _in_hf_cache(repo_id: str, filename: str) -> bool:
    """The weights file (or the safetensors open_clip prefers) in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    filename = filename or OPENCLIP_HF_WEIGHTS
    candidates = [filename]
    if filename == OPENCLIP_HF_WEIGHTS:
        candidates.insert(0, OPENCLIP_HF_SAFE_WEIGHTS)
    elif filename.endswith((".bin", ".pth")):
        candidates.insert(0, filename[:-4] + ".safetensors")
    return any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in candidates)
