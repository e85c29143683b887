"""Search routes: by sentence, by image (upload or id), texts by sentence, by a ready vector, and
POST /embed, which hands out the query vectors the index's model makes."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile as FormFile
from starlette.exceptions import HTTPException

from indexer.indexing.fusion import Fusion
from indexer.store.search_params import SearchParams
from mmsearch.engine import MAX_IMAGE_ID, MAX_K, ImageHit, TextHit
from mmsearch.query import Query, QueryTerm
from mmsearch.service.context import (
    EfSearchParam,
    FusionParam,
    KParam,
    NprobeParam,
    QParam,
    RerankParam,
    ServiceContext,
)
from mmsearch.service.errors import MALFORMED, NOT_FOUND, TOO_LARGE, UNSUPPORTED
from mmsearch.service.files import display
from mmsearch.service.models import (
    DEFAULT_K,
    EmbedResponse,
    EmbedTextsRequest,
    ImageResult,
    ImageSearchResponse,
    QueryInfo,
    TextResult,
    TextSearchResponse,
    VectorSearchRequest,
)

SearchResponse = ImageSearchResponse | TextSearchResponse
UPLOAD_FIELD = "file"
# POST /embed takes either body; FastAPI derives one body type per route, so the schema is given.
EMBED_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": EmbedTextsRequest.model_json_schema()},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    UPLOAD_FIELD: {"type": "string", "format": "binary", "description": "One image."}
                },
                "required": [UPLOAD_FIELD],
            }
        },
    },
}


def search_router(context: ServiceContext) -> APIRouter:
    """Every search endpoint and POST /embed over the context's Engine."""
    router = APIRouter()
    engine, settings = context.engine, context.settings

    @router.get("/search", response_model=ImageSearchResponse, tags=["search"])
    async def search(
        q: QParam,
        k: KParam = DEFAULT_K,
        fusion: FusionParam = None,
        nprobe: NprobeParam = None,
        ef_search: EfSearchParam = None,
        rerank: RerankParam = None,
    ) -> SearchResponse:
        """Text to image: the indexed images that best match a sentence (answered together
        with the sentence queries that arrive within a few milliseconds of it)."""
        started = time.perf_counter()
        knobs = SearchParams(nprobe=nprobe, ef_search=ef_search, rerank=rerank)
        query = Query((QueryTerm("text", q),), k=k, fusion=Fusion(method=fusion), search_params=knobs)
        results = await context.search(query)
        return _search_response(results.hits, to="image", query=QueryInfo(text=q), k=k, started=started)

    @router.post(
        "/search/image",
        response_model=SearchResponse,
        responses={**MALFORMED, **NOT_FOUND, **TOO_LARGE},
        tags=["search"],
    )
    def search_image(
        file: Annotated[UploadFile | None, File(description="An image to search by.")] = None,
        image_id: Annotated[
            int | None,
            Form(alias="id", ge=1, le=MAX_IMAGE_ID, description="Or: an indexed image's id."),
        ] = None,
        k: Annotated[int, Form(ge=1, le=MAX_K)] = DEFAULT_K,
        to: Annotated[
            Literal["image", "text"], Form(description="Find similar images, or describing texts.")
        ] = "image",
    ) -> SearchResponse:
        """Image to image or image to text, by an uploaded file or an indexed image's id."""
        started = time.perf_counter()
        if (file is None) == (image_id is None):
            raise HTTPException(422, "send either a file upload or an indexed image id, not both")
        if image_id is not None:
            with context.query_slots:
                hits = engine.search_by_id(image_id, k=k, to=to)
            query = QueryInfo(image_id=image_id)
            return _search_response(hits, to=to, query=query, k=k, started=started)
        assert file is not None
        name = context.upload_name(file.filename)
        data = file.file.read(settings.max_upload_bytes + 1)
        context.check_upload_size(data)
        image = context.decode_upload(data, name=name)
        with context.query_slots:
            hits = engine.search_image(image, k=k, to=to)
        return _search_response(hits, to=to, query=QueryInfo(upload=name), k=k, started=started)

    @router.get("/texts/search", response_model=TextSearchResponse, tags=["search"])
    async def search_texts(q: QParam, k: KParam = DEFAULT_K) -> SearchResponse:
        """Text to text: the indexed captions closest to a sentence (batched like /search)."""
        started = time.perf_counter()
        results = await context.search(Query((QueryTerm("text", q),), to="text", k=k))
        return _search_response(results.hits, to="text", query=QueryInfo(text=q), k=k, started=started)

    @router.post("/search/vector", response_model=SearchResponse, responses=MALFORMED, tags=["search"])
    def search_vector(request: VectorSearchRequest) -> SearchResponse:
        """A ready query vector to images or texts (the vector of POST /embed, or your own)."""
        started = time.perf_counter()
        with context.query_slots:
            results = engine.search_vector(
                request.vector,  # type: ignore[arg-type]  # the engine checks and converts it
                request.k,
                request.to,
                modality=request.modality,
                fusion=request.fusion,
            )
        return _search_response(results.hits, to=request.to, query=QueryInfo(), k=request.k, started=started)

    @router.post(
        "/embed",
        response_model=EmbedResponse,
        responses={**MALFORMED, **TOO_LARGE, **UNSUPPORTED},
        openapi_extra={"requestBody": EMBED_BODY},
        tags=["vectors"],
    )
    async def embed(request: Request) -> EmbedResponse:
        """Query vectors for sentences (JSON {"texts": [...]}) or for one image (a multipart
        upload in `file`), as the served index's model makes them: search with them at
        POST /search/vector."""
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type == "application/json":
            texts = _embed_request(await request.body()).texts
            vectors = await run_in_threadpool(_encode_texts, context, texts)
        elif media_type == "multipart/form-data":
            name, data = await _read_upload(request, context)
            vectors = await run_in_threadpool(_encode_upload, context, data, name)
        else:
            raise HTTPException(
                415, 'send JSON {"texts": [...]} or a multipart/form-data upload with a "file" field'
            )
        return EmbedResponse(model=engine.info.model_id, vectors=vectors.tolist())

    return router


