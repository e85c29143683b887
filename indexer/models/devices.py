"""Where a model runs, as a value: `Device` is parsed once at the edge (--device, a Python
argument) and nothing below compares strings.

Torch is imported only when a device has to be resolved or used, so parsing one (the CLI does
it for every command) costs nothing. Asking for CUDA on a machine without it warns once, per
process rather than per call site: one command resolves the device in several places (model
load, training, FAISS), and a user should read one warning line, not three.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from indexer.errors import InvalidInputError, warn_once

if TYPE_CHECKING:
    import torch

DeviceKind = Literal["auto", "cpu", "cuda"]
NO_CUDA_WARNING = "--device cuda: no CUDA device visible to torch; using the CPU"


class DeviceError(InvalidInputError):
    """A device name that is not auto, cpu or cuda[:N]."""


@dataclass(frozen=True)
class Device:
    """auto (a GPU when torch sees one), cpu, or cuda with an optional device number."""

    kind: DeviceKind = "auto"
    index: int | None = None  # the N of cuda:N

    @classmethod
    def parse(cls, value: Device | str) -> Device:
        """'auto', 'cpu', 'cuda' or 'cuda:N' (a Device is returned as it is)."""
        if isinstance(value, Device):
            return value
        if value in ("auto", "cpu", "cuda"):
            return cls(value)  # type: ignore[arg-type]
        name, _, number = value.partition(":")
        if name == "cuda" and number.isdigit():
            return cls("cuda", int(number))
        raise DeviceError(f"unknown device {value!r}: use auto, cpu or cuda[:N]")

    def __str__(self) -> str:
        """The name torch takes (`.to(str(device))`) once resolved: cpu, cuda or cuda:N."""
        return self.kind if self.index is None else f"{self.kind}:{self.index}"

    @property
    def is_auto(self) -> bool:
        """Not chosen yet: resolve() picks CUDA when torch sees it."""
        return self.kind == "auto"

    @property
    def is_cuda(self) -> bool:
        """A CUDA device (as asked for; resolve() may fall back to the CPU)."""
        return self.kind == "cuda"

    def resolve(self) -> Device:
        """A concrete device: auto -> cuda when torch sees a GPU, else cpu; cuda without a GPU
        falls back to the CPU with one warning."""
        if self.kind == "cpu":
            return self
        import torch

        if self.is_auto:
            return CUDA if torch.cuda.is_available() else CPU
        if not torch.cuda.is_available():
            warn_once(NO_CUDA_WARNING)
            return CPU
        return self


AUTO = Device("auto")
CPU = Device("cpu")
CUDA = Device("cuda")


def resolve_device(requested: Device | str = AUTO) -> str:
    """The torch name of a requested device after resolution (see Device.resolve)."""
    return str(Device.parse(requested).resolve())


def autocast_for(device: Device) -> torch.autocast:
    """Mixed precision on the GPU (fp16), a no-op context on the CPU."""
    import torch

    if device.is_cuda:
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cpu", enabled=False)


def indexing_threads() -> int:
    """Torch intra-op threads while indexing: one per core, and never more than torch is set to
    already (OMP_NUM_THREADS, an embedding application).

    Measured on the quiet 2-core machine (benchmarks/RESULTS.md, "Indexing with a real-sized
    model"): with a ViT-B/32-sized model, encoding on both cores beside 2 decode threads indexes
    12.7-14.8 images/s against 8.7-9.2 with one torch thread (two one-round runs; pipeline /
    encoder-only 0.64-0.75 against 0.44-0.46); decoding (31 ms of CPU per 12-MP photo against
    100 ms to encode) fits in the gaps. With the bundled 64-px model the two are within a few
    percent (777-823 against 753-762 images/s).
    """
    import torch

    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def serving_threads(processes: int = 1) -> int:
    """Torch intra-op threads per server process: half of each process's share of the cores,
    at least one. The other half runs the HTTP event loop, parsing and answering requests while
    the batch worker encodes. On 2 cores that is one thread: with two, every layer of a forward
    pass ends at a barrier both threads must reach, and on a busy machine one of them is often
    descheduled (measured: a 16-sentence batch 23 ms with one thread, 630 ms with two at load 15).
    """
    return max(1, (os.cpu_count() or 1) // (2 * max(1, processes)))


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run a block with `count` intra-op threads (None: unchanged), then restore the setting.

    The setting is process-wide: queries served meanwhile by the same process use it too.
    """
    if count is None:
        yield
        return
    if count < 1:
        raise ValueError(f"torch threads must be at least 1, got {count}")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
