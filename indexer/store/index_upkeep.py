"""An index's type over time: the policy recorded in the catalogue, and rebuilding the image
vectors in place (from the full-precision file, never by re-encoding) when the policy, the size
or the share of removed entries asks for another structure. Which structure and how to build it
is indexer/store/index_types.py; this module decides when, and swaps it in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from indexer.store import catalog
from indexer.store.backends import BackendSpecError
from indexer.store.index_dir import IMAGES, IndexWriter
from indexer.store.index_types import (
    AUTO,
    BUDGET_KEY,
    BUILT_KEY,
    EXACT_MAX_FLOATS,
    LIST_GROWTH_REBUILD,
    POLICIES,
    POLICY_KEY,
    RAW_COMPACT_SHARE,
    RECALL_KEY,
    RERANK_KEY,
    TOMBSTONE_REBUILD_SHARE,
    TYPE_KEY,
    ArraySource,
    BuildSpec,
    Choice,
    IndexTypeError,
    build_index,
    choose_kind,
    default_memory_budget,
    min_vectors,
    source_of,
)
from indexer.store.raw_vectors import RawVectors
from indexer.store.search_params import SearchParams, SearchParamsError
from indexer.store.vectors import LOSSY_KINDS, IndexKind, VectorStore

# -- the record in the catalogue -----------------------------------------------------------------


@dataclass(frozen=True)
class IndexTypeRecord:
    """What index_info says about the image index's type (beside the FAISS file's own structure)."""

    policy: str = AUTO
    memory_budget: int | None = None  # bytes; None: DEFAULT_BUDGET_SHARE of the RAM at hand
    recall: float | None = None  # recall@10 at the default knobs, measured at build
    built_vectors: int = 0  # vectors when the current structure was chosen
    rerank: int | None = None  # the factor a user chose for the compressed kinds; None: tuned
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, session: Session, *, legacy_kind: IndexKind = "flat") -> IndexTypeRecord:
        """Parse the rows; an index from before policies keeps the kind it has (no surprise rebuild)."""
        rows = catalog.read_info(session)
        budget = rows.get(BUDGET_KEY)
        recall = rows.get(RECALL_KEY)
        return cls(
            policy=rows.get(POLICY_KEY, legacy_kind),
            memory_budget=int(budget) if budget else None,
            recall=float(recall) if recall else None,
            built_vectors=int(rows.get(BUILT_KEY, "0")),
            rerank=_chosen_rerank(rows.get(RERANK_KEY)),
        )

    def budget(self) -> int:
        """The budget in force: the recorded one, else the default for this machine."""
        return self.memory_budget if self.memory_budget is not None else default_memory_budget()


def _chosen_rerank(text: str | None) -> int | None:
    """The recorded factor, or None (none chosen; a row this code cannot use counts as none)."""
    if not text or not text.isdigit():
        return None
    try:
        return SearchParams(rerank=int(text)).rerank
    except SearchParamsError:  # out of range
        return None


def rerank_rows(rerank: int | None) -> dict[str, str]:
    """index_info rows recording the factor `optimize --rerank` chose ("" when it chose none)."""
    return {RERANK_KEY: "" if rerank is None else str(rerank)}


def write_record(session: Session, **values: str | None) -> None:
    """Update index_info rows (None deletes nothing; it leaves a row as it is)."""
    catalog.write_info(session, {k: v for k, v in values.items() if v is not None})


def policy_rows(policy: str, memory_budget: int | None) -> dict[str, str]:
    """index_info rows recording a policy (and the budget, when given)."""
    if policy not in POLICIES:
        raise IndexTypeError(f"--index-type {policy!r}: choose one of {', '.join(POLICIES)}")
    rows = {POLICY_KEY: policy}
    return rows if memory_budget is None else {**rows, BUDGET_KEY: str(memory_budget)}


def set_policy(writer: IndexWriter, policy: str, memory_budget: int | None) -> None:
    """Record the policy (and budget, when given) of an existing index."""
    with writer.session() as session:
        catalog.write_info(session, policy_rows(policy, memory_budget))
        session.commit()


def read_record(writer: IndexWriter) -> IndexTypeRecord:
    """The record of the index the writer holds."""
    store = writer.images
    legacy: IndexKind = store.kind if isinstance(store, VectorStore) else "flat"  # Milvus: its own
    with writer.session() as session:
        return IndexTypeRecord.read(session, legacy_kind=legacy)


# -- rebuilding an index in place ----------------------------------------------------------------


@dataclass(frozen=True)
class OptimizeReport:
    """Before and after, and what the build cost."""

    before: str
    after: str
    vectors: int
    seconds: float
    device: str  # where training and adding ran
    recall: float | None  # recall@10 against exact search at the default knobs
    kind: str = "flat"
    params: dict[str, int | bool] = field(default_factory=dict)
    reason: str = ""


def desired_kind(record: IndexTypeRecord, store: VectorStore) -> Choice:
    """The kind the record asks for now: the policy's, or auto's choice (with hysteresis: an
    approximate index goes back to exact only at half the exact threshold)."""
    count, dim = len(store), store.dim
    if record.policy != AUTO:
        kind: IndexKind = record.policy  # type: ignore[assignment]
        if count < min_vectors(kind):
            return Choice("flat", f"{kind} asked for, but {count} vectors are too few to train it")
        return Choice(kind, f"{kind} asked for (--index-type {kind})")
    choice = choose_kind(count, dim, memory_budget=record.budget())
    if choice.kind == "flat" and store.kind != "flat" and count * dim > EXACT_MAX_FLOATS // 2:
        kept = f"{count:,} vectors: stays {store.kind} until half the exact threshold"
        return Choice(store.kind, kept)
    return choice


def rebuild_reason(record: IndexTypeRecord, store: VectorStore, choice: Choice) -> str | None:
    """Why the store should be rebuilt now, or None."""
    if choice.kind != store.kind:
        return f"{store.kind} -> {choice.kind}: {choice.reason}"
    count = len(store)
    grew = record.built_vectors and count >= LIST_GROWTH_REBUILD * record.built_vectors
    if store.is_ivf and grew:
        return f"{count:,} vectors, {count / record.built_vectors:.1f}x those it was built with: new lists"
    if store.tombstone_share > TOMBSTONE_REBUILD_SHARE:
        return f"{store.tombstone_share:.0%} of the HNSW graph are removed images"
    return None


def maintain(writer: IndexWriter, *, use_gpu: bool = False) -> OptimizeReport | None:
    """At the end of an index run or a removal: rebuild the image vectors into the kind the
    policy wants now (from the raw vectors, without re-encoding), or compact the raw file."""
    if writer.backends.uses_milvus:
        return None  # Milvus tunes its own index (the writer asks it on closing)
    store = writer.images
    record = read_record(writer)
    choice = desired_kind(record, store)
    reason = rebuild_reason(record, store, choice)
    if reason is None:
        _compact_raw(store)
        return None
    rerank = record.rerank if choice.kind in LOSSY_KINDS else None  # a chosen factor stays chosen
    return rebuild(writer, BuildSpec(choice.kind, rerank=rerank), use_gpu=use_gpu, reason=reason)


def _compact_raw(store: VectorStore) -> None:
    if isinstance(store.raw, RawVectors) and store.raw.dead_share(len(store)) > RAW_COMPACT_SHARE:
        store.raw.rewrite(store.ids())


def rebuild(
    writer: IndexWriter,
    spec: BuildSpec,
    *,
    use_gpu: bool = False,
    reason: str = "",
    also_record: Mapping[str, str] | None = None,
) -> OptimizeReport:
    """Build `spec` from the full-precision vectors and swap it in atomically: the raw file is
    compacted first (same live ids as the old index), then the FAISS file is replaced; readers
    answer from the old file until they see the new one. `also_record` (index_info rows) is
    committed with the new type's record, so a build that fails records nothing."""
    store = writer.images
    before = store.describe()
    source = source_of(store)
    built = build_index(source, store.dim, spec, use_gpu=use_gpu)
    if isinstance(store.raw, RawVectors):
        if isinstance(source, ArraySource):  # no (complete) raw file yet: write it whole
            store.raw.write_all(source.ids, source.vectors)
        elif store.raw.dead_share(len(store)) > 0:
            store.raw.rewrite(store.ids())
        built.store.raw = store.raw
    writer.vectors.save(IMAGES, built.store)
    after = built.store.describe()
    with writer.session() as session:
        write_record(
            session,
            **{
                TYPE_KEY: after,
                RECALL_KEY: None if built.recall is None else f"{built.recall:.4f}",
                BUILT_KEY: str(built.vectors),
            },
        )
        if built.recall is None:
            catalog.delete_info(session, [RECALL_KEY])
        if also_record:
            catalog.write_info(session, dict(also_record))
        session.commit()
    writer.images = built.store
    return OptimizeReport(
        before,
        after,
        built.vectors,
        built.seconds,
        built.device,
        built.recall,
        built.store.kind,
        built.store.params(),
        reason,
    )


