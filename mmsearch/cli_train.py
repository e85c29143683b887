"""`mmsearch train`: train the native dual encoder on a caption corpus, or fine-tune OpenCLIP."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from indexer.models.config import FINETUNE_LR, TrainConfig
from mmsearch.cli_common import (
    DEFAULT_DEVICE,
    SKIPPED_LINES_SHOWN,
    CheckpointOption,
    DeviceOption,
    PretrainedOption,
    command,
    fail,
)

if TYPE_CHECKING:  # torch and the training loop load inside the command
    from indexer.training.loop import EpochResult

DEFAULT_TRAIN_CONFIG = "sample-shapes"


def train_cmd(
    corpus: Annotated[
        Path, typer.Option("--corpus", help="Caption corpus: JSONL, CSV, COCO, Karpathy or folder.")
    ],
    out: Annotated[
        Path,
        typer.Option("--out", help="Model folder to write (best checkpoint; last/ for resume)."),
    ],
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = TrainConfig.epochs,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2)] = TrainConfig.batch_size,
    seed: Annotated[int, typer.Option("--seed")] = TrainConfig.seed,
    lr: Annotated[
        float | None,
        typer.Option("--lr", help=f"Learning rate (default {TrainConfig.lr}; {FINETUNE_LR} with --init)."),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option("--config", help=f"Named model config or JSON file (default {DEFAULT_TRAIN_CONFIG})."),
    ] = None,
    text_init: Annotated[
        Path | None, typer.Option("--text-init", help="Local pretrained ALBERT folder.")
    ] = None,
    image_init: Annotated[Path | None, typer.Option("--image-init", help="Local ResNet weights.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from OUT/last (native or OpenCLIP).")
    ] = False,
    caption_agreement: Annotated[
        float,
        typer.Option(
            "--caption-agreement",
            min=0.0,
            help="Weight of an extra InfoNCE term pulling two captions of one image together "
            "(0: off). Makes an image's own text a better match for queries (hybrid documents); "
            "needs images with several captions.",
        ),
    ] = TrainConfig.caption_agreement,
    augment: Annotated[
        bool | None,
        typer.Option(
            "--augment/--no-augment",
            help="Augment training images as the model config allows (mild crops, colour jitter "
            "without hue shift, blur, noise, JPEG), shown in OUT/augmentations.png (default: "
            "the config's choice, on unless it says otherwise).",
        ),
    ] = None,
    flip: Annotated[
        bool | None,
        typer.Option(
            "--flip/--no-flip",
            help="Mirror training images and swap left/right in their captions (default: the "
            "model config's choice; off for OpenCLIP and corpora whose captions could lie).",
        ),
    ] = None,
    trained_on_name: Annotated[
        str | None,
        typer.Option(
            "--trained-on-name",
            help="Corpus name recorded in the model's trained_on (default: the generator in a "
            "manifest.json beside the corpus, else the corpus file or folder name).",
        ),
    ] = None,
    device: DeviceOption = DEFAULT_DEVICE,
    quiet: Annotated[bool, typer.Option("--quiet")] = False,
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            help="Fine-tune an OpenCLIP model instead: openclip:ARCH with --checkpoint or "
            "--pretrained (or a folder from an earlier fine-tune). OUT is usable as --model.",
        ),
    ] = None,
    checkpoint: CheckpointOption = None,
    pretrained: PretrainedOption = None,
) -> None:
    """Train the ALBERT+CNN dual encoder (or fine-tune OpenCLIP: --init); keeps the best by val recall."""
    from indexer.models.config import AugmentConfig, load_named_config
    from indexer.models.spec import is_openclip_dir
    from indexer.training.corpora import load_corpus
    from indexer.training.loop import LAST_DIR, train, train_openclip

    if init is None and (checkpoint is not None or pretrained is not None):
        fail("in `train`, --checkpoint/--pretrained give the weights of --init openclip:ARCH", 2)
    if init is not None and (text_init or image_init or config):
        fail("--init fine-tunes an OpenCLIP model: drop --config, --text-init, --image-init", 2)
    openclip_run = init is not None or (resume and is_openclip_dir(out / LAST_DIR))
    data = load_corpus(corpus)
    model_config = None if openclip_run else load_named_config(config or DEFAULT_TRAIN_CONFIG)
    base_augment = model_config.augment if model_config is not None else AugmentConfig()
    train_config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        lr=(FINETUNE_LR if openclip_run else TrainConfig.lr) if lr is None else lr,
        caption_agreement=caption_agreement,
        augment=replace(
            base_augment,
            enabled=base_augment.enabled if augment is None else augment,
            flip=base_augment.flip if flip is None else flip,
        ),
    )

    def show(result: EpochResult) -> None:
        if quiet:
            return
        recall = ""
        if result.metrics:
            m = result.metrics
            recall = (
                f"  val t2i R@1 {m['t2i']['R@1']:.3f} R@10 {m['t2i']['R@10']:.3f}"
                f"  i2t R@1 {m['i2t']['R@1']:.3f} R@10 {m['i2t']['R@10']:.3f}"
            )
        best = "  *best" if result.is_best else ""
        typer.echo(f"epoch {result.epoch:3d}  loss {result.loss:.4f}{recall}  {result.seconds:.1f}s{best}")

    # The two model kinds differ only in where their weights start from.
    run = (
        functools.partial(train_openclip, init=init, checkpoint=checkpoint, pretrained=pretrained)
        if model_config is None
        else functools.partial(train, model_config=model_config, text_init=text_init, image_init=image_init)
    )
    report = run(
        data,
        out,
        train_config=train_config,
        resume=resume,
        device=device,
        trained_on_name=trained_on_name,
        progress=not quiet,
        on_epoch=show,
    )
    for item in report.skipped[:SKIPPED_LINES_SHOWN]:
        typer.echo(f"skipped {item}", err=True)
    typer.echo(f"best epoch {report.best_epoch}; model saved to {out}")


def register() -> None:
    """Add `train` to the shared app."""
    command("train")(train_cmd)
