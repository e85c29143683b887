"""A CLIP ViT-B/32-sized dual encoder in plain torch, with random weights, for `make bench`.

Indexing throughput depends on what a model costs per image, not on what it has learned, so the
benchmark needs a model of OpenCLIP ViT-B-32's shape, not its weights. open_clip lives in its own
virtualenv here (its torchvision does not import beside the pinned CPU torch without a test-only
shim), so the towers are rebuilt from torch layers with open_clip's ViT-B-32 dimensions:

    image: 224 px, 32 px patches (7x7 + class token = 50 tokens), 12 blocks of width 768,
           12 heads, MLP 3072, GELU, pre-norm, projection to 512
    text:  context 77, vocabulary 49,408, 12 blocks of width 512, 8 heads, projection to 512

`make bench-vit-compare` times this tower against open_clip's own ViT-B-32 on the same batch
(in the OpenCLIP venv, see main).
Preprocessing is open_clip's for ViT-B-32 (bicubic shorter side to 224, centre crop, CLIP
mean/std) through indexer.media.images.preprocess, which mirrors torchvision's rounding.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from indexer.media.images import PreprocessConfig, preprocess
from indexer.models.encoder import TEXT_BATCH_SIZE, EncoderInfo, as_faiss_array

# open_clip's ViT-B-32 (model_configs/ViT-B-32.json) and OPENAI_DATASET_MEAN/STD.
IMAGE_SIZE = 224
PATCH_SIZE = 32
VISION_WIDTH = 768
VISION_LAYERS = 12
VISION_HEADS = 12
TEXT_CONTEXT = 77
TEXT_VOCAB = 49_408
TEXT_WIDTH = 512
TEXT_LAYERS = 12
TEXT_HEADS = 8
EMBED_DIM = 512
MLP_RATIO = 4
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SEED = 0
MODEL_SOURCE = "bench:vit-b-32-random"


class Block(nn.Module):
    """Pre-norm transformer block, as open_clip's ResidualAttentionBlock."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, MLP_RATIO * width), nn.GELU(), nn.Linear(MLP_RATIO * width, width)
        )

    def forward(self, x: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
        """(n, tokens, width) -> (n, tokens, width)."""
        n, tokens, width = x.shape
        qkv = self.qkv(self.ln_1(x)).view(n, tokens, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (n, heads, tokens, head_dim)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        x = x + self.out(attended.transpose(1, 2).reshape(n, tokens, width))
        return x + self.mlp(self.ln_2(x))


class VisionTower(nn.Module):
    """ViT-B/32 image tower: patches -> 12 blocks -> class token -> (n, EMBED_DIM)."""

    def __init__(self) -> None:
        super().__init__()
        grid = IMAGE_SIZE // PATCH_SIZE
        self.patch = nn.Conv2d(3, VISION_WIDTH, PATCH_SIZE, stride=PATCH_SIZE, bias=False)
        self.class_token = nn.Parameter(torch.randn(VISION_WIDTH) * VISION_WIDTH**-0.5)
        self.position = nn.Parameter(torch.randn(grid * grid + 1, VISION_WIDTH) * 0.01)
        self.ln_pre = nn.LayerNorm(VISION_WIDTH)
        self.blocks = nn.ModuleList(Block(VISION_WIDTH, VISION_HEADS) for _ in range(VISION_LAYERS))
        self.ln_post = nn.LayerNorm(VISION_WIDTH)
        self.proj = nn.Parameter(torch.randn(VISION_WIDTH, EMBED_DIM) * VISION_WIDTH**-0.5)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, 224, 224) -> (n, EMBED_DIM)."""
        x = self.patch(pixels).flatten(2).transpose(1, 2)  # (n, 49, width)
        cls = self.class_token.expand(len(x), 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.position)  # (n, 50, width)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x[:, 0]) @ self.proj  # (n, EMBED_DIM)


class TextTower(nn.Module):
    """CLIP's text transformer: causal, the end-of-text token's state projected to EMBED_DIM."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(TEXT_VOCAB, TEXT_WIDTH)
        self.position = nn.Parameter(torch.randn(TEXT_CONTEXT, TEXT_WIDTH) * 0.01)
        self.blocks = nn.ModuleList(Block(TEXT_WIDTH, TEXT_HEADS) for _ in range(TEXT_LAYERS))
        self.ln_final = nn.LayerNorm(TEXT_WIDTH)
        self.proj = nn.Parameter(torch.randn(TEXT_WIDTH, EMBED_DIM) * TEXT_WIDTH**-0.5)

    def forward(self, ids: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """ids (n, TEXT_CONTEXT) int64, ends (n,) index of each text's last token -> (n, EMBED_DIM)."""
        x = self.tokens(ids) + self.position  # (n, context, width)
        for block in self.blocks:
            x = block(x, causal=True)
        x = self.ln_final(x)
        return x[torch.arange(len(x)), ends] @ self.proj  # (n, EMBED_DIM)


def tokenize(texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Words hashed into the vocabulary (the cost is the transformer's, not the tokenizer's)."""
    ids = torch.zeros((len(texts), TEXT_CONTEXT), dtype=torch.int64)
    ends = torch.zeros(len(texts), dtype=torch.int64)
    for row, text in enumerate(texts):
        words = text.lower().split()[: TEXT_CONTEXT - 1]
        for col, word in enumerate(words):
            ids[row, col] = (
                int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest()) % TEXT_VOCAB
            )
        ends[row] = max(len(words) - 1, 0)
    return ids, ends


class VitB32Encoder:
    """The Encoder protocol over the two towers, on the CPU, random weights from a fixed seed."""

    def __init__(self) -> None:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(SEED)
        self.vision = VisionTower().eval()
        self.text = TextTower().eval()
        torch.random.set_rng_state(generator_state)  # leave the caller's random stream alone
        self.preprocess_config = PreprocessConfig(
            image_size=IMAGE_SIZE, mean=CLIP_MEAN, std=CLIP_STD, resize="shorter_side_center_crop"
        )
        self.info = EncoderInfo("bench", MODEL_SOURCE, f"{MODEL_SOURCE}:seed{SEED}", EMBED_DIM)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> (3, 224, 224) float32, as open_clip's ViT-B-32 eval transform."""
        return preprocess(image, self.preprocess_config)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (n, EMBED_DIM) float32, L2-normalised."""
        chunks = []
        for start in range(0, len(texts), TEXT_BATCH_SIZE):
            ids, ends = tokenize(texts[start : start + TEXT_BATCH_SIZE])
            chunks.append(self.text(ids, ends))
        if not chunks:
            return np.zeros((0, EMBED_DIM), dtype=np.float32)
        return as_faiss_array(torch.cat(chunks))

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """(n, 3, 224, 224) -> (n, EMBED_DIM) float32, L2-normalised."""
        if len(pixels) == 0:
            return np.zeros((0, EMBED_DIM), dtype=np.float32)
        return as_faiss_array(self.vision(pixels))


def parameter_count(module: nn.Module) -> int:
    """Number of weights (open_clip's ViT-B-32 image tower has 87.8 M)."""
    return sum(p.numel() for p in module.parameters())


def _time_forward(forward: object, batch: torch.Tensor, repeats: int) -> float:
    """Median seconds of CPU time (all threads of this process) per forward pass."""
    assert callable(forward)
    with torch.no_grad():
        forward(batch)  # warm-up
        seconds = []
        for _ in range(repeats):
            started = time.process_time()
            forward(batch)
            seconds.append(time.process_time() - started)
    return float(np.median(seconds))


def main(argv: Sequence[str] | None = None) -> int:
    """Print this tower's cost per image, and open_clip's ViT-B-32 beside it with --compare-openclip.

    The comparison needs open_clip, so it runs in the OpenCLIP venv with the test-only torchvision
    shim imported first, as `pytest -p mmsearch_torchvision_shim` does (the Makefile's
    bench-vit-compare target).
    """
    parser = argparse.ArgumentParser(description="cost of the bench ViT-B/32 image tower")
    parser.add_argument("--compare-openclip", action="store_true")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batch = torch.randn(args.batch, 3, IMAGE_SIZE, IMAGE_SIZE)
    encoder = VitB32Encoder()
    towers = {"bench ViT-B/32 (this file)": encoder.vision}
    if args.compare_openclip:
        import open_clip

        model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
        towers["open_clip ViT-B-32"] = model.visual
    for name, tower in towers.items():
        cpu_s = _time_forward(tower, batch, args.repeats)
        print(
            f"{name}: {parameter_count(tower) / 1e6:.1f} M weights, "
            f"{1000 * cpu_s / args.batch:.1f} ms CPU per image ({args.threads} thread(s), batch {args.batch})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
