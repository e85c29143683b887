"""The catalogue (SQLAlchemy 2.0): image and text metadata, ids, and what the index is.

The vector store holds the vectors; the primary keys here are their ids. By default the
catalogue is SQLite in the index folder, in WAL mode so readers keep answering while a writer
commits; an index created with `--catalog URL` keeps it in that database (tested: PostgreSQL),
one index per database.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    bindparam,
    cast,
    create_engine,
    delete,
    event,
    func,
    literal_column,
    null,
    select,
    union_all,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.sql.elements import BindParameter, Label
from sqlalchemy.sql.selectable import Select

from indexer.store.backends import catalog_url, read_backends

SCHEMA_VERSION = 1
CATALOG_FILE = "catalog.sqlite3"
# How long a reader waits for a writer's commit before SQLite reports "database is locked".
BUSY_TIMEOUT_MS = 30_000
# Ids bound in one IN (...): SQLite before 3.32 allowed at most 999 bound parameters.
IDS_PER_STATEMENT = 900


# 64-bit integers everywhere (mtime_ns does not fit 32 bits, PostgreSQL's INTEGER); on SQLite
# plain INTEGER, which is already 64-bit and is what makes an INTEGER PRIMARY KEY the rowid.
Int64 = BigInteger().with_variant(Integer(), "sqlite")

# Undecodable bytes in file names arrive from os.scandir as lone surrogates (U+DC80..U+DCFF),
# which SQLite's UTF-8 text cannot hold; they are stored shifted into a private-use block
# (U+10FE80..U+10FEFF) and shifted back on load, so prefix queries on folders still work.
_SURROGATE_BASE = 0xDC80
_PRIVATE_BASE = 0x10FE80
_ESCAPE_SPAN = 0x80


def encode_fs_path(path: str) -> str:
    """A file-system str (maybe with surrogate escapes) as valid UTF-8 text for SQLite."""
    if path.isascii():
        return path  # the common case, without a per-character pass
    return "".join(
        chr(_PRIVATE_BASE + ord(c) - _SURROGATE_BASE)
        if _SURROGATE_BASE <= ord(c) < _SURROGATE_BASE + _ESCAPE_SPAN
        else c
        for c in path
    )


def decode_fs_path(text: str) -> str:
    """Inverse of encode_fs_path: the str os.open() accepts for the original bytes."""
    if text.isascii():
        return text
    return "".join(
        chr(_SURROGATE_BASE + ord(c) - _PRIVATE_BASE)
        if _PRIVATE_BASE <= ord(c) < _PRIVATE_BASE + _ESCAPE_SPAN
        else c
        for c in text
    )


class FsPath(TypeDecorator[str]):
    """A path column that round-trips non-UTF-8 file names."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: object) -> str | None:
        """Python -> SQLite."""
        return None if value is None else encode_fs_path(value)

    def process_result_value(self, value: str | None, dialect: object) -> str | None:
        """SQLite -> Python."""
        return None if value is None else decode_fs_path(value)

    def process_literal_param(self, value: str | None, dialect: object) -> str:
        """Literal rendering (not used by mmsearch, required by the interface)."""
        return encode_fs_path(value or "")

    @property
    def python_type(self) -> type[str]:
        """Plain str."""
        return str


class Base(DeclarativeBase):
    """Declarative base for the catalogue tables."""


