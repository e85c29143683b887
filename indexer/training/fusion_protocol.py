"""The fixed text->image protocol fusion is measured by, shared by head training and evaluation.

A split's images and captions are encoded once (`FrozenSplit`); `protocol` fixes, seeded, which
caption queries each image and which images carry an own text (another of their captions, never
the query itself, a share of them shortened to a few words); `fusion_recall` scores any fusion
rule (`Scorer`) under that plan. indexer.training.fusion_head selects a head on val by it, and
`mmsearch eval` reports image-only, linear and learned fusion on test and shift by it
(`fusion_metrics`), so the numbers of the two compare.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from indexer.models.encoder import Encoder
    from indexer.models.fusion_head import FusionHead
    from indexer.training.embeddings import CorpusEmbeddings

RECALL_KS = (1, 5, 10)
# Share of the images that carry an own text in the protocol (as in benchmarks/FUSION.md).
OWN_TEXT_FRACTION = 0.5
# Share of those own texts that are a shortened caption: metadata is often keywords.
SHORT_TEXT_FRACTION = 0.5
# A shortened own text keeps this share of its caption's words (drawn per text), at least two.
SHORT_KEEP = (0.3, 0.7)
MIN_SHORT_WORDS = 2
# Random non-matching pairs used to measure the modality gap the head's text alignment starts from.
GAP_PAIRS = 20_000
# The seed of the protocol `mmsearch eval` reports: that of head training's default selection.
EVAL_SEED = 0
# How the linear rule aligns own-text scores here: indexer.indexing.fusion's FUSION_ALIGN,
# restated because training does not import indexing (a test keeps the two equal).
LINEAR_ALIGN = "mean"


@dataclass(frozen=True)
class FrozenSplit:
    """Encoder vectors of one split: images (n, dim), captions (m, dim) float32, L2-normalised;
    owners (m,) the image row of each caption; canonical (m,) captions preferred as queries;
    shortened (m, dim) or None: each caption cut to a few of its words (`shorten`)."""

    images: np.ndarray
    captions: np.ndarray
    owners: np.ndarray
    canonical: np.ndarray
    shortened: np.ndarray | None = None

    def own_texts(self) -> np.ndarray:
        """What an own text can be, by row: the captions (rows < m), then their shortened forms."""
        if self.shortened is None:
            return self.captions
        return np.concatenate([self.captions, self.shortened])

    def captions_of(self) -> list[np.ndarray]:
        """Caption rows of each image."""
        order = np.argsort(self.owners, kind="stable")
        bounds = np.searchsorted(self.owners[order], np.arange(len(self.images) + 1))
        return [order[bounds[i] : bounds[i + 1]] for i in range(len(self.images))]

    def subset(self, image_rows: np.ndarray) -> FrozenSplit:
        """The given images and their captions, renumbered."""
        new_row = np.full(len(self.images), -1, np.int64)
        new_row[image_rows] = np.arange(len(image_rows))
        keep = new_row[self.owners] >= 0
        return FrozenSplit(
            self.images[image_rows],
            self.captions[keep],
            new_row[self.owners[keep]],
            self.canonical[keep],
            None if self.shortened is None else self.shortened[keep],
        )


def shorten(caption: str, rng: random.Random) -> str:
    """A few of a caption's words, in order (SHORT_KEEP of them, at least MIN_SHORT_WORDS): an
    own text as photo metadata often is, keywords rather than a sentence."""
    words = caption.split()
    keep = max(MIN_SHORT_WORDS, round(rng.uniform(*SHORT_KEEP) * len(words)))
    if keep >= len(words):
        return caption
    return " ".join(words[i] for i in sorted(rng.sample(range(len(words)), keep)))


# -- the protocol ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """One fixed evaluation: a query caption per image and, for some images, an own text."""

    queries: np.ndarray  # (n_images,) caption row queried for each image
    own_text: np.ndarray  # (n_images,) caption row of its own text, -1 for none


def protocol(
    split: FrozenSplit, *, seed: int, fraction: float = OWN_TEXT_FRACTION, short: float = SHORT_TEXT_FRACTION
) -> Protocol:
    """Every image queried by its canonical caption (else its first); a seeded `fraction` of
    the images that have another caption carry one of those as own text, a `short` share of
    them shortened (when the split has shortened captions). own_text rows index own_texts()."""
    rng = np.random.default_rng(seed)
    captions = split.captions_of()
    queries = np.array(
        [next((c for c in rows if split.canonical[c]), rows[0]) if len(rows) else -1 for rows in captions]
    )
    own = np.full(len(captions), -1, np.int64)
    chosen = rng.random(len(captions)) < fraction
    shortened = (rng.random(len(captions)) < short) & (split.shortened is not None)
    for image, rows in enumerate(captions):
        others = rows[rows != queries[image]]
        if chosen[image] and len(others):
            own[image] = rng.choice(others) + (len(split.captions) if shortened[image] else 0)
    return Protocol(queries, own)


Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def fusion_recall(split: FrozenSplit, plan: Protocol, score: Scorer) -> dict[str, dict[str, float]]:
    """Text->image R@1/5/10 over the whole split for all queries, and for targets with and
    without own text. score(queries (q, dim), image (q, n), text (q, n) NaN for none) -> (q, n)."""
    asked = np.flatnonzero(plan.queries >= 0)
    queries = split.captions[plan.queries[asked]]  # (q, dim)
    image = queries @ split.images.T  # (q, n)
    has_text = plan.own_text >= 0
    own = split.own_texts()[np.maximum(plan.own_text, 0)]  # (n, dim)
    text = np.where(has_text[None, :], queries @ own.T, np.nan)  # (q, n)
    fused = score(queries, image, text)  # (q, n)
    target = fused[np.arange(len(asked)), asked]
    ranks = (fused > target[:, None]).sum(axis=1) + 1  # (q,) ties count for the query
    groups = {
        "all": np.ones(len(asked), bool),
        "with_text": has_text[asked],
        "without_text": ~has_text[asked],
    }
    return {
        name: {f"R@{k}": round(float((ranks[mask] <= k).mean()) if mask.any() else 0.0, 4) for k in RECALL_KS}
        for name, mask in groups.items()
    }


def modality_gap(split: FrozenSplit, *, seed: int) -> tuple[float, float]:
    """Mean scores of random non-matching (caption, image) and (caption, other caption) pairs."""
    rng = np.random.default_rng(seed)
    left = rng.integers(len(split.captions), size=GAP_PAIRS)
    image = rng.integers(len(split.images), size=GAP_PAIRS)
    other = rng.integers(len(split.captions), size=GAP_PAIRS)
    apart = split.owners[left] != image
    image_mean = float(np.einsum("nd,nd->n", split.captions[left[apart]], split.images[image[apart]]).mean())
    apart = split.owners[left] != split.owners[other]
    text_mean = float(np.einsum("nd,nd->n", split.captions[left[apart]], split.captions[other[apart]]).mean())
    return image_mean, text_mean


def linear_scorer(weight: float, shift: float) -> Scorer:
    """The linear rule (indexer.indexing.fusion, "mean" alignment) as a Scorer."""

    def score(queries: np.ndarray, image: np.ndarray, text: np.ndarray) -> np.ndarray:
        fused = (1 - weight) * image + weight * (text + shift)
        return np.where(np.isnan(text), image, fused)

    return score


def head_scorer(head: FusionHead) -> Scorer:
    """The NumPy head as a Scorer, one query at a time, as the engine runs it."""

    def score(queries: np.ndarray, image: np.ndarray, text: np.ndarray) -> np.ndarray:
        return np.stack([head.fuse(q, i, t) for q, i, t in zip(queries, image, text, strict=True)])

    return score


def encode_split(encoder: Encoder, emb: CorpusEmbeddings, *, seed: int = 0) -> FrozenSplit:
    """A corpus's embeddings as a FrozenSplit, with a shortened form (`shorten`, seeded) of
    every caption encoded too."""
    canonical = np.array([bool(p.meta.get("canonical")) for p in emb.pairs], dtype=bool)
    rng = random.Random(seed)
    shortened = encoder.encode_texts([shorten(p.caption, rng) for p in emb.pairs])
    owners = np.asarray(emb.caption_to_image, np.int64)
    return FrozenSplit(emb.image_emb, emb.text_emb, owners, canonical, shortened)


# -- fusion as `mmsearch eval` reports it --------------------------------------------------------


@dataclass(frozen=True)
class FusionEvalSettings:
    """What the fusion block of an evaluation compares: image only, the linear rule at
    text_weight (the engine's default, given by the caller: training does not import indexing),
    and the learned head when there is one (else missing_head says why, in the report)."""

    text_weight: float
    head: FusionHead | None = None
    missing_head: str = "no head"
    seed: int = EVAL_SEED


def fusion_metrics(split: FrozenSplit, settings: FusionEvalSettings) -> dict[str, Any]:
    """Text->image R@1/5/10 under `protocol` (own text on OWN_TEXT_FRACTION of the images), for
    all queries and for targets with and without own text: image only (text weight 0), linear
    fusion at settings.text_weight with the mean modality-gap alignment measured on the split,
    and the learned head (None without one, with a "note")."""
    plan = protocol(split, seed=settings.seed)
    notes = []
    block: dict[str, Any] = {
        "own_text_share": OWN_TEXT_FRACTION,
        "short_text_share": SHORT_TEXT_FRACTION,
        "seed": settings.seed,
        "images": len(split.images),
        "images_with_text": int((plan.own_text >= 0).sum()),
    }
    if block["images_with_text"] == 0:
        notes.append("no image has a second caption to carry as own text: fusion changes nothing here")
    # One image has no non-matching pair to measure the gap on; its rank is 1 whatever the shift.
    shift = float(np.subtract(*modality_gap(split, seed=settings.seed))) if len(split.images) > 1 else 0.0
    block["image_only"] = fusion_recall(split, plan, linear_scorer(0.0, 0.0))
    block["linear"] = {
        "text_weight": settings.text_weight,
        "align": LINEAR_ALIGN,
        "text_shift": round(shift, 4),
        **fusion_recall(split, plan, linear_scorer(settings.text_weight, shift)),
    }
    if settings.head is None:
        block["learned"] = None
        notes.append(f"learned fusion: {settings.missing_head}")
    else:
        block["learned"] = fusion_recall(split, plan, head_scorer(settings.head))
    if notes:
        block["note"] = "; ".join(notes)
    return block
