"""Contrastive training of the dual encoder: a flat loop that reads top to bottom.

Layout of an output folder: the best checkpoint (a complete model directory, usable as
--model) at the top, and `last/` with the latest epoch plus optimizer state for --resume.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from indexer.errors import ModelError
from indexer.media.images import ImageLoadError, PreprocessConfig, open_image, preprocess
from indexer.models.config import FINETUNE_LR as FINETUNE_LR  # re-exported (moved to config)
from indexer.models.config import MAX_LOGIT_SCALE, ModelConfig, TrainConfig, write_json
from indexer.models.devices import Device, autocast_for
from indexer.models.encoder import hub_offline
from indexer.models.native import DualEncoder, build_model, load_model_dir, save_model_dir
from indexer.models.tokenizer import (
    SPM_MODEL_FILE,
    load_tokenizer,
    tokenize,
    tokenizer_from_sentencepiece,
    train_sentencepiece,
    unknown_rate,
)
from indexer.training.corpora import Corpus
from indexer.training.evaluate import retrieval_metrics, rsum
from indexer.training.loss import clip_loss

LAST_DIR = "last"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
# More than this share of <unk> tokens means the tokenizer is broken, not merely imperfect.
MAX_UNKNOWN_RATE = 0.05


class TrainError(ModelError):
    """Training cannot start or continue; the message says what to change."""


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
    """Decoded training images with their captions, kept in memory as float16 pixels."""

    pixels: torch.Tensor  # (images, 3, S, S) float16
    captions: list[list[str]]


def load_pairs(
    corpus: Corpus,
    config: PreprocessConfig,
    *,
    skipped: list[ImageLoadError],
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
) -> PairData:
    """Decode every image of the corpus once (in threads); unreadable ones are skipped and listed.

    `transform` replaces `preprocess(image, config)` for models that bring their own (OpenCLIP).
    """
    by_image = corpus.captions_by_image()
    paths = list(by_image)

    def decode(path: Path) -> torch.Tensor | ImageLoadError:
        try:
            image = open_image(path, target_size=config.image_size)
            pixels = transform(image) if transform is not None else preprocess(image, config)
            return pixels.half()
        except ImageLoadError as exc:
            return exc

    with ThreadPoolExecutor() as pool:
        decoded = list(pool.map(decode, paths))
    tensors, captions = [], []
    for path, item in zip(paths, decoded, strict=True):
        if isinstance(item, ImageLoadError):
            skipped.append(item)
            continue
        tensors.append(item)
        captions.append(by_image[path])
    if not tensors:
        raise TrainError(f"no readable images in {corpus.source}")
    return PairData(torch.stack(tensors), captions)


def build_tokenizer(
    corpus: Corpus, config: ModelConfig, text_init: Path | None
) -> tuple[Any, bytes | None]:
    """The pretrained folder's tokenizer, or SentencePiece trained on the training captions."""
    if text_init is not None:
        return load_tokenizer(text_init), None
    proto = train_sentencepiece(
        (p.caption for p in corpus.pairs), vocab_size=config.text.vocab_size
    )
    tokenizer = tokenizer_from_sentencepiece(proto)
    sample = [p.caption for p in corpus.pairs[:500]]
    rate = unknown_rate(tokenizer, sample)
    if rate > MAX_UNKNOWN_RATE:
        raise TrainError(f"tokenizer maps {rate:.0%} of caption tokens to <unk>; it is broken")
    return tokenizer, proto


