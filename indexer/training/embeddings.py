"""A corpus as vectors: what evaluation and the fusion protocol both read. Its own module so that
evaluate (which makes it) and fusion_protocol (which splits it) do not import each other."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from indexer.media.images import ImageLoadError
from indexer.training.corpora import CaptionPair


@dataclass(frozen=True)
class CorpusEmbeddings:
    """Embeddings of a corpus's readable images and of the captions that belong to them."""

    image_emb: np.ndarray  # (images, dim) float32
    text_emb: np.ndarray  # (captions, dim) float32
    caption_to_image: list[int]
    pairs: list[CaptionPair]  # the caption rows kept, parallel to text_emb
    skipped: list[ImageLoadError]
