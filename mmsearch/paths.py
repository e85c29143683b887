"""Where an index lives when --db is not given."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_data_dir

HOME_ENV = "MMSEARCH_HOME"


def default_index_dir() -> Path:
    """$MMSEARCH_HOME/index, else the platform's user data folder (e.g. ~/.local/share/mmsearch)."""
    home = os.environ.get(HOME_ENV)
    base = Path(home) if home else Path(user_data_dir("mmsearch", appauthor=False))
    return base / "index"
