"""Contrastive training for every model kind: one flat loop that reads top to bottom.

An adapter (indexer.training.adapters) holds what differs between native and OpenCLIP models;
this module holds the rest: decoded images kept as model-input pixels, augmentation in the
loader, AdamW with decoupled weight decay, warmup + cosine, gradient clipping, evaluation on the
val split through the Encoder each epoch, the best checkpoint and a resumable last one.

Layout of an output folder: the best checkpoint (a complete model folder, usable as --model) at
the top with `augmentations.png` beside it, and `last/` with the latest epoch plus optimiser
state (safetensors + JSON, nothing pickled) for --resume.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from indexer.media.images import ImageLoadError, PreprocessConfig, open_image
from indexer.media.preprocess import model_input_image, normalise_uint8
from indexer.models.config import FINETUNE_LR as FINETUNE_LR  # re-exported (its home is config)
from indexer.models.config import AugmentConfig, ModelConfig, TrainConfig, write_json
from indexer.models.devices import Device, autocast_for
from indexer.training.adapters import (
    MAX_UNKNOWN_RATE,
    NativeAdapter,
    OpenClipAdapter,
    TrainAdapter,
    TrainError,
)
from indexer.training.augment import (
    AUGMENTATIONS_FILE,
    GRID_IMAGES,
    GridSample,
    augment,
    swap_left_right,
    view_rng,
    write_augmentation_grid,
)
from indexer.training.corpora import Corpus, corpus_name
from indexer.training.evaluate import corpus_metrics, rsum
from indexer.training.loss import clip_loss

__all__ = [
    "FINETUNE_LR",
    "LAST_DIR",
    "MAX_UNKNOWN_RATE",
    "OPTIMIZER_FILE",
    "STATE_FILE",
    "Batch",
    "EpochResult",
    "PairData",
    "TrainError",
    "TrainReport",
    "epoch_batches",
    "fit",
    "train",
    "train_openclip",
]

LAST_DIR = "last"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
# Mixes the epoch into the seed of its caption order, so a resumed epoch draws the same batches.
EPOCH_SEED_STRIDE = 10_007


@dataclass(frozen=True)
class EpochResult:
    """One epoch's mean loss, validation metrics (if a val split exists) and wall time."""

    epoch: int
    loss: float
    metrics: dict[str, dict[str, float]] | None
    seconds: float
    is_best: bool


@dataclass
class TrainReport:
    """What a training run did: epochs, the best one, images it could not read."""

    out: Path
    epochs: list[EpochResult] = field(default_factory=list)
    skipped: list[ImageLoadError] = field(default_factory=list)
    best_epoch: int | None = None


@dataclass
class PairData:
    """Decoded training images as model-input pixels, with every caption of each."""

    pixels: torch.Tensor  # (images, S, S, 3) uint8: what preprocessing normalises
    captions: list[list[str]]


@dataclass
class TrainerState:
    """What --resume needs besides weights and optimiser tensors; saved as JSON."""

    epoch: int = 0
    step: int = 0
    best: float | None = None
    best_epoch: int | None = None


@dataclass(frozen=True)
class Batch:
    """Rows of one step: image indices, one caption each, and the caption-agreement partners.

    partner_rows index into the batch: those images have another, different caption, given in
    partner_captions; the two captions of an image are pulled together (TrainConfig.caption_agreement).
    """

    images: list[int]
    captions: list[str]
    partner_rows: list[int] = field(default_factory=list)
    partner_captions: list[str] = field(default_factory=list)


class StepInputs(NamedTuple):
    """One batch ready for the model: normalised pixels and captions that match them."""

    pixels: torch.Tensor  # (batch, 3, S, S) float32
    batch: Batch


AdapterStart = Callable[[Corpus, Device], TrainAdapter]
AdapterResume = Callable[[Path, Device], TrainAdapter]


