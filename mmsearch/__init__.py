"""mmsearch: find images by a sentence, captions by an image, and similar images by an image."""

from mmsearch.engine import Engine, EngineError, ImageHit, IndexStats, TextHit

__all__ = ["Engine", "EngineError", "ImageHit", "IndexStats", "TextHit"]
__version__ = "0.1.0"
