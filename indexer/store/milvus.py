"""Vectors in Milvus: one collection per store (images, texts, doc_texts), ids = catalogue keys.

`MilvusStore` has the surface of the FAISS `VectorStore` (add / remove / search / ids / len /
reconstruct / save), so the writer, the engine, fusion and calibration use it unchanged. Writes
are upserts by id, hence idempotent: replaying a batch after a crash writes the same rows again.
A write is durable when Milvus acknowledges it, so `save` has nothing left to do and the
catalogue's commit (which always comes after) stays the point where a batch becomes visible.

Searches use Strong consistency: a reader sees every write acknowledged before its query, which
is what lets several service replicas answer one index without reloading anything.

Index type, like FAISS's: exact (FLAT) while a collection is small, HNSW once it is large
(`tune`, run at the end of each writer session); the choice is recorded in index_info.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from indexer.store.vectors import SearchParams, SearchResult, VectorStoreError

# An exhaustive scan answers in milliseconds below this many vectors; above it, HNSW.
EXACT_MAX_VECTORS = 100_000
HNSW_M = 16  # graph degree: Milvus's and FAISS's usual default for ~0.95 recall@10
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 64  # raised to k when k is larger (HNSW needs ef >= k)
# Rows per upsert / delete / id-iterator page: well under Milvus's 64 MB gRPC message cap.
WRITE_CHUNK = 2_000
READ_PAGE = 10_000
ID_FIELD = "id"
VECTOR_FIELD = "vector"
CONSISTENCY = "Strong"

# pymilvus logs every failed RPC with a traceback before raising; the raised error is reported.
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)


class MilvusUnavailableError(VectorStoreError):
    """Milvus cannot be reached or refused a request."""


def connect(uri: str, *, token: str = "") -> MilvusClient:
    """A client for milvus:///abs/file.db (Lite, in this process) or a server (with the token
    the caller read from the environment: it is never part of the URI or the index folder)."""
    scheme, _, rest = uri.partition("://")
    try:
        if scheme == "milvus" and rest.startswith("/"):
            return MilvusClient(uri=rest)  # Milvus Lite starts on the file, inside this process
        address = f"http://{rest}" if scheme == "milvus" else uri
        return MilvusClient(uri=address, token=token)
    except MilvusException as exc:
        raise MilvusUnavailableError(
            f"cannot open Milvus at {uri}: {exc.message} (Milvus Lite serves one process at a "
            "time; run a Milvus server for a writer beside readers)"
        ) from exc


class MilvusVectors:
    """The vector backend for one index on one Milvus; collections are PREFIX_NAME."""

    searches_live = True

    def __init__(self, uri: str, *, prefix: str, token: str = "") -> None:
        self.uri = uri
        self.prefix = prefix
        self._token = token
        self._client: MilvusClient | None = None

    @property
    def client(self) -> MilvusClient:
        """Connected on first use (a writer connects only once it holds the lock)."""
        if self._client is None:
            self._client = connect(self.uri, token=self._token)
        return self._client

    def collection(self, name: str) -> str:
        """The collection that holds store `name`."""
        return f"{self.prefix}_{name}"

    def load(self, name: str, dim: int) -> MilvusStore:  # type: ignore[override]
        """The collection as a store (created, exact, when missing)."""
        return MilvusStore(self.client, self.collection(name), dim)

    def save(self, name: str, store: Any) -> None:
        """Nothing to do: an acknowledged upsert or delete is already durable in Milvus."""

    def stamp(self, name: str) -> Hashable:
        """Constant: the store answers from Milvus itself, so it is never stale."""
        return self.uri

    def clear_interrupted(self) -> None:
        """Nothing: Milvus writes are not staged in files."""

    def files(self) -> list[Path]:
        """No vector files in the index folder (a Lite file lives where its URI says)."""
        return []

    def tune(self, store: Any) -> str | None:
        """HNSW once a collection outgrows an exact scan (see MilvusStore.tune)."""
        return store.tune() if isinstance(store, MilvusStore) else None

    def close(self) -> None:
        """Close the connection (Milvus Lite keeps serving the file until the process exits)."""
        if self._client is not None:
            self._client.close()
            self._client = None


class MilvusStore:
    """One Milvus collection behind the VectorStore surface: float32 vectors, inner product."""

    cpu = None  # never a GPU copy (see vectors.to_search_device)

    def __init__(self, client: MilvusClient, collection: str, dim: int) -> None:
        self.client = client
        self.collection = collection
        self._dim = dim
        self._guard(self._open)

    def _guard(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a client call; Milvus's errors become one-line store errors."""
        try:
            return call(*args, **kwargs)
        except MilvusException as exc:
            raise MilvusUnavailableError(f"Milvus collection {self.collection}: {exc.message}") from exc

    def _open(self) -> None:
        if not self.client.has_collection(self.collection):
            schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field(ID_FIELD, DataType.INT64, is_primary=True)
            schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=self._dim)
            self.client.create_collection(
                self.collection,
                schema=schema,
                index_params=self._index_params("FLAT"),
                consistency_level=CONSISTENCY,
            )
        else:
            stored = self._stored_dim()
            if stored != self._dim:
                raise VectorStoreError(
                    f"Milvus collection {self.collection} holds {stored}-dimensional vectors, the "
                    f"index expects {self._dim}"
                )
        self.client.load_collection(self.collection)  # a collection must be loaded to be searched

    def _stored_dim(self) -> int:
        fields = self.client.describe_collection(self.collection)["fields"]
        return int(next(f for f in fields if f["name"] == VECTOR_FIELD)["params"]["dim"])

    def _index_params(self, index_type: str) -> Any:
        params = self.client.prepare_index_params()
        build = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION} if index_type == "HNSW" else {}
        params.add_index(field_name=VECTOR_FIELD, index_type=index_type, metric_type="IP", params=build)
        return params

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    @property
    def is_ivf(self) -> bool:
        """Milvus's own index answers filtered searches; the FAISS IVF special case never applies."""
        return False

    @property
    def index_type(self) -> str:
        """FLAT or HNSW, as Milvus reports it."""
        described = self._guard(self.client.describe_index, self.collection, VECTOR_FIELD)
        return str(described.get("index_type", "FLAT"))

    def describe(self) -> str:
        """What `mmsearch info` shows."""
        kind = self.index_type
        if kind == "HNSW":
            return f"milvus HNSW M={HNSW_M} efConstruction={HNSW_EF_CONSTRUCTION} ef={HNSW_EF_SEARCH}"
        return f"milvus {kind} IP"

    def __len__(self) -> int:
        rows = self._guard(self.client.query, self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def ids(self) -> np.ndarray:
        """All stored ids, (n,) int64 (paged by primary key)."""
        chunks: list[np.ndarray] = []
        last = -(2**63)
        while True:
            rows = self._guard(
                self.client.query,
                self.collection,
                filter=f"{ID_FIELD} > {last}",
                output_fields=[ID_FIELD],
                limit=READ_PAGE,
            )
            if not rows:
                break
            page = np.sort(np.array([int(r[ID_FIELD]) for r in rows], dtype=np.int64))
            chunks.append(page)
            last = int(page[-1])
            if len(rows) < READ_PAGE:
                break
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int64)

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n,) int64, vectors (n, dim) float32) of everything stored."""
        ids = self.ids()
        return ids, self.vectors_of(ids)

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors (n, dim) float32 of ids (n,), in that order; KeyError for a missing one."""
        found: dict[int, list[float]] = {}
        for start in range(0, len(ids), READ_PAGE):
            chunk = [int(i) for i in ids[start : start + READ_PAGE]]
            rows = self._guard(self.client.get, self.collection, ids=chunk, output_fields=[VECTOR_FIELD])
            found.update({int(r[ID_FIELD]): r[VECTOR_FIELD] for r in rows})
        if len(ids) == 0:
            return np.zeros((0, self._dim), np.float32)
        return np.asarray([found[int(i)] for i in ids], dtype=np.float32)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Upsert vectors (n, dim) float32 under ids (n,) int64."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self._dim:
            raise VectorStoreError(f"expected vectors of shape (n, {self._dim}), got {vectors.shape}")
        ids = np.asarray(ids, dtype=np.int64)
        for start in range(0, len(ids), WRITE_CHUNK):
            rows = [
                {ID_FIELD: int(i), VECTOR_FIELD: v.tolist()}
                for i, v in zip(
                    ids[start : start + WRITE_CHUNK], vectors[start : start + WRITE_CHUNK], strict=True
                )
            ]
            self._guard(self.client.upsert, self.collection, rows)

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Delete vectors by id (absent ids are ignored); returns how many ids were asked for."""
        wanted = [int(i) for i in ids]
        for start in range(0, len(wanted), WRITE_CHUNK):
            self._guard(self.client.delete, self.collection, ids=wanted[start : start + WRITE_CHUNK])
        return len(wanted)

    def reconstruct(self, id_: int) -> np.ndarray:
        """The stored vector (dim,) of one id; KeyError if absent."""
        rows = self._guard(self.client.get, self.collection, ids=[int(id_)], output_fields=[VECTOR_FIELD])
        if not rows:
            raise KeyError(id_)
        return np.asarray(rows[0][VECTOR_FIELD], dtype=np.float32)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed_ids: np.ndarray | None = None,
        params: SearchParams | None = None,
    ) -> list[SearchResult]:
        """Top-k by inner product for queries (q, dim); allowed_ids (n,) int64 restricts the ids;
        params.ef_search widens Milvus's HNSW search (nprobe has no meaning here)."""
        empty = [SearchResult(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in queries]
        if k <= 0 or (allowed_ids is not None and len(allowed_ids) == 0):
            return empty
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        ef_search = params.ef_search if params is not None and params.ef_search else HNSW_EF_SEARCH
        allowed = (
            "" if allowed_ids is None else f"{ID_FIELD} in [{','.join(str(int(i)) for i in allowed_ids)}]"
        )
        hits = self._guard(
            self.client.search,
            self.collection,
            data=queries.tolist(),
            limit=k,
            filter=allowed,
            output_fields=[ID_FIELD],
            search_params={"metric_type": "IP", "params": {"ef": max(ef_search, k)}},
            consistency_level=CONSISTENCY,
        )
        return [
            SearchResult(
                np.array([h["distance"] for h in row], dtype=np.float32),
                np.array([int(h["id"]) for h in row], dtype=np.int64),
            )
            for row in hits
        ]

    def save(self, path: Path) -> None:
        """Nothing to write: Milvus made each acknowledged write durable."""

    def tune(self) -> str:
        """Switch to HNSW once the collection outgrows an exact scan; returns describe()."""
        if self.index_type == "FLAT" and len(self) > EXACT_MAX_VECTORS:
            self._guard(self.client.release_collection, self.collection)
            self._guard(self.client.drop_index, self.collection, VECTOR_FIELD)
            self._guard(self.client.create_index, self.collection, self._index_params("HNSW"))
            self._guard(self.client.load_collection, self.collection)
        return self.describe()
