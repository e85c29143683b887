"""Where mmsearch keeps its data when no path is given: the default index and model folders."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_data_dir

HOME_ENV = "MMSEARCH_HOME"


def data_dir() -> Path:
    """$MMSEARCH_HOME, else the platform's user data folder (e.g. ~/.local/share/mmsearch)."""
    home = os.environ.get(HOME_ENV)
    return Path(home) if home else Path(user_data_dir("mmsearch", appauthor=False))


def default_index_dir() -> Path:
    """DATA_DIR/index: the index used when --db is not given."""
    return data_dir() / "index"


def models_dir() -> Path:
    """DATA_DIR/models: model folders put here are listed by `mmsearch models`."""
    return data_dir() / "models"
