"""Which model to use, as a value: parsed once at the edge, recorded by an index, never re-parsed.

Torch-free on purpose: the store, `mmsearch info` and a no-change `mmsearch index` need to know
which model an index records (and the weights' content id) without importing torch or
transformers. The kinds a `--model` can name:

    (none)                               the bundled sample-shapes model
    DIR                                  a native model folder (`mmsearch train --out DIR`)
    openclip:ARCH --checkpoint FILE      OpenCLIP with local weights
    openclip:ARCH --pretrained TAG       OpenCLIP with published weights (open_clip downloads them)
    DIR                                  a folder written by `mmsearch train --init openclip:ARCH`

`ModelSpec.source()` is the exact string an index records (a folder's absolute path, or the
canonical `openclip:ARCH?checkpoint=/abs/file` / `openclip:ARCH?pretrained=TAG`), and
`ModelSpec.parse(source)` reads it back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote

from indexer.errors import ModelError

DEFAULT_MODEL_DIR = Path(__file__).with_name("default_model")
# Where the bundled model lived before indexer/ was split into subpackages; indexes record it.
LEGACY_DEFAULT_MODEL_SUFFIX = ("indexer", "default_model")
OPENCLIP_PREFIX = "openclip:"
# A native model folder (indexer.models.native writes these names).
NATIVE_CONFIG_FILE = "config.json"
NATIVE_WEIGHTS_FILE = "model.safetensors"
NATIVE_FORMAT = "mmsearch-dual-encoder/1"
# open_clip's local-dir layout (`open_clip.create_model("local-dir:DIR")` reads these names).
OPENCLIP_CONFIG_FILE = "open_clip_config.json"
OPENCLIP_WEIGHTS_FILE = "open_clip_model.safetensors"
HASH_CHUNK = 1 << 20  # bytes read at a time while hashing weights

ModelKind = Literal["bundled", "native", "openclip", "openclip-folder"]


class ModelLoadError(ModelError):
    """A model directory or init weights that cannot be loaded; the message says how to supply them."""


@dataclass(frozen=True)
class EncoderInfo:
    """What an index records about the model that filled it."""

    kind: str  # "native" | "openclip"
    source: str  # model directory, or openclip:ARCH spec (ModelSpec.source())
    model_id: str  # content id of the weights
    dim: int


@dataclass(frozen=True)
class OpenClipSpec:
    """An OpenCLIP architecture plus where its weights come from (exactly one source)."""

    arch: str
    checkpoint: Path | None = None
    pretrained: str | None = None

    @classmethod
    def parse(
        cls, text: str, *, checkpoint: Path | None = None, pretrained: str | None = None
    ) -> OpenClipSpec:
        """`openclip:ARCH[?checkpoint=FILE|?pretrained=TAG]`, or the CLI's separate options."""
        if not text.startswith(OPENCLIP_PREFIX):
            raise ModelLoadError(f"{text!r} is not an OpenCLIP model spec (openclip:ARCH)")
        arch, _, query = text.removeprefix(OPENCLIP_PREFIX).partition("?")
        options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        unknown = sorted(set(options) - {"checkpoint", "pretrained"})
        if unknown or not arch:
            raise ModelLoadError(
                f"bad model spec {text!r}: use --model openclip:ARCH with --checkpoint FILE or "
                "--pretrained TAG"
            )
        if "checkpoint" in options:
            checkpoint = checkpoint or Path(unquote(options["checkpoint"]))
        pretrained = pretrained or options.get("pretrained")
        if pretrained is not None and checkpoint is None and Path(pretrained).is_file():
            checkpoint, pretrained = Path(pretrained), None  # open_clip's "pretrained=FILE" form
        if (checkpoint is None) == (pretrained is None):
            raise ModelLoadError(
                f"--model {OPENCLIP_PREFIX}{arch} needs exactly one weights source: --checkpoint "
                "FILE (local weights) or --pretrained TAG (downloaded by open_clip)"
            )
        if checkpoint is not None:
            checkpoint = checkpoint.expanduser().resolve()
        return cls(arch, checkpoint, pretrained)

    def source(self) -> str:
        """The canonical spec an index records; `parse(source())` gives this spec back."""
        if self.checkpoint is not None:
            return f"{OPENCLIP_PREFIX}{self.arch}?checkpoint={quote(str(self.checkpoint), safe='/')}"
        return f"{OPENCLIP_PREFIX}{self.arch}?pretrained={quote(str(self.pretrained), safe='')}"


