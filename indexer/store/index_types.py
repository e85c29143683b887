"""Switch an index's image vectors between the exact store and an IVF one.

An exhaustive scan answers in ~10 ms per 10,000 photos here, so the exact store stays the default;
past a few hundred thousand images an IVF store searches a fraction of the lists instead. Building
one is k-means plus assigning every vector to a list, which is what FAISS runs on the GPU when one
is there (`use_gpu`). The index keeps working as before: incremental indexing adds to the trained
lists, removal and `--under` still work, and the file on disk is always the CPU form.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from indexer.store import catalog
from indexer.store.backends import BackendSpecError
from indexer.store.index_dir import IMAGES_FAISS, IndexWriter
from indexer.store.vectors import BuildReport, build_flat, build_ivf, default_lists, default_nprobe


@dataclass(frozen=True)
class OptimizeReport:
    """Before and after, and what the build cost."""

    before: str
    after: str
    vectors: int
    seconds: float
    device: str  # where k-means and list assignment ran
    recall: float | None  # recall@10 of the IVF store against exact search, on sampled vectors


def use_ivf(
    index_dir: Path,
    *,
    lists: int | None = None,
    nprobe: int | None = None,
    use_gpu: bool = False,
) -> OptimizeReport:
    """Rebuild the image vectors as IVF (lists and nprobe default to FAISS's rules of thumb)."""
    with IndexWriter(index_dir, None) as writer:
        _require_faiss(writer)
        store = writer.images
        chosen_lists = lists or default_lists(len(store))
        chosen_nprobe = nprobe or default_nprobe(chosen_lists)
        built = build_ivf(store, lists=chosen_lists, nprobe=chosen_nprobe, use_gpu=use_gpu)
        return _replace(writer, built, before=store.describe())


def use_flat(index_dir: Path) -> OptimizeReport:
    """Rebuild the image vectors as the exact store (undoes use_ivf)."""
    with IndexWriter(index_dir, None) as writer:
        _require_faiss(writer)
        store = writer.images
        return _replace(writer, build_flat(store), before=store.describe())


def _require_faiss(writer: IndexWriter) -> None:
    """Milvus picks its own index type (FLAT, then HNSW as the collection grows)."""
    if writer.backends.uses_milvus:
        raise BackendSpecError(
            f"{writer.index_dir} keeps its vectors in Milvus, which chooses its own index type "
            "(exact while small, HNSW when large); `mmsearch optimize` applies to FAISS indexes"
        )


def _replace(writer: IndexWriter, built: BuildReport, *, before: str) -> OptimizeReport:
    """Atomic FAISS replace, then the recorded index type; a crash between leaves a stale label only."""
    built.store.save(writer.index_dir / IMAGES_FAISS)
    after = built.store.describe()
    with writer.session() as session:
        catalog.write_info(session, {"index_type": after})
        session.commit()
    writer.images = built.store
    return OptimizeReport(before, after, built.vectors, built.seconds, built.device, built.recall)
