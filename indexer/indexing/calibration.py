"""Per-index score calibration: how high do scores of pairs that do NOT belong together go?

At index time random (caption, image) pairs are scored with the index's own model, and the
distribution (mean, std, p50/p90/p99) is stored in the catalogue's index_info table under
`calibration`. A query hit scoring above the p99 of random pairs is "likely relevant": a random
caption reaches that score against a random image only 1% of the time. The captions are the
index's own texts (add-texts captions and images' own texts) when there are enough, else a
built-in set of generic probe sentences. Indexes without the row simply have no calibration.

Own-text similarities (text vs text) run higher than text vs image in a contrastive space (the
"modality gap"), so hybrid scores shift them by the difference of the two random-pair means
first (indexer.indexing.fusion): an unrelated own text then scores like an unrelated image. The
fused scores of random (query, document with own text) pairs are recorded too, for sentence and
image queries, so a fused hit is judged against fused scores; when the model has a learned
fusion head, the scores it gives random (sentence, document with own text) pairs as well.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.orm import Session

from indexer.indexing.fusion import FUSION_ALIGN, FUSION_RULE, Channels, QueryModality, align_text_scores, mix
from indexer.indexing.score_stats import ScoreStats
from indexer.store import catalog
from indexer.store.vectors import VectorStore

if TYPE_CHECKING:
    from indexer.models.fusion_head import FusionHead

CALIBRATION_KEY = "calibration"
CALIBRATION_FORMAT = 1
# Random pairs scored per distribution: p99 from 20k samples is within ~0.005 of the truth.
CALIBRATION_PAIRS = 20_000
# Vectors read back from FAISS per modality; more only slows indexing without moving p99.
MAX_SAMPLED_VECTORS = 2000
# Fewer own captions than this make a thin null distribution: the probe sentences join in.
MIN_PROBE_TEXTS = 32
# Recalibrate when the number of images or own texts moved by more than this fraction.
RECALIBRATE_FRACTION = 0.2
MIN_CALIBRATION_IMAGES = 2
# Fewer images with own text than this make a noisy fused distribution: documents are then
# simulated by pairing random indexed images with random captions.
MIN_FUSION_DOCS = 20
# Text weights at which the fused-score distribution is recorded (interpolated in between).
FUSION_GRID: tuple[float, ...] = tuple(i / 10 for i in range(11))
CALIBRATION_SEED = 0
NO_OWNER = -1

# Generic captions for indexes that bring none of their own: everyday photos and simple scenes.
PROBE_SENTENCES: tuple[str, ...] = (
    "a dog running on the grass",
    "a cat sleeping on a sofa",
    "a plate of pasta on a wooden table",
    "a city street at night with cars",
    "a mountain lake under a blue sky",
    "two people walking on a beach at sunset",
    "a child playing with a red ball",
    "a bowl of fruit on the kitchen counter",
    "a bicycle leaning against a brick wall",
    "a snowy forest in winter",
    "a birthday cake with candles",
    "a screenshot of a spreadsheet",
    "a black and white portrait of an old man",
    "a bird sitting on a branch",
    "a crowded train station",
    "a vase of yellow flowers",
    "a car parked in front of a house",
    "a close-up of a green leaf",
    "a boat on a calm sea",
    "a group photo at a wedding",
    "a laptop and a cup of coffee on a desk",
    "a bridge over a river",
    "a horse in a field",
    "fireworks over a city",
    "a large red circle in the center",
    "a small blue square in the top left",
    "a green triangle at the bottom",
    "a yellow star on the right",
    "two white hexagons",
    "a purple circle above an orange square",
    "a black cross in the bottom right",
    "an empty grey background",
    "a handwritten note",
    "a map of a small town",
    "a plate of sushi",
    "a football match in a stadium",
    "a baby smiling",
    "a tall building made of glass",
    "rain on a window",
    "a desert with sand dunes",
)


@dataclass(frozen=True)
class Calibration:
    """Random-pair score distributions of one index."""

    text_image: ScoreStats  # (caption, image): text->image and image->text queries
    image_image: ScoreStats | None  # (image, other image): image->image queries
    text_doc: ScoreStats | None  # (caption, another image's own text); None without own texts
    fused: tuple[ScoreStats, ...]  # fused scores of (caption, document with own text), FUSION_GRID
    images: int  # images in the index when computed
    doc_texts: int  # own texts in the index when computed
    probes: str  # which captions were used
    created_at: float
    fusion_align: str = FUSION_ALIGN  # the alignment the fused distributions were computed with
    fusion_rule: str = FUSION_RULE  # and the rule
    # Fused scores of (image, another document with own text), FUSION_GRID; empty in
    # calibrations from before image queries were fused (recomputed on the next index run).
    image_fused: tuple[ScoreStats, ...] = ()
    # Scores the model's learned fusion head gives random (caption, document with own text)
    # pairs; None when the model had no head when this was computed.
    learned_fused: ScoreStats | None = None

    def channels(self, modality: QueryModality) -> Channels | None:
        """What fusion aligns with for a kind of query: random (query, image) and (query, own
        text) pairs; None when this index has no such pairs recorded."""
        if modality == "text":
            return None if self.text_doc is None else Channels(image=self.text_image, text=self.text_doc)
        return None if self.image_image is None else Channels(image=self.image_image, text=self.text_image)

    def fused_null(self, modality: QueryModality, text_weight: float) -> ScoreStats | None:
        """The null distribution of fused scores at a text weight (interpolated on FUSION_GRID),
        or None when not recorded for this kind of query."""
        grid = self.fused if modality == "text" else self.image_fused
        if not grid:
            return None
        position = min(max(text_weight, 0.0), 1.0) * (len(FUSION_GRID) - 1)
        low = int(np.floor(position))
        high = min(low + 1, len(FUSION_GRID) - 1)
        return ScoreStats.blend(grid[low], grid[high], position - low)

    def to_json(self) -> str:
        """Serialised form stored in index_info."""
        return json.dumps({"format": CALIBRATION_FORMAT, **asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> Calibration | None:
        """Parse a stored calibration; None for an unknown format (recomputed on the next run)."""
        data = json.loads(text)
        if data.pop("format", None) != CALIBRATION_FORMAT:
            return None
        if (data.get("fusion_align"), data.get("fusion_rule")) != (FUSION_ALIGN, FUSION_RULE):
            return None  # fused distributions of another fusion: recomputed on the next run
        stats = {
            k: ScoreStats(**data[k]) if data.get(k) else None
            for k in ("image_image", "text_doc", "learned_fused")
        }
        return cls(
            text_image=ScoreStats(**data["text_image"]),
            fused=tuple(ScoreStats(**f) for f in data["fused"]),
            image_fused=tuple(ScoreStats(**f) for f in data.get("image_fused", ())),
            images=int(data["images"]),
            doc_texts=int(data["doc_texts"]),
            probes=str(data["probes"]),
            created_at=float(data["created_at"]),
            fusion_align=str(data["fusion_align"]),
            fusion_rule=str(data["fusion_rule"]),
            **stats,
        )


@dataclass(frozen=True)
class CalibrationSample:
    """Vectors to draw random pairs from; all (n, dim) float32, L2-normalised."""

    image_ids: np.ndarray  # (n,) int64
    images: np.ndarray  # (n, dim)
    texts: np.ndarray  # (m, dim) probe captions
    text_owners: np.ndarray  # (m,) int64: the image a caption belongs to, or a unique key < 0
    doc_ids: np.ndarray  # (p,) int64 documents with own text
    doc_images: np.ndarray  # (p, dim) their image vectors
    doc_texts: np.ndarray  # (p, dim) their own-text vectors
    probes: str
    total_images: int
    total_doc_texts: int


def needs_calibration(
    current: Calibration | None, *, images: int, doc_texts: int, learned: bool = False
) -> bool:
    """True when there is none yet, or the image or own-text count moved by > RECALIBRATE_FRACTION,
    or (learned: the model has a fusion head) the head's fused scores are not recorded yet."""
    if images < MIN_CALIBRATION_IMAGES:
        return False
    if current is None:
        return True
    if current.fused and not current.image_fused:
        return True  # recorded before image queries were fused: no null for their fused scores
    if learned and current.fused and current.learned_fused is None:
        return True  # the fusion head came after the calibration
    return _moved(current.images, images) or _moved(current.doc_texts, doc_texts)


