"""Where an index keeps its vectors and its catalogue, chosen once and recorded in the index folder.

An index folder always exists. By default it holds everything (FAISS files + SQLite). With
`--vectors` / `--catalog` it holds `backends.json`, which names the vector store and the
catalogue; every later command reads it, so only `--db DIR` is needed. No secret is ever written
there: the catalogue password comes from $MMSEARCH_CATALOG_PASSWORD (or libpq's $PGPASSWORD),
the Milvus token from $MILVUS_TOKEN.

    vectors  "faiss"                      FAISS files in the index folder (default)
             "milvus:///abs/path/vec.db"  Milvus Lite, embedded (one process at a time)
             "milvus://HOST:PORT", "http(s)://HOST:PORT"   a Milvus server or cluster
    catalog  "sqlite"                     catalog.sqlite3 in the index folder (default)
             any SQLAlchemy URL           e.g. postgresql+psycopg://USER@HOST:PORT/DB

A vector backend is a small protocol (`VectorBackend`): the writer and the engine ask it for a
store by name ("images", "texts", "doc_texts") and never branch on which backend it is.
"""

from __future__ import annotations

import importlib.util
import json
import os
import uuid
from collections.abc import Hashable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from indexer.errors import InvalidInputError

if TYPE_CHECKING:
    from indexer.store.vectors import VectorStore

BACKENDS_FILE = "backends.json"
DEFAULT_VECTORS = "faiss"
DEFAULT_CATALOG = "sqlite"
CATALOG_PASSWORD_ENV = "MMSEARCH_CATALOG_PASSWORD"
MILVUS_TOKEN_ENV = "MILVUS_TOKEN"
# Vector stores an index holds, by name; FAISS keeps each in NAME.faiss, Milvus in a collection.
STORE_NAMES = ("images", "texts", "doc_texts")
RAW_STORE = "images"  # the store whose full-precision vectors FAISS keeps beside it (index types)
MILVUS_SCHEMES = ("milvus", "http", "https")
# The pip extra that brings each optional backend's client, and the module that proves it is there.
EXTRAS = {
    "milvus": ("pymilvus", "mmsearch[milvus]"),
    "postgres": ("psycopg", "mmsearch[postgres]"),
    "ray": ("ray", "mmsearch[ray]"),
}


class BackendSpecError(InvalidInputError):
    """A --vectors or --catalog value that cannot be used (malformed, or not the index's own)."""


class MissingBackendExtraError(BackendSpecError):
    """The flag needs an optional extra that is not installed."""


def require_extra(name: str, flag: str) -> None:
    """Fail with one line naming the extra when its client library is missing."""
    module, extra = EXTRAS[name]
    if importlib.util.find_spec(module) is None:
        raise MissingBackendExtraError(f"{flag} needs the {extra} extra: pip install '{extra}'")


@dataclass(frozen=True)
class Backends:
    """Where one index keeps its vectors and its catalogue (as recorded: no secrets)."""

    vectors: str = DEFAULT_VECTORS
    catalog: str = DEFAULT_CATALOG
    # Milvus collections are PREFIX_images etc., so many indexes can share one Milvus server.
    collection_prefix: str = field(default="", compare=False)

    @classmethod
    def parse(cls, vectors: str | None, catalog: str | None) -> Backends:
        """Check --vectors and --catalog values (None: the default) and normalise them."""
        return cls(_parse_vectors(vectors or DEFAULT_VECTORS), _parse_catalog(catalog or DEFAULT_CATALOG))

    @property
    def is_default(self) -> bool:
        """FAISS files and SQLite, all in the index folder (no backends.json needed)."""
        return self == Backends()

    @property
    def uses_milvus(self) -> bool:
        """Vectors live in Milvus (Lite or a server)."""
        return self.vectors != DEFAULT_VECTORS

    @property
    def uses_sqlite_file(self) -> bool:
        """The catalogue is the SQLite file in the index folder."""
        return self.catalog == DEFAULT_CATALOG

    def describe(self) -> dict[str, str]:
        """Where vectors and metadata live, as `mmsearch info` shows it."""
        return {
            "vectors_at": self.vectors if self.uses_milvus else "faiss files in the index folder",
            "catalog_at": self.catalog if not self.uses_sqlite_file else "sqlite in the index folder",
        }