def fit(
    corpus: Corpus,
    out: Path,
    *,
    start: AdapterStart,
    resume_from: AdapterResume,
    train_config: TrainConfig,
    resume: bool = False,
    device: Device | str = "auto",
    trained_on_name: str | None = None,
    progress: bool = True,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> TrainReport:
    """Train on the train split (or all), evaluate on val each epoch, keep the best and the last.

    start(train corpus, device) builds a fresh adapter; resume_from(OUT/last, device) reloads one.
    """
    target = Device.parse(device).resolve()
    torch.manual_seed(train_config.seed)
    report = TrainReport(out=out)
    train_corpus = corpus.select("train") if "train" in corpus.splits() else corpus
    val_corpus = corpus.select("val") if "val" in corpus.splits() else None
    last = out / LAST_DIR
    if resume:
        state = _read_state(last)
        adapter = resume_from(last, target)
    else:
        state = TrainerState()
        adapter = start(train_corpus, target)
    model = adapter.model
    augmentation = adapter.augment if train_config.augment is None else train_config.augment

    data = load_pairs(train_corpus, adapter.preprocess_config, skipped=report.skipped)
    trained_on = {
        "corpus": trained_on_name or corpus_name(corpus),
        "domain": adapter.domain,
        "images": len(data.captions),
        "pairs": sum(len(c) for c in data.captions),
    }
    if augmentation.enabled:
        write_augmentation_grid(
            out / AUGMENTATIONS_FILE, _grid_samples(data), config=augmentation, seed=train_config.seed
        )

    total_steps = steps_per_epoch(len(data.captions), train_config.batch_size) * train_config.epochs
    optimizer = torch.optim.AdamW(param_groups(model, train_config.weight_decay), lr=train_config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(train_config.warmup_steps, total_steps)
    )
    # fp16 autocast on CUDA needs loss scaling; on the CPU the scaler is a pass-through.
    scaler = torch.amp.GradScaler("cuda", enabled=target.is_cuda)
    if resume:
        _load_optimizer(optimizer, scaler, last)
        scheduler.last_epoch = state.step  # the next step() continues the schedule

    model.train()
    for epoch in range(state.epoch + 1, train_config.epochs + 1):
        started = time.perf_counter()
        torch.manual_seed(train_config.seed * EPOCH_SEED_STRIDE + epoch)  # dropout resumes exactly
        rng = random.Random(train_config.seed * EPOCH_SEED_STRIDE + epoch)
        batches = epoch_batches(
            data, train_config.batch_size, rng, partners=train_config.caption_agreement > 0
        )
        losses = []
        bar = tqdm(
            total=len(batches), desc=f"epoch {epoch}/{train_config.epochs}", disable=not progress, leave=False
        )
        for inputs in prepared(
            batches, data, adapter.preprocess_config, augmentation, seed=train_config.seed, epoch=epoch
        ):
            batch = inputs.batch
            with autocast_for(target):
                image_emb, text_emb, scale = adapter.embed(inputs.pixels.to(str(target)), batch.captions)
                loss = clip_loss(image_emb.float(), text_emb.float(), scale.float())
                if len(batch.partner_rows) >= 2:
                    partner_emb = adapter.embed_texts(batch.partner_captions)
                    loss = loss + train_config.caption_agreement * _agreement_loss(
                        text_emb, partner_emb, batch.partner_rows, scale.float()
                    )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            adapter.after_step()
            state.step += 1
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", temp=f"{1 / scale.item():.3f}")
        bar.close()

        metrics = evaluate(adapter, val_corpus) if val_corpus is not None else None
        score = rsum(metrics) if metrics else -float(np.mean(losses))
        is_best = state.best is None or score > state.best
        extra = _provenance(train_config, epoch, metrics, trained_on)
        if is_best:
            state.best, state.best_epoch = score, epoch
            adapter.save(out, extra=extra)
        state.epoch = epoch
        _save_last(adapter, optimizer, scaler, state, last, extra)
        result = EpochResult(epoch, float(np.mean(losses)), metrics, time.perf_counter() - started, is_best)
        report.epochs.append(result)
        if on_epoch:
            on_epoch(result)
    model.eval()
    report.best_epoch = state.best_epoch
    write_json(out / "train_config.json", train_config.to_dict())
    return report


@torch.no_grad()
def evaluate(adapter: TrainAdapter, corpus: Corpus) -> dict[str, dict[str, float]]:
    """Recall@K both ways on `corpus`, through the Encoder that search will use."""
    adapter.model.eval()
    try:
        return corpus_metrics(adapter.encoder(), corpus)
    finally:
        adapter.model.train()


def train(
    corpus: Corpus,
    out: Path,
    *,
    model_config: ModelConfig,
    train_config: TrainConfig,
    text_init: Path | None = None,
    image_init: Path | None = None,
    resume: bool = False,
    device: Device | str = "auto",
    trained_on_name: str | None = None,
    progress: bool = True,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> TrainReport:
    """Train the native ALBERT+ResNet dual encoder from `model_config` (or continue: resume)."""

    def start(train_corpus: Corpus, device: Device) -> TrainAdapter:
        return NativeAdapter.start(
            train_corpus, model_config, text_init=text_init, image_init=image_init, device=device
        )

    return fit(
        corpus,
        out,
        start=start,
        resume_from=lambda last, device: NativeAdapter.resume(last, device=device),
        train_config=train_config,
        resume=resume,
        device=device,
        trained_on_name=trained_on_name,
        progress=progress,
        on_epoch=on_epoch,
    )


def train_openclip(
    corpus: Corpus,
    out: Path,
    *,
    init: str | Path | None,
    train_config: TrainConfig,
    checkpoint: Path | None = None,
    pretrained: str | None = None,
    resume: bool = False,
    device: Device | str = "auto",
    trained_on_name: str | None = None,
    progress: bool = True,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> TrainReport:
    """Fine-tune an OpenCLIP model contrastively: same loop, loss, schedule and best-by-val choice.

    `init` is openclip:ARCH (weights from `checkpoint` or `pretrained`) or a folder from an
    earlier fine-tune; with resume it may be None. OUT gets open_clip's local-dir layout.
    """

    def start(_: Corpus, device: Device) -> TrainAdapter:
        if init is None:
            raise TrainError("fine-tuning needs --init openclip:ARCH (or --resume)")
        return OpenClipAdapter.start(init, checkpoint=checkpoint, pretrained=pretrained, device=device)

    return fit(
        corpus,
        out,
        start=start,
        resume_from=lambda last, device: OpenClipAdapter.resume(last, device=device),
        train_config=train_config,
        resume=resume,
        device=device,
        trained_on_name=trained_on_name,
        progress=progress,
        on_epoch=on_epoch,
    )


# -- data ----------------------------------------------------------------------------------------


def load_pairs(corpus: Corpus, config: PreprocessConfig, *, skipped: list[ImageLoadError]) -> PairData:
    """Decode every image once (in threads) to model-input pixels; unreadable ones are listed."""
    by_image = corpus.captions_by_image()
    paths = list(by_image)

    def decode(path: Path) -> np.ndarray | ImageLoadError:
        try:
            image = open_image(path, target_size=config.image_size)
            return np.asarray(model_input_image(image, config), dtype=np.uint8)  # (S, S, 3)
        except ImageLoadError as exc:
            return exc

    with ThreadPoolExecutor() as pool:
        decoded = list(pool.map(decode, paths))
    arrays, captions = [], []
    for path, item in zip(paths, decoded, strict=True):
        if isinstance(item, ImageLoadError):
            skipped.append(item)
            continue
        arrays.append(item)
        captions.append(by_image[path])
    if not arrays:
        raise TrainError(f"no readable images in {corpus.source}")
    return PairData(torch.from_numpy(np.stack(arrays)), captions)


def epoch_batches(
    data: PairData, batch_size: int, rng: random.Random, *, partners: bool = False
) -> list[Batch]:
    """One caption per image per epoch, so no batch holds two positives for the same image.

    partners draws a second caption per image after the first, so runs without it keep the
    random stream (and results) of earlier releases.
    """
    order = list(range(len(data.captions)))
    rng.shuffle(order)
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        if len(idx) < 2:
            continue  # a contrastive batch needs at least one negative
        captions = [rng.choice(data.captions[i]) for i in idx]
        rows: list[int] = []
        second: list[str] = []
        for row, (i, first) in enumerate(zip(idx, captions, strict=True)):
            others = [c for c in data.captions[i] if c != first] if partners else []
            if others:
                rows.append(row)
                second.append(rng.choice(others))
        batches.append(Batch(idx, captions, rows, second))
    return batches


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Optimiser steps in one epoch of epoch_batches: a last batch of one image is dropped."""
    full, rest = divmod(images, batch_size)
    return full + (1 if rest >= 2 else 0)


def step_inputs(
    batch: Batch,
    data: PairData,
    config: PreprocessConfig,
    augmentation: AugmentConfig,
    *,
    seed: int,
    epoch: int,
) -> StepInputs:
    """Pixels of one batch, augmented when enabled; a mirrored image's captions swap sides."""
    squares = data.pixels[batch.images]  # (batch, S, S, 3) uint8
    if not augmentation.enabled:
        return StepInputs(normalise_uint8(squares, config), batch)
    views = [
        augment(Image.fromarray(square.numpy()), augmentation, view_rng(seed, epoch, index))
        for index, square in zip(batch.images, squares, strict=True)
    ]
    flipped = {row for row, view in enumerate(views) if view.flipped}
    mirrored = Batch(
        batch.images,
        [swap_left_right(c) if row in flipped else c for row, c in enumerate(batch.captions)],
        batch.partner_rows,
        [
            swap_left_right(c) if row in flipped else c
            for row, c in zip(batch.partner_rows, batch.partner_captions, strict=True)
        ],
    )
    pixels = torch.from_numpy(np.stack([np.asarray(view.image, dtype=np.uint8) for view in views]))
    return StepInputs(normalise_uint8(pixels, config), mirrored)


def prepared(
    batches: list[Batch],
    data: PairData,
    config: PreprocessConfig,
    augmentation: AugmentConfig,
    *,
    seed: int,
    epoch: int,
) -> Iterator[StepInputs]:
    """Batches in order, the next one augmented in a thread while the model trains on this one."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="augment") as pool:
        pending: deque[Future[StepInputs]] = deque()
        for batch in batches:
            pending.append(
                pool.submit(step_inputs, batch, data, config, augmentation, seed=seed, epoch=epoch)
            )
            if len(pending) > 1:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _grid_samples(data: PairData) -> list[GridSample]:
    """The first training images with their first caption, for augmentations.png."""
    return [
        GridSample(i, Image.fromarray(data.pixels[i].numpy()), data.captions[i][0])
        for i in range(min(len(data.captions), GRID_IMAGES))
    ]


# -- optimisation --------------------------------------------------------------------------------


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: biases, norms, embeddings' scales and the temperature are exempt."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim < 2 or "logit_scale" in name or "norm" in name.lower()
        (no_decay if exempt else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warmup then cosine decay to zero, as a LambdaLR multiplier."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _agreement_loss(
    text_emb: torch.Tensor, partner_emb: torch.Tensor, rows: list[int], scale: torch.Tensor
) -> torch.Tensor:
    """InfoNCE between two captions of each image: text/text similarity learns to mean
    "describes the same picture", which hybrid-document fusion relies on."""
    return clip_loss(text_emb[rows].float(), partner_emb.float(), scale)


# -- checkpoints ---------------------------------------------------------------------------------


def _provenance(
    train_config: TrainConfig, epoch: int, metrics: dict | None, trained_on: dict[str, Any]
) -> dict[str, Any]:
    return {
        "trained": {"epoch": epoch, "val": metrics, "train_config": train_config.to_dict()},
        "trained_on": trained_on,
    }


def _read_state(last: Path) -> TrainerState:
    path = last / STATE_FILE
    if not path.is_file():
        raise TrainError(f"--resume: no checkpoint in {last}; start without --resume")
    saved = json.loads(path.read_text())
    return TrainerState(saved["epoch"], saved["step"], saved["best"], saved["best_epoch"])


def _save_last(
    adapter: TrainAdapter,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: TrainerState,
    last: Path,
    extra: dict[str, Any],
) -> None:
    adapter.save(last, extra=extra)
    tensors, groups = _flatten_optimizer(optimizer)
    save_file(tensors, str(last / OPTIMIZER_FILE))
    write_json(
        last / STATE_FILE,
        {
            "epoch": state.epoch,
            "step": state.step,
            "best": state.best,
            "best_epoch": state.best_epoch,
            "param_groups": groups,
            "grad_scaler": scaler.state_dict(),
        },
    )


def _flatten_optimizer(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Optimizer state as flat tensors (safetensors) plus JSON hyper-parameters: no pickle."""
    sd = optimizer.state_dict()
    tensors = {
        f"{param_id}.{name}": value.detach().clone().contiguous().cpu()
        for param_id, slots in sd["state"].items()
        for name, value in slots.items()
        if isinstance(value, torch.Tensor)
    }
    return tensors, sd["param_groups"]


def _load_optimizer(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, last: Path) -> None:
    tensors = load_file(str(last / OPTIMIZER_FILE))
    saved = json.loads((last / STATE_FILE).read_text())
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        param_id, name = key.split(".", 1)
        state.setdefault(int(param_id), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    if saved.get("grad_scaler"):
        scaler.load_state_dict(saved["grad_scaler"])
