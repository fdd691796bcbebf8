"""Contrastive batches larger than memory: gradient caching (Gao et al. 2021, "GradCache"; open_clip --accum-freq).

The contrastive loss couples every pair in the batch, so plain gradient accumulation over k micro-batches
would train on k small batches (fewer negatives), not one large one. GradCache gets the exact gradient of the
large batch with the memory of one micro-batch:
  1. embed every micro-batch WITHOUT an autograd graph (the embeddings are small: batch x embed_dim);
  2. compute the loss over all of them at once (with the cross-rank all-gather), and its gradient with respect
     to the embeddings and the temperature only;
  3. re-run each micro-batch WITH a graph and back-propagate those cached embedding gradients through it
     (backward of <embedding, cached gradient>), accumulating parameter gradients micro-batch by micro-batch.
The sum over micro-batches is exactly d(loss)/d(params) of step 2's large batch: the embedding function is the
same in steps 1 and 3 (no dropout in CLIP, deterministic kernels on CPU).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from training.loss import clip_loss

Embedder = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def gradcache_backward(model: Embedder, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                       backward: Callable[[torch.Tensor], None]) -> torch.Tensor:
    """Accumulate the gradient of clip_loss over the concatenation of `micro_batches` into the parameters.

    `model(images, tokens)` -> (image_emb, text_emb, scale) as CLIP.forward (or a DeepSpeed engine wrapping it);
    `backward(tensor)` back-propagates a scalar (engine.backward without gradient-accumulation scaling, or
    torch.Tensor.backward). Returns the (detached) loss of the whole batch. Collective when distributed: every
    rank must pass the same number of micro-batches.
    """
    with torch.no_grad():
        outs = [model(images, tokens) for images, tokens in micro_batches]
    image_emb = torch.cat([o[0] for o in outs]).float().requires_grad_()
    text_emb = torch.cat([o[1] for o in outs]).float().requires_grad_()
    scale = outs[0][2].detach().float().requires_grad_()
    loss = clip_loss(image_emb, text_emb, scale)
    d_image, d_text, d_scale = torch.autograd.grad(loss, [image_emb, text_emb, scale])
    start = 0
    for i, (images, tokens) in enumerate(micro_batches):
        n = images.shape[0]
        img, txt, s = model(images, tokens)
        surrogate = (img.float() * d_image[start: start + n]).sum() + (txt.float() * d_text[start: start + n]).sum()
        if i == 0:  # the temperature's gradient enters once (it does not depend on the micro-batch)
            surrogate = surrogate + (s.float() * d_scale).sum()
        backward(surrogate)
        start += n
    return loss.detach()
