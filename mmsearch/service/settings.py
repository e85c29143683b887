"""What the server allows, and bind safety: no address beyond this machine without a token."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexer.errors import InvalidInputError
from indexer.media.images import DEFAULT_MAX_MEGAPIXELS

TOKEN_ENV = "MMSEARCH_TOKEN"
# A guessable token on a LAN-facing server is no protection; 16 chars of token_urlsafe is 96 bits.
MIN_TOKEN_CHARS = 16
LOOPBACK_NAMES = frozenset({"localhost"})
# Host headers accepted when bound to loopback: stops DNS rebinding (a web page that points its
# own host name at 127.0.0.1 and then reads this server's answers from the user's browser).
LOOPBACK_HOST_HEADERS = ("127.0.0.1", "localhost", "[::1]", "::1")
# Phone photos are 2-12 MB; 16 MiB leaves room for a PNG screenshot without inviting abuse.
DEFAULT_MAX_UPLOAD_BYTES = 16 * 1024 * 1024
# ~15 KB per 256 px JPEG: a 32 MiB budget keeps a couple of thousand thumbnails warm.
THUMBNAIL_CACHE_BYTES = 32 * 1024 * 1024
# Concurrent clients of a small server are well under this; a larger batch only delays its
# first query (the bundled model encodes 32 sentences in ~15 ms on two cores).
DEFAULT_MAX_BATCH = 32
# A fraction of one query's own time (~13 ms in-process on two cores): long enough for clients
# answered by the previous batch to send their next request, short enough for a lone query.
DEFAULT_MAX_WAIT_MS = 5.0


class ServiceConfigError(InvalidInputError):
    """Settings the server refuses to start with (e.g. a public address without a token)."""


@dataclass(frozen=True)
class ServiceSettings:
    """What the server allows; the CLI fills it from `mmsearch serve` flags and MMSEARCH_TOKEN."""

    token: str | None = None
    roots: tuple[Path, ...] = ()  # folders POST /index may add or refresh; none: POST /index is off
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    allowed_hosts: tuple[str, ...] | None = None  # None: any Host header (token-protected binds)
    thumbnail_cache_bytes: int = THUMBNAIL_CACHE_BYTES
    # Queries encoding at once. Encoding is CPU-bound, so more than one per core only makes
    # every query slower; the rest wait their turn, which keeps the p99 down under load
    # (16 clients on 2 cores: p99 ~0.55 s with 2 slots against ~1.1 s unlimited).
    query_slots: int = field(default_factory=lambda: os.cpu_count() or 1)
    # Sentence queries answered together (service.batching): at most max_batch per forward pass,
    # the first of them waiting at most batch_wait_ms for the others. max_batch 1: no batching.
    max_batch: int = DEFAULT_MAX_BATCH
    batch_wait_ms: float = DEFAULT_MAX_WAIT_MS
    # FAISS threads of the batch worker; None: FAISS's default, one per core. `mmsearch serve`
    # gives it torch's count: on a busy machine, parallel regions whose threads are descheduled
    # spin (measured on 2 cores at load 17: ~30 ms of CPU per query with two, ~5 with one).
    search_threads: int | None = None


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token; ServiceConfigError says what to set."""
    if token is not None and len(token.strip()) < MIN_TOKEN_CHARS:
        raise ServiceConfigError(
            f"{TOKEN_ENV} is shorter than {MIN_TOKEN_CHARS} characters; make one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    if not is_loopback(host) and token is None:
        raise ServiceConfigError(
            f"refusing to listen on {host} without a token: anyone who can reach it could search "
            f"and read your indexed photos. Set {TOKEN_ENV} (clients send it as "
            f"'Authorization: Bearer ...'), or keep the default --host 127.0.0.1"
        )


def settings_for(
    host: str, *, token: str | None, roots: tuple[Path, ...] = (), **limits: Any
) -> ServiceSettings:
    """Settings for a bind address: loopback binds also check the Host header."""
    check_bind(host, token)
    allowed = (*LOOPBACK_HOST_HEADERS, host.lower()) if is_loopback(host) else None
    resolved = tuple(Path(os.path.realpath(r)) for r in roots)
    for root in resolved:
        if not root.is_dir():
            raise ServiceConfigError(f"--root {root}: not a folder")
    return ServiceSettings(token=token, roots=resolved, allowed_hosts=allowed, **limits)