def param_groups(model: DualEncoder, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: biases, norms, embeddings' scales and the temperature are exempt."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
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


def _agreement_loss(
    text_emb: torch.Tensor, partner_emb: torch.Tensor, rows: list[int], scale: torch.Tensor
) -> torch.Tensor:
    """InfoNCE between two captions of each image: text/text similarity learns to mean
    "describes the same picture", which hybrid-document fusion relies on."""
    return clip_loss(text_emb[rows].float(), partner_emb.float(), scale)


@torch.no_grad()
def evaluate_model(
    model: DualEncoder, tokenizer: Any, data: PairData, *, max_length: int, device: Device
) -> dict[str, dict[str, float]]:
    """Recall@K both ways over every caption of every image in `data`."""
    model.eval()
    with autocast_for(device):
        image_emb = torch.cat(
            [
                model.encode_image(data.pixels[i : i + 256].float().to(str(device)))
                for i in range(0, len(data.pixels), 256)
            ]
        )
        captions = [c for caps in data.captions for c in caps]
        owners = [i for i, caps in enumerate(data.captions) for _ in caps]
        text_emb = []
        for i in range(0, len(captions), 256):
            tokens = tokenize(tokenizer, captions[i : i + 256], max_length=max_length)
            text_emb.append(
                model.encode_text(
                    tokens["input_ids"].to(str(device)), tokens["attention_mask"].to(str(device))
                )
            )
    model.train()
    return retrieval_metrics(
        image_emb.float().cpu().numpy(), torch.cat(text_emb).float().cpu().numpy(), owners, captions
    )


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
    progress: bool = True,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> TrainReport:
    """Train on the corpus's train split (or all of it), evaluate on val each epoch, keep the best."""
    target = Device.parse(device).resolve()
    device = str(target)
    torch.manual_seed(train_config.seed)
    report = TrainReport(out=out)
    train_corpus = corpus.select("train") if "train" in corpus.splits() else corpus
    val_corpus = corpus.select("val") if "val" in corpus.splits() else None

    state: dict[str, Any] = {"epoch": 0, "step": 0, "best": None, "best_epoch": None}
    last = out / LAST_DIR
    if resume and (last / STATE_FILE).is_file():
        loaded = load_model_dir(last, device=device)
        model, tokenizer, proto = (
            loaded.model,
            loaded.tokenizer,
            _read_optional(last / SPM_MODEL_FILE),
        )
        state = json.loads((last / STATE_FILE).read_text())
    elif resume:
        raise TrainError(f"--resume: no checkpoint in {last}; start without --resume")
    else:
        with hub_offline():  # --text-init/--image-init are local folders: never the Hub
            tokenizer, proto = build_tokenizer(train_corpus, model_config, text_init)
            model_config = replace(
                model_config, text=replace(model_config.text, vocab_size=len(tokenizer))
            )
            model = build_model(model_config, text_init=text_init, image_init=image_init)
        model = model.to(device)
    config = model.config

    train_data = load_pairs(train_corpus, config.preprocess, skipped=report.skipped)
    val_data = (
        load_pairs(val_corpus, config.preprocess, skipped=report.skipped) if val_corpus else None
    )

    steps_per_epoch = math.ceil(len(train_data.captions) / train_config.batch_size)
    total_steps = steps_per_epoch * train_config.epochs
    optimizer = torch.optim.AdamW(
        param_groups(model, train_config.weight_decay), lr=train_config.lr
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(train_config.warmup_steps, total_steps)
    )
    if resume:
        _load_optimizer(optimizer, last)
        scheduler.last_epoch = state["step"]  # the next step() continues the schedule
    # fp16 autocast on CUDA needs loss scaling; on the CPU the scaler is a pass-through.
    scaler = torch.amp.GradScaler("cuda", enabled=target.is_cuda)

    model.train()
    for epoch in range(state["epoch"] + 1, train_config.epochs + 1):
        started = time.perf_counter()
        rng = random.Random(train_config.seed * 10_007 + epoch)  # resumable without saved RNG state
        batches = epoch_batches(
            train_data, train_config.batch_size, rng, partners=train_config.caption_agreement > 0
        )
        losses = []
        bar = tqdm(
            batches, desc=f"epoch {epoch}/{train_config.epochs}", disable=not progress, leave=False
        )
        for batch in bar:
            pixels = train_data.pixels[batch.images].float().to(device)  # (batch, 3, S, S)
            tokens = tokenize(tokenizer, batch.captions, max_length=config.text.max_length)
            with autocast_for(target):
                image_emb, text_emb, scale = model(
                    pixels, tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
                )
                loss = clip_loss(image_emb.float(), text_emb.float(), scale)
                if len(batch.partner_rows) >= 2:
                    partner = tokenize(
                        tokenizer, batch.partner_captions, max_length=config.text.max_length
                    )
                    partner_emb = model.encode_text(
                        partner["input_ids"].to(device), partner["attention_mask"].to(device)
                    )
                    loss = loss + train_config.caption_agreement * _agreement_loss(
                        text_emb, partner_emb, batch.partner_rows, scale
                    )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            state["step"] += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}", temp=f"{1 / scale.item():.3f}")

        metrics = (
            evaluate_model(
                model, tokenizer, val_data, max_length=config.text.max_length, device=target
            )
            if val_data
            else None
        )
        score = rsum(metrics) if metrics else -float(np.mean(losses))
        is_best = state["best"] is None or score > state["best"]
        if is_best:
            state["best"], state["best_epoch"] = score, epoch
            save_model_dir(
                model,
                tokenizer,
                out,
                spm_proto=proto,
                extra=_provenance(train_config, epoch, metrics),
            )
        state["epoch"] = epoch
        _save_last(model, tokenizer, proto, optimizer, state, last, train_config, metrics)
        result = EpochResult(
            epoch, float(np.mean(losses)), metrics, time.perf_counter() - started, is_best
        )
        report.epochs.append(result)
        if on_epoch:
            on_epoch(result)
    report.best_epoch = state["best_epoch"]
    write_json(out / "train_config.json", train_config.to_dict())
    return report


