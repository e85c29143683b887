"""pytest plugin, test set-up only (never product code): let a mismatched torchvision import.

pip pairs the pinned CPU torch (2.13.0+cpu) with torchvision 0.28.0, a CUDA build whose compiled
ops library (_C.so) does not load against the CPU torch. torchvision then still attaches fake
kernels to two of its ops at import (`torch.library.register_fake("torchvision::nms")` and
`"torchvision::qnms"` in torchvision/_meta_registrations.py), which fails with "operator
torchvision::nms does not exist"; and transformers, which probes torchvision, stops importing
its models (AlbertModel) too. Defining those two schemas first lets the import finish. The ops
stay without kernels; neither open_clip's CLIP models nor these tests call them (the image
transforms are plain PIL/tensor code).

Where torchvision's compiled ops do load (a matching torch/torchvision pair) this plugin
defines nothing. It must run before tests/conftest.py imports transformers, so it is loaded with
`-p` (the Makefile's test-openclip does this):

    PYTHONPATH=tests/openclip .venv-openclip/bin/python -m pytest -p mmsearch_torchvision_shim tests/openclip
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

# Exactly the ops torchvision 0.28 touches at import when its compiled library is missing
# (found by importing it until it stopped failing); every other op is registered only when
# _C loaded, which is then the case where this shim is not needed.
MISSING_OP_SCHEMAS = {
    "torchvision::nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "torchvision::qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
DEFINED: list[str] = []


def torchvision_ops_load() -> bool | None:
    """True if torchvision's compiled ops load against this torch, False if not, None if absent."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    libraries = sorted(package.glob("_C*.so")) + sorted(package.glob("_C*.pyd"))
    if not libraries:
        return False
    try:
        torch.ops.load_library(str(libraries[0]))
    except (OSError, RuntimeError):
        return False
    return True


def define_missing_schemas() -> None:
    """Define the schemas torchvision's import needs, only when its own library cannot."""
    if torchvision_ops_load() is not False:
        return
    for name, schema in MISSING_OP_SCHEMAS.items():
        torch.library.define(name, schema)
        DEFINED.append(name)


define_missing_schemas()  # at plugin import: before any conftest imports transformers


def pytest_configure(config: pytest.Config) -> None:
    """The OpenCLIP run must really exercise open_clip: fail loudly if it cannot be imported."""
    try:
        import open_clip  # noqa: F401
    except Exception as exc:
        raise pytest.UsageError(
            f"the OpenCLIP tests need open_clip importable ({exc}); run `make openclip-env`"
        ) from exc


def pytest_report_header(config: pytest.Config) -> str:
    """Say in the test header whether the shim was needed, so a run is never silently shimmed."""
    if DEFINED:
        return (
            f"torchvision shim: defined {', '.join(DEFINED)} (torchvision's compiled ops do not "
            f"load against torch {torch.__version__})"
        )
    return "torchvision shim: not needed (torchvision's compiled ops load)"
