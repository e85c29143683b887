"""Index upkeep and measurement commands: calibrate, optimize, eval, info, remove.

mmsearch.cli registers them (`register`) after its own commands, so `--help` lists the everyday
commands first.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from indexer.store.search_params import MAX_RERANK
from mmsearch.cli_common import (
    DEFAULT_DEVICE,
    CheckpointOption,
    DbOption,
    DeviceOption,
    IndexTypeOption,
    MemoryBudgetOption,
    ModelOption,
    PretrainedOption,
    command,
    fail,
    index_dir_of,
    index_type_of,
    memory_budget_of,
    model_option_spec,
)

if TYPE_CHECKING:  # the store, FAISS and the model load inside the commands that use them
    from indexer.store.index_upkeep import OptimizeReport
    from indexer.training.fusion_protocol import FusionEvalSettings

# What `mmsearch eval` says of learned fusion for a model without a head.
NO_HEAD = "no head (train one with `mmsearch train-fusion`)"
# The fusion block's groups of queries, by the own text of their target, and their labels.
FUSION_GROUPS = (("all", "all"), ("with_text", "with own text"), ("without_text", "without own text"))


def calibrate_cmd(
    db: DbOption = None,
    device: DeviceOption = DEFAULT_DEVICE,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Record the scores of random caption/image pairs now (index does it when the index changed by >20%)."""
    from mmsearch.engine import Engine

    with Engine.open(index_dir_of(db), device=device) as engine:
        calibration = engine.calibrate()
    if as_json:
        typer.echo(json.dumps(asdict(calibration)))
        return
    stats = calibration.text_image
    typer.echo(
        f"random caption/image pairs ({calibration.probes}, n={stats.n}): mean {stats.mean:.3f}, "
        f"std {stats.std:.3f}, p50 {stats.p50:.3f}, p90 {stats.p90:.3f}, p99 {stats.p99:.3f}; "
        f"sentence hits above {stats.p99:.3f} count as likely relevant"
    )


