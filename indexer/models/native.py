"""The dual encoder: an ALBERT text tower and a ResNet image tower in one L2-normalised space.

A model directory holds `config.json` (the ModelConfig), `model.safetensors` (all weights) and
the tokenizer files; loading rebuilds the modules from the config and never unpickles anything.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AlbertConfig, AlbertModel, AlbertTokenizer, ResNetConfig, ResNetModel

from indexer.models.config import ModelConfig, write_json
from indexer.models.devices import CPU, Device
from indexer.models.spec import NATIVE_CONFIG_FILE as CONFIG_FILE
from indexer.models.spec import NATIVE_FORMAT as MODEL_FORMAT
from indexer.models.spec import NATIVE_WEIGHTS_FILE as WEIGHTS_FILE
from indexer.models.spec import ModelLoadError, is_model_dir, read_folder_config
from indexer.models.spec import native_weights_id as weights_id
from indexer.models.tokenizer import load_tokenizer, save_tokenizer


class TextTower(nn.Module):
    """ALBERT, masked mean pooling over tokens, linear projection."""

    def __init__(self, albert: AlbertModel, embed_dim: int) -> None:
        super().__init__()
        self.albert = albert
        self.proj = nn.Linear(albert.config.hidden_size, embed_dim, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.albert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (batch, hidden)
        return self.proj(pooled)  # (batch, dim)


class ImageTower(nn.Module):
    """ResNet with optional x/y coordinate input channels, global average pooling, projection."""

    def __init__(self, resnet: ResNetModel, embed_dim: int, *, coord_channels: bool) -> None:
        super().__init__()
        self.resnet = resnet
        self.coord_channels = coord_channels
        widths = list(resnet.config.hidden_sizes or [])
        self.proj = nn.Linear(widths[-1], embed_dim, bias=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.coord_channels:
            pixels = _with_coordinates(pixels)  # (batch, 5, H, W)
        pooled = self.resnet(pixel_values=pixels).pooler_output.flatten(1)  # (batch, channels)
        return self.proj(pooled)  # (batch, dim)


def _with_coordinates(pixels: torch.Tensor) -> torch.Tensor:
    batch, _, height, width = pixels.shape
    ys = torch.linspace(-1.0, 1.0, height, device=pixels.device, dtype=pixels.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=pixels.device, dtype=pixels.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack([grid_x, grid_y]).expand(batch, 2, height, width)
    return torch.cat([pixels, coords], dim=1)


class DualEncoder(nn.Module):
    """Both towers plus the learnable temperature of the contrastive loss."""

    def __init__(self, config: ModelConfig, text: TextTower, image: ImageTower) -> None:
        super().__init__()
        self.config = config
        self.text = text
        self.image = image
        self.logit_scale = nn.Parameter(torch.tensor(config.init_logit_scale))

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, normalize: bool = True
    ) -> torch.Tensor:
        """Token ids (batch, seq) -> embeddings (batch, dim)."""
        features = self.text(input_ids, attention_mask)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_image(self, pixels: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """Preprocessed pixels (batch, 3, S, S) -> embeddings (batch, dim)."""
        features = self.image(pixels)
        return F.normalize(features, dim=-1) if normalize else features

    def clamped_logit_scale(self) -> torch.Tensor:
        """exp of the learnable log-scale, capped as in CLIP so training stays stable."""
        return self.logit_scale.clamp(0.0, self.config.max_logit_scale).exp()

    def forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image embeddings, text embeddings, logit scale) for the loss."""
        return (
            self.encode_image(pixels),
            self.encode_text(input_ids, attention_mask),
            self.clamped_logit_scale(),
        )


def build_model(
    config: ModelConfig, *, text_init: Path | None = None, image_init: Path | None = None
) -> DualEncoder:
    """A fresh DualEncoder; towers start from local pretrained weights when given."""
    albert = _albert_from(text_init) if text_init else AlbertModel(_albert_config(config))
    resnet = _resnet_from(image_init, config) if image_init else ResNetModel(_resnet_config(config))
    config = replace(
        config,
        albert_config=_plain_config(albert.config) if text_init else config.albert_config,
        resnet_config=_plain_config(resnet.config) if image_init else config.resnet_config,
    )
    text = TextTower(albert, config.embed_dim)
    image = ImageTower(resnet, config.embed_dim, coord_channels=config.image.coord_channels)
    return DualEncoder(config, text, image)


def _albert_config(config: ModelConfig) -> AlbertConfig:
    if config.albert_config is not None:
        return AlbertConfig(**config.albert_config)
    return AlbertConfig(**config.text.albert_kwargs())


def _resnet_config(config: ModelConfig) -> ResNetConfig:
    if config.resnet_config is not None:
        return ResNetConfig(**config.resnet_config)
    return ResNetConfig(**config.image.resnet_kwargs())


