"""OpenCLIP models behind the one Encoder interface (optional extra: `pip install 'mmsearch[openclip]'`).

Three ways to name one, all through `--model`:

    openclip:ARCH --checkpoint FILE   local weights: safetensors, or a torch file read with
                                      weights_only=True (never unpickled); nothing is downloaded
    openclip:ARCH --pretrained TAG    published weights, which open_clip downloads itself
    DIR                               a folder written by `mmsearch train --init openclip:ARCH`
                                      (open_clip's own local-dir layout: open_clip reads it too)

An index records the canonical spec (`openclip:ARCH?checkpoint=/abs/file.safetensors`) as its
model source, so `search` reloads the same weights without being told, and a content id of the
weights, so an index refuses to be queried with different ones. Model, tokenizer and image
transform come from open_clip together, as with `open_clip.create_model_and_transforms`, so
index time and query time preprocess identically.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from indexer.media.images import PreprocessConfig
from indexer.models.config import write_json
from indexer.models.devices import CPU, Device, autocast_for
from indexer.models.protocol import TEXT_BATCH_SIZE, as_faiss_array, hub_offline
from indexer.models.spec import OPENCLIP_CONFIG_FILE as CONFIG_FILE
from indexer.models.spec import (
    OPENCLIP_PREFIX,
    EncoderInfo,
    ModelLoadError,
    ModelSpec,
    is_openclip_dir,
    openclip_folder_arch,
    openclip_folder_model_id,
    openclip_model_id,
    read_folder_config,
)
from indexer.models.spec import OPENCLIP_WEIGHTS_FILE as WEIGHTS_FILE
from indexer.models.spec import OpenClipSpec as OpenClipSpec  # re-exported: its home before spec.py

EXTRA_HINT = "pip install 'mmsearch[openclip]' (or `make openclip-env` in a checkout)"
FOLDER_FORMAT = "mmsearch-openclip/1"


@dataclass(frozen=True)
class LoadedOpenClip:
    """A model with the tokenizer and transform open_clip pairs with it, and what to record."""

    model: Any  # open_clip.CLIP or CustomTextCLIP
    tokenizer: Callable[[Sequence[str]], torch.Tensor]  # texts -> (n, context) int64
    transform: Callable[[Image.Image], torch.Tensor]  # RGB image -> (3, S, S) float32
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    arch: str
    source: str
    model_id: str

    @property
    def embed_dim(self) -> int:
        """Dimension of the shared embedding space."""
        return int(self.model_cfg["embed_dim"])


def import_open_clip() -> ModuleType:
    """open_clip, or a ModelLoadError naming the extra (and the torch/torchvision trap)."""
    try:
        import open_clip
    except ImportError as exc:
        raise ModelLoadError(
            f"OpenCLIP models need the optional extra: {EXTRA_HINT} ({exc})"
        ) from exc
    except (RuntimeError, OSError) as exc:
        # torchvision built for another torch fails at import ("operator torchvision::nms does
        # not exist"); the fix is a torchvision release matching the installed torch.
        raise ModelLoadError(
            f"open_clip is installed but cannot be imported ({exc}); install the torchvision "
            f"release built for torch {torch.__version__}"
        ) from exc
    return open_clip


def architecture_dim(arch: str) -> int:
    """The embedding dimension of an open_clip architecture, from its config (no weights loaded)."""
    return int(_model_config(import_open_clip(), arch)["embed_dim"])


def _model_config(open_clip: ModuleType, arch: str) -> dict[str, Any]:
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        known = ", ".join(open_clip.list_models()[:8])
        raise ModelLoadError(
            f"open_clip has no architecture {arch!r} (e.g. {known}, ...; see open_clip.list_models())"
        )
    return dict(model_cfg)


def openclip_spec(
    spec: ModelSpec | str | Path, *, checkpoint: Path | None = None, pretrained: str | None = None
) -> ModelSpec:
    """openclip:ARCH (+ checkpoint or pretrained) or a fine-tuned folder, as a ModelSpec."""
    if isinstance(spec, ModelSpec) and checkpoint is None and pretrained is None:
        return spec
    text = str(spec)
    if text.startswith(OPENCLIP_PREFIX):
        return ModelSpec.parse(text, checkpoint=checkpoint, pretrained=pretrained)
    if checkpoint is not None or pretrained is not None:
        raise ModelLoadError(f"{text} is a trained OpenCLIP folder: drop --checkpoint/--pretrained")
    return ModelSpec("openclip-folder", folder=Path(text).expanduser().resolve())


def load_openclip(
    spec: ModelSpec | str | Path,
    *,
    device: Device | str = CPU,
    checkpoint: Path | None = None,
    pretrained: str | None = None,
) -> LoadedOpenClip:
    """Model, tokenizer and transform from a spec (see the module docstring) on `device`."""
    model_spec = openclip_spec(spec, checkpoint=checkpoint, pretrained=pretrained)
    target = Device.parse(device).resolve()
    if model_spec.openclip is None:
        assert model_spec.folder is not None
        return _load_dir(model_spec.folder, device=target)
    parsed = model_spec.openclip
    open_clip = import_open_clip()
    model_cfg = _model_config(open_clip, parsed.arch)
    model_id = openclip_model_id(parsed)
    if parsed.checkpoint is not None:
        with hub_offline():  # local weights: nothing may reach the network
            model = _create(open_clip, parsed.arch, pretrained=str(parsed.checkpoint), device=target)
            tokenizer = _tokenizer(open_clip, parsed.arch)
    else:
        # A published tag names fixed weights; open_clip downloads (or reuses) them itself.
        model = _create(open_clip, parsed.arch, pretrained=parsed.pretrained, device=target)
        tokenizer = _tokenizer(open_clip, parsed.arch)
    return _assemble(open_clip, model, tokenizer, model_cfg, parsed.arch, parsed.source(), model_id)


def _load_dir(directory: Path, *, device: Device) -> LoadedOpenClip:
    if not is_openclip_dir(directory):
        raise ModelLoadError(
            f"no OpenCLIP model at {directory}: expected {CONFIG_FILE} and {WEIGHTS_FILE} (write "
            "one with `mmsearch train --init openclip:ARCH --checkpoint FILE --out DIR`)"
        )
    config = read_folder_config(directory / CONFIG_FILE)
    try:
        model_cfg = dict(config["model_cfg"])
        # Folders open_clip itself wrote (no "mmsearch" section) load too, named by the folder.
        arch = openclip_folder_arch(directory, config)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{directory}: unreadable {CONFIG_FILE}: {exc}") from exc
    open_clip = import_open_clip()
    name = f"local-dir:{directory}"
    with hub_offline():
        model = _create(open_clip, name, pretrained=None, device=device)
        tokenizer = _tokenizer(open_clip, name)
    model_id = openclip_folder_model_id(directory, config)
    return _assemble(open_clip, model, tokenizer, model_cfg, arch, str(directory), model_id)


def _create(open_clip: ModuleType, name: str, *, pretrained: str | None, device: Device) -> Any:
    try:
        return open_clip.create_model(
            name,
            pretrained=pretrained,
            device=str(device),
            weights_only=True,  # a torch checkpoint is read as tensors only, never unpickled
            pretrained_text=False,  # no base-tower download: full CLIP weights follow
        )
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"{pretrained}: holds more than tensors, and mmsearch never unpickles code; save the "
            f"state dict alone (safetensors preferred): {exc}"
        ) from exc
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load OpenCLIP model {name} ({pretrained}): {exc}") from exc


def _tokenizer(open_clip: ModuleType, name: str) -> Any:
    try:
        return open_clip.get_tokenizer(name)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot load the tokenizer of {name}: {exc} (a Hugging Face tokenizer must be in the "
            "local cache: load the model once with --pretrained on a machine with internet)"
        ) from exc


def _assemble(
    open_clip: ModuleType,
    model: Any,
    tokenizer: Any,
    model_cfg: dict[str, Any],
    arch: str,
    source: str,
    model_id: str,
) -> LoadedOpenClip:
    from open_clip.transform import PreprocessCfg, image_transform_v2

    preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(model))
    transform = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)
    model.eval()
    return LoadedOpenClip(
        model, tokenizer, transform, model_cfg, preprocess_cfg, arch, source, model_id
    )


def preprocess_config_of(preprocess_cfg: dict[str, Any]) -> PreprocessConfig:
    """The closest PreprocessConfig (size for draft decoding, mean/std) to open_clip's transform."""
    size = preprocess_cfg["size"]
    side = max(size) if isinstance(size, Sequence) else int(size)
    return PreprocessConfig(
        image_size=side,
        mean=tuple(float(m) for m in preprocess_cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(float(s) for s in preprocess_cfg["std"]),  # type: ignore[arg-type]
        resize="squash" if preprocess_cfg.get("resize_mode") == "squash" else "shorter_side_center_crop",
    )


class OpenClipEncoder:
    """An OpenCLIP model as an Encoder: open_clip's tokenizer and eval transform, normalised output."""

    def __init__(self, loaded: LoadedOpenClip, *, device: Device) -> None:
        self.loaded = loaded
        self.device = device
        self.model = loaded.model.to(str(device)).eval()
        self.preprocess_config = preprocess_config_of(loaded.preprocess_cfg)
        self.info = EncoderInfo("openclip", loaded.source, loaded.model_id, loaded.embed_dim)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> (3, S, S) float32 through open_clip's own eval transform."""
        return self.loaded.transform(image)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (n, dim) float32, L2-normalised, C-contiguous."""
        chunks = []
        for start in range(0, len(texts), TEXT_BATCH_SIZE):
            tokens = self.loaded.tokenizer(list(texts[start : start + TEXT_BATCH_SIZE]))
            with autocast_for(self.device):
                chunks.append(self.model.encode_text(tokens.to(str(self.device)), normalize=True))
        if not chunks:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        return as_faiss_array(torch.cat(chunks))  # (n, dim)

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """(n, 3, S, S) -> (n, dim) float32, L2-normalised, C-contiguous."""
        if len(pixels) == 0:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        with autocast_for(self.device):
            embeddings = self.model.encode_image(pixels.to(str(self.device)), normalize=True)
        return as_faiss_array(embeddings)  # (n, dim)


def load_openclip_encoder(
    spec: ModelSpec | str | Path,
    *,
    device: Device | str = CPU,
    checkpoint: Path | None = None,
    pretrained: str | None = None,
) -> OpenClipEncoder:
    """An Encoder for `--model openclip:ARCH` (+ --checkpoint/--pretrained) or a trained folder."""
    target = Device.parse(device).resolve()
    loaded = load_openclip(spec, device=target, checkpoint=checkpoint, pretrained=pretrained)
    return OpenClipEncoder(loaded, device=target)


def save_openclip_dir(
    loaded: LoadedOpenClip, directory: Path, *, extra: dict[str, Any] | None = None
) -> None:
    """Write open_clip's local-dir layout: config JSON, safetensors weights, tokenizer files."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().contiguous().cpu().clone() for k, v in loaded.model.state_dict().items()
    }
    tmp = directory / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": FOLDER_FORMAT})
    tmp.replace(directory / WEIGHTS_FILE)
    hf_tokenizer: Any = getattr(loaded.tokenizer, "tokenizer", None)
    if hf_tokenizer is not None and hasattr(hf_tokenizer, "save_pretrained"):
        hf_tokenizer.save_pretrained(str(directory))  # local-dir models read their HF tokenizer here
    preprocess = {k: list(v) if isinstance(v, tuple) else v for k, v in loaded.preprocess_cfg.items()}
    write_json(
        directory / CONFIG_FILE,
        {
            "model_cfg": loaded.model_cfg,
            "preprocess_cfg": preprocess,
            "mmsearch": {
                "format": FOLDER_FORMAT,
                "arch": loaded.arch,
                "init": {"source": loaded.source, "model_id": loaded.model_id},
                **(extra or {}),
            },
        },
    )