def _moved(before: int, now: int) -> bool:
    return abs(now - before) > RECALIBRATE_FRACTION * max(before, 1)


def compute_calibration(sample: CalibrationSample, *, head: FusionHead | None = None) -> Calibration:
    """Score random non-matching pairs and summarise each distribution (with a learned fusion
    head, also the scores it fuses for them)."""
    rng = np.random.default_rng(CALIBRATION_SEED)
    t, i = _pairs(rng, sample.text_owners, sample.image_ids)
    text_image = ScoreStats.of(_rowdot(sample.texts[t], sample.images[i]))
    a, b = _pairs(rng, sample.image_ids, sample.image_ids)
    image_image = ScoreStats.of(_rowdot(sample.images[a], sample.images[b])) if len(a) else None
    text_doc: ScoreStats | None = None
    fused: tuple[ScoreStats, ...] = ()
    learned_fused: ScoreStats | None = None
    doc_ids, doc_images, doc_texts = _documents(rng, sample)
    t, d = _pairs(rng, sample.text_owners, doc_ids)
    if len(t):
        text_scores = _rowdot(sample.texts[t], doc_texts[d])
        text_doc = ScoreStats.of(text_scores)
        channels = Channels(image=text_image, text=text_doc)
        image_scores = _rowdot(sample.texts[t], doc_images[d])
        fused = _fused_grid(image_scores, text_scores, channels)
        if head is not None:
            learned_fused = ScoreStats.of(head.fuse(sample.texts[t], image_scores, text_scores))
    image_fused: tuple[ScoreStats, ...] = ()
    a, d = _pairs(rng, sample.image_ids, doc_ids)
    if len(a) and image_image is not None:
        channels = Channels(image=image_image, text=text_image)
        image_fused = _fused_grid(
            _rowdot(sample.images[a], doc_images[d]), _rowdot(sample.images[a], doc_texts[d]), channels
        )
    return Calibration(
        text_image,
        image_image,
        text_doc,
        fused,
        images=sample.total_images,
        doc_texts=sample.total_doc_texts,
        probes=sample.probes,
        created_at=time.time(),
        image_fused=image_fused,
        learned_fused=learned_fused,
    )


