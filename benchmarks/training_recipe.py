"""What each choice of the training recipe changes: short runs, one choice removed at a time.

    python benchmarks/training_recipe.py --corpus /tmp/sc/corpus.jsonl --epochs 8 [--only NAME ...]

Every variant trains the `sample-shapes` config from the same seed in its own process (so peak
memory is its own), keeps the best epoch by validation recall, then scores the test split
(new backgrounds, rotation, JPEG: a distribution shift) and, when the corpus has one, the shift
split. Prints one Markdown row per variant; the README's table comes from here.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from indexer.models.config import TrainConfig, load_named_config
from indexer.models.encoder import load_encoder
from indexer.training import loop
from indexer.training.corpora import load_corpus
from indexer.training.evaluate import SHIFT_SPLIT, evaluate_corpus

CONFIG = "sample-shapes"
# The recipe: what `make default-model` runs, shortened to a few epochs.
RECIPE = TrainConfig(batch_size=128, lr=2e-3, weight_decay=0.05, grad_clip=1.0, caption_agreement=1.0)
VARIANTS = (
    "recipe",
    "no augmentation",
    "augmentation without flips",
    "constant learning rate",
    "no weight decay",
    "weight decay on every parameter",
    "no gradient clipping",
    "batch 64",
    "batch 256",
)
# Warm-up as a share of all steps, so short runs warm up as long runs do.
WARMUP_SHARE = 0.1
KIB = 1024


def train_config_for(variant: str, *, epochs: int, steps_per_epoch_at_128: int) -> TrainConfig:
    """RECIPE with one choice changed; the schedule and decay variants patch the loop instead."""
    augment = load_named_config(CONFIG).augment
    config = replace(RECIPE, epochs=epochs, augment=augment)
    if variant == "no augmentation":
        config = replace(config, augment=replace(augment, enabled=False))
    elif variant == "augmentation without flips":
        config = replace(config, augment=replace(augment, flip=False))
    elif variant == "no weight decay":
        config = replace(config, weight_decay=0.0)
    elif variant == "no gradient clipping":
        config = replace(config, grad_clip=float("inf"))
    elif variant.startswith("batch "):
        config = replace(config, batch_size=int(variant.split()[1]))
    steps = max(1, round(steps_per_epoch_at_128 * 128 / config.batch_size)) * epochs
    return replace(config, warmup_steps=max(1, round(WARMUP_SHARE * steps)))


def patch_loop(variant: str) -> None:
    """The two choices that are code, not settings: the schedule and which parameters decay."""
    if variant == "constant learning rate":
        loop.warmup_cosine = lambda warmup, total: lambda step: 1.0  # type: ignore[assignment]
    elif variant == "weight decay on every parameter":

        def every_parameter(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
            return [{"params": list(model.parameters()), "weight_decay": weight_decay}]

        loop.param_groups = every_parameter  # type: ignore[assignment]


def run_variant(variant: str, corpus_path: Path, out: Path, epochs: int) -> dict[str, Any]:
    """Train one variant and score it; runs in a child process."""
    torch.set_num_threads(2)
    corpus = load_corpus(corpus_path)
    train_images = len(corpus.select("train").images())
    config = train_config_for(variant, epochs=epochs, steps_per_epoch_at_128=max(1, train_images // 128))
    patch_loop(variant)
    started = time.perf_counter()
    report = loop.train(
        corpus,
        out,
        model_config=load_named_config(CONFIG),
        train_config=config,
        device="cpu",
        progress=False,
    )
    seconds = time.perf_counter() - started
    best = next(e for e in report.epochs if e.epoch == report.best_epoch)
    encoder = load_encoder(out, device="cpu")
    scores = {"val": best.metrics, "test": evaluate_corpus(encoder, corpus.select("test"))}
    if SHIFT_SPLIT in corpus.splits():
        scores[SHIFT_SPLIT] = evaluate_corpus(encoder, corpus.select(SHIFT_SPLIT))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_mib = usage.ru_maxrss / KIB
    return {
        "variant": variant,
        "seconds": round(seconds, 1),
        # CPU time is what a shared machine's load does not inflate much: wall time on an idle
        # 2-core machine is about half of it.
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_mib": round(peak_mib),
        "best_epoch": report.best_epoch,
        **scores,
    }


def markdown_row(result: dict[str, Any]) -> str:
    """| variant | val t2i R@1 | val i2t R@1 | val RSUM | test t2i R@1/R@10 | test i2t R@1/R@10 | ... |"""

    def pair(split: str, direction: str) -> str:
        if split not in result:
            return "-"
        m = result[split][direction]
        return f"{m['R@1']:.3f} / {m['R@10']:.3f}"

    val = result["val"]
    rsum = sum(val[d][f"R@{k}"] for d in ("t2i", "i2t") for k in (1, 5, 10))
    cells = [
        result["variant"],
        f"{val['t2i']['R@1']:.3f}",
        f"{val['i2t']['R@1']:.3f}",
        f"{rsum:.2f}",
        pair("test", "t2i"),
        pair("test", "i2t"),
        pair(SHIFT_SPLIT, "t2i"),
        pair(SHIFT_SPLIT, "i2t"),
        f"{result['seconds']:.0f}",
        f"{result['cpu_seconds']:.0f}" if "cpu_seconds" in result else "-",
        str(result["peak_mib"]),
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| variant | val t2i R@1 | val i2t R@1 | val RSUM | test t2i R@1 / R@10 | test i2t R@1 / R@10 "
    "| shift t2i R@1 / R@10 | shift i2t R@1 / R@10 | train s | CPU s | peak MiB |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    """Run the variants one after another (each in a child process) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmsearch-recipe"))
    parser.add_argument("--only", nargs="*", choices=VARIANTS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--table", action="store_true", help="Print the table of finished runs in --work.")
    args = parser.parse_args()
    if args.table:
        print(HEADER)
        for variant in args.only or VARIANTS:
            saved = args.work / variant.replace(" ", "-") / "recipe-result.json"
            if saved.is_file():
                print(markdown_row(json.loads(saved.read_text())))
        return
    if args.variant:
        out = args.work / args.variant.replace(" ", "-")
        result = run_variant(args.variant, args.corpus, out, args.epochs)
        (out / "recipe-result.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result))
        return
    print(HEADER, flush=True)
    for variant in args.only or VARIANTS:
        child = [sys.executable, __file__, "--corpus", str(args.corpus), "--epochs", str(args.epochs)]
        child += ["--work", str(args.work), "--variant", variant]
        output = subprocess.run(child, check=True, capture_output=True, text=True).stdout
        print(markdown_row(json.loads(output.strip().splitlines()[-1])), flush=True)


if __name__ == "__main__":
    main()