def document_dimension(app: FastAPI, dim: int, *, fusion_methods: Sequence[str] | None = None) -> None:
    """State in /openapi.json how many numbers a vector has for the served index, and which
    fusion methods it can use (learned only with a fusion head): a request model cannot, both
    belong to the index and its model."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schemas = schema["components"]["schemas"]
            schemas["VectorSearchRequest"]["properties"]["vector"].update(minItems=dim, maxItems=dim)
            schemas["EmbedResponse"]["properties"]["vectors"]["items"].update(minItems=dim, maxItems=dim)
            if fusion_methods is not None:
                search = schema["paths"]["/search"]["get"]["parameters"]
                fusion = next(p["schema"] for p in search if p["name"] == "fusion")
                for option in (fusion, schemas["VectorSearchRequest"]["properties"]["fusion"]):
                    option["anyOf"][0]["enum"] = list(fusion_methods)
        return app.openapi_schema  # type: ignore[return-value]  # set by build()

    app.openapi = openapi  # type: ignore[method-assign]


def _embed_request(body: bytes) -> EmbedTextsRequest:
    """The JSON body of POST /embed, refused like any other invalid body (422, one line)."""
    try:
        return EmbedTextsRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


async def _read_upload(request: Request, context: ServiceContext) -> tuple[str, bytes]:
    """(file name, bytes) of the one file of a multipart POST /embed."""
    async with request.form(max_files=1) as form:
        upload = form.get(UPLOAD_FIELD)
        if not isinstance(upload, FormFile):
            raise HTTPException(422, f'send the image as a multipart file field named "{UPLOAD_FIELD}"')
        data = await upload.read(context.settings.max_upload_bytes + 1)
        name = context.upload_name(upload.filename)
    context.check_upload_size(data)
    return name, data


def _encode_texts(context: ServiceContext, texts: list[str]) -> np.ndarray:
    with context.query_slots:
        return context.engine.encode_query_texts(texts)  # (n, dim)


def _encode_upload(context: ServiceContext, data: bytes, name: str) -> np.ndarray:
    image = context.decode_upload(data, name=name)
    with context.query_slots:
        return context.engine.encode_query_image(image)[None, :]  # (1, dim)


def _image_result(hit: ImageHit) -> ImageResult:
    return ImageResult(
        rank=hit.rank,
        score=hit.score,
        id=hit.id,
        path=display(hit.path),
        name=display(os.path.basename(hit.path)),
        image_url=f"/images/{hit.id}",
        thumbnail_url=f"/images/{hit.id}/thumbnail",
    )


def _text_result(hit: TextHit) -> TextResult:
    return TextResult(rank=hit.rank, score=hit.score, id=hit.id, text=hit.text)


def _search_response(
    hits: list[ImageHit] | list[TextHit],
    *,
    to: Literal["image", "text"],
    query: QueryInfo,
    k: int,
    started: float,
) -> SearchResponse:
    took_ms = round((time.perf_counter() - started) * 1000, 2)
    if to == "text":
        texts = [_text_result(h) for h in hits if isinstance(h, TextHit)]
        return TextSearchResponse(query=query, k=k, took_ms=took_ms, results=texts)
    images = [_image_result(h) for h in hits if isinstance(h, ImageHit)]
    return ImageSearchResponse(query=query, k=k, took_ms=took_ms, results=images)