def _fused_grid(
    image_scores: np.ndarray, text_scores: np.ndarray, channels: Channels
) -> tuple[ScoreStats, ...]:
    """Summaries of fused scores (n,) of random pairs at each weight of FUSION_GRID."""
    aligned = align_text_scores(text_scores, channels, FUSION_ALIGN)
    return tuple(ScoreStats.of(mix(image_scores, aligned, w, FUSION_RULE)) for w in FUSION_GRID)


def _documents(
    rng: np.random.Generator, sample: CalibrationSample
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, image vectors, own-text vectors) of documents with text: the index's own when it
    has MIN_FUSION_DOCS, else random images paired with random captions (keyed by the caption's
    owner, so a caption never meets itself)."""
    if len(sample.doc_ids) >= MIN_FUSION_DOCS:
        return sample.doc_ids, sample.doc_images, sample.doc_texts
    count = min(len(sample.texts), MAX_SAMPLED_VECTORS)
    texts = rng.choice(len(sample.texts), count, replace=False)
    images = rng.integers(len(sample.images), size=count)
    return sample.text_owners[texts], sample.images[images], sample.texts[texts]


def _pairs(
    rng: np.random.Generator, left_ids: np.ndarray, right_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """CALIBRATION_PAIRS random index pairs whose ids differ (a caption never meets its image)."""
    if len(left_ids) == 0 or len(right_ids) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    left = rng.integers(len(left_ids), size=CALIBRATION_PAIRS)
    right = rng.integers(len(right_ids), size=CALIBRATION_PAIRS)
    keep = left_ids[left] != right_ids[right]
    return left[keep], right[keep]


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise inner products of (n, dim) and (n, dim) -> (n,)."""
    return np.einsum("nd,nd->n", a, b)


