"""CLIP's symmetric contrastive loss over the GLOBAL batch.

Each rank all-gathers image and text embeddings WITH gradient (torch.distributed.nn.functional.all_gather, whose
backward sums the incoming gradients back to the owning rank), scores its local rows against every column, and
uses labels offset by rank * local batch. Averaged over ranks (DDP/DeepSpeed average gradients), this equals the
loss on the concatenated batch computed in one process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropy; inputs are this rank's L2-normalised embeddings."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    all_images, all_texts = gather_with_grad(image_emb), gather_with_grad(text_emb)
    scale = scale.reshape(())
    logits_per_image = scale * image_emb @ all_texts.T  # local images vs every caption
    logits_per_text = scale * text_emb @ all_images.T  # local captions vs every image
    labels = torch.arange(image_emb.shape[0], device=image_emb.device) + rank * image_emb.shape[0]
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
