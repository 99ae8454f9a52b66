"""Distillation losses: how far the student's outputs are from the frozen teacher's.

Every loss is returned PER EXAMPLE (a window for causal LMs, a sentence for encoders), so a
trainer can average over any split of a global batch across processes and micro-batches and
get the same number as one process would.

- causal LMs: KL(teacher || student) of the next-token distributions at temperature T, times T^2
  (Hinton et al. 2015), averaged over a window's tokens; optional cross-entropy on the text
  itself; optional MSE between the last hidden states, divided by the teacher's mean square so
  its weight does not depend on the model's scale.
- encoders: 1 - cosine between the sentence embeddings (what STS and retrieval use: each model's
  own pipeline, pooling then its Dense layers, evaluate/embed.py; taken before Normalize: the
  cosine and relation losses normalise themselves, the MSE compares them un-normalised as it
  always did), optional MSE between them, optional MSE between token states (padding excluded), scaled the
  same way; optional relation loss: MSE between the student's and the teacher's in-batch cosine
  similarity matrices (it compares models of different widths, e.g. after hidden-channel trimming;
  it depends on which sentences share a batch, so across processes it matches one process only
  approximately).
- both: optional intermediate-layer matching (`layers`, TinyBERT's hidden-state loss): every
  student block's output against the teacher block it stands for (block i of M maps to block
  round(i * N / M) of the teacher's N, the uniform map of Jiao et al. 2020), the scaled token-state
  MSE above, averaged over blocks. It pins the whole stack, not only what the last layer shows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..evaluate.embed import sentence_embedding
from ..model import Pooling


@dataclass(frozen=True)
class LossWeights:
    kl: float = 1.0
    temperature: float = 1.0
    ce: float = 0.0
    cosine: float = 1.0
    mse: float = 0.0
    hidden: float = 0.0
    relation: float = 0.0
    layers: float = 0.0


def _token_mask(batch: dict, like: torch.Tensor) -> torch.Tensor:
    mask = batch.get("attention_mask")
    if mask is None:
        return torch.ones(like.shape[:2], dtype=like.dtype, device=like.device)
    return mask.to(like.dtype)


def _hidden_mse(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-example mean over real tokens of |s - t|^2, over the teacher's mean square."""
    if s.shape[-1] != t.shape[-1]:
        raise ValueError("hidden-state distillation needs the same hidden size; set hidden: 0 "
                         "for a model whose hidden channels were trimmed")
    err = (s.float() - t.float()).pow(2).mean(-1)
    scale = (t.float().pow(2).mean(-1) * mask).sum() / mask.sum().clamp(min=1)
    return (err * mask).sum(1) / mask.sum(1).clamp(min=1) / scale.clamp(min=1e-12)


def _layer_mse(s_states: tuple, t_states: tuple, mask: torch.Tensor) -> torch.Tensor:
    """Per-example mean over the student's blocks of the scaled MSE to the mapped teacher block
    (hidden_states[0] is the embeddings' output: not a block)."""
    m, n = len(s_states) - 1, len(t_states) - 1
    terms = [_hidden_mse(s_states[i], t_states[round(i * n / m)], mask) for i in range(1, m + 1)]
    return torch.stack(terms).mean(0)


def causal_losses(student_out, teacher_out, batch: dict, w: LossWeights) -> dict[str, torch.Tensor]:
    """Per-window losses {name: [batch]} and their weighted sum under "total"."""
    s_logits = student_out.logits[:, :-1].float()
    t_logits = teacher_out.logits[:, :-1].float()
    mask = _token_mask(batch, student_out.logits)[:, 1:].float()
    n = mask.sum(1).clamp(min=1)
    parts: dict[str, torch.Tensor] = {}
    total = 0.0
    if w.kl:
        T = w.temperature
        t_logp = F.log_softmax(t_logits / T, -1)
        s_logp = F.log_softmax(s_logits / T, -1)
        kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1) * (T * T)
        parts["kl"] = (kl * mask).sum(1) / n
        total = total + w.kl * parts["kl"]
    if w.ce:
        labels = batch["input_ids"][:, 1:]
        ce = F.cross_entropy(s_logits.transpose(1, 2), labels, reduction="none")
        parts["ce"] = (ce * mask).sum(1) / n
        total = total + w.ce * parts["ce"]
    if w.hidden:
        m = _token_mask(batch, student_out.hidden_states[-1])
        parts["hidden"] = _hidden_mse(student_out.hidden_states[-1], teacher_out.hidden_states[-1], m)
        total = total + w.hidden * parts["hidden"]
    if w.layers:
        m = _token_mask(batch, student_out.hidden_states[-1])
        parts["layers"] = _layer_mse(student_out.hidden_states, teacher_out.hidden_states, m)
        total = total + w.layers * parts["layers"]
    parts["total"] = total
    return parts


def _as_pooling(p: Pooling | str) -> Pooling:
    return Pooling(mode=p) if isinstance(p, str) else p


def encoder_losses(student_out, teacher_out, batch: dict, w: LossWeights, pooling: Pooling | str,
                   teacher_pooling: Pooling | str | None = None) -> dict[str, torch.Tensor]:
    """Per-sentence losses {name: [batch]} and their weighted sum under "total". `pooling` is the
    student's sentence pipeline (a Pooling, or only a pooling mode), `teacher_pooling` the
    teacher's (default: the same; a student whose hidden channels were trimmed has narrower Dense
    inputs than its teacher)."""
    s_pool = _as_pooling(pooling)
    t_pool = s_pool if teacher_pooling is None else _as_pooling(teacher_pooling)
    s_states, t_states = student_out.last_hidden_state, teacher_out.last_hidden_state
    mask = batch["attention_mask"]
    s_emb = sentence_embedding(s_pool, s_states, mask, normalize=False).float()
    t_emb = sentence_embedding(t_pool, t_states, mask, normalize=False).float()
    parts: dict[str, torch.Tensor] = {}
    total = 0.0
    if w.cosine:
        parts["cosine"] = 1.0 - F.cosine_similarity(s_emb, t_emb, dim=-1)
        total = total + w.cosine * parts["cosine"]
    if w.mse:
        if s_emb.shape[-1] != t_emb.shape[-1]:
            raise ValueError("embedding MSE needs the same hidden size; use cosine only")
        parts["mse"] = (s_emb - t_emb).pow(2).mean(-1) / t_emb.pow(2).mean().clamp(min=1e-12)
        total = total + w.mse * parts["mse"]
    if w.hidden:
        parts["hidden"] = _hidden_mse(s_states, t_states, mask.to(s_states.dtype))
        total = total + w.hidden * parts["hidden"]
    if w.relation:
        s_n, t_n = F.normalize(s_emb, dim=-1), F.normalize(t_emb, dim=-1)
        parts["relation"] = (s_n @ s_n.T - t_n @ t_n.T).pow(2).mean(-1)
        total = total + w.relation * parts["relation"]
    if w.layers:
        parts["layers"] = _layer_mse(student_out.hidden_states, teacher_out.hidden_states, mask.to(s_states.dtype))
        total = total + w.layers * parts["layers"]
    parts["total"] = total
    return parts
