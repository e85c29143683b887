"""Recall@K and median rank for text->image and image->text retrieval.

With several captions per image (Flickr30k/COCO protocol) a text query has one correct image,
and an image query is correct when any of its captions ranks within K.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from indexer.media.images import ImageLoadError, open_image
from indexer.models.encoder import Encoder
from indexer.training.corpora import Corpus, CorpusError, retrieval_set
from indexer.training.embeddings import CorpusEmbeddings
from indexer.training.fusion_protocol import FusionEvalSettings, encode_split, fusion_metrics

RECALL_KS = (1, 5, 10)
# A test split drawn by a second, independent renderer: reported beside the split evaluated.
SHIFT_SPLIT = "shift"
# Batches decoded ahead of the encoder: hides decoding without holding a large corpus in memory.
DECODE_AHEAD = 2
# Scene attributes a sample-corpus caption must name to count as fully specified.
ATTRIBUTES = ("size", "color", "shape", "position")


def best_target_ranks(scores: np.ndarray, targets: Sequence[Sequence[int]]) -> np.ndarray:
    """1-based rank of the best-ranked correct column for each row.

    scores: (queries, gallery) float32; targets[q]: the correct gallery columns of query q.
    """
    ranks = np.empty(len(targets), dtype=np.int64)
    for q, cols in enumerate(targets):
        row = scores[q]
        best = row[list(cols)].max()  # the correct item scoring highest
        ranks[q] = int((row > best).sum()) + 1  # ties count in the query's favour
    return ranks


def summarize_ranks(ranks: np.ndarray) -> dict[str, float]:
    """{"R@1", "R@5", "R@10", "medr"} from 1-based ranks."""
    if len(ranks) == 0:
        return {**{f"R@{k}": 0.0 for k in RECALL_KS}, "medr": 0.0}
    summary = {f"R@{k}": round(float((ranks <= k).mean()), 4) for k in RECALL_KS}
    summary["medr"] = float(np.median(ranks))
    return summary


def text_to_image_targets(
    caption_to_image: Sequence[int], caption_texts: Sequence[str] | None
) -> list[list[int]]:
    """Correct images per caption: its own, plus every image carrying the very same caption.

    Two images described by identical text cannot be told apart by that text, so either
    counts as correct (emoji drawn by two vendors, look-alike rendered scenes).
    """
    if caption_texts is None:
        return [[i] for i in caption_to_image]
    owners: dict[str, set[int]] = {}
    for text, image in zip(caption_texts, caption_to_image, strict=True):
        owners.setdefault(_normalise(text), set()).add(image)
    return [sorted(owners[_normalise(t)]) for t in caption_texts]


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def retrieval_metrics(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    caption_to_image: Sequence[int],
    caption_texts: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """{"t2i": {...}, "i2t": {...}} for normalised image_emb (I, dim) and text_emb (T, dim)."""
    scores = text_emb @ image_emb.T  # (T, I)
    t2i = best_target_ranks(scores, text_to_image_targets(caption_to_image, caption_texts))
    captions_of: list[list[int]] = [[] for _ in range(len(image_emb))]
    for caption, image in enumerate(caption_to_image):
        captions_of[image].append(caption)
    queried = [i for i, caps in enumerate(captions_of) if caps]
    i2t = best_target_ranks(scores.T[queried], [captions_of[i] for i in queried])
    return {"t2i": summarize_ranks(t2i), "i2t": summarize_ranks(i2t)}


def rsum(metrics: dict[str, dict[str, float]]) -> float:
    """Sum of R@1/5/10 in both directions: the usual single number for picking a checkpoint."""
    return sum(metrics[d][f"R@{k}"] for d in ("t2i", "i2t") for k in RECALL_KS)


def embed_corpus(encoder: Encoder, corpus: Corpus, *, batch_size: int = 64) -> CorpusEmbeddings:
    """Encode every image once and every caption; unreadable images drop out with their captions."""
    rs = retrieval_set(corpus)
    kept: dict[Path, int] = {}
    vectors: list[np.ndarray] = []
    skipped: list[ImageLoadError] = []
    for paths, decoded in _decoded_batches(list(rs.images), encoder, batch_size=batch_size):
        pixels = []
        for path, item in zip(paths, decoded, strict=True):
            if isinstance(item, ImageLoadError):
                skipped.append(item)
                continue
            kept[path] = len(kept)
            pixels.append(item)
        if pixels:
            vectors.append(encoder.encode_pixels(torch.stack(pixels)))  # (batch, dim)
    position = {i: kept[path] for i, path in enumerate(rs.images) if path in kept}
    pairs = [p for p, img in zip(corpus.pairs, rs.caption_to_image, strict=True) if img in position]
    owners = [position[img] for img in rs.caption_to_image if img in position]
    image_emb = np.concatenate(vectors) if vectors else np.zeros((0, encoder.info.dim), np.float32)
    text_emb = encoder.encode_texts([p.caption for p in pairs])
    return CorpusEmbeddings(image_emb, text_emb, owners, pairs, skipped)


def _decoded_batches(
    paths: list[Path], encoder: Encoder, *, batch_size: int
) -> Iterator[tuple[list[Path], list[torch.Tensor | ImageLoadError]]]:
    """Decode and preprocess in threads, one batch ahead of the encoder, in input order."""

    def load(path: Path) -> torch.Tensor | ImageLoadError:
        try:
            image = open_image(path, target_size=encoder.preprocess_config.image_size)
            return encoder.preprocess(image)  # (3, S, S)
        except ImageLoadError as exc:
            return exc

    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(thread_name_prefix="eval-decode") as pool:
        ahead = [pool.map(load, chunk) for chunk in chunks[:DECODE_AHEAD]]
        for i, chunk in enumerate(chunks):
            if i + DECODE_AHEAD < len(chunks):
                ahead.append(pool.map(load, chunks[i + DECODE_AHEAD]))
            yield chunk, list(ahead[i])


def corpus_metrics(encoder: Encoder, corpus: Corpus, *, batch_size: int = 64) -> dict[str, dict[str, float]]:
    """{"t2i": ..., "i2t": ...} over every caption of every readable image (validation's number)."""
    emb = embed_corpus(encoder, corpus, batch_size=batch_size)
    if not emb.pairs:
        raise CorpusError(f"{corpus.source}: no readable images to evaluate on")
    return retrieval_metrics(
        emb.image_emb, emb.text_emb, emb.caption_to_image, [p.caption for p in emb.pairs]
    )


def evaluate_with_shift(
    encoder: Encoder,
    corpus: Corpus,
    *,
    split: str | None,
    batch_size: int = 64,
    fusion: FusionEvalSettings | None = None,
) -> dict[str, Any]:
    """evaluate_corpus on `split` (None: every split but the shift one), plus the shift split.

    A corpus may hold a "shift" split drawn by another renderer, never used for training or
    model selection; it is reported under "shift" next to the split asked for. With `fusion`,
    each gets a "fusion" block (`evaluate_corpus`).
    """
    has_shift = SHIFT_SPLIT in corpus.splits()
    if split is not None:
        main = corpus.select(split)
    elif has_shift:
        main = Corpus(tuple(p for p in corpus.pairs if p.split != SHIFT_SPLIT), corpus.source, corpus.format)
    else:
        main = corpus
    result = evaluate_corpus(encoder, main, batch_size=batch_size, fusion=fusion)
    if has_shift and split != SHIFT_SPLIT:
        result[SHIFT_SPLIT] = evaluate_corpus(
            encoder, corpus.select(SHIFT_SPLIT), batch_size=batch_size, fusion=fusion
        )
    return result


def evaluate_corpus(
    encoder: Encoder, corpus: Corpus, *, batch_size: int = 64, fusion: FusionEvalSettings | None = None
) -> dict[str, Any]:
    """Recall@1/5/10 and median rank both ways; a "breakdown" for corpora that tag their scenes;
    with `fusion`, a "fusion" block: text->image recall with own text on some images
    (indexer.training.fusion_protocol's `fusion_metrics`, on the same image vectors)."""
    emb = embed_corpus(encoder, corpus, batch_size=batch_size)
    if not emb.pairs:
        raise CorpusError(f"{corpus.source}: no readable images to evaluate on")
    result: dict[str, Any] = retrieval_metrics(
        emb.image_emb, emb.text_emb, emb.caption_to_image, [p.caption for p in emb.pairs]
    )
    breakdown = _scene_breakdown(emb)
    if breakdown:
        result["breakdown"] = breakdown
    result["counts"] = {
        "images": len(emb.image_emb),
        "captions": len(emb.pairs),
        "skipped": len(emb.skipped),
    }
    if fusion is not None:
        result["fusion"] = fusion_metrics(encode_split(encoder, emb, seed=fusion.seed), fusion)
    return result


def _scene_breakdown(emb: CorpusEmbeddings) -> dict[str, Any]:
    """Sample-corpus protocol: one canonical caption per scene, galleries per scene kind.

    Single- and multi-object scenes are scored separately; within each, queries about attribute
    combinations never seen in training ("unseen") are reported apart from the seen ones.
    """
    canonical = [i for i, p in enumerate(emb.pairs) if p.meta.get("canonical")]
    if not canonical:
        return {}
    out: dict[str, Any] = {}
    for kind in sorted({str(emb.pairs[i].meta.get("kind", "all")) for i in canonical}):
        rows = [i for i in canonical if str(emb.pairs[i].meta.get("kind", "all")) == kind]
        images = [emb.caption_to_image[i] for i in rows]
        text_emb = emb.text_emb[rows]
        image_emb = emb.image_emb[images]
        owners = list(range(len(rows)))  # one canonical caption per scene: row j owns image j
        scores = text_emb @ image_emb.T  # (captions, images)
        targets = text_to_image_targets(owners, [emb.pairs[i].caption for i in rows])
        t2i = best_target_ranks(scores, targets)
        i2t = best_target_ranks(scores.T, [[j] for j in owners])  # identical texts tie: counted
        unseen = np.array([bool(emb.pairs[i].meta.get("unseen")) for i in rows])
        out[kind] = _subset_summary(t2i, i2t, np.ones_like(unseen))
        for name, mask in (("seen", ~unseen), ("unseen", unseen)):
            if mask.any():
                out[f"{kind}_{name}"] = _subset_summary(t2i, i2t, mask)
        paraphrased = _paraphrase_ranks(emb, images, image_emb)
        if len(paraphrased):
            out[f"{kind}_new_phrasing"] = {"t2i": summarize_ranks(paraphrased), "n": len(paraphrased)}
    return out


def _paraphrase_ranks(emb: CorpusEmbeddings, images: list[int], image_emb: np.ndarray) -> np.ndarray:
    """Text->image ranks of test-only phrasings that still state every attribute of the scene.

    Partial paraphrases ("a red star") match many scenes by design and are left out.
    """
    column = {image: j for j, image in enumerate(images)}
    rows = [
        i
        for i, p in enumerate(emb.pairs)
        if p.meta.get("template") == "test"
        and not p.meta.get("canonical")
        and emb.caption_to_image[i] in column
        and _states_everything(p.caption, p.meta.get("objects") or [])
    ]
    if not rows:
        return np.zeros(0, dtype=np.int64)
    scores = emb.text_emb[rows] @ image_emb.T  # (captions, images)
    # Scenes with the same canonical caption are the same facts: either is a correct answer.
    canonical_of = {
        emb.caption_to_image[i]: _normalise(p.caption)
        for i, p in enumerate(emb.pairs)
        if p.meta.get("canonical") and emb.caption_to_image[i] in column
    }
    same_facts: dict[str, list[int]] = {}
    for image, text in canonical_of.items():
        same_facts.setdefault(text, []).append(column[image])
    targets = [
        same_facts.get(canonical_of.get(emb.caption_to_image[i], ""), [column[emb.caption_to_image[i]]])
        for i in rows
    ]
    return best_target_ranks(scores, targets)


def _states_everything(caption: str, objects: Sequence[Any]) -> bool:
    words = f" {caption.lower()} "
    return bool(objects) and all(
        isinstance(o, dict) and all(f" {str(o.get(a, '')).lower()}" in words for a in ATTRIBUTES)
        for o in objects
    )


def _subset_summary(t2i: np.ndarray, i2t: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    return {
        "t2i": summarize_ranks(t2i[mask]),
        "i2t": summarize_ranks(i2t[mask]),
        "n": int(mask.sum()),
    }
