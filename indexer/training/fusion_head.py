"""Training the learned fusion head (indexer.models.fusion_head) on frozen encoder vectors.

The towers are not touched: every image and caption of the corpus is encoded once, and the head
learns from those vectors alone, so training takes seconds after encoding. Each step draws a
batch of images; each gets a query (one of its captions) and, for a random share of them
(TEXT_PRESENCE: captions present for only some images), an own text (another of its captions).
Modality dropout makes some documents lose their own text (they score exactly their image score)
or their image (they score their aligned text), a few own texts are replaced by another image's
caption (metadata that does not describe the picture), and the loss is InfoNCE of each query
against every document of the batch, so documents with and without own text compete in one
ranking. The head is selected on the val split (a seeded holdout of images when the corpus has
no splits) by pooled text->image R@1 under the protocol of `fusion_recall`; test and other splits
are never read.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from indexer.errors import ModelError
from indexer.models.encoder import Encoder
from indexer.models.fusion_head import FusionHead, FusionHeadConfig
from indexer.training.corpora import Corpus
from indexer.training.evaluate import embed_corpus

# The protocol lived here before fusion_protocol.py (shared with `mmsearch eval`): re-exported.
from indexer.training.fusion_protocol import GAP_PAIRS as GAP_PAIRS
from indexer.training.fusion_protocol import MIN_SHORT_WORDS as MIN_SHORT_WORDS
from indexer.training.fusion_protocol import OWN_TEXT_FRACTION, encode_split
from indexer.training.fusion_protocol import RECALL_KS as RECALL_KS
from indexer.training.fusion_protocol import SHORT_KEEP as SHORT_KEEP
from indexer.training.fusion_protocol import FrozenSplit as FrozenSplit
from indexer.training.fusion_protocol import Protocol as Protocol
from indexer.training.fusion_protocol import Scorer as Scorer
from indexer.training.fusion_protocol import fusion_recall as fusion_recall
from indexer.training.fusion_protocol import head_scorer as head_scorer
from indexer.training.fusion_protocol import linear_scorer as linear_scorer
from indexer.training.fusion_protocol import modality_gap as modality_gap
from indexer.training.fusion_protocol import protocol as protocol
from indexer.training.fusion_protocol import shorten as shorten

TRAIN_SPLIT = "train"
VAL_SPLIT = "val"
# Without splits, this share of the images (seeded) is held out to select the head on.
HOLDOUT_FRACTION = 0.1
# Share of val images that carry an own text in the selection protocol.
VAL_TEXT_FRACTION = OWN_TEXT_FRACTION
# Text weights the linear rule is measured at on val, to report the head against its best.
LINEAR_WEIGHTS: tuple[float, ...] = tuple(i / 10 for i in range(11))
# InfoNCE temperature: learnt, starting at CLIP's 0.07 and capped at 0.01 like the towers'.
INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)
# Loss weights of text-less targets tried by `select_fusion_head`, each selected on val: how
# much must fusion protect images without own text? The answer depends on the model.
TEXTLESS_WEIGHTS: tuple[float, ...] = (1.0, 2.0, 4.0)
# The head starts as the linear rule at this text weight: indexer.indexing.fusion's
# DEFAULT_TEXT_WEIGHT, restated because training does not import indexing (a test keeps the two equal).
START_TEXT_WEIGHT = 0.2


class FusionTrainError(ModelError):
    """The corpus cannot train a fusion head; the message says what it lacks."""


@dataclass(frozen=True)
class FusionTrainConfig:
    """Settings of a head training run; stored in fusion_head.json under `trained`."""

    steps: int = 1500
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    eval_every: int = 100
    query_dim: int = 8
    hidden: int = 16
    # Per batch, the share of documents with own text is drawn from this range.
    text_presence: tuple[float, float] = (0.2, 0.8)
    # Documents with own text that lose their image vector instead (text-only documents).
    image_dropout: float = 0.05
    # Own texts that are a shortened caption (`shorten`) rather than a whole one.
    short_text: float = 0.5
    # Own texts swapped for another image's caption: metadata that does not describe the picture.
    noise_text: float = 0.1
    # Loss weight of queries whose target has no own text: fusion must not push them down.
    textless_weight: float = 2.0
    # The linear rule's text weight the head starts from (a constant gate).
    start_text_weight: float = START_TEXT_WEIGHT


def frozen_split(encoder: Encoder, corpus: Corpus, *, seed: int = 0, batch_size: int = 64) -> FrozenSplit:
    """Encode a corpus (split) once, with a shortened form of every caption; unreadable images
    drop out with their captions."""
    return encode_split(encoder, embed_corpus(encoder, corpus, batch_size=batch_size), seed=seed)


def train_and_val(encoder: Encoder, corpus: Corpus, *, seed: int) -> tuple[FrozenSplit, FrozenSplit]:
    """The train and val splits as vectors, or a seeded holdout of images when there are no splits."""
    splits = corpus.splits()
    if splits and (TRAIN_SPLIT not in splits or VAL_SPLIT not in splits):
        raise FusionTrainError(
            f"{corpus.source}: a fusion head trains on the '{TRAIN_SPLIT}' split and is selected on "
            f"'{VAL_SPLIT}'; this corpus has {', '.join(splits)}"
        )
    if splits:
        return frozen_split(encoder, corpus.select(TRAIN_SPLIT)), frozen_split(
            encoder, corpus.select(VAL_SPLIT)
        )
    everything = frozen_split(encoder, corpus)
    order = np.random.default_rng(seed).permutation(len(everything.images))
    held = max(1, round(HOLDOUT_FRACTION * len(order)))
    return everything.subset(np.sort(order[held:])), everything.subset(np.sort(order[:held]))


class TorchFusionHead(nn.Module):
    """The head of indexer.models.fusion_head in torch, for training; `export` gives the
    NumPy head the query side runs (same arrays, same arithmetic)."""

    def __init__(
        self, dim: int, *, query_dim: int, hidden: int, text_shift: float, text_weight: float
    ) -> None:
        super().__init__()
        self.query = nn.Linear(dim, query_dim)
        self.hidden = nn.Linear(3 + query_dim, hidden)
        self.out = nn.Linear(hidden, 1)
        self.text_scale = nn.Parameter(torch.ones(()))
        self.text_shift = nn.Parameter(torch.tensor(float(text_shift)))
        # Start as the linear rule at text_weight: a constant gate, the mean-gap alignment.
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, math.log(text_weight / (1 - text_weight)))

    def forward(
        self,
        queries: torch.Tensor,
        image: torch.Tensor,
        text: torch.Tensor,
        has_image: torch.Tensor,
        has_text: torch.Tensor,
    ) -> torch.Tensor:
        """Fused scores (q, d) of queries (q, dim) against documents with image and raw own-text
        scores (q, d) and modality masks (d,) bool."""
        query = torch.tanh(self.query(queries))  # (q, query_dim)
        text = self.text_scale * text + self.text_shift  # (q, d)
        image = torch.where(has_image, image, torch.zeros_like(image))  # (q, d)
        features = torch.cat(
            [
                torch.stack([image, text, text - image], dim=-1),  # (q, d, 3)
                query[:, None, :].expand(-1, image.shape[1], -1),  # (q, d, query_dim)
            ],
            dim=-1,
        )
        gate = torch.sigmoid(self.out(F.relu(self.hidden(features))).squeeze(-1))  # (q, d)
        gate = torch.where(
            has_text, torch.where(has_image, gate, torch.ones_like(gate)), torch.zeros_like(gate)
        )
        return image + gate * (text - image)  # (q, d)

    def export(self, config: FusionHeadConfig) -> FusionHead:
        """The NumPy head with these weights."""
        arrays = {
            "query_weight": self.query.weight,
            "query_bias": self.query.bias,
            "hidden_weight": self.hidden.weight,
            "hidden_bias": self.hidden.bias,
            "out_weight": self.out.weight[0],
            "out_bias": self.out.bias,
            "text_scale": self.text_scale.reshape(1),
            "text_shift": self.text_shift.reshape(1),
        }
        return FusionHead(config, {k: v.detach().cpu().float().numpy().copy() for k, v in arrays.items()})


# -- selection on val, by the protocol of indexer.training.fusion_protocol ---------------------------


def mean_recall(metrics: dict[str, dict[str, float]], group: str) -> float:
    """Mean of R@1, R@5 and R@10 of one group."""
    return float(np.mean([metrics[group][f"R@{k}"] for k in RECALL_KS]))


def best_linear_weight(linear: dict[str, dict[str, dict[str, float]]]) -> float:
    """The text weight (linear: weight as str -> val metrics) selected by `selection_key` with
    pixels alone as the floor: the linear fusion a head has to beat."""
    pixels = linear["0.0"]["without_text"]
    return float(max(linear, key=lambda w: selection_key(linear[w], pixels)))


def head_floor(linear: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """What a head must keep for images without own text: each R@K of pixels alone and of linear
    fusion at its selected weight, whichever is higher."""
    pixels = linear["0.0"]["without_text"]
    chosen = linear[str(best_linear_weight(linear))]["without_text"]
    return {k: max(pixels[k], chosen[k]) for k in pixels}


def selection_key(metrics: dict[str, dict[str, float]], floor: dict[str, float]) -> tuple[bool, float, float]:
    """What selects on val: first that images without own text are found at least as well as
    the floor says (each R@K), then pooled R@1, then pooled R@10."""
    kept = all(metrics["without_text"][k] >= floor[k] for k in floor)
    return (kept, metrics["all"]["R@1"], metrics["all"]["R@10"])


# -- training --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FusionEval:
    """The head measured on val at one step."""

    step: int
    loss: float
    metrics: dict[str, dict[str, float]]
    is_best: bool


@dataclass
class FusionTrainReport:
    """The selected head, its val numbers, linear fusion's on the same protocol, and the history."""

    head: FusionHead
    best_step: int
    val: dict[str, dict[str, float]]
    linear: dict[str, dict[str, dict[str, float]]]  # text weight (str) -> metrics
    history: list[FusionEval] = field(default_factory=list)
    seconds: float = 0.0

    def best_linear_weight(self) -> float:
        """The text weight linear fusion is selected at on val (`best_linear_weight`)."""
        return best_linear_weight(self.linear)


