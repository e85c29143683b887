"""`mmsearch models`: what can be passed to --model on this machine.

Lists the bundled model with what it was trained on, model folders under the data directory
(DATA_DIR/models), and, when open_clip is installed, its architectures and published weights
with the ones already cached marked. Without open_clip nothing imports torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

import typer

from indexer.models.available import (
    OPENCLIP_EXTRA_HINT,
    ModelFolder,
    OpenClipArchitecture,
    bundled_models,
    model_folders,
    openclip_architectures,
    openclip_installed,
)
from indexer.models.spec import ModelLoadError, TrainedOn
from mmsearch.cli_common import command
from mmsearch.paths import models_dir

# Architectures without published weights are listed on one line, this many names at most.
BARE_ARCHITECTURES_SHOWN = 12


def models_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print the listing as JSON.")] = False,
) -> None:
    """Models usable with --model: the bundled one, folders in the data directory, OpenCLIP weights."""
    listing = {
        "bundled": [_folder_json(m) for m in bundled_models()],
        "models_dir": str(models_dir()),
        "local": [_folder_json(m) for m in model_folders(models_dir())],
        "openclip": _openclip_json(),
    }
    if as_json:
        typer.echo(json.dumps(listing))
        return
    for line in _text_lines(listing):
        typer.echo(line)


def _folder_json(folder: ModelFolder) -> dict[str, Any]:
    return {
        "name": folder.name,
        "kind": folder.kind,
        "model": str(folder.path),
        "trained_on": None if folder.trained_on is None else asdict(folder.trained_on),
    }


def _openclip_json() -> dict[str, Any]:
    if not openclip_installed():
        return {"installed": False, "hint": OPENCLIP_EXTRA_HINT}
    from indexer.models.openclip import import_open_clip  # imports open_clip, and so torch

    try:
        open_clip = import_open_clip()
    except ModelLoadError as exc:  # installed but broken (e.g. a torchvision built for another torch)
        return {"installed": True, "error": str(exc), "architectures": []}
    architectures = openclip_architectures(open_clip)
    return {"installed": True, "architectures": [_architecture_json(a) for a in architectures]}


def _architecture_json(architecture: OpenClipArchitecture) -> dict[str, Any]:
    return {
        "arch": architecture.arch,
        "model": f"openclip:{architecture.arch}",
        "pretrained": [asdict(weights) for weights in architecture.pretrained],
    }


def _text_lines(listing: dict[str, Any]) -> list[str]:
    lines = ["bundled (used when --model is not given):"]
    lines += [line for m in listing["bundled"] for line in _folder_lines(m)] or [
        "  none: the bundled model is missing (`make default-model` trains it)"
    ]
    lines.append(f"model folders in {listing['models_dir']} (use with --model DIR):")
    lines += [line for m in listing["local"] for line in _folder_lines(m)] or [
        "  none (a folder from `mmsearch train --out DIR` can be put there)"
    ]
    return lines + _openclip_lines(listing["openclip"])


def _folder_lines(folder: dict[str, Any]) -> list[str]:
    lines = [f"  {folder['name']} ({folder['kind']}): {folder['model']}"]
    trained = folder["trained_on"]
    lines.append(
        "    trained on: unknown (its config.json has no trained_on)"
        if trained is None
        else f"    trained on: {_trained_on_text(TrainedOn(**trained))}"
    )
    return lines


def _trained_on_text(trained: TrainedOn) -> str:
    counts = [f"{n:,} {what}" for n, what in ((trained.images, "images"), (trained.pairs, "pairs")) if n]
    domain = f" ({trained.domain})" if trained.domain else ""
    return trained.corpus + domain + (f", {', '.join(counts)}" if counts else "")


def _openclip_lines(openclip: dict[str, Any]) -> list[str]:
    if not openclip["installed"]:
        return [f"OpenCLIP architectures and published weights: {openclip['hint']} shows them"]
    if "error" in openclip:
        return [f"OpenCLIP: {openclip['error']}"]
    lines = ["OpenCLIP (--model openclip:ARCH --pretrained TAG; * = already cached here):"]
    bare = []
    for architecture in openclip["architectures"]:
        if not architecture["pretrained"]:
            bare.append(architecture["arch"])
            continue
        tags = ", ".join(w["tag"] + ("*" if w["cached"] else "") for w in architecture["pretrained"])
        lines.append(f"  {architecture['arch']}: {tags}")
    if bare:
        shown = ", ".join(bare[:BARE_ARCHITECTURES_SHOWN]) + (
            ", ..." if len(bare) > BARE_ARCHITECTURES_SHOWN else ""
        )
        lines.append(
            f"  {len(bare)} more architectures without published weights (use --checkpoint FILE): {shown}"
        )
    return lines


def register() -> None:
    """Add `models` to the shared app."""
    command("models")(models_cmd)
