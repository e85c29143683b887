"""Decode and encode on Ray Data; the vectors stream back, in order, to the one writer.

The pipeline decides what to encode (new and changed files; moves and deletions never reach
Ray) exactly as without Ray, then hands the list here instead of to the local decode pool:

    from_items(files) -> map_batches(decode, tasks) -> map_batches(Encode, actors) -> iter_batches

Decoding runs in stateless tasks (read, hash, decode, preprocess: any node can take any batch);
encoding runs in actors that load the model once and keep it. Order is preserved, so the writer
assigns the same ids as the single-process path and the index is identical. Every worker loads
the model from the source the index records: on a cluster that path (or openclip spec) must be
valid on every node, and the photos must be readable there under the same paths.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.errors import InvalidInputError, UnavailableError
from indexer.store.backends import require_extra

if TYPE_CHECKING:
    from indexer.indexing.file_loading import EncodedBatch
    from indexer.media.scan import FileEntry
    from indexer.models.encoder import Encoder

# Torch threads per encoding actor: actors are the unit of parallelism, one core each.
ACTOR_TORCH_THREADS = 1
# Half the cluster's CPUs encode, the other half decode (decoding costs about as much here).
ENCODE_CPU_SHARE = 0.5
PREFETCH_BATCHES = 2  # batches Ray prepares ahead of the writer: bounded memory


class RayTargetError(InvalidInputError):
    """A --ray value that names no Ray to run on."""


class RayStartError(UnavailableError):
    """Ray could not start or join: nothing was indexed, and the logs say why."""


# A local Ray listens on loopback only: nothing outside this machine needs to reach it, and
# its "external" address (Ray asks for the route to 8.8.8.8) may be unreachable from the machine
# itself in sandboxes and containers. Ray turns an explicit 127.0.0.1 back into that address on
# Linux; this switch (read by ray_constants and inherited by every process Ray spawns) is the
# one that makes it keep loopback.
LOCAL_RAY_ADDRESS = "127.0.0.1"
RAY_LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
RAY_LOG_HINT = "Ray's own logs are in /tmp/ray/session_latest/logs (raylet.err, gcs_server.err)"


@dataclass(frozen=True)
class RayTarget:
    """Which Ray to run on: address None starts a local one (num_cpus of this machine unless set),
    "auto" joins the cluster `ray start` made, anything else is a cluster address."""

    address: str | None = None
    num_cpus: int | None = None

    @classmethod
    def parse(cls, value: str) -> RayTarget:
        """--ray local | auto | ADDRESS (checked once, at the edge)."""
        require_extra("ray", "--ray")
        value = value.strip()
        if not value:
            raise RayTargetError("--ray needs local, auto or a cluster address (e.g. ray://HOST:10001)")
        return cls(None) if value == "local" else cls(value)


def connect(target: RayTarget, *, object_store_bytes: int | None = None) -> None:
    """Start or join Ray unless this process already did (a test or a notebook may have)."""
    import ray

    if ray.is_initialized():
        return
    # Ray's C++ core and Ray Data log at INFO to this process's stderr; the CLI has its own bar.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    local = target.address is None
    if local:
        _keep_local_ray_on_loopback()
    try:
        ray.init(
            address=target.address,
            num_cpus=target.num_cpus if local else None,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            # Workers import mmsearch the way this process does (a source checkout or an install).
            runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}} if local else None,
            object_store_memory=object_store_bytes if local else None,
            _node_ip_address=LOCAL_RAY_ADDRESS if local else None,
        )
    except (ConnectionError, TimeoutError, RuntimeError, OSError) as error:
        where = "a local Ray" if local else f"the Ray cluster at {target.address}"
        raise RayStartError(f"could not start or join {where}: {error}. {RAY_LOG_HINT}") from error
    except Exception as error:  # Ray raises a bare Exception when its node times out at start-up
        if "timed out" not in str(error):
            raise
        raise RayStartError(f"Ray did not start in time: {error}. {RAY_LOG_HINT}") from error


def _keep_local_ray_on_loopback() -> None:
    """Make the Ray about to start bind and advertise 127.0.0.1, in this process and its children."""
    import ray._private.ray_constants as ray_constants

    os.environ[RAY_LOOPBACK_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False  # read once at import, which may have happened already


@functools.lru_cache(maxsize=2)
def _worker_encoder(source: str) -> Encoder:
    """The model in a worker process, loaded once per process (tasks reuse their workers)."""
    import torch

    from indexer.models.encoder import load_encoder

    torch.set_num_threads(ACTOR_TORCH_THREADS)
    return load_encoder(source, device="cpu")


def _decode_rows(
    batch: dict[str, np.ndarray], *, source: str, max_megapixels: float, embedded_thumbnail: bool
) -> dict[str, np.ndarray]:
    """A Ray task: read, hash, decode and preprocess files; a failure is a row with a reason."""
    from indexer.indexing.file_loading import LoadedImage, load_file
    from indexer.media.scan import FileEntry

    encoder = _worker_encoder(source)
    size = encoder.preprocess_config.image_size
    n = len(batch["row"])
    pixels = np.zeros((n, 3, size, size), np.float32)  # (n, 3, S, S); zeros for skipped rows
    out: dict[str, list[Any]] = {k: [] for k in _DECODED_COLUMNS}
    for i in range(n):
        entry = FileEntry(
            str(batch["path"][i]),
            str(batch["root"][i]),
            int(batch["size"][i]),
            int(batch["mtime_ns"][i]),
            bool(batch["image_extension"][i]),
            str(batch["problem"][i]) or None,
        )
        caption = str(batch["caption"][i]) if batch["has_caption"][i] else None
        result = load_file(
            entry,
            encoder,
            max_megapixels=max_megapixels,
            embedded_thumbnail=embedded_thumbnail,
            caption=caption,
            sidecar=str(batch["sidecar"][i]) or None,
        )
        ok = isinstance(result, LoadedImage)
        if isinstance(result, LoadedImage):
            pixels[i] = result.pixels.numpy()
        own = result.own_text if isinstance(result, LoadedImage) else None
        out["ok"].append(ok)
        out["content_hash"].append(result.content_hash if isinstance(result, LoadedImage) else "")
        out["width"].append(result.width if isinstance(result, LoadedImage) else 0)
        out["height"].append(result.height if isinstance(result, LoadedImage) else 0)
        out["decoded_from"].append(result.decoded_from if isinstance(result, LoadedImage) else "")
        out["own_text"].append(own.text if own else "")
        out["own_source"].append(own.source if own else "")
        out["own_mtime"].append(-1 if own is None or own.sidecar_mtime_ns is None else own.sidecar_mtime_ns)
        out["skip_reason"].append("" if isinstance(result, LoadedImage) else result.reason)
        out["skip_retry"].append(False if isinstance(result, LoadedImage) else result.retry)
    return {"row": batch["row"], "pixels": pixels, **{k: np.asarray(v) for k, v in out.items()}}


_DECODED_COLUMNS = (
    "ok",
    "content_hash",
    "width",
    "height",
    "decoded_from",
    "own_text",
    "own_source",
    "own_mtime",
    "skip_reason",
    "skip_retry",
)


def _spread_over_nodes() -> dict[str, Any]:
    """Ray options of a decode task."""
    return {"scheduling_strategy": "SPREAD"}


class _EncodeActor:
    """A Ray actor holding the model; pixels in, vectors (n, dim) float32 out."""

    def __init__(self, source: str) -> None:
        self.encoder = _worker_encoder(source)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        ok = batch["ok"].astype(bool)
        vectors = np.zeros((len(ok), self.encoder.info.dim), np.float32)
        if ok.any():
            vectors[ok] = self.encoder.encode_pixels(torch.from_numpy(batch["pixels"][ok]))
        rest = {k: v for k, v in batch.items() if k != "pixels"}
        return {**rest, "vectors": vectors}


def encode_files_ray(
    entries: Iterable[FileEntry],
    encoder: Encoder,
    *,
    target: RayTarget,
    batch_size: int,
    max_megapixels: float,
    embedded_thumbnail: bool = True,
    captions: Mapping[str, str] | None = None,
    sidecars: Container[str] = frozenset(),
) -> Iterator[EncodedBatch]:
    """Yield encoded batches in input order, like decode_pool.encode_files, computed on Ray.

    sidecars: the caption files the scan found; each file's own is looked up here, in the driver.
    No per-file decode time limit applies on Ray (a stuck decode holds its task, not the writer).
    """
    from indexer.media.caption_files import sidecar_among

    files = list(entries)
    if not files:
        return
    connect(target)
    import ray

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # same order, same ids as without Ray
    context.enable_progress_bars = False  # the CLI draws its own bar from what we yield
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    captions = captions or {}
    items = [
        {
            "row": i,
            "path": e.path,
            "root": e.root,
            "size": e.size,
            "mtime_ns": e.mtime_ns,
            "image_extension": e.image_extension,
            "problem": e.problem or "",
            "sidecar": sidecar_among(e.path, sidecars) or "",
            "caption": captions.get(e.path, ""),
            "has_caption": e.path in captions,
        }
        for i, e in enumerate(files)
    ]
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    actors = max(1, int(cpus * ENCODE_CPU_SHARE))
    source = encoder.info.source
    dataset = (
        ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size, cpus * 4)))
        .map_batches(
            _decode_rows,  # type: ignore[arg-type]  # ray's stubs miss keyword-only fn_kwargs
            batch_size=batch_size,
            batch_format="numpy",
            fn_kwargs={
                "source": source,
                "max_megapixels": max_megapixels,
                "embedded_thumbnail": embedded_thumbnail,
            },
            # Options from a function are never fused into the next operator: decoding stays in
            # tasks spread over the nodes instead of running inside the encoder actors.
            ray_remote_args_fn=_spread_over_nodes,
        )
        .map_batches(
            _EncodeActor,
            batch_size=batch_size,
            batch_format="numpy",
            fn_constructor_kwargs={"source": source},
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=1,
        )
    )
    for batch in dataset.iter_batches(
        batch_size=batch_size, batch_format="numpy", prefetch_batches=PREFETCH_BATCHES
    ):
        yield _as_encoded_batch(batch, files, dim=encoder.info.dim)


def _as_encoded_batch(batch: dict[str, np.ndarray], files: list[FileEntry], *, dim: int) -> EncodedBatch:
    """Ray's columns back into the EncodedBatch the writer stages (pixels are not kept)."""
    import torch

    from indexer.indexing.file_loading import EncodedBatch, LoadedImage, Skipped
    from indexer.media.own_text import OwnText

    images: list[LoadedImage] = []
    skipped: list[Skipped] = []
    kept: list[int] = []
    for i, row in enumerate(batch["row"].tolist()):
        entry = files[row]
        if not batch["ok"][i]:
            skipped.append(Skipped(entry.path, str(batch["skip_reason"][i]), bool(batch["skip_retry"][i])))
            continue
        own = None
        if batch["own_source"][i]:
            mtime = int(batch["own_mtime"][i])
            own = OwnText(
                str(batch["own_text"][i]), str(batch["own_source"][i]), None if mtime < 0 else mtime
            )
        images.append(
            LoadedImage(
                entry,
                torch.empty(0),
                str(batch["content_hash"][i]),
                int(batch["width"][i]),
                int(batch["height"][i]),
                own,
                str(batch["decoded_from"][i]),
            )
        )
        kept.append(i)
    vectors = np.ascontiguousarray(batch["vectors"][kept], dtype=np.float32).reshape(-1, dim)  # (n, dim)
    return EncodedBatch(images, vectors, skipped)
