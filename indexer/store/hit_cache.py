"""The catalogue rows searches read, kept between searches until the catalogue changes.

Every search ends by naming its hits: image paths and texts by id, plus the calibration row
(catalog.hit_rows, one statement). On a fast index that statement costs more than FAISS itself
(~30 us of SQLite and its connection pool against a 20-60 us IVF search), and consecutive
searches mostly ask for rows already read. Rows are therefore kept, and dropped as soon as any
connection, in any process, commits to the catalogue: SQLite's `PRAGMA data_version` on a
connection of the cache's own tells that in ~3 us. A rename, a removal or a recalibration is
seen by the next search exactly as without the cache.

Catalogues on a server (PostgreSQL) have no such counter: every search reads its rows.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence

from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.exc import DBAPIError

from indexer.store.catalog import BUSY_TIMEOUT_MS, HitRows, hit_rows, read_hit_rows

# Rows kept at most (ids of either kind plus info keys); past it the cache starts afresh. About
# 10 MB of paths at 100 characters each: a server answering from a large index re-reads the rows
# of rarely found images, the hot ones stay.
CAPACITY = 50_000

_ABSENT = None  # an id without a committed row, kept as such until the next commit


class HitRowCache:
    """catalog.hit_rows with the rows of earlier searches kept while the catalogue is unchanged.

    Safe to share between threads. Rows not kept are read on the cache's own connection in one
    read transaction together with the change counter, so the rows and the version they are kept
    under come from one snapshot; the lock is held meanwhile (one statement, ~20 us)."""

    def __init__(self, sql: SqlEngine) -> None:
        self._sql = sql
        self._own = _own_connection(sql)
        self._cursor = None if self._own is None else self._own.cursor()  # every statement's
        self._lock = threading.Lock()
        self._version: int | None = None
        self._paths: dict[int, str | None] = {}
        self._texts: dict[int, str | None] = {}
        self._info: dict[str, str | None] = {}

    def read(self, *, image_ids: Sequence[int], text_ids: Sequence[int], info_key: str) -> HitRows:
        """As catalog.hit_rows: paths and texts of the ids that have a committed row, and the
        index_info value of info_key."""
        if self._own is None:
            return hit_rows(self._sql, image_ids=image_ids, text_ids=text_ids, info_key=info_key)
        try:
            return self._read_kept_or_fresh(image_ids, text_ids, info_key)
        except sqlite3.Error as exc:  # as hit_rows reports it, so the edges map it alike
            raise DBAPIError.instance(None, None, exc, sqlite3.Error) from exc

    def _read_kept_or_fresh(
        self, image_ids: Sequence[int], text_ids: Sequence[int], info_key: str
    ) -> HitRows:
        with self._lock:
            if self._data_version() == self._version:
                kept = self._kept(image_ids, text_ids, info_key)
                if kept is not None:
                    return kept
            rows, version = self._read_snapshot(image_ids, text_ids, info_key)
            if version != self._version or self._full(len(image_ids) + len(text_ids)):
                self._paths, self._texts, self._info = {}, {}, {}
                self._version = version
            self._keep(image_ids, text_ids, info_key, rows)
            return rows

    def close(self) -> None:
        """Close the cache's own connection."""
        if self._own is not None:
            self._own.close()

    def _data_version(self) -> int:
        """SQLite's `PRAGMA data_version`: it moves whenever another connection (of this or any
        process) has committed to the file since this connection last looked; inside a read
        transaction it is that snapshot's."""
        assert self._cursor is not None
        return int(self._cursor.execute("PRAGMA data_version").fetchone()[0])

    def _read_snapshot(
        self, image_ids: Sequence[int], text_ids: Sequence[int], info_key: str
    ) -> tuple[HitRows, int]:
        """Every requested row and the change counter, from one read transaction."""
        assert self._cursor is not None
        self._cursor.execute("BEGIN")
        try:
            rows = read_hit_rows(
                self._cursor, self._sql.dialect, image_ids=image_ids, text_ids=text_ids, info_key=info_key
            )
            return rows, self._data_version()
        finally:
            self._cursor.execute("COMMIT")  # ends the read transaction (nothing was written)

    def _kept(self, image_ids: Sequence[int], text_ids: Sequence[int], info_key: str) -> HitRows | None:
        """The answer from kept rows alone, or None when one of them is not kept."""
        paths, texts = self._paths, self._texts
        if info_key not in self._info:
            return None
        if any(i not in paths for i in image_ids) or any(i not in texts for i in text_ids):
            return None
        return HitRows(
            {i: p for i in image_ids if (p := paths[i]) is not None},
            {i: t for i in text_ids if (t := texts[i]) is not None},
            self._info[info_key],
        )

    def _full(self, adding: int) -> bool:
        return len(self._paths) + len(self._texts) + adding > CAPACITY

    def _keep(self, image_ids: Sequence[int], text_ids: Sequence[int], info_key: str, rows: HitRows) -> None:
        for i in image_ids:
            self._paths[i] = rows.paths.get(i, _ABSENT)
        for i in text_ids:
            self._texts[i] = rows.texts.get(i, _ABSENT)
        self._info[info_key] = rows.info_value


def _own_connection(sql: SqlEngine) -> sqlite3.Connection | None:
    """A connection of the cache's own to a SQLite file catalogue (autocommit: transactions are
    begun by hand); None for a server or in-memory catalogue, which are read every time."""
    database = sql.url.database
    if sql.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return sqlite3.connect(
        database, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level=None
    )
