"""Lower layer of mmsearch: model, tokenizer, preprocessing, storage formats, training, indexing.

Nothing here imports `mmsearch`; the query layer builds on this package, never the reverse.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
