"""One vector store of an index as the engine searches it, reloaded when a writer replaces it."""

from __future__ import annotations

import threading

from indexer.store.backends import VectorBackend
from indexer.store.vectors import VectorStore, to_search_device


class Snapshot:
    """A vector store as loaded, reloaded when a writer has replaced it (a FAISS file's inode
    changes); a live store (Milvus) is loaded once and answers every query from the server.

    Safe to share between threads (the HTTP service queries from a thread pool): one thread
    reloads while the others keep answering from the snapshot they already have, so a reader
    never waits for a reload and N readers never load the same new file N times over.
    """

    def __init__(self, backend: VectorBackend, name: str, dim: int, *, use_gpu: bool = False) -> None:
        self.backend = backend
        self.name = name
        self.dim = dim
        self.use_gpu = use_gpu  # search a FAISS GPU copy when possible (see to_search_device)
        self.stamp: object = ()  # never a real stamp: the first refresh loads
        self.store = VectorStore.create(dim)
        self._reload_lock = threading.Lock()
        self.refresh()

    def refresh(self) -> VectorStore:
        """Reload if the file on disk is a different one than last time (cheap stat per query)."""
        if self._stamp() == self.stamp:
            return self.store
        if not self._reload_lock.acquire(blocking=False):
            return self.store  # another thread is loading the new file; answer from this one
        try:
            stamp = self._stamp()  # again under the lock: another thread may have just loaded it
            if stamp != self.stamp:
                # Store first, then stamp: a reader that sees the new stamp gets the new store.
                loaded = self.backend.load(self.name, self.dim)
                live = self.backend.searches_live
                self.store = loaded if live else to_search_device(loaded, use_gpu=self.use_gpu)
                self.stamp = stamp
        finally:
            self._reload_lock.release()
        return self.store

    def _stamp(self) -> object:
        return self.backend.stamp(self.name)