def sample_index(
    images: VectorStore,
    texts: VectorStore,
    doc_texts: VectorStore,
    *,
    text_owners: dict[int, int],
    encode_probes: Callable[[Sequence[str]], np.ndarray],
) -> CalibrationSample:
    """Read back a bounded random sample of an index's vectors (built-in probes if few captions)."""
    rng = np.random.default_rng(CALIBRATION_SEED)
    image_ids = _sample_ids(rng, images)
    doc_ids = _sample_ids(rng, doc_texts)
    doc_ids = doc_ids[np.isin(doc_ids, images.ids())]  # reconcile guarantees it; be safe anyway
    text_ids = _sample_ids(rng, texts)
    captions = _vectors(texts, text_ids)
    owners = [text_owners.get(int(i), NO_OWNER) for i in text_ids]
    captions = np.concatenate([captions, _vectors(doc_texts, doc_ids)])
    owners += [int(i) for i in doc_ids]
    probes = "index captions"
    if len(owners) < MIN_PROBE_TEXTS:
        captions = np.concatenate([captions, encode_probes(PROBE_SENTENCES)])
        owners += [NO_OWNER] * len(PROBE_SENTENCES)
        probes = "index captions + built-in probes" if len(text_ids) + len(doc_ids) else "built-in probes"
    # Captions of no image get distinct negative keys: never equal to an image id or each other.
    keys = [o if o != NO_OWNER else -2 - n for n, o in enumerate(owners)]
    return CalibrationSample(
        image_ids=image_ids,
        images=_vectors(images, image_ids),
        texts=captions,
        text_owners=np.asarray(keys, dtype=np.int64),
        doc_ids=doc_ids,
        doc_images=_vectors(images, doc_ids),
        doc_texts=_vectors(doc_texts, doc_ids),
        probes=probes,
        total_images=len(images),
        total_doc_texts=len(doc_texts),
    )


def _sample_ids(rng: np.random.Generator, store: VectorStore) -> np.ndarray:
    ids = store.ids()
    if len(ids) > MAX_SAMPLED_VECTORS:
        ids = rng.choice(ids, MAX_SAMPLED_VECTORS, replace=False)
    return np.sort(ids)


def _vectors(store: VectorStore, ids: np.ndarray) -> np.ndarray:
    """(len(ids), dim) float32; every id must be in the store."""
    if len(ids) == 0:
        return np.zeros((0, store.dim), np.float32)
    return np.stack([store.reconstruct(int(i)) for i in ids]).astype(np.float32)


def read_calibration(session: Session) -> Calibration | None:
    """The stored calibration, or None (never computed, or written by another format)."""
    return parse_calibration(catalog.read_info_value(session, CALIBRATION_KEY))


def parse_calibration(text: str | None) -> Calibration | None:
    """The calibration in a stored row's text (None: no row); parsed once per distinct text,
    so a reader that reads the row on every query (mmsearch.engine) parses it once."""
    return _parsed_calibration(text) if text else None


@functools.lru_cache(maxsize=4)
def _parsed_calibration(text: str) -> Calibration | None:
    return Calibration.from_json(text)


def write_calibration(session: Session, calibration: Calibration) -> None:
    """Store (not commit) the calibration in index_info."""
    catalog.write_info(session, {CALIBRATION_KEY: calibration.to_json()})