def train_fusion_head(
    train: FrozenSplit,
    val: FrozenSplit,
    *,
    model_id: str,
    config: FusionTrainConfig = FusionTrainConfig(),
    provenance: dict[str, Any] | None = None,
    on_eval: Callable[[FusionEval], None] | None = None,
) -> FusionTrainReport:
    """Train a head on train's vectors, keep the step that scores best on val."""
    started = time.perf_counter()
    captions_of = train.captions_of()
    usable = np.array([len(rows) >= 1 for rows in captions_of])
    if usable.sum() < 2:
        raise FusionTrainError("a fusion head needs at least two training images with captions")
    if not any(len(rows) >= 2 for rows in captions_of):
        raise FusionTrainError(
            "a fusion head learns from images with at least two captions (one as the query, one as "
            "the image's own text); this corpus has one caption per image"
        )
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    image_mean, text_mean = modality_gap(train, seed=config.seed)
    shift = image_mean - text_mean
    module = TorchFusionHead(
        train.images.shape[1],
        query_dim=config.query_dim,
        hidden=config.hidden,
        text_shift=shift,
        text_weight=config.start_text_weight,
    )
    logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))
    optimizer = torch.optim.AdamW(
        [*module.parameters(), logit_scale], lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(config.steps))
    head_config = FusionHeadConfig(
        dim=train.images.shape[1], model_id=model_id, query_dim=config.query_dim, hidden=config.hidden
    )
    plan = protocol(val, seed=config.seed)
    val_shift = float(np.subtract(*modality_gap(val, seed=config.seed)))
    linear = {str(w): fusion_recall(val, plan, linear_scorer(w, val_shift)) for w in LINEAR_WEIGHTS}
    floor = head_floor(linear)
    images = torch.from_numpy(train.images)
    captions = torch.from_numpy(train.captions)
    own_texts = torch.from_numpy(train.own_texts())
    shortened = train.shortened is not None
    pool = np.flatnonzero(usable)
    batch = min(config.batch_size, len(pool))

    def measure(step: int, loss: float, best: FusionEval | None) -> FusionEval:
        head = module.export(head_config)
        metrics = fusion_recall(val, plan, head_scorer(head))
        is_best = best is None or selection_key(metrics, floor) > selection_key(best.metrics, floor)
        result = FusionEval(step, loss, metrics, is_best)
        if on_eval is not None:
            on_eval(result)
        return result

    best = measure(0, math.nan, None)
    best_head = module.export(head_config)
    history = [best]
    losses: list[float] = []
    for step in range(1, config.steps + 1):
        rows = rng.choice(pool, batch, replace=False)
        queries, own, has_text, has_image = _draw(
            rows, captions_of, rng, config, n_captions=len(train.captions), shortened=shortened
        )
        q = captions[queries]  # (b, dim)
        image = q @ images[rows].T  # (b, b)
        text = q @ own_texts[own].T  # (b, b)
        fused = module(q, image, text, torch.from_numpy(has_image), torch.from_numpy(has_text))
        logits = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp() * fused  # (b, b)
        per_query = F.cross_entropy(logits, torch.arange(batch), reduction="none")  # (b,)
        weights = torch.where(torch.from_numpy(has_text), 1.0, config.textless_weight)  # (b,)
        loss = (weights * per_query).sum() / weights.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_([*module.parameters(), logit_scale], 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % config.eval_every == 0 or step == config.steps:
            result = measure(step, float(np.mean(losses)), best)
            losses = []
            history.append(result)
            if result.is_best:
                best, best_head = result, module.export(head_config)
    trained = {
        "train_config": asdict(config),
        "best_step": best.step,
        "val": best.metrics,
        "val_linear": linear,
        **(provenance or {}),
    }
    head = FusionHead(FusionHeadConfig(**{**asdict(head_config), "trained": trained}), best_head.arrays)
    return FusionTrainReport(head, best.step, best.metrics, linear, history, time.perf_counter() - started)


def _cosine(total: int) -> Callable[[int], float]:
    """Cosine decay of the learning rate to zero over the run."""
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(1, total))))


