"""Test helpers: tiny local "pretrained" parts, and a guard that fails on any network connection.

Imported by test modules (pytest puts tests/ on sys.path for the rootdir conftest). Everything
here is built from random weights in a temp folder: nothing is downloaded.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from transformers import AlbertConfig, AlbertModel, ResNetConfig, ResNetModel

from indexer.models.tokenizer import tokenizer_from_sentencepiece, train_sentencepiece

ALBERT_HIDDEN = 24  # differs from tiny-test's 32, so the folder's sizes visibly win
RESNET_HIDDEN = (8, 12)  # differs from tiny-test's (8, 16) for the same reason


def write_albert_folder(folder: Path, captions: Iterable[str], *, seed: int = 7) -> Path:
    """A tiny ALBERT folder as `save_pretrained` writes one (config, safetensors, tokenizer)."""
    tokenizer = tokenizer_from_sentencepiece(train_sentencepiece(captions, vocab_size=64))
    torch.manual_seed(seed)
    albert = AlbertModel(
        AlbertConfig(
            vocab_size=len(tokenizer),
            embedding_size=16,
            hidden_size=ALBERT_HIDDEN,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=48,
            max_position_embeddings=64,
        )
    )
    albert.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def tiny_resnet(*, seed: int = 11, hidden_sizes: tuple[int, ...] = RESNET_HIDDEN) -> ResNetModel:
    """A 3-channel ResNetModel small enough to train in a test."""
    torch.manual_seed(seed)
    return ResNetModel(
        ResNetConfig(
            num_channels=3,
            embedding_size=8,
            hidden_sizes=list(hidden_sizes),
            depths=[1, 1],
            layer_type="basic",
            downsample_in_first_stage=False,
        )
    )


def write_resnet_folder(folder: Path, *, seed: int = 11) -> ResNetModel:
    """A tiny ResNet saved as a Hugging Face folder; returns the model that was saved."""
    resnet = tiny_resnet(seed=seed)
    resnet.save_pretrained(str(folder))
    return resnet


def write_resnet_file(
    path: Path, *, seed: int = 11, hidden_sizes: tuple[int, ...] = RESNET_HIDDEN
) -> ResNetModel:
    """A tiny ResNet's state dict as one safetensors file; returns the model that was saved.

    A bare state dict has no architecture: `hidden_sizes` must match the --config it is used with.
    """
    resnet = tiny_resnet(seed=seed, hidden_sizes=hidden_sizes)
    save_file({k: v.contiguous() for k, v in resnet.state_dict().items()}, str(path))
    return resnet


class NetworkGuard:
    """Refuses and records every attempt to reach the network (Unix sockets still work).

    Recording matters as much as refusing: a library that catches the error and carries on
    (falling back to a cache, say) would otherwise hide the attempt.
    """

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> NetworkGuard:
        """Patch socket's connect paths and name resolution for the rest of the test."""
        real_connect = socket.socket.connect
        real_connect_ex = socket.socket.connect_ex
        guard = self

        def connect(sock: socket.socket, address: Any) -> None:
            if sock.family == socket.AF_UNIX:
                return real_connect(sock, address)
            guard.refuse("socket.connect", address)

        def connect_ex(sock: socket.socket, address: Any) -> int:
            if sock.family == socket.AF_UNIX:
                return real_connect_ex(sock, address)
            guard.refuse("socket.connect_ex", address)

        def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
            guard.refuse("socket.create_connection", address)

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
            guard.refuse("socket.getaddrinfo", (host, port))

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
        monkeypatch.setattr(socket, "create_connection", create_connection)
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        return self

    def refuse(self, what: str, address: Any) -> Any:
        """Record the attempt and fail it the way a machine without network would."""
        self.attempts.append(f"{what}({address!r})")
        raise ConnectionRefusedError(f"a test tried to reach the network: {what} {address!r}")