def _provenance(train_config: TrainConfig, epoch: int, metrics: dict | None) -> dict[str, Any]:
    return {"trained": {"epoch": epoch, "val": metrics, "train_config": train_config.to_dict()}}


def _read_optional(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def _save_last(
    model: DualEncoder,
    tokenizer: Any,
    proto: bytes | None,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    last: Path,
    train_config: TrainConfig,
    metrics: dict | None,
) -> None:
    save_model_dir(
        model,
        tokenizer,
        last,
        spm_proto=proto,
        extra=_provenance(train_config, state["epoch"], metrics),
    )
    tensors, groups = _flatten_optimizer(optimizer)
    save_file(tensors, str(last / OPTIMIZER_FILE))
    write_json(last / STATE_FILE, {**state, "param_groups": groups})


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


def _load_optimizer(optimizer: torch.optim.Optimizer, last: Path) -> None:
    tensors = load_file(str(last / OPTIMIZER_FILE))
    groups = json.loads((last / STATE_FILE).read_text())["param_groups"]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        param_id, name = key.split(".", 1)
        state.setdefault(int(param_id), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def train_openclip(
    corpus: Corpus,
    out: Path,
    *,
    init: str | Path,
    train_config: TrainConfig,
    checkpoint: Path | None = None,
    pretrained: str | None = None,
    device: Device | str = "auto",
    progress: bool = True,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> TrainReport:
    """Fine-tune an OpenCLIP model contrastively: same loss, schedule and best-by-val choice.

    `init` is openclip:ARCH (weights from `checkpoint` or `pretrained`) or a folder from an
    earlier fine-tune. OUT gets open_clip's local-dir layout, usable as --model OUT.
    """
    from indexer.models.openclip import load_openclip, save_openclip_dir  # optional extra

    target = Device.parse(device).resolve()
    device = str(target)
    torch.manual_seed(train_config.seed)
    report = TrainReport(out=out)
    train_corpus = corpus.select("train") if "train" in corpus.splits() else corpus
    val_corpus = corpus.select("val") if "val" in corpus.splits() else None
    loaded = load_openclip(init, device=target, checkpoint=checkpoint, pretrained=pretrained)
    model = loaded.model
    # The transform's size is what the images are decoded for (draft mode) and resized to.
    decode_config = PreprocessConfig(image_size=_max_side(loaded.preprocess_cfg["size"]))
    train_data = load_pairs(
        train_corpus, decode_config, skipped=report.skipped, transform=loaded.transform
    )
    val_data = (
        load_pairs(val_corpus, decode_config, skipped=report.skipped, transform=loaded.transform)
        if val_corpus
        else None
    )

    total_steps = math.ceil(len(train_data.captions) / train_config.batch_size) * train_config.epochs
    optimizer = torch.optim.AdamW(
        param_groups(model, train_config.weight_decay), lr=train_config.lr
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(train_config.warmup_steps, total_steps)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=target.is_cuda)
    best: float | None = None

    model.train()
    for epoch in range(1, train_config.epochs + 1):
        started = time.perf_counter()
        rng = random.Random(train_config.seed * 10_007 + epoch)
        losses = []
        batches = epoch_batches(
            train_data, train_config.batch_size, rng, partners=train_config.caption_agreement > 0
        )
        bar = tqdm(
            batches, desc=f"epoch {epoch}/{train_config.epochs}", disable=not progress, leave=False
        )
        for batch in bar:
            pixels = train_data.pixels[batch.images].float().to(device)  # (batch, 3, S, S)
            tokens = loaded.tokenizer(batch.captions).to(device)  # (batch, context)
            with autocast_for(target):
                image_emb = model.encode_image(pixels, normalize=True)  # (batch, dim)
                text_emb = model.encode_text(tokens, normalize=True)  # (batch, dim)
                scale = model.logit_scale.exp().squeeze()  # scalar
                loss = clip_loss(image_emb.float(), text_emb.float(), scale.float())
                if len(batch.partner_rows) >= 2:
                    partner_tokens = loaded.tokenizer(batch.partner_captions).to(device)
                    partner_emb = model.encode_text(partner_tokens, normalize=True)
                    loss = loss + train_config.caption_agreement * _agreement_loss(
                        text_emb, partner_emb, batch.partner_rows, scale.float()
                    )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            with torch.no_grad():  # CLIP's cap on the temperature, as open_clip's own loop does
                model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}")

        metrics = (
            _evaluate_openclip(model, loaded.tokenizer, val_data, device=target)
            if val_data
            else None
        )
        score = rsum(metrics) if metrics else -float(np.mean(losses))
        is_best = best is None or score > best
        if is_best:
            best, report.best_epoch = score, epoch
            model.eval()
            save_openclip_dir(loaded, out, extra=_provenance(train_config, epoch, metrics))
            model.train()
        result = EpochResult(
            epoch, float(np.mean(losses)), metrics, time.perf_counter() - started, is_best
        )
        report.epochs.append(result)
        if on_epoch:
            on_epoch(result)
    model.eval()
    write_json(out / "train_config.json", train_config.to_dict())
    return report


def _max_side(size: int | Sequence[int]) -> int:
    return max(size) if isinstance(size, Sequence) else int(size)


@torch.no_grad()
def _evaluate_openclip(
    model: Any, tokenizer: Any, data: PairData, *, device: Device
) -> dict[str, dict[str, float]]:
    """Recall@K both ways over every caption of every image in `data` (OpenCLIP model)."""
    model.eval()
    captions = [c for caps in data.captions for c in caps]
    owners = [i for i, caps in enumerate(data.captions) for _ in caps]
    with autocast_for(device):
        image_emb = torch.cat(
            [
                model.encode_image(data.pixels[i : i + 256].float().to(str(device)), normalize=True)
                for i in range(0, len(data.pixels), 256)
            ]
        )  # (images, dim)
        text_emb = torch.cat(
            [
                model.encode_text(tokenizer(captions[i : i + 256]).to(str(device)), normalize=True)
                for i in range(0, len(captions), 256)
            ]
        )  # (captions, dim)
    model.train()
    return retrieval_metrics(
        image_emb.float().cpu().numpy(), text_emb.float().cpu().numpy(), owners, captions
    )
