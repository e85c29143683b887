"""Kept importable: the HTTP service's request and response bodies live in mmsearch.service.models."""

from mmsearch.service.models import (
    DeleteResponse,
    EmbedResponse,
    EmbedTextsRequest,
    ErrorResponse,
    HealthResponse,
    ImageInfo,
    ImageResult,
    ImageSearchResponse,
    IndexRequest,
    IndexResponse,
    QueryInfo,
    SkippedFile,
    TextResult,
    TextSearchResponse,
    VectorSearchRequest,
)

__all__ = [
    "DeleteResponse",
    "EmbedResponse",
    "EmbedTextsRequest",
    "ErrorResponse",
    "HealthResponse",
    "ImageInfo",
    "ImageResult",
    "ImageSearchResponse",
    "IndexRequest",
    "IndexResponse",
    "QueryInfo",
    "SkippedFile",
    "TextResult",
    "TextSearchResponse",
    "VectorSearchRequest",
]
