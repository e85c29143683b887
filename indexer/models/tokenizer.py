"""SentencePiece training and the ALBERT tokenizer: the only module that knows about HF tokenizers.

transformers 5.x ignores `AlbertTokenizer(vocab_file=...)` and maps every word to <unk>, so
a trained SentencePiece model is turned into a tokenizer from its pieces, and saved folders are
always read back with `from_pretrained(DIR)`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import AlbertTokenizer

from indexer.errors import ModelError

# Ids fixed so that the ALBERT embedding's padding row and special tokens line up.
SPECIAL_PIECES = {"pad": "<pad>", "unk": "<unk>", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
SPM_MODEL_FILE = "spiece.model"

log = logging.getLogger(__name__)


class TokenizerError(ModelError):
    """A tokenizer that cannot be built or loaded."""


def train_sentencepiece(captions: Iterable[str], *, vocab_size: int) -> bytes:
    """Train a unigram SentencePiece model on captions; returns the serialised model proto."""
    sentences = [c.strip().lower() for c in captions if c.strip()]
    if not sentences:
        raise TokenizerError("no captions to train a tokenizer on")
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=proto,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        # A small corpus may not support the requested size; take what it supports.
        hard_vocab_limit=False,
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        pad_piece=SPECIAL_PIECES["pad"],
        unk_piece=SPECIAL_PIECES["unk"],
        bos_piece=SPECIAL_PIECES["cls"],
        eos_piece=SPECIAL_PIECES["sep"],
        user_defined_symbols=[SPECIAL_PIECES["mask"]],
        num_threads=1,
        minloglevel=2,
    )
    return proto.getvalue()


def tokenizer_from_sentencepiece(model_proto: bytes) -> AlbertTokenizer:
    """Build an AlbertTokenizer from a SentencePiece model's pieces and scores."""
    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    return AlbertTokenizer(vocab=pieces, do_lower_case=True, keep_accents=False)


def load_tokenizer(directory: Path) -> AlbertTokenizer:
    """Load the tokenizer saved in a model or pretrained ALBERT folder (never downloads)."""
    try:
        return AlbertTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"no usable ALBERT tokenizer in {directory}: {exc}") from exc


def save_tokenizer(tokenizer: AlbertTokenizer, directory: Path, *, spm_proto: bytes | None) -> None:
    """Save tokenizer files (and the raw SentencePiece model, for provenance)."""
    tokenizer.save_pretrained(str(directory))
    if spm_proto is not None:
        (directory / SPM_MODEL_FILE).write_bytes(spm_proto)


def tokenize(
    tokenizer: AlbertTokenizer, texts: Sequence[str], *, max_length: int
) -> dict[str, torch.Tensor]:
    """Batch-tokenise: input_ids and attention_mask, each (batch, seq) int64."""
    encoded = tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def unknown_rate(tokenizer: AlbertTokenizer, texts: Sequence[str]) -> float:
    """Fraction of tokens that are <unk>; a broken tokenizer shows up as ~1.0."""
    ids = [i for t in texts for i in tokenizer(t, add_special_tokens=False)["input_ids"]]
    if not ids:
        return 0.0
    return sum(1 for i in ids if i == tokenizer.unk_token_id) / len(ids)