def _parse_vectors(spec: str) -> str:
    if spec == DEFAULT_VECTORS:
        return spec
    scheme, sep, rest = spec.partition("://")
    if not sep or scheme not in MILVUS_SCHEMES:
        raise BackendSpecError(
            f"--vectors {spec!r}: use faiss, milvus:///ABS/PATH.db (Milvus Lite), "
            "milvus://HOST:PORT or http(s)://HOST:PORT"
        )
    require_extra("milvus", "--vectors milvus")
    if scheme == "milvus" and rest.startswith("/"):
        if not rest.endswith(".db"):
            raise BackendSpecError(f"--vectors {spec!r}: a Milvus Lite file name ends in .db")
        return spec
    host, _, port = rest.rstrip("/").partition(":")
    if not host or not port.isdigit() or "@" in rest:
        raise BackendSpecError(
            f"--vectors {spec!r}: give HOST:PORT (the token comes from ${MILVUS_TOKEN_ENV}, never the URL)"
        )
    return spec.rstrip("/")


def _parse_catalog(spec: str) -> str:
    if spec == DEFAULT_CATALOG:
        return spec
    try:
        url = make_url(spec)
    except ArgumentError as exc:
        raise BackendSpecError(f"--catalog {spec!r}: not sqlite nor a SQLAlchemy URL ({exc})") from None
    if url.password is not None:
        raise BackendSpecError(
            f"--catalog: leave the password out of the URL (it would be recorded in the index "
            f"folder); set ${CATALOG_PASSWORD_ENV} or $PGPASSWORD instead"
        )
    if url.get_backend_name() == "postgresql":
        require_extra("postgres", "--catalog postgresql")
    return url.render_as_string(hide_password=False)


def catalog_url(backends: Backends) -> URL:
    """The catalogue's URL with the password from the environment (never from the index folder)."""
    url = make_url(backends.catalog)
    password = os.environ.get(CATALOG_PASSWORD_ENV)
    return url.set(password=password) if password else url


def is_postgres(backends: Backends) -> bool:
    """The catalogue is a PostgreSQL database (writer lock: an advisory lock)."""
    return not backends.uses_sqlite_file and make_url(backends.catalog).get_backend_name() == "postgresql"


def read_backends(index_dir: Path) -> Backends:
    """What the index folder records; no file means the default (FAISS + SQLite in the folder)."""
    path = index_dir / BACKENDS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return Backends()
    except (OSError, ValueError) as exc:
        raise BackendSpecError(f"{path}: unreadable ({exc}); restore it or rebuild the index") from exc
    return Backends(
        vectors=str(data["vectors"]),
        catalog=str(data["catalog"]),
        collection_prefix=str(data.get("collection_prefix", "mmsearch")),
    )


def record_backends(index_dir: Path, wanted: Backends, *, index_exists: bool) -> Backends:
    """Write the choice into a new index folder; an existing index keeps its own (asking for
    another is an error naming the recorded one). Returns the backends in force."""
    recorded = read_backends(index_dir)
    if (index_dir / BACKENDS_FILE).exists() or index_exists:
        if wanted != recorded and not wanted.is_default:
            raise BackendSpecError(
                f"{index_dir} keeps vectors in {recorded.vectors} and its catalogue in "
                f"{recorded.catalog}; these are chosen when an index is created: drop --vectors "
                "and --catalog, or pick a new --db"
            )
        return recorded
    if not wanted.is_default:
        wanted = replace(wanted, collection_prefix=f"mmsearch_{uuid.uuid4().hex[:12]}")
        index_dir.mkdir(parents=True, exist_ok=True)
        tmp = index_dir / f"{BACKENDS_FILE}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(asdict(wanted), indent=2) + "\n")
        os.replace(tmp, index_dir / BACKENDS_FILE)
    return wanted


