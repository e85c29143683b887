"""`mmsearch train-fusion`: train a model's learned fusion head and save it in the model folder.

Registered by mmsearch.cli (`register`); torch and the training code are imported only when the
command runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mmsearch.cli_common import DEFAULT_DEVICE, DeviceOption, ModelOption, command, fail

if TYPE_CHECKING:
    from indexer.training.fusion_head import FusionEval, FusionTrainReport

DEFAULT_STEPS = 1500


def train_fusion_cmd(
    corpus: Annotated[
        Path,
        typer.Option(
            "--corpus",
            help="Caption corpus with several captions per image; trains on its train split and "
            "selects on val (a seeded 10% of the images without splits). Test is never read.",
        ),
    ],
    model: ModelOption = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimisation steps.")] = DEFAULT_STEPS,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOption = DEFAULT_DEVICE,
    quiet: Annotated[bool, typer.Option("--quiet", help="Only the final summary.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the val numbers as JSON.")] = False,
) -> None:
    """Train the learned fusion head (--fusion learned) on frozen model vectors; saved in the model folder."""
    from indexer.models.encoder import load_encoder
    from indexer.models.fusion_head import head_dir
    from indexer.training.corpora import load_corpus
    from indexer.training.fusion_head import FusionTrainConfig, select_fusion_head, train_and_val

    data = load_corpus(corpus)
    encoder = load_encoder(model, device=device)
    folder = head_dir(encoder.info.source)
    if folder is None:
        fail(
            f"the head is saved in the model folder, and {encoder.info.source} is not one: "
            "fine-tune it into a folder first (`mmsearch train --init ... --out DIR`)"
        )
    config = FusionTrainConfig(steps=steps, seed=seed)
    started = time.perf_counter()
    if not (quiet or as_json):
        typer.echo(f"encoding {corpus} with {encoder.info.source} ...", err=True)
    train, val = train_and_val(encoder, data, seed=seed)
    encoded_s = time.perf_counter() - started

    def show(result: FusionEval) -> None:
        if quiet or as_json:
            return
        m = result.metrics
        typer.echo(
            f"step {result.step:5d}  loss {result.loss:.4f}  val R@1 {m['all']['R@1']:.3f} "
            f"R@10 {m['all']['R@10']:.3f}  no own text R@1 {m['without_text']['R@1']:.3f} "
            f"R@10 {m['without_text']['R@10']:.3f}" + ("  *best" if result.is_best else "")
        )

    provenance = {
        "corpus": str(corpus),
        "train_images": len(train.images),
        "val_images": len(val.images),
    }
    report = select_fusion_head(
        train, val, model_id=encoder.info.model_id, config=config, provenance=provenance, on_eval=show
    )
    report.head.save(folder)
    if as_json:
        typer.echo(json.dumps(_summary(report, folder, encoded_s)))
        return
    typer.echo(_summary_line(report, folder))


def _summary(report: FusionTrainReport, folder: Path, encoded_s: float) -> dict[str, object]:
    weight = report.best_linear_weight()
    return {
        "model_dir": str(folder),
        "best_step": report.best_step,
        "val": {"learned": report.val, "linear": {"text_weight": weight, **report.linear[str(weight)]}},
        "encode_s": round(encoded_s, 1),
        "train_s": round(report.seconds, 1),
    }


def _summary_line(report: FusionTrainReport, folder: Path) -> str:
    from indexer.models.fusion_head import HEAD_CONFIG_FILE, HEAD_WEIGHTS_FILE

    weight = report.best_linear_weight()
    learned, linear = report.val, report.linear[str(weight)]
    return (
        f"val, half the images with own text: learned R@1 {learned['all']['R@1']:.3f} "
        f"R@10 {learned['all']['R@10']:.3f} (no own text R@1 {learned['without_text']['R@1']:.3f}); "
        f"linear at its best text weight {weight}: R@1 {linear['all']['R@1']:.3f} "
        f"R@10 {linear['all']['R@10']:.3f} (no own text R@1 {linear['without_text']['R@1']:.3f}). "
        f"Head of step {report.best_step} saved to {folder / HEAD_WEIGHTS_FILE} and {HEAD_CONFIG_FILE}; "
        "use it with --fusion learned"
    )


def register() -> None:
    """Add the command to the shared app."""
    command("train-fusion")(train_fusion_cmd)