@dataclass(frozen=True)
class ModelSpec:
    """One model to load: the bundled default, a model folder, or OpenCLIP weights."""

    kind: ModelKind
    folder: Path | None = None  # bundled, native and openclip-folder: an absolute path
    openclip: OpenClipSpec | None = None  # openclip: architecture and weights

    @classmethod
    def bundled(cls) -> ModelSpec:
        """The sample-shapes model shipped inside the package."""
        return cls("bundled", folder=DEFAULT_MODEL_DIR.resolve())

    @classmethod
    def parse(
        cls,
        value: ModelSpec | str | Path | None,
        *,
        checkpoint: Path | None = None,
        pretrained: str | None = None,
    ) -> ModelSpec:
        """--model (None: the bundled model) with --checkpoint/--pretrained, or a recorded source."""
        if isinstance(value, ModelSpec) and checkpoint is None and pretrained is None:
            return value
        text = None if value is None else str(value.source() if isinstance(value, ModelSpec) else value)
        weights_given = checkpoint is not None or pretrained is not None
        if weights_given and (text is None or not text.startswith(OPENCLIP_PREFIX)):
            raise ModelLoadError(
                "--checkpoint and --pretrained choose the weights of an OpenCLIP model: add "
                "--model openclip:ARCH (e.g. --model openclip:ViT-B-32)"
            )
        if text is None:
            return cls.bundled()
        if text.startswith(OPENCLIP_PREFIX):
            spec = OpenClipSpec.parse(text, checkpoint=checkpoint, pretrained=pretrained)
            return cls("openclip", openclip=spec)
        folder = Path(text).expanduser().resolve()
        if is_openclip_dir(folder):
            return cls("openclip-folder", folder=folder)
        if folder == DEFAULT_MODEL_DIR.resolve() or _is_moved_bundled_folder(folder):
            return cls.bundled()
        return cls("native", folder=folder)

    @property
    def is_openclip(self) -> bool:
        """An OpenCLIP model (needs the optional extra), from weights or a fine-tuned folder."""
        return self.kind in ("openclip", "openclip-folder")

    @property
    def is_bundled(self) -> bool:
        """The sample-shapes model that knows only the sample corpus's vocabulary."""
        return self.kind == "bundled"

    def source(self) -> str:
        """The string an index records for this model (unchanged from before ModelSpec existed)."""
        if self.openclip is not None:
            return self.openclip.source()
        assert self.folder is not None, f"a {self.kind} model spec names a folder"
        return str(self.folder)

    def __str__(self) -> str:
        return self.source()

    @classmethod
    def from_recorded(cls, source: str) -> ModelSpec:
        """The model an index records as its source, or ModelLoadError when its folder is gone."""
        spec = cls.parse(source)
        if spec.folder is not None and not spec.folder.exists():
            raise ModelLoadError(
                f"the model {spec.source()} recorded in this index is missing; pass --model DIR "
                "pointing at the same model, or rebuild the index"
            )
        return spec


def _is_moved_bundled_folder(folder: Path) -> bool:
    """An index built before the move recorded the bundled model's old folder, now gone."""
    return folder.parts[-2:] == LEGACY_DEFAULT_MODEL_SUFFIX and not folder.exists()


def is_model_dir(directory: Path) -> bool:
    """True for a folder that looks like a saved native model."""
    return (directory / NATIVE_CONFIG_FILE).is_file() and (directory / NATIVE_WEIGHTS_FILE).is_file()


def is_openclip_dir(directory: Path) -> bool:
    """True for a folder in open_clip's local-dir layout with safetensors weights."""
    return (directory / OPENCLIP_CONFIG_FILE).is_file() and (directory / OPENCLIP_WEIGHTS_FILE).is_file()


def file_digest(path: Path) -> str:
    """First 16 hex digits of the file's SHA-256: the weights' content id."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def openclip_weights_digest(path: Path) -> str:
    """file_digest of OpenCLIP weights, or ModelLoadError saying which weights to point at."""
    try:
        return file_digest(path)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot read OpenCLIP weights {path} ({exc.strerror or exc}): pass --checkpoint FILE "
            "pointing at the weights this index was built with"
        ) from exc


def openclip_model_id(spec: OpenClipSpec) -> str:
    """The content id of OpenCLIP weights: the checkpoint's digest, or the published tag's name."""
    if spec.checkpoint is not None:
        return f"openclip:{spec.arch}:{openclip_weights_digest(spec.checkpoint)}"
    return f"openclip:{spec.arch}/{spec.pretrained}"  # a published tag names fixed weights


def openclip_folder_arch(folder: Path, config: dict[str, Any]) -> str:
    """The architecture a fine-tuned folder records; folders open_clip itself wrote use their name."""
    section = config.get("mmsearch", {})
    return str(section.get("arch", folder.name) if isinstance(section, dict) else folder.name)


def openclip_folder_model_id(folder: Path, config: dict[str, Any]) -> str:
    """The content id of a fine-tuned OpenCLIP folder's weights."""
    digest = openclip_weights_digest(folder / OPENCLIP_WEIGHTS_FILE)
    return f"openclip:{openclip_folder_arch(folder, config)}:{digest}"


def native_weights_id(directory: Path) -> str:
    """A content id for a native model's weights, so an index can tell a retrained model apart."""
    return f"native:{file_digest(directory / NATIVE_WEIGHTS_FILE)}"


def read_folder_config(path: Path) -> dict[str, Any]:
    """A model folder's JSON config, or ModelLoadError naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path.parent}: unreadable {path.name}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path.parent}: {path.name} is not a JSON object")
    return data


@dataclass(frozen=True)
class TrainedOn:
    """What a model folder says it was trained on (config.json "trained_on"), so a user can tell
    whether it can understand their images."""

    corpus: str
    domain: str
    images: int | None = None
    pairs: int | None = None

    @classmethod
    def from_dict(cls, data: object) -> TrainedOn | None:
        """The "trained_on" record, or None when absent or not in the documented shape."""
        if not isinstance(data, dict) or not isinstance(data.get("corpus"), str):
            return None
        counts = {k: data.get(k) for k in ("images", "pairs")}
        return cls(
            corpus=data["corpus"],
            domain=str(data.get("domain", "")),
            images=counts["images"] if isinstance(counts["images"], int) else None,
            pairs=counts["pairs"] if isinstance(counts["pairs"], int) else None,
        )


def trained_on(folder: Path) -> TrainedOn | None:
    """What a native or OpenCLIP model folder records about its training data; None if nothing."""
    for name, section in ((NATIVE_CONFIG_FILE, None), (OPENCLIP_CONFIG_FILE, "mmsearch")):
        path = folder / name
        if path.is_file():
            try:
                data = read_folder_config(path)
            except ModelLoadError:
                return None
            holder = data.get(section, {}) if section else data
            return TrainedOn.from_dict(holder.get("trained_on") if isinstance(holder, dict) else None)
    return None
