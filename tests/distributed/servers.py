"""Real servers for the distributed tests: a throw-away PostgreSQL cluster, Milvus Lite files and
a Milvus Lite server, started here and stopped afterwards. No mocks.

PostgreSQL comes from Debian's `postgresql` package (`make postgres-deps` installs it); the cluster
is created with initdb in a temporary folder and started with pg_ctl on a free loopback port, as
`nobody` when the tests run as root (PostgreSQL refuses to run as root). Tests that need it skip,
with the reason, only where it cannot be found.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_USER = "mmsearch"
PG_PASSWORD = "test-only-" + uuid.uuid4().hex[:8]  # throw-away cluster, loopback only
PG_START_TIMEOUT_S = 60
MILVUS_START_TIMEOUT_S = 30
UNPRIVILEGED_USER = "nobody"


def free_port() -> int:
    """A TCP port nothing listens on right now (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_bin() -> Path | None:
    """The folder with initdb and pg_ctl (Debian keeps them out of PATH)."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


@dataclass(frozen=True)
class PgServer:
    """A running throw-away PostgreSQL: make one database per index with `database()`."""

    host: str
    port: int
    user: str
    password: str

    def database(self) -> str:
        """A fresh database; its SQLAlchemy URL without the password (that comes from the env)."""
        import psycopg

        name = f"idx_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{name}"


def _as_unprivileged(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", UNPRIVILEGED_USER, "--", *command]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """initdb + pg_ctl start on a free loopback port; pg_ctl stop and delete afterwards."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip(
            "PostgreSQL is not installed (run `make postgres-deps` as root: apt-get install postgresql)"
        )
    pytest.importorskip("psycopg", reason="needs mmsearch[postgres] (psycopg)")
    base = Path(tempfile.mkdtemp(prefix="mmsearch-pg-"))
    data, pwfile, log = base / "data", base / "pwfile", base / "server.log"
    pwfile.write_text(PG_PASSWORD + "\n")
    if os.geteuid() == 0:
        owner = pwd.getpwnam(UNPRIVILEGED_USER)
        for path in (base, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = free_port()

    def run(program: str, *args: str) -> None:
        command = _as_unprivileged([str(bindir / program), *args])
        subprocess.run(command, check=True, capture_output=True, text=True)

    run(
        "initdb",
        "-D",
        str(data),
        "-U",
        PG_USER,
        f"--pwfile={pwfile}",
        "--auth=scram-sha-256",
        "--encoding=UTF8",
        "--locale=C",
        "--no-sync",
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off -c max_connections=100"
    run(
        "pg_ctl", "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", str(PG_START_TIMEOUT_S), "start"
    )
    try:
        yield PgServer("127.0.0.1", port, PG_USER, PG_PASSWORD)
    finally:
        subprocess.run(
            _as_unprivileged([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_catalog(postgres: PgServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database URL for one index; the password is in the environment, as users set it."""
    monkeypatch.setenv("MMSEARCH_CATALOG_PASSWORD", postgres.password)
    return postgres.database()


@pytest.fixture
def milvus_lite(tmp_path: Path) -> str:
    """--vectors for Milvus Lite on a file in the test's folder (pymilvus starts it in-process)."""
    pytest.importorskip("pymilvus", reason="needs mmsearch[milvus] (pymilvus, milvus-lite)")
    return f"milvus://{tmp_path / 'vectors.db'}"


@pytest.fixture
def milvus_server(tmp_path: Path) -> Iterator[str]:
    """A Milvus Lite gRPC server in its own process, as several clients would share a Milvus."""
    pytest.importorskip("milvus_lite", reason="needs mmsearch[milvus] (milvus-lite)")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "milvus_lite",
            "server",
            "--data-dir",
            str(tmp_path / "milvus"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + MILVUS_START_TIMEOUT_S
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("the Milvus Lite server did not start")
    try:
        yield f"milvus://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
