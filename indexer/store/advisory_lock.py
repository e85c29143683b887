"""The single-writer lock of an index whose catalogue is PostgreSQL: a session advisory lock.

A file lock only excludes writers on one machine; an advisory lock in the catalogue's database
excludes writers wherever they run. PostgreSQL drops it when the holder's connection ends, so a
killed writer never leaves the index locked (as the OS drops a killed process's flock).
"""

from __future__ import annotations

import os
import socket

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from indexer.errors import ConflictError, UnavailableError

# One index per database, so one fixed key; the value spells "mmsr" and only has to be unique
# among the advisory locks other programs take in that database.
WRITER_LOCK_KEY = 0x6D6D7372
APPLICATION_NAME = "mmsearch-writer"


class AdvisoryLockError(UnavailableError):
    """The catalogue's database cannot be reached to take the writer lock."""


class AdvisoryLock:
    """pg_try_advisory_lock on a connection held for as long as the writer runs."""

    def __init__(self, url: URL, *, locked_error: type[ConflictError]) -> None:
        holder = f"{APPLICATION_NAME} {socket.gethostname()} pid {os.getpid()}"
        self.engine = create_engine(url, poolclass=NullPool, connect_args={"application_name": holder[:63]})
        self.locked_error = locked_error
        self.connection: Connection | None = None

    def acquire(self) -> None:
        """Take the lock or raise `locked_error` naming the holder (host and PID)."""
        try:
            connection = self.engine.connect()
        except OperationalError as exc:
            raise AdvisoryLockError(
                f"cannot reach the catalogue to take the writer lock: {exc.orig}"
            ) from exc
        got = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": WRITER_LOCK_KEY})
        if got.scalar():
            connection.commit()  # the lock belongs to the session, not the transaction
            self.connection = connection
            return
        holder = connection.execute(
            text(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.objid = :key AND l.granted"
            ),
            {"key": WRITER_LOCK_KEY},
        ).scalar()
        connection.close()
        raise self.locked_error(
            f"index is locked by {holder or 'another writer'} (another `mmsearch index` is "
            "writing to this catalogue); wait for it to finish"
        )

    def release(self) -> None:
        """Drop the lock (also dropped by PostgreSQL if the process dies)."""
        if self.connection is not None:
            try:
                self.connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": WRITER_LOCK_KEY})
                self.connection.commit()
            finally:
                self.connection.close()
                self.connection = None
        self.engine.dispose()
