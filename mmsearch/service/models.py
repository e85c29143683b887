"""The HTTP service's request and response bodies: what `/openapi.json` describes."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from mmsearch.engine import MAX_K, MAX_QUERY_CHARS

MAX_INDEX_PATHS = 64
MAX_PATH_CHARS = 4096
ABSOLUTE_PATH = r"^/[^\x00]*$"  # POST /index paths: absolute, no NUL
DEFAULT_K = 10
# Sentences per POST /embed: one batch through the text tower; more is a bulk job, not a query.
MAX_EMBED_TEXTS = 64
# A bound for the schema of POST /search/vector; /openapi.json states the served index's own
# dimension exactly (routes_search.document_dimension).
MAX_VECTOR_DIM = 8192
NON_BLANK = r"\S"  # documented for clients and fuzzers; a blank sentence is refused with a message


class ErrorResponse(BaseModel):
    """Every error: a message meant for a person."""

    detail: str


class HealthResponse(BaseModel):
    """Liveness; answered without a token so load balancers and the page can ask."""

    status: Literal["ok"] = "ok"
    version: str
    auth_required: bool


class QueryInfo(BaseModel):
    """What was searched for: a sentence, an indexed image id, or an uploaded file's name."""

    text: str | None = None
    image_id: int | None = None
    upload: str | None = None


class ImageResult(BaseModel):
    """One image hit; fetch its pixels from image_url or thumbnail_url."""

    rank: int
    score: float
    id: int
    path: str
    name: str
    image_url: str
    thumbnail_url: str


class TextResult(BaseModel):
    """One text hit (an indexed caption)."""

    rank: int
    score: float
    id: int
    text: str


class ImageSearchResponse(BaseModel):
    """Images, best first."""

    kind: Literal["image"] = "image"
    query: QueryInfo
    k: int
    took_ms: float
    results: list[ImageResult]


class TextSearchResponse(BaseModel):
    """Texts, best first."""

    kind: Literal["text"] = "text"
    query: QueryInfo
    k: int
    took_ms: float
    results: list[TextResult]


class ImageInfo(BaseModel):
    """An indexed image's catalogue record."""

    id: int
    path: str
    name: str
    width: int
    height: int
    size: int
    image_url: str
    thumbnail_url: str


class IndexRequest(BaseModel):
    """Folders to add or refresh; each must lie under one of the server's --root folders."""

    model_config = ConfigDict(extra="forbid")
    # The pattern is documented for clients and fuzzers; _under_roots enforces it with a
    # clearer message than a regular expression ("paths must be absolute").
    paths: list[
        Annotated[
            str,
            Field(min_length=1, max_length=MAX_PATH_CHARS, json_schema_extra={"pattern": ABSOLUTE_PATH}),
        ]
    ] = Field(min_length=1, max_length=MAX_INDEX_PATHS)


class SkippedFile(BaseModel):
    """A file the index run could not use, and why."""

    path: str
    reason: str


class IndexResponse(BaseModel):
    """What POST /index did (same fields as `mmsearch index --json`)."""

    new: int
    changed: int
    moved: int
    removed: int
    unchanged: int
    indexed: int
    repaired: int
    skipped_count: int
    skipped: list[SkippedFile]
    elapsed_s: float
    images_per_s: float


class DeleteResponse(BaseModel):
    """The image that was removed from the index (the file itself is untouched)."""

    id: int
    path: str


class EmbedTextsRequest(BaseModel):
    """Sentences to turn into query vectors (POST /embed as JSON)."""

    model_config = ConfigDict(extra="forbid")
    texts: list[
        Annotated[
            str,
            Field(min_length=1, max_length=MAX_QUERY_CHARS, json_schema_extra={"pattern": NON_BLANK}),
        ]
    ] = Field(min_length=1, max_length=MAX_EMBED_TEXTS)


class EmbedResponse(BaseModel):
    """Query vectors as the served index's model makes them: L2-normalised, one per input."""

    model: str = Field(description="The model id the index records (vectors are only comparable within it).")
    vectors: list[list[float]]


class VectorSearchRequest(BaseModel):
    """A search by a ready query vector, e.g. from POST /embed or the caller's own encoder."""

    model_config = ConfigDict(extra="forbid")
    vector: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(
        min_length=1,
        max_length=MAX_VECTOR_DIM,
        description="As many finite numbers as the index's model makes; renormalised if not of unit length.",
    )
    k: int = Field(DEFAULT_K, ge=1, le=MAX_K, description="Number of results.")
    to: Literal["image", "text"] = Field("image", description="Find indexed images, or indexed texts.")
    modality: Literal["text", "image"] = Field(
        "text", description="What the vector encodes: picks the fusion of own texts and the relevance scale."
    )
    fusion: Literal["linear", "learned"] | None = Field(
        None,
        description="How an image's own text joins its pixels: linear, or learned (the model's "
        "fusion head); default: the index's recorded method.",
    )


class BatchingResponse(BaseModel):
    """How sentence queries have been batched since the server started (GET /stats/batching)."""

    max_batch: int = Field(description="Most queries answered by one forward pass (--max-batch).")
    max_wait_ms: float = Field(description="Longest a batch's first query waits for more (--batch-wait-ms).")
    batches: int
    queries: int
    largest_batch: int
    mean_batch: float
