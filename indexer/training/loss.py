"""Symmetric InfoNCE, the CLIP objective."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropy; row i of each batch is a matching pair.

    image_emb, text_emb: (batch, dim), L2-normalised. logit_scale: scalar, already exp'd.
    """
    logits_per_image = logit_scale * image_emb @ text_emb.T  # (batch, batch)
    logits_per_text = logits_per_image.T  # (batch, batch)
    labels = torch.arange(image_emb.shape[0], device=image_emb.device)  # (batch,)
    return (
        F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
    ) / 2