_HF_CONFIG_NOISE = (
    "transformers_version",
    "_name_or_path",
    "architectures",
    "dtype",
    "torch_dtype",
)


def _plain_config(hf_config: Any) -> dict[str, Any]:
    data = hf_config.to_dict()
    return {k: v for k, v in data.items() if k not in _HF_CONFIG_NOISE}


def _albert_from(directory: Path) -> AlbertModel:
    if not (directory / CONFIG_FILE).is_file():
        raise ModelLoadError(
            f"--text-init {directory}: not an ALBERT folder (no config.json). Pass a local folder "
            "such as a downloaded albert-base-v2 (config.json, model.safetensors, tokenizer files)."
        )
    try:
        return AlbertModel.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"--text-init {directory}: cannot load ALBERT weights: {exc}") from exc


def _resnet_from(source: Path, config: ModelConfig) -> ResNetModel:
    """Local ResNet weights: an HF ResNet folder, or a safetensors file of ResNetModel weights."""
    try:
        if source.is_dir():
            resnet = ResNetModel.from_pretrained(str(source), local_files_only=True)
        else:
            state = _strip_prefix(load_file(str(source)), "resnet.")
            stem = state.get(STEM_WEIGHT)
            # A bare state dict carries no architecture: the sizes come from --config's image
            # tower, the input channels from the file (3 for standard weights, widened below).
            kwargs = config.image.resnet_kwargs()
            kwargs["num_channels"] = int(stem.shape[1]) if stem is not None else 3
            resnet = ResNetModel(ResNetConfig(**kwargs))
            resnet.load_state_dict(state, strict=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        hint = (
            "" if source.is_dir() else " (a weights file has no architecture: its sizes must match "
            "the image tower of --config, or pass a Hugging Face ResNet folder instead)"
        )
        raise ModelLoadError(
            f"--image-init {source}: cannot load ResNet weights: {exc}{hint}"
        ) from exc
    if config.image.coord_channels and resnet.config.num_channels == 3:
        _add_coordinate_inputs(resnet)
    return resnet


STEM_WEIGHT = "embedder.embedder.convolution.weight"


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items()}


def _add_coordinate_inputs(resnet: ResNetModel) -> None:
    """Widen a 3-channel stem to 5 with zero weights, so pretrained behaviour is unchanged at init."""
    conv: Any = resnet.embedder.embedder.convolution
    widened = nn.Conv2d(
        5, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False
    )
    with torch.no_grad():
        widened.weight.zero_()
        widened.weight[:, :3] = conv.weight
    resnet.embedder.embedder.convolution = widened
    resnet.embedder.num_channels = 5
    resnet.config.num_channels = 5


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to encode, with the tokenizer and the id an index records."""

    model: DualEncoder
    tokenizer: AlbertTokenizer
    directory: Path
    model_id: str


def save_model_dir(
    model: DualEncoder,
    tokenizer: AlbertTokenizer,
    directory: Path,
    *,
    spm_proto: bytes | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write config.json, model.safetensors and the tokenizer files into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = directory / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": MODEL_FORMAT})
    tmp.replace(directory / WEIGHTS_FILE)
    save_tokenizer(tokenizer, directory, spm_proto=spm_proto)
    write_json(
        directory / CONFIG_FILE,
        {"format": MODEL_FORMAT, "model": model.config.to_dict(), **(extra or {})},
    )


def read_model_config(directory: Path) -> ModelConfig:
    """The ModelConfig embedded in a model directory."""
    data = read_folder_config(directory / CONFIG_FILE)
    if data.get("format") != MODEL_FORMAT:
        raise ModelLoadError(f"{directory}: not an mmsearch model (format {data.get('format')!r})")
    return ModelConfig.from_dict(data["model"])


def load_model_dir(directory: Path, *, device: Device | str = CPU) -> LoadedModel:
    """Rebuild a DualEncoder from its directory; safetensors only, nothing is unpickled."""
    directory = directory.resolve()
    if not is_model_dir(directory):
        raise ModelLoadError(
            f"no model at {directory}: expected {CONFIG_FILE} and {WEIGHTS_FILE}. Train one with "
            "`mmsearch train --corpus FILE --out DIR` or pass --model DIR."
        )
    config = read_model_config(directory)
    model = build_model(config)
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
        model.load_state_dict(state, strict=True)
    except (RuntimeError, SafetensorError) as exc:
        raise ModelLoadError(f"{directory}: weights do not match config.json: {exc}") from exc
    model.to(str(Device.parse(device).resolve())).eval()
    return LoadedModel(model, load_tokenizer(directory), directory, weights_id(directory))