class InfoRow(Base):
    """Key/value facts about the index: schema version, model, dimension."""

    __tablename__ = "index_info"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class ImageRow(Base):
    """One indexed image file; `id` is its FAISS id."""

    __tablename__ = "images"
    # AUTOINCREMENT: SQLite would otherwise hand a deleted top id to the next insert in the same
    # transaction, and a crash after the FAISS write would pair the old row with the new vector.
    __table_args__ = ({"sqlite_autoincrement": True},)
    id: Mapped[int] = mapped_column(Int64, primary_key=True, autoincrement=True)
    path: Mapped[str] = mapped_column(FsPath, unique=True, index=True)
    root: Mapped[str] = mapped_column(FsPath, index=True)
    size: Mapped[int] = mapped_column(Int64)
    mtime_ns: Mapped[int] = mapped_column(Int64)
    content_hash: Mapped[str] = mapped_column(String, index=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    indexed_at: Mapped[float] = mapped_column(Float)


class SkippedRow(Base):
    """A file that could not be indexed, remembered so an unchanged bad file is not decoded again."""

    __tablename__ = "skipped"
    path: Mapped[str] = mapped_column(FsPath, primary_key=True)
    root: Mapped[str] = mapped_column(FsPath, index=True)
    size: Mapped[int] = mapped_column(Int64)
    mtime_ns: Mapped[int] = mapped_column(Int64)
    reason: Mapped[str] = mapped_column(Text)


class TextRow(Base):
    """One indexed text (caption); `id` is its FAISS id in the text index."""

    __tablename__ = "texts"
    # Never reuse a deleted id: a crash between FAISS and SQLite commits could otherwise pair
    # a stale vector with a new row.
    __table_args__ = ({"sqlite_autoincrement": True},)
    id: Mapped[int] = mapped_column(Int64, primary_key=True, autoincrement=True)
    text: Mapped[str] = mapped_column(Text, unique=True)
    source: Mapped[str] = mapped_column(String)
    image_id: Mapped[int | None] = mapped_column(
        Int64, ForeignKey("images.id", ondelete="SET NULL"), nullable=True
    )
    added_at: Mapped[float] = mapped_column(Float)


class DocTextRow(Base):
    """An image's own text (caption, sidecar or metadata); its vector is in doc_texts.faiss
    under the image's id. Deleting the image deletes it (ON DELETE CASCADE)."""

    __tablename__ = "doc_texts"
    image_id: Mapped[int] = mapped_column(
        Int64, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    text: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String)  # caption | sidecar | metadata
    sidecar_mtime_ns: Mapped[int | None] = mapped_column(Int64, nullable=True)


@dataclass(frozen=True)
class ImageRecord:
    """Metadata of one image about to be inserted."""

    path: str
    root: str
    size: int
    mtime_ns: int
    content_hash: str
    width: int
    height: int


def open_catalog(index_dir: Path, *, create: bool) -> SqlEngine:
    """A SQLAlchemy engine on the index's catalogue: the one backends.json names, else the
    SQLite file in the folder (WAL mode, foreign keys on)."""
    backends = read_backends(index_dir)
    if not backends.uses_sqlite_file:
        # pre_ping: a server restart or an idle timeout must not fail the next query.
        engine = create_engine(catalog_url(backends), pool_pre_ping=True)
        if create:
            Base.metadata.create_all(engine)
        return engine
    path = index_dir / CATALOG_FILE
    if not create and not path.is_file():
        raise FileNotFoundError(path)
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    if create:
        Base.metadata.create_all(engine)
    return engine


def read_info(session: Session) -> dict[str, str]:
    """All index_info rows as a dict."""
    return {row.key: row.value for row in session.scalars(select(InfoRow))}


def read_info_value(session: Session | Connection, key: str) -> str | None:
    """One index_info value (a primary-key lookup), or None."""
    return session.scalar(select(InfoRow.value).where(InfoRow.key == key))


def write_info(session: Session, info: dict[str, str]) -> None:
    """Insert or update index_info rows."""
    for key, value in info.items():
        session.merge(InfoRow(key=key, value=value))


def delete_info(session: Session, keys: Sequence[str]) -> None:
    """Delete index_info rows (absent keys are fine)."""
    session.execute(delete(InfoRow).where(InfoRow.key.in_(list(keys))))


def insert_images(session: Session, records: Sequence[ImageRecord]) -> list[int]:
    """Insert rows and return their new ids (assigned before the transaction commits)."""
    now = time.time()
    rows = [ImageRow(**record.__dict__, indexed_at=now) for record in records]
    session.add_all(rows)
    session.flush()
    return [row.id for row in rows]


def images_by_path(session: Session, paths: Iterable[str]) -> dict[str, ImageRow]:
    """Rows for the given paths (chunked to stay under SQLite's variable limit)."""
    found: dict[str, ImageRow] = {}
    batch = list(paths)
    for i in range(0, len(batch), 900):
        for row in session.scalars(select(ImageRow).where(ImageRow.path.in_(batch[i : i + 900]))):
            found[row.path] = row
    return found


def images_under(session: Session, root: str) -> list[ImageRow]:
    """Rows whose file lies under `root` (an absolute folder path)."""
    prefix = root.rstrip("/") + "/"
    return list(
        session.scalars(
            select(ImageRow).where(
                (ImageRow.path.startswith(prefix, autoescape=True)) | (ImageRow.path == root)
            )
        )
    )


def image_ids_under(session: Session, root: str) -> list[int]:
    """Ids of the images whose file lies under `root` (an absolute folder path), by a range scan
    of the path index: paths starting with "root/" sort between "root/" and "root0" ("0" follows
    "/"), so the query reads only those rows, whatever the size of the catalogue."""
    prefix = root.rstrip("/") + "/"
    upper = prefix[:-1] + chr(ord("/") + 1)
    query = select(ImageRow.id).where(
        ((ImageRow.path >= prefix) & (ImageRow.path < upper)) | (ImageRow.path == root)
    )
    return list(session.scalars(query))


def delete_images(session: Session, ids: Sequence[int]) -> None:
    """Delete image rows by id."""
    for i in range(0, len(ids), 900):
        session.execute(delete(ImageRow).where(ImageRow.id.in_(ids[i : i + 900])))


def image_rows(session: Session, ids: Sequence[int]) -> dict[int, ImageRow]:
    """Rows for the given ids."""
    rows: dict[int, ImageRow] = {}
    for i in range(0, len(ids), 900):
        for row in session.scalars(select(ImageRow).where(ImageRow.id.in_(ids[i : i + 900]))):
            rows[row.id] = row
    return rows


@dataclass(frozen=True)
class HitRows:
    """What a search's hits need from the catalogue: image paths and texts by id (ids without a
    committed row are absent), and one index_info value (None when the row is absent)."""

    paths: dict[int, str]
    texts: dict[int, str]
    info_value: str | None


# Which part of the hit statement's UNION ALL a row comes from (its first column).
_IMAGE_PART, _TEXT_PART, _INFO_PART = 0, 1, 2
# Id lists are padded to the next of these lengths, so a handful of compiled statements serve
# every search (0: that part of the statement is left out).
_ID_BUCKETS = (0, 16, 64, 256, IDS_PER_STATEMENT)
_NO_ID = -1  # pads id lists; never a key (keys count from 1)


def hit_rows(
    sql: SqlEngine, *, image_ids: Sequence[int], text_ids: Sequence[int], info_key: str
) -> HitRows:
    """Image paths and texts by id, and one index_info value, in one statement (more only past
    IDS_PER_STATEMENT ids of a kind): what every search reads after FAISS has answered.

    The statement is a Core select compiled once per dialect and id-count bucket and run on a
    pooled DBAPI connection: SQLAlchemy's per-execute work (cache key, parameter expansion,
    result wrapping) cost several times the statement itself (~80 us against ~15 us on SQLite)
    and, by evicting caches, slowed the FAISS call beside it: ~130 us per search in all."""
    connection = sql.raw_connection()
    try:
        cursor = connection.cursor()
        rows = read_hit_rows(cursor, sql.dialect, image_ids=image_ids, text_ids=text_ids, info_key=info_key)
        cursor.close()
    except sql.dialect.loaded_dbapi.Error as exc:
        connection.invalidate(exc)
        raise DBAPIError.instance(None, None, exc, sql.dialect.loaded_dbapi.Error) from exc
    finally:
        connection.close()  # back to the pool (rolled back there, as a Session's would be)
    return rows


def read_hit_rows(
    cursor: Any, dialect: Dialect, *, image_ids: Sequence[int], text_ids: Sequence[int], info_key: str
) -> HitRows:
    """hit_rows' statements on a DBAPI cursor of `dialect`'s driver (a caller that holds its own
    connection, e.g. indexer/store/hit_cache.py, runs them inside its own transaction)."""
    paths: dict[int, str] = {}
    texts: dict[int, str] = {}
    info_value: str | None = None
    step = IDS_PER_STATEMENT
    chunks = max(1, -(-len(image_ids) // step), -(-len(text_ids) // step))
    for chunk in range(chunks):
        images = image_ids[chunk * step : (chunk + 1) * step]
        captions = text_ids[chunk * step : (chunk + 1) * step]
        statement = _hit_statement(dialect, _bucket(len(images)), _bucket(len(captions)), chunk == 0)
        cursor.execute(statement.sql, statement.parameters(images, captions, info_key))
        for part, id_, path, text in cursor.fetchall():
            if part == _IMAGE_PART:
                paths[id_] = decode_fs_path(path)
            elif part == _TEXT_PART:
                texts[id_] = text
            else:
                info_value = text
    return HitRows(paths, texts, info_value)


def _bucket(count: int) -> int:
    return next(size for size in _ID_BUCKETS if size >= count)


@dataclass(frozen=True)
class _HitStatement:
    """hit_rows' statement as one dialect's SQL text, and how its DBAPI takes the parameters."""

    sql: str
    image_slots: int
    text_slots: int
    info: bool
    names: tuple[str, ...] | None  # bind names for a named paramstyle; None: positional

    def parameters(
        self, image_ids: Sequence[int], text_ids: Sequence[int], info_key: str
    ) -> tuple[object, ...] | dict[str, object]:
        """The DBAPI parameters in statement order: each id list padded with _NO_ID to its slots."""
        values: list[object] = [
            *image_ids,
            *itertools.repeat(_NO_ID, self.image_slots - len(image_ids)),
            *text_ids,
            *itertools.repeat(_NO_ID, self.text_slots - len(text_ids)),
        ]
        if self.info:
            values.append(info_key)
        return tuple(values) if self.names is None else dict(zip(self.names, values, strict=True))


@functools.lru_cache(maxsize=64)
def _hit_statement(dialect: Dialect, image_slots: int, text_slots: int, info: bool) -> _HitStatement:
    """(part, id, path, text) rows: images by id, texts by id, and the index_info value (as
    text), compiled for dialect. Typed NULLs give every part of the UNION the same column types
    (PostgreSQL resolves them from the parts)."""
    images, texts, infos = ImageRow.__table__.c, TextRow.__table__.c, InfoRow.__table__.c
    no_id, no_path, no_text = cast(null(), Int64), cast(null(), String), cast(null(), Text)

    def part(number: int) -> Label[int]:
        return literal_column(str(number), Integer).label("part")

    def slots(prefix: str, count: int) -> list[BindParameter[int]]:
        return [bindparam(f"{prefix}{j}", type_=Int64) for j in range(count)]

    parts: list[Select[Any]] = []
    if image_slots:
        parts.append(
            select(part(_IMAGE_PART), images.id, images.path, no_text).where(
                images.id.in_(slots("i", image_slots))
            )
        )
    if text_slots:
        parts.append(
            select(part(_TEXT_PART), texts.id, no_path, texts.text).where(
                texts.id.in_(slots("t", text_slots))
            )
        )
    if info:
        parts.append(
            select(part(_INFO_PART), no_id, no_path, infos.value).where(
                infos.key == bindparam("key", type_=String)
            )
        )
    compiled = union_all(*parts).compile(dialect=dialect)
    names = (
        *(f"i{j}" for j in range(image_slots)),
        *(f"t{j}" for j in range(text_slots)),
        *(["key"] if info else []),
    )
    # _HitStatement.parameters lists values in the order the parts are written: positional
    # paramstyles number their binds so, and named ones must keep the names as given.
    positional = compiled.positiontup is not None
    if (positional and tuple(compiled.positiontup or ()) != names) or compiled.escaped_bind_names:
        raise NotImplementedError(f"the {dialect.name} dialect binds hit_rows' parameters in another way")
    return _HitStatement(compiled.string, image_slots, text_slots, info, None if positional else names)


def text_rows(session: Session, ids: Sequence[int]) -> dict[int, TextRow]:
    """Text rows for the given ids."""
    rows: dict[int, TextRow] = {}
    for i in range(0, len(ids), 900):
        for row in session.scalars(select(TextRow).where(TextRow.id.in_(ids[i : i + 900]))):
            rows[row.id] = row
    return rows


def all_ids(session: Session, table: type[ImageRow] | type[TextRow]) -> set[int]:
    """Every primary key of a table (for reconciling with FAISS)."""
    return set(session.scalars(select(table.id)))


def count(session: Session, table: type[Base]) -> int:
    """Number of rows in a table."""
    return int(session.scalar(select(func.count()).select_from(table)) or 0)


def delete_texts(session: Session, ids: Sequence[int]) -> None:
    """Delete text rows by id."""
    for i in range(0, len(ids), 900):
        session.execute(delete(TextRow).where(TextRow.id.in_(ids[i : i + 900])))


def doc_text_rows(session: Session, ids: Sequence[int]) -> dict[int, DocTextRow]:
    """Own-text rows for the given image ids (absent ids have no own text)."""
    rows: dict[int, DocTextRow] = {}
    for i in range(0, len(ids), 900):
        chunk = ids[i : i + 900]
        for row in session.scalars(select(DocTextRow).where(DocTextRow.image_id.in_(chunk))):
            rows[row.image_id] = row
    return rows


def all_doc_text_ids(session: Session) -> set[int]:
    """Image ids that have an own-text row (for reconciling with doc_texts.faiss)."""
    return set(session.scalars(select(DocTextRow.image_id)))


def delete_doc_texts(session: Session, ids: Sequence[int]) -> None:
    """Delete own-text rows by image id."""
    for i in range(0, len(ids), 900):
        session.execute(delete(DocTextRow).where(DocTextRow.image_id.in_(ids[i : i + 900])))


def forget_skipped(session: Session, paths: Sequence[str]) -> None:
    """Drop remembered skip reasons for files that have now been indexed."""
    for i in range(0, len(paths), 900):
        session.execute(delete(SkippedRow).where(SkippedRow.path.in_(paths[i : i + 900])))