def use_index_type(
    index_dir: Path,
    policy: str,
    *,
    lists: int | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    rerank: int | None = None,
    memory_budget: int | None = None,
    use_gpu: bool = False,
) -> OptimizeReport:
    """`mmsearch optimize`: rebuild the image vectors into the policy's type now, and record the
    policy with the new type (a refused or failed build leaves the index and its policy as
    they were)."""
    policy_record = policy_rows(policy, memory_budget)  # refuses an unknown policy first
    with IndexWriter(index_dir, None) as writer:
        _require_faiss(writer)
        record = read_record(writer)
        store = writer.images
        if policy == AUTO:
            budget = memory_budget if memory_budget is not None else record.budget()
            choice = choose_kind(len(store), store.dim, memory_budget=budget)
        else:
            choice = Choice(policy, f"--index-type {policy}")  # type: ignore[arg-type]
        spec = BuildSpec(choice.kind, lists=lists, nprobe=nprobe, ef_search=ef_search, rerank=rerank)
        # The factor is recorded as chosen even when auto picks an exact kind now, so that the
        # compressed index auto switches to later keeps it.
        rows = {**policy_record, **rerank_rows(rerank)}
        return rebuild(writer, spec, use_gpu=use_gpu, reason=choice.reason, also_record=rows)


def _require_faiss(writer: IndexWriter) -> None:
    """Milvus picks its own index type (FLAT, then HNSW as the collection grows)."""
    if writer.backends.uses_milvus:
        raise BackendSpecError(
            f"{writer.index_dir} keeps its vectors in Milvus, which chooses its own index type "
            "(exact while small, HNSW when large); `mmsearch optimize` applies to FAISS indexes"
        )


def use_ivf(
    index_dir: Path, *, lists: int | None = None, nprobe: int | None = None, use_gpu: bool = False
) -> OptimizeReport:
    """`optimize --ivf`: the image vectors as IVF (lists default to 4*sqrt(n), nprobe tuned)."""
    return use_index_type(index_dir, "ivf", lists=lists, nprobe=nprobe, use_gpu=use_gpu)


def use_flat(index_dir: Path) -> OptimizeReport:
    """`optimize --flat`: the image vectors as the exact store."""
    return use_index_type(index_dir, "flat")
