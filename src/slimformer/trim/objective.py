"""The label-free calibration loss that gradient (Taylor) scores and measured-loss layer choice use.

- causal LMs: the mean next-token NLL of the calibration text (padding excluded);
- encoders: an in-batch contrastive loss (InfoNCE, temperature 0.05 as in SimCSE) between the
  model's sentence embeddings (its whole pipeline: pooling, Dense layers; the loss normalises) and
  the ORIGINAL model's embeddings of the same sentences: each sentence must stay closer to its own
  original embedding than to the other sentences'.
  It needs no labels, and unlike a distance to the original it is not at its minimum (zero
  gradient) when the model is still the original.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..evaluate.embed import embed_batch
from ..model import Model

TEMPERATURE = 0.05


def sentence_embeddings(model: Model, batch: dict) -> torch.Tensor:
    """Before Normalize: the loss normalises every embedding itself."""
    return embed_batch(model, batch, normalize=False)


@torch.no_grad()
def targets(model: Model, original: Model, batches: list[dict]) -> list[torch.Tensor | None]:
    """What the loss compares against, per batch: the original's embeddings (encoders) or nothing."""
    if model.is_causal:
        return [None] * len(batches)
    return [F.normalize(sentence_embeddings(original, b).float(), dim=-1) for b in batches]


def calibration_loss(model: Model, batch: dict, target: torch.Tensor | None) -> torch.Tensor:
    if model.is_causal:
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        logits = model.module(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        labels = ids[:, 1:].clone()
        if mask is not None:
            labels[mask[:, 1:] == 0] = -100
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    emb = F.normalize(sentence_embeddings(model, batch).float(), dim=-1)
    sim = emb @ target.T.to(emb.dtype) / TEMPERATURE
    return F.cross_entropy(sim, torch.arange(sim.shape[0]))
