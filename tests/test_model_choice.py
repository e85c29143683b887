"""Choosing a model: specs and devices parsed once into values, the strings an index records,
what a model says it was trained on, the note a new index with the bundled model prints, and
`mmsearch models`."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from support import mmsearch_process
from typer.testing import CliRunner

from indexer.errors import InvalidInputError
from indexer.models.available import model_folders
from indexer.models.devices import AUTO, CPU, Device, DeviceError
from indexer.models.encoder import load_encoder
from indexer.models.lazy import expected_info
from indexer.models.spec import (
    DEFAULT_MODEL_DIR,
    OPENCLIP_CONFIG_FILE,
    OPENCLIP_WEIGHTS_FILE,
    ModelLoadError,
    ModelSpec,
    OpenClipSpec,
    TrainedOn,
    file_digest,
    trained_on,
)
from mmsearch.cli import BUNDLED_MODEL_NOTE, app
from mmsearch.paths import HOME_ENV

REPO = Path(__file__).resolve().parents[1]
OPENCLIP_INSTALLED = importlib.util.find_spec("open_clip") is not None


# -- devices -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "device"),
    [("auto", AUTO), ("cpu", CPU), ("cuda", Device("cuda")), ("cuda:1", Device("cuda", 1))],
)
def test_device_names_parse_into_values_and_back(text: str, device: Device) -> None:
    assert Device.parse(text) == device
    assert str(device) == text
    assert Device.parse(device) is device


@pytest.mark.parametrize("text", ["tpu", "gpu", "cuda:", "cuda:x", "CPU", ""])
def test_unknown_devices_are_refused_with_the_choices(text: str) -> None:
    with pytest.raises(DeviceError, match=r"use auto, cpu or cuda\[:N\]") as caught:
        Device.parse(text)
    assert isinstance(caught.value, InvalidInputError)


def test_the_cli_refuses_a_bad_device_as_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["search", "a red image", "--db", str(tmp_path), "--device", "tpu"])
    assert result.exit_code == 2
    message = " ".join(result.output.replace("│", " ").split())  # rich draws a box and wraps
    assert "Invalid value for '--device': unknown device 'tpu': use auto, cpu or cuda[:N]" in message


def test_only_the_device_module_compares_device_names() -> None:
    """Devices are parsed once (indexer/models/devices.py); nothing else inspects their strings."""
    offenders = [
        f"{path.relative_to(REPO)}"
        for folder in ("indexer", "mmsearch", "benchmarks")
        for path in sorted((REPO / folder).rglob("*.py"))
        if 'startswith("cuda")' in path.read_text(encoding="utf-8")
        or "startswith('cuda')" in path.read_text(encoding="utf-8")
    ]
    assert offenders == []


# -- model specs and the strings an index records ------------------------------------------------


def test_no_model_means_the_bundled_one_recorded_by_its_folder() -> None:
    spec = ModelSpec.parse(None)
    assert spec == ModelSpec.bundled() and spec.is_bundled and not spec.is_openclip
    assert spec.source() == str(DEFAULT_MODEL_DIR.resolve())
    assert ModelSpec.parse(spec.source()).is_bundled  # naming its folder is the same model


def test_the_bundled_models_old_folder_recorded_by_old_indexes_means_the_bundled_one(tmp_path: Path) -> None:
    assert ModelSpec.parse(tmp_path / "site-packages" / "indexer" / "default_model").is_bundled


def test_a_native_folder_is_recorded_by_its_absolute_path(
    colors_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(colors_model.parent)
    spec = ModelSpec.parse(colors_model.name)
    assert (spec.kind, spec.folder) == ("native", colors_model.resolve())
    assert spec.source() == str(colors_model.resolve())
    assert spec.source() == load_encoder(colors_model, device="cpu").info.source


def test_openclip_specs_keep_their_recorded_form(tmp_path: Path) -> None:
    weights = tmp_path / "my weights.safetensors"
    weights.write_bytes(b"not really weights")
    published = ModelSpec.parse("openclip:ViT-B-32", pretrained="laion2b_s34b_b79k")
    local = ModelSpec.parse("openclip:ViT-B-32", checkpoint=weights)
    assert published.source() == "openclip:ViT-B-32?pretrained=laion2b_s34b_b79k"
    assert local.source() == f"openclip:ViT-B-32?checkpoint={str(weights.resolve()).replace(' ', '%20')}"
    for spec in (published, local):
        assert spec.kind == "openclip" and spec.is_openclip
        assert ModelSpec.parse(spec.source()) == spec  # read back from an index unchanged
    assert local.openclip == OpenClipSpec("ViT-B-32", checkpoint=weights.resolve())


@pytest.mark.parametrize(
    ("model", "options", "message"),
    [
        (None, {"pretrained": "laion2b_s34b_b79k"}, "add --model openclip:ARCH"),
        ("some/folder", {"checkpoint": Path("w.pt")}, "add --model openclip:ARCH"),
        ("openclip:ViT-B-32", {}, "exactly one weights source"),
        ("openclip:ViT-B-32?color=red", {}, "bad model spec"),
    ],
)
def test_inconsistent_model_options_are_refused(model: str | None, options: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ModelLoadError, match=message):
        ModelSpec.parse(model, **options)


def test_a_fine_tuned_openclip_folder_is_described_without_open_clip(tmp_path: Path) -> None:
    folder = tmp_path / "tuned"
    folder.mkdir()
    (folder / OPENCLIP_WEIGHTS_FILE).write_bytes(b"weights")
    config = {"model_cfg": {"embed_dim": 24}, "mmsearch": {"arch": "tiny-arch"}}
    (folder / OPENCLIP_CONFIG_FILE).write_text(json.dumps(config))
    spec = ModelSpec.parse(folder)
    assert (spec.kind, spec.source()) == ("openclip-folder", str(folder.resolve()))
    info = expected_info(spec)
    digest = file_digest(folder / OPENCLIP_WEIGHTS_FILE)
    assert (info.kind, info.source, info.model_id, info.dim) == (
        "openclip",
        str(folder.resolve()),
        f"openclip:tiny-arch:{digest}",
        24,
    )


def test_a_missing_recorded_model_says_so(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="recorded in this index is missing"):
        ModelSpec.from_recorded(str(tmp_path / "gone"))


def test_a_missing_model_folder_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="mmsearch train"):
        expected_info(ModelSpec.parse(tmp_path / "gone"))


# -- trained_on ----------------------------------------------------------------------------------


def test_the_bundled_model_says_what_it_was_trained_on() -> None:
    trained = trained_on(DEFAULT_MODEL_DIR)
    assert trained is not None
    assert trained.corpus == "mmsearch-sample-corpus/2"  # generate.py's name and version, as training read it
    vocabulary = "circles, squares, triangles, stars and hexagons in 8 colours, 2 sizes and 9 positions"
    assert vocabulary in trained.domain
    assert (trained.images, trained.pairs) == (3600, 13400)  # the train split of generate.py --scale 1


def _without_trained_on(folder: Path) -> Path:
    """A model folder as written before training recorded what it was trained on."""
    config = json.loads((folder / "config.json").read_text())
    config.pop("trained_on", None)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_trained_on_is_optional_and_tolerant(colors_model: Path, tmp_path: Path) -> None:
    odd = tmp_path / "odd"
    shutil.copytree(colors_model, odd)
    config = json.loads((_without_trained_on(odd) / "config.json").read_text())
    assert trained_on(odd) is None
    for value in ("a string", {"domain": "no corpus"}, None):
        (odd / "config.json").write_text(json.dumps({**config, "trained_on": value}))
        assert trained_on(odd) is None
    (odd / "config.json").write_text(json.dumps({**config, "trained_on": {"corpus": "c", "images": "many"}}))
    assert trained_on(odd) == TrainedOn(corpus="c", domain="", images=None, pairs=None)


def test_an_openclip_folder_can_say_what_it_was_trained_on(tmp_path: Path) -> None:
    folder = tmp_path / "tuned"
    folder.mkdir()
    (folder / OPENCLIP_WEIGHTS_FILE).write_bytes(b"weights")
    section = {"arch": "a", "trained_on": {"corpus": "emoji", "domain": "emoji", "images": 5, "pairs": 9}}
    (folder / OPENCLIP_CONFIG_FILE).write_text(json.dumps({"model_cfg": {}, "mmsearch": section}))
    assert trained_on(folder) == TrainedOn("emoji", "emoji", 5, 9)


# -- the note of a new index with the bundled model -----------------------------------------------


def test_a_new_index_with_the_bundled_model_says_what_the_model_knows(
    photo_folder: object, tmp_path: Path
) -> None:
    root = str(photo_folder.root)  # type: ignore[attr-defined]
    runner = CliRunner()
    first = runner.invoke(app, ["index", root, "--db", str(tmp_path / "db"), "--device", "cpu"])
    assert first.exit_code == 0, first.output
    notes = [line for line in first.stderr.splitlines() if line.startswith("note: ")]
    assert notes == [BUNDLED_MODEL_NOTE]
    assert "knows only the sample corpus's shapes, colours, sizes and positions" in notes[0]
    assert "--model openclip:ViT-B-32 --pretrained laion2b_s34b_b79k" in notes[0]
    assert "--checkpoint" in notes[0]

    again = runner.invoke(app, ["index", root, "--db", str(tmp_path / "db"), "--json"])
    assert again.exit_code == 0 and "note: " not in again.stderr  # not a new index any more

    quiet = runner.invoke(app, ["index", root, "--db", str(tmp_path / "quiet"), "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout == ""


def test_a_new_index_with_another_model_prints_no_note(
    colors_model: Path, photo_folder: object, tmp_path: Path
) -> None:
    root = str(photo_folder.root)  # type: ignore[attr-defined]
    args = ["index", root, "--db", str(tmp_path / "db"), "--model", str(colors_model), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "note: " not in result.stderr


# -- mmsearch models -----------------------------------------------------------------------------


def test_models_lists_the_bundled_model_and_model_folders_of_the_data_dir(
    colors_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    models = tmp_path / "home" / "models"
    _without_trained_on(shutil.copytree(colors_model, models / "colours"))
    (models / "notes").mkdir()  # not a model folder: not listed
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    [bundled] = listing["bundled"]
    assert bundled["model"] == str(DEFAULT_MODEL_DIR.resolve()) and bundled["kind"] == "native"
    assert bundled["trained_on"]["corpus"] == "mmsearch-sample-corpus/2"
    assert listing["models_dir"] == str(models)
    assert [(m["model"], m["kind"], m["trained_on"]) for m in listing["local"]] == [
        (str(models / "colours"), "native", None)
    ]
    assert model_folders(tmp_path / "nowhere") == []


def test_models_text_says_what_each_model_knows(
    colors_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HOME_ENV, str(tmp_path))
    _without_trained_on(shutil.copytree(colors_model, tmp_path / "models" / "colours"))
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "sample-shapes (native)" in result.stdout
    assert "trained on: mmsearch-sample-corpus/2 (rendered scenes of the sample corpus" in result.stdout
    assert "3,600 images, 13,400 pairs" in result.stdout
    assert str(tmp_path / "models" / "colours") in result.stdout
    assert "trained on: unknown" in result.stdout


@pytest.mark.skipif(OPENCLIP_INSTALLED, reason="checks the listing of an environment without open_clip")
def test_models_without_open_clip_says_how_to_see_its_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HOME_ENV, str(tmp_path))
    text = CliRunner().invoke(app, ["models"])
    assert "pip install 'mmsearch[openclip]' shows them" in text.stdout.splitlines()[-1]
    listing = json.loads(CliRunner().invoke(app, ["models", "--json"]).stdout)
    assert listing["openclip"] == {"installed": False, "hint": "pip install 'mmsearch[openclip]'"}


@pytest.mark.skipif(OPENCLIP_INSTALLED, reason="open_clip imports torch itself")
def test_models_without_open_clip_imports_no_model_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HOME_ENV, str(tmp_path))
    run = mmsearch_process("models", "--json")
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout)["bundled"][0]["name"] == "sample-shapes"
    assert run.imported == []
