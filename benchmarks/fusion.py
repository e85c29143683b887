"""Hybrid documents on the sample corpus: does fusing an image's own text beat pixels alone?

Half of the test scenes (seeded) get a partial caption as their own text, either a paraphrase
(a non-canonical caption, written in templates the model never saw) or only the colours and
shapes (no sizes, no positions). Every test scene's canonical caption is then a query, and
text->image Recall@1/5/10 is measured for image-only scoring (text weight 0) and fused scoring
at text weights 0.1 .. 1.0, over all queries and split by whether the target has own text.
The main table goes through the public Engine (`Engine.add(captions=...)`,
`Engine.search_vector`); the alignment ablation calls `score_documents` directly with each way
of aligning own-text similarities to image similarities (none / mean shift / z-score).

    .venv/bin/python benchmarks/fusion.py --corpus sample_corpus/build --out benchmarks/FUSION.md
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from indexer import catalog
from indexer.calibration import FUSION_ALIGN, Calibration
from indexer.encoders import load_encoder
from indexer.pipeline import IndexOptions, index_folders
from indexer.vectors import VectorStore
from mmsearch.engine import Engine
from mmsearch.query import DEFAULT_TEXT_WEIGHT, score_documents

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
KS = (1, 5, 10)
CONDITIONS = ("paraphrase", "colour+shape")


@dataclass(frozen=True)
class Scene:
    """One test image: its absolute path, canonical caption, paraphrases and objects."""

    path: str
    canonical: str
    paraphrases: tuple[str, ...]
    objects: tuple[dict[str, str], ...]


def load_scenes(corpus_dir: Path, split: str) -> list[Scene]:
    """Scenes of a split from corpus.jsonl, in file order."""
    grouped: dict[str, dict[str, object]] = {}
    with open(corpus_dir / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            if record["split"] != split:
                continue
            path = str((corpus_dir / record["image"]).resolve())
            scene = grouped.setdefault(path, {"paraphrases": [], "objects": record["objects"]})
            if record["canonical"]:
                scene["canonical"] = record["caption"]
            else:
                scene["paraphrases"].append(record["caption"])  # type: ignore[union-attr]
    return [
        Scene(p, str(s["canonical"]), tuple(s["paraphrases"]), tuple(s["objects"]))  # type: ignore[arg-type]
        for p, s in grouped.items()
    ]


def partial_caption(scene: Scene, condition: str, rng: random.Random) -> str:
    """A caption that says less than the canonical one (or says it differently)."""
    if condition == "paraphrase" and scene.paraphrases:
        return rng.choice(scene.paraphrases)
    return ", ".join(f"{o['color']} {o['shape']}" for o in scene.objects)


def recall(ranks: Sequence[int | None]) -> dict[str, float]:
    """R@K over queries; a rank is 1-based, None when the target is not in the top 10."""
    n = max(len(ranks), 1)
    return {f"R@{k}": sum(1 for r in ranks if r is not None and r <= k) / n for k in KS}


def target_ranks(
    engine: Engine, queries: np.ndarray, targets: list[int], weight: float
) -> tuple[list[int | None], list[bool]]:
    """Rank of each query's target in the top 10 through the Engine, and whether it is flagged
    likely relevant."""
    ranks: list[int | None] = []
    flagged: list[bool] = []
    for vector, target in zip(queries, targets, strict=True):
        results = engine.search_vector(vector, max(KS), text_weight=weight)
        ids = [h.id for h in results.hits]
        rank = ids.index(target) + 1 if target in ids else None
        ranks.append(rank)
        relevance = results.relevance
        flagged.append(rank is not None and relevance is not None and relevance[rank - 1].likely_relevant)
    return ranks, flagged


def direct_ranks(
    stores: tuple[VectorStore, VectorStore],
    calibration: Calibration,
    queries: np.ndarray,
    targets: list[int],
    weight: float,
    align: str,
) -> list[int | None]:
    """Ablation: the same scoring function with another alignment of own-text similarities."""
    ranks: list[int | None] = []
    for vector, target in zip(queries, targets, strict=True):
        scored = score_documents(
            vector, *stores, max(KS), text_weight=weight, calibration=calibration, align=align  # type: ignore[arg-type]
        )
        ids = scored.ids.tolist()
        ranks.append(ids.index(target) + 1 if target in ids else None)
    return ranks


def split_recall(ranks: list[int | None], has_text: list[bool]) -> dict[str, dict[str, float]]:
    """Recall over all queries, and over targets with / without own text."""
    return {
        "all": recall(ranks),
        "with_text": recall([r for r, t in zip(ranks, has_text, strict=True) if t]),
        "without_text": recall([r for r, t in zip(ranks, has_text, strict=True) if not t]),
    }


def run_condition(
    engine: Engine,
    scenes: list[Scene],
    with_text: set[str],
    condition: str,
    photos: Path,
    queries: np.ndarray,
    seed: int,
) -> dict[str, object]:
    """Give the chosen scenes their partial captions, recalibrate, measure every weight."""
    rng = random.Random(seed)
    captions = {s.path: partial_caption(s, condition, rng) for s in scenes if s.path in with_text}
    started = time.perf_counter()
    report = engine.add([photos], captions=captions)
    calibration = engine.calibrate()  # own texts replaced in place: counts alone would not trigger it
    add_s = time.perf_counter() - started
    ids = _ids_by_path(engine, scenes)
    targets = [ids[s.path] for s in scenes]
    has_text = [s.path in with_text for s in scenes]
    rows = []
    for weight in WEIGHTS:
        ranks, flagged = target_ranks(engine, queries, targets, weight)
        rows.append(
            {"weight": weight, **split_recall(ranks, has_text), "flagged": sum(flagged) / len(flagged)}
        )
    stores = (
        VectorStore.load(engine.index_dir / "images.faiss", dim=engine.info.dim),
        VectorStore.load(engine.index_dir / "doc_texts.faiss", dim=engine.info.dim),
    )
    ablation = {
        align: [
            {
                "weight": w,
                **split_recall(direct_ranks(stores, calibration, queries, targets, w, align), has_text),
            }
            for w in WEIGHTS
        ]
        for align in ("none", "mean", "z")
    }
    example = next(iter(captions.items()))
    return {
        "condition": condition,
        "rows": rows,
        "ablation": ablation,
        "own_texts": report.own_texts,
        "add_s": round(add_s, 1),
        "example": {"image": Path(example[0]).name, "own_text": example[1]},
        "calibration": {
            "text_image_mean": round(calibration.text_image.mean, 3),
            "text_image_p99": round(calibration.text_image.p99, 3),
            "text_doc_mean": round(calibration.text_doc.mean, 3) if calibration.text_doc else None,
        },
    }


def _ids_by_path(engine: Engine, scenes: list[Scene]) -> dict[str, int]:
    sql = catalog.open_catalog(engine.index_dir, create=False)
    try:
        with Session(sql) as session:
            rows = catalog.images_by_path(session, [s.path for s in scenes])
    finally:
        sql.dispose()
    return {path: row.id for path, row in rows.items()}


def mean_recall(results: list[dict[str, object]], align: str, weight: float, group: str) -> float:
    """Mean of R@1, R@5 and R@10 over both conditions, for one alignment, weight and group."""
    values = [
        v
        for result in results
        for row in result["ablation"][align]  # type: ignore[index]
        if row["weight"] == weight
        for v in row[group].values()
    ]
    return float(np.mean(values))


def best_weight(results: list[dict[str, object]], align: str = FUSION_ALIGN) -> float:
    """The weight with the best mean recall over all queries of both conditions, among those
    that leave images without own text at least as well found as image-only retrieval."""
    floor = mean_recall(results, align, 0.0, "without_text")
    fair = [w for w in WEIGHTS if w > 0 and mean_recall(results, align, w, "without_text") >= floor]
    return max(fair or WEIGHTS, key=lambda w: mean_recall(results, align, w, "all"))


def summary(results: list[dict[str, object]], best: float) -> list[str]:
    """The headline: image-only vs the chosen weight, per condition and group."""
    lines = [
        f"## Summary (default: `DEFAULT_TEXT_WEIGHT = {best}`, alignment `{FUSION_ALIGN}`)",
        "",
        "| own text | queries | image only R@1 / R@5 / R@10 | fused (w = "
        f"{best}) R@1 / R@5 / R@10 |",
        "|---|---|---|---|",
    ]
    for result in results:
        rows = {row["weight"]: row for row in result["ablation"][FUSION_ALIGN]}  # type: ignore[index]
        for group, label in (
            ("all", "all"),
            ("with_text", "target has own text"),
            ("without_text", "target has no own text"),
        ):
            cells = [
                " / ".join(f"{rows[w][group][f'R@{k}']:.3f}" for k in KS) for w in (0.0, best)
            ]
            lines.append(f"| {result['condition']} | {label} | {cells[0]} | {cells[1]} |")
    return [*lines, ""]


def to_markdown(meta: dict[str, object], results: list[dict[str, object]], best: float) -> str:
    """FUSION.md."""
    lines = [
        "# Hybrid documents: fusing an image's own text (sample corpus)",
        "",
        f"Generated by `benchmarks/fusion.py` on {meta['date']} ({meta['machine']}).",
        f"Model: `{meta['model']}` ({meta['model_id']}). Corpus: `{meta['corpus']}`, split "
        f"`{meta['split']}`: {meta['scenes']} scenes; {meta['with_text']} of them "
        f"({meta['fraction']:.0%}, seed {meta['seed']}) get a partial caption as their own text.",
        "Queries: the canonical caption of every scene (one per scene); the target is that scene.",
        "Weight 0 is image-only retrieval; w > 0 scores an image with own text as "
        "(1-w)·image similarity + w·own-text similarity, the own-text similarity aligned with "
        f"the index's calibration (`{FUSION_ALIGN}`, see the ablation); images without own text "
        "keep their image score. 'target flagged' = the target is in the top 10 and marked "
        "likely relevant (above the p99 of random pairs).",
        "",
    ]
    for result in results:
        lines += [
            f"## Own text = {result['condition']}",
            "",
            f"Example own text: `{result['example']['own_text']}` "  # type: ignore[index]
            f"({result['example']['image']}). Calibration: {result['calibration']}.",  # type: ignore[index]
            "",
            "| text weight | all R@1 | R@5 | R@10 | with own text R@1 | R@5 | R@10 "
            "| without own text R@1 | R@5 | R@10 | target flagged likely relevant |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in result["rows"]:  # type: ignore[attr-defined]
            label = "0 (image only)" if row["weight"] == 0 else f"{row['weight']:.1f}"
            if row["weight"] == best:
                label = f"**{label} (default)**"
            cells = [label]
            for group in ("all", "with_text", "without_text"):
                cells += [f"{row[group][f'R@{k}']:.3f}" for k in KS]
            cells.append(f"{row['flagged']:.3f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", *ablation_table(result["ablation"]), ""]  # type: ignore[arg-type]
    return "\n".join(lines[:2] + summary(results, best) + lines[2:])


def ablation_table(ablation: dict[str, list[dict[str, object]]]) -> list[str]:
    """R@1 / R@10 per weight for each alignment of own-text similarities."""
    header = "| text weight | " + " | ".join(
        f"{align}: all R@1 | R@10 | with text R@1 | without text R@1 | R@10" for align in ablation
    )
    lines = [
        "Alignment ablation (own-text similarity used raw, shifted by the random-pair mean "
        "difference, or z-scored onto the image scale):",
        "",
        header + " |",
        "|---" * (1 + 5 * len(ablation)) + "|",
    ]
    for n, weight in enumerate(WEIGHTS):
        cells = [f"{weight:.1f}"]
        for rows in ablation.values():
            row = rows[n]
            cells += [
                f"{row['all']['R@1']:.3f}",  # type: ignore[index]
                f"{row['all']['R@10']:.3f}",  # type: ignore[index]
                f"{row['with_text']['R@1']:.3f}",  # type: ignore[index]
                f"{row['without_text']['R@1']:.3f}",  # type: ignore[index]
                f"{row['without_text']['R@10']:.3f}",  # type: ignore[index]
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    """Index once, measure both partial-caption conditions, write the report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=Path("sample_corpus/build"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", default=None, help="model dir (default: the bundled default model)")
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/FUSION.md"))
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--from-json", type=Path, default=None, help="re-render a --json-out file")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        best = best_weight(saved["results"])
        args.out.write_text(to_markdown(saved["meta"], saved["results"], best) + "\n", encoding="utf-8")
        print(f"best text weight {best} (DEFAULT_TEXT_WEIGHT is {DEFAULT_TEXT_WEIGHT}); wrote {args.out}")
        return

    scenes = load_scenes(args.corpus, args.split)
    chooser = random.Random(args.seed)
    with_text = set(chooser.sample([s.path for s in scenes], round(args.fraction * len(scenes))))
    encoder = load_encoder(args.model, device="cpu")
    photos = args.corpus / "images" / args.split
    with tempfile.TemporaryDirectory(prefix="mmsearch-fusion-") as tmp:
        index_dir = Path(tmp) / "index"
        index_folders([photos], index_dir, encoder, options=IndexOptions(batch_size=64))
        queries = encoder.encode_texts([s.canonical for s in scenes])  # (n, dim)
        results = []
        with Engine.open(index_dir, model=args.model, device="cpu") as engine:
            for n, condition in enumerate(CONDITIONS):
                result = run_condition(
                    engine, scenes, with_text, condition, photos, queries, args.seed + n
                )
                results.append(result)
                print(json.dumps(result))
    best = best_weight(results)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {platform.python_version()}, CPU",
        "model": encoder.info.source,
        "model_id": encoder.info.model_id,
        "corpus": str(args.corpus),
        "split": args.split,
        "scenes": len(scenes),
        "with_text": len(with_text),
        "fraction": args.fraction,
        "seed": args.seed,
    }
    args.out.write_text(to_markdown(meta, results, best) + "\n", encoding="utf-8")
    if args.json_out:
        args.json_out.write_text(json.dumps({"meta": meta, "results": results, "best": best}))
    print(f"best text weight {best} (DEFAULT_TEXT_WEIGHT is {DEFAULT_TEXT_WEIGHT}); wrote {args.out}")


if __name__ == "__main__":
    main()