class VectorBackend(Protocol):
    """Where an index's vector stores live; the writer and the engine only use this surface."""

    def load(self, name: str, dim: int) -> VectorStore:
        """The store `name` as committed (empty if none yet), ready to add/remove/search."""
        ...

    def save(self, name: str, store: VectorStore) -> None:
        """Make the store's changes durable before the catalogue commits."""
        ...

    def stamp(self, name: str) -> Hashable:
        """Changes when a reader's loaded copy of `name` is stale (a live store never is)."""
        ...

    def clear_interrupted(self) -> None:
        """Drop what an interrupted save left behind (only while holding the writer lock)."""
        ...

    def files(self) -> list[Path]:
        """Files in the index folder that hold vectors (for size on disk)."""
        ...

    def tune(self, store: VectorStore) -> str | None:
        """Adapt the store's index type to its size; returns the new description, or None."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...

    @property
    def searches_live(self) -> bool:
        """True when the store answers from the backend itself (no snapshot to reload)."""
        ...


class FaissFiles:
    """FAISS files in the index folder: NAME.faiss, replaced atomically on save."""

    searches_live = False

    def __init__(self, index_dir: Path) -> None:
        self.index_dir = index_dir
        # stamp() runs on every query: its paths as str, built once (a Path costs more than the stat).
        self._stamp_paths = {name: str(self.path(name)) for name in STORE_NAMES}

    def path(self, name: str) -> Path:
        """The file that holds store `name`."""
        return self.index_dir / f"{name}.faiss"

    def load(self, name: str, dim: int) -> VectorStore:
        """Read NAME.faiss (missing: empty)."""
        from indexer.store.vectors import VectorStore

        # The image store keeps its full-precision vectors beside it (NAME.vectors): any index
        # type is rebuilt from them, and the compressed ones re-rank from them.
        return VectorStore.load(self.path(name), dim=dim, with_raw=name == RAW_STORE)

    def save(self, name: str, store: VectorStore) -> None:
        """Atomic replace of NAME.faiss."""
        store.save(self.path(name))

    def stamp(self, name: str) -> Hashable:
        """(inode, mtime) of the file: a save replaces it."""
        try:
            st = os.stat(self._stamp_paths.get(name) or self.path(name))
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns)

    def clear_interrupted(self) -> None:
        """Remove temp files of killed saves."""
        from indexer.store.raw_vectors import raw_path_for
        from indexer.store.vectors import remove_temp_files

        for name in STORE_NAMES:
            remove_temp_files(self.path(name))
        remove_temp_files(raw_path_for(self.path(RAW_STORE)))

    def files(self) -> list[Path]:
        """The FAISS files (and the image store's full-precision vectors) that exist."""
        from indexer.store.raw_vectors import raw_path_for

        paths = [*(self.path(n) for n in STORE_NAMES), raw_path_for(self.path(RAW_STORE))]
        return [p for p in paths if p.exists()]

    def tune(self, store: VectorStore) -> str | None:
        """Nothing: FAISS index types are chosen by `mmsearch optimize`."""
        return None

    def close(self) -> None:
        """Nothing to release: files are read whole."""


def vector_backend(index_dir: Path, backends: Backends) -> VectorBackend:
    """The vector backend an index records (Milvus is imported only when used)."""
    if not backends.uses_milvus:
        return FaissFiles(index_dir)
    require_extra("milvus", "--vectors milvus")
    from indexer.store.milvus import MilvusVectors

    # MilvusStore has VectorStore's method surface (structurally, not by inheritance from FAISS).
    token = os.environ.get(MILVUS_TOKEN_ENV, "")
    milvus = MilvusVectors(backends.vectors, prefix=backends.collection_prefix, token=token)
    return cast("VectorBackend", milvus)
