"""mmsearch: find images by a sentence, captions by an image, and similar images by an image."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmsearch.engine import Engine, EngineError, ImageHit, IndexStats, TextHit

__all__ = ["Engine", "EngineError", "ImageHit", "IndexStats", "TextHit"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """`from mmsearch import Engine` loads the engine on first use, so `import mmsearch.cli`
    (every `mmsearch` command, even --help) does not pay for the catalogue and FAISS."""
    if name in __all__:
        from mmsearch import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'mmsearch' has no attribute {name!r}")