def _draw(
    rows: np.ndarray,
    captions_of: list[np.ndarray],
    rng: np.random.Generator,
    config: FusionTrainConfig,
    *,
    n_captions: int,
    shortened: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For a batch of images: the query caption of each, its own text (another of its captions,
    sometimes shortened, sometimes a stranger's; rows of FrozenSplit.own_texts), and which
    documents keep their own text and their image."""
    queries = np.empty(len(rows), np.int64)
    own = np.zeros(len(rows), np.int64)
    has_text = np.zeros(len(rows), bool)
    presence = rng.uniform(*config.text_presence)
    for n, image in enumerate(rows):
        mine = captions_of[image]
        queries[n] = rng.choice(mine)
        others = mine[mine != queries[n]]
        if len(others) and rng.random() < presence:
            has_text[n] = True
            own[n] = rng.choice(others)
            if rng.random() < config.noise_text and n_captions > len(mine):
                own[n] = _stranger(rng, mine, n_captions)
            if shortened and rng.random() < config.short_text:
                own[n] += n_captions
    has_image = ~(has_text & (rng.random(len(rows)) < config.image_dropout))
    return queries, own, has_text, has_image


def _stranger(rng: np.random.Generator, mine: np.ndarray, n_captions: int) -> int:
    """A caption row that is not one of this image's own."""
    while True:
        row = int(rng.integers(n_captions))
        if row not in mine:
            return row


def select_fusion_head(
    train: FrozenSplit,
    val: FrozenSplit,
    *,
    model_id: str,
    config: FusionTrainConfig = FusionTrainConfig(),
    textless_weights: tuple[float, ...] = TEXTLESS_WEIGHTS,
    provenance: dict[str, Any] | None = None,
    on_eval: Callable[[FusionEval], None] | None = None,
) -> FusionTrainReport:
    """Train one head per text-less loss weight and keep the one val selects (`selection_key`);
    the trials are recorded in the head's config."""
    if not textless_weights:
        raise FusionTrainError("select_fusion_head needs at least one text-less loss weight to try")
    reports = [
        train_fusion_head(
            train,
            val,
            model_id=model_id,
            config=replace(config, textless_weight=weight),
            provenance=provenance,
            on_eval=on_eval,
        )
        for weight in textless_weights
    ]
    floor = head_floor(reports[0].linear)
    best = max(reports, key=lambda r: selection_key(r.val, floor))
    trials = [
        {"textless_weight": r.head.config.trained["train_config"]["textless_weight"], "val": r.val}
        for r in reports
    ]
    trained = {**best.head.config.trained, "trials": trials}
    best.head = FusionHead(replace(best.head.config, trained=trained), best.head.arrays)
    best.seconds = sum(r.seconds for r in reports)
    return best