def optimize_cmd(
    index_type: IndexTypeOption = None,
    ivf: Annotated[bool, typer.Option("--ivf", help="Same as --index-type ivf.")] = False,
    flat: Annotated[bool, typer.Option("--flat", help="Same as --index-type flat (exact search).")] = False,
    lists: Annotated[
        int | None,
        typer.Option(
            "--lists", min=1, help="IVF lists (ivf, sq8, ivfpq; default 4*sqrt(n), >= 39 vectors per list)."
        ),
    ] = None,
    nprobe: Annotated[
        int | None,
        typer.Option(
            "--nprobe", min=1, help="Default lists searched per query (default: tuned to recall@10 >= 0.95)."
        ),
    ] = None,
    ef_search: Annotated[
        int | None,
        typer.Option(
            "--ef-search", min=1, help="Default HNSW search width (default: tuned to recall@10 >= 0.95)."
        ),
    ] = None,
    rerank: Annotated[
        int | None,
        typer.Option(
            "--rerank",
            min=1,
            max=MAX_RERANK,
            help="Default candidates per result re-scored from the full vectors (sq8, ivfpq; 1: "
            "none; kept when the index rebuilds itself; default: tuned at each build).",
        ),
    ] = None,
    memory_budget: MemoryBudgetOption = None,
    db: DbOption = None,
    device: DeviceOption = DEFAULT_DEVICE,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Rebuild the image vectors as another index type now (auto: chosen by size and memory);
    training runs on the GPU with --device cuda when FAISS sees one."""
    from indexer.store.index_types import POLICIES
    from indexer.store.index_upkeep import use_index_type
    from indexer.store.vectors import LOSSY_KINDS

    index_type = index_type_of(index_type)
    chosen = [name for name, given in (("ivf", ivf), ("flat", flat)) if given]
    if index_type is not None:
        chosen.append(index_type)
    if len(chosen) != 1:
        fail(f"give exactly one of --index-type {{{','.join(POLICIES)}}}, --ivf or --flat", 2)
    policy = chosen[0]
    if lists is not None and policy not in ("ivf", "sq8", "ivfpq"):
        fail("--lists belongs to --index-type ivf, sq8 or ivfpq", 2)
    if nprobe is not None and policy not in ("ivf", "sq8", "ivfpq", "auto"):
        fail("--nprobe belongs to --index-type ivf, sq8 or ivfpq", 2)
    if ef_search is not None and policy not in ("hnsw", "auto"):
        fail("--ef-search belongs to --index-type hnsw", 2)
    if rerank is not None and policy not in ("sq8", "ivfpq", "auto"):
        fail("--rerank belongs to --index-type sq8 or ivfpq", 2)
    index_dir = index_dir_of(db)
    use_gpu = device.resolve().is_cuda
    report = use_index_type(
        index_dir,
        policy,
        lists=lists,
        nprobe=nprobe,
        ef_search=ef_search,
        rerank=rerank,
        memory_budget=memory_budget_of(memory_budget),
        use_gpu=use_gpu,
    )
    if as_json:
        typer.echo(json.dumps({"db": str(index_dir), **asdict(report)}))
        return
    summary = _optimize_summary(report, index_dir)
    if rerank is not None and report.kind not in LOSSY_KINDS:
        summary += f"\n--rerank {rerank} is recorded: it applies once auto picks sq8 or ivfpq"
    typer.echo(summary)


def _optimize_summary(report: OptimizeReport, index_dir: Path) -> str:
    recall = "" if report.recall is None else f"; recall@10 against exact search {report.recall:.3f}"
    return (
        f"{report.before} -> {report.after}: {report.vectors} vectors in {report.seconds:.1f} s "
        f"on the {report.device}{recall} ({index_dir}; {report.reason})"
    )


def eval_cmd(
    corpus: Annotated[Path, typer.Option("--corpus", help="Caption corpus with images.")],
    split: Annotated[
        str | None, typer.Option("--split", help="Split to score (default: whole corpus).")
    ] = None,
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    pretrained: PretrainedOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    no_fusion: Annotated[
        bool,
        typer.Option(
            "--no-fusion",
            help="Skip the fusion block (text->image with own text on half the images: image "
            "only, linear, learned).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    device: DeviceOption = DEFAULT_DEVICE,
) -> None:
    """Recall@1/5/10 and median rank for text->image and image->text (and the shift split), and
    text->image with own text on half the images: image only, linear and learned fusion."""
    from indexer.models.encoder import load_encoder
    from indexer.training.corpora import load_corpus
    from indexer.training.evaluate import SHIFT_SPLIT, evaluate_with_shift

    data = load_corpus(corpus)
    if split is not None:
        data.select(split)  # an unknown split is refused before the model loads
    encoder = load_encoder(model_option_spec(model, checkpoint, pretrained), device=device)
    fusion = None if no_fusion else _fusion_settings(encoder.info.source, encoder.info.model_id)
    result = evaluate_with_shift(encoder, data, split=split, batch_size=batch_size, fusion=fusion)
    if as_json:
        typer.echo(json.dumps(result))
        return
    _print_evaluation(f"{corpus} split={split or 'all'}", result)
    if SHIFT_SPLIT in result:
        typer.echo("")
        _print_evaluation(
            f"{corpus} split={SHIFT_SPLIT} (another renderer, never trained on)", result[SHIFT_SPLIT]
        )


def _fusion_settings(model_source: str, model_id: str) -> FusionEvalSettings:
    """The engine's default linear fusion, and the model's head when it has a usable one."""
    from indexer.indexing.fusion_spec import DEFAULT_TEXT_WEIGHT
    from indexer.models.fusion_head import FusionHeadError, NoFusionHeadError, load_fusion_head
    from indexer.training.fusion_protocol import FusionEvalSettings

    try:
        head = load_fusion_head(model_source, model_id)
    except NoFusionHeadError:
        return FusionEvalSettings(DEFAULT_TEXT_WEIGHT, missing_head=NO_HEAD)
    except FusionHeadError as exc:
        return FusionEvalSettings(DEFAULT_TEXT_WEIGHT, missing_head=f"unusable head ({exc})")
    return FusionEvalSettings(DEFAULT_TEXT_WEIGHT, head=head)


def _print_evaluation(title: str, result: dict) -> None:  # type: ignore[type-arg]
    typer.echo(
        f"{title}: {result['counts']['images']} images, {result['counts']['captions']} captions"
    )
    _print_metrics("all captions", result)
    for name, group in result.get("breakdown", {}).items():
        _print_metrics(f"{name} (n={group['n']})", group)
    if "fusion" in result:
        _print_fusion(result["fusion"])


def _print_fusion(fusion: dict) -> None:  # type: ignore[type-arg]
    """Three lines (all, with and without own text) per fusion method the block has."""
    typer.echo(
        f"fusion, t2i with own text on {fusion['images_with_text']} of {fusion['images']} images "
        f"({fusion['short_text_share']:.0%} of those shortened; seed {fusion['seed']}):"
    )
    linear = fusion["linear"]
    methods = [
        ("image only", fusion["image_only"]),
        (f"linear w={linear['text_weight']:g}", linear),
        ("learned", fusion["learned"]),
    ]
    for method, metrics in methods:
        if metrics is None:
            continue
        for group, label in FUSION_GROUPS:
            m = metrics[group]
            typer.echo(
                f"  {method if group == 'all' else '':14s} {label:16s} R@1 {m['R@1']:.3f}  "
                f"R@5 {m['R@5']:.3f}  R@10 {m['R@10']:.3f}"
            )
    if "note" in fusion:
        typer.echo(fusion["note"])


def _print_metrics(label: str, metrics: dict) -> None:  # type: ignore[type-arg]
    """One line per direction the group has (a group of captions alone, e.g. new phrasings,
    has no image -> text score)."""
    for direction in ("t2i", "i2t"):
        if direction not in metrics:
            continue
        m = metrics[direction]
        typer.echo(
            f"{label:28s} {direction}  R@1 {m['R@1']:.3f}  R@5 {m['R@5']:.3f}"
            f"  R@10 {m['R@10']:.3f}  medr {m['medr']:.1f}"
        )


def info_cmd(db: DbOption = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Model, counts, dimension, index type (kind, parameters, recall at build) and size on disk."""
    from mmsearch.engine import Engine

    with Engine.open(index_dir_of(db), check_model=False) as engine:
        stats = engine.stats()
        problem = engine.model_problem
    if problem is not None:  # described all the same: that is when a user asks what it holds
        typer.echo(f"note: {problem}", err=True)
    if as_json:
        typer.echo(json.dumps(asdict(stats)))
        return
    for key, value in asdict(stats).items():
        typer.echo(f"{key:14s} {value}")


def remove_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to drop from the index.")],
    db: DbOption = None,
) -> None:
    """Remove files (or everything under folders) from the index; the files themselves are untouched."""
    from indexer.indexing.edits import remove_images

    removed = remove_images(index_dir_of(db), paths)
    typer.echo(f"removed {removed} image{'' if removed == 1 else 's'} from {index_dir_of(db)}")


def register() -> None:
    """Add these commands to the shared app."""
    for name, func in (
        ("calibrate", calibrate_cmd),
        ("optimize", optimize_cmd),
        ("eval", eval_cmd),
        ("info", info_cmd),
        ("remove", remove_cmd),
    ):
        command(name)(func)
