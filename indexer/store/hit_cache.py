"""The catalogue rows searches read, kept between searches until the catalogue changes.

Every search ends by naming its hits: image paths and texts by id, plus the calibration row
(catalog.hit_rows, one statement). On a fast index that statement costs more than FAISS itself
(~30 us of SQLite and its connection pool against a 20-60 us IVF search), and consecutive
searches mostly ask for rows already read. Rows are therefore kept, and dropped as soon as any
connection, in any process, commits to the catalogue: SQLite's `PRAGMA data_version` on a
connection of our own tells that in ~3 us. A rename, a removal or a recalibration is seen by the
next search exactly as without the cache.

Catalogues on a server (PostgreSQL) have no such counter: every search reads its rows.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence

from sqlalchemy.engine import Engine as SqlEngine

from indexer.store.catalog import BUSY_TIMEOUT_MS, HitRows, hit_rows

# Rows kept at most (ids of either kind plus info keys); past it the cache starts afresh. About
# 10 MB of paths at 100 characters each: a server answering from a large index re-reads the rows
# of rarely found images, the hot ones stay.
CAPACITY = 50_000
# A commit between reading the counter and the rows makes the rows of unknown age: read again,
# and past this many tries (a writer committing without pause) answer without the cache.
READ_ATTEMPTS = 3

_ABSENT = None  # an id without a committed row, kept as such until the next commit


class HitRowCache:
    """catalog.hit_rows with the rows of earlier searches kept while the catalogue is unchanged.

    Safe to share between threads; the statement for rows not kept runs outside the lock."""

    def __init__(self, sql: SqlEngine) -> None:
        self._sql = sql
        self._counter = _change_counter(sql)
        self._lock = threading.Lock()
        self._version: int | None = None
        self._paths: dict[int, str | None] = {}
        self._texts: dict[int, str | None] = {}
        self._info: dict[str, str | None] = {}

    def read(self, *, image_ids: Sequence[int], text_ids: Sequence[int], info_key: str) -> HitRows:
        """As catalog.hit_rows: paths and texts of the ids that have a committed row, and the
        index_info value of info_key."""
        if self._counter is None:
            return hit_rows(self._sql, image_ids=image_ids, text_ids=text_ids, info_key=info_key)
        for _ in range(READ_ATTEMPTS):
            with self._lock:
                version = self._current_version()
                kept = self._kept(image_ids, text_ids, info_key)
                if kept is not None:
                    return kept
                missing_images = [i for i in image_ids if i not in self._paths]
                missing_texts = [i for i in text_ids if i not in self._texts]
            fresh = hit_rows(self._sql, image_ids=missing_images, text_ids=missing_texts, info_key=info_key)
            with self._lock:
                if self._current_version() != version:
                    continue  # a commit landed while reading: these rows may be older or newer
                self._keep(missing_images, missing_texts, info_key, fresh)
                kept = self._kept(image_ids, text_ids, info_key)
            if kept is not None:
                return kept
        return hit_rows(self._sql, image_ids=image_ids, text_ids=text_ids, info_key=info_key)

    def close(self) -> None:
        """Close the counter's connection."""
        if self._counter is not None:
            self._counter.close()

    def _current_version(self) -> int:
        """The catalogue's change counter now; everything kept is dropped when it moved."""
        assert self._counter is not None
        version = self._counter.version()
        if version != self._version:
            self._version = version
            self._clear()
        return version

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

    def _keep(self, image_ids: Sequence[int], text_ids: Sequence[int], info_key: str, rows: HitRows) -> None:
        if len(self._paths) + len(self._texts) + len(image_ids) + len(text_ids) > CAPACITY:
            self._clear()
        for i in image_ids:
            self._paths[i] = rows.paths.get(i, _ABSENT)
        for i in text_ids:
            self._texts[i] = rows.texts.get(i, _ABSENT)
        self._info[info_key] = rows.info_value

    def _clear(self) -> None:
        self._paths, self._texts, self._info = {}, {}, {}


class _SqliteCounter:
    """`PRAGMA data_version` on a connection used for nothing else: it moves whenever another
    connection (of this or any process) commits to the database file."""

    def __init__(self, path: str) -> None:
        self._connection = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level=None
        )

    def version(self) -> int:
        return int(self._connection.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        self._connection.close()


def _change_counter(sql: SqlEngine) -> _SqliteCounter | None:
    """A change counter for a SQLite file catalogue; None for a server or an in-memory one."""
    database = sql.url.database
    if sql.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return _SqliteCounter(database)
