"""Sentence embeddings of an encoder, computed the way its sentence-transformers modules say:
pool the token states, run the Dense layers, L2-normalise if it normalises."""
from __future__ import annotations

import torch

from ..model import Model, Pooling


def pool(states: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(states.dtype)
    if mode == "cls":
        return states[:, 0]
    if mode == "max":
        return states.masked_fill(m == 0, float("-inf")).max(dim=1).values
    return (states * m).sum(1) / m.sum(1).clamp(min=1e-9)


def sentence_embedding(model: Model | Pooling, states: torch.Tensor, mask: torch.Tensor,
                       normalize: bool | None = None) -> torch.Tensor:
    """[batch, dim] from token states [batch, seq, hidden]: pooling, Dense layers, Normalize, as the
    model's sentence-transformers modules say (`model` may be its Pooling). The one pipeline that
    encode, trim's objective, recover's losses and bench run on a torch module; differentiable
    (recover trains through it: the Dense layers are constants, gradients reach the states).
    `normalize=False` stops before Normalize, for callers whose measure normalises itself."""
    pooling = model.pooling if isinstance(model, Model) else model
    emb = pool(states, mask, pooling.mode)
    for dense in pooling.dense:
        emb = dense(emb)
    if pooling.normalize if normalize is None else normalize:
        emb = torch.nn.functional.normalize(emb, dim=-1)
    return emb


def embed_batch(model: Model, batch: dict, normalize: bool | None = None) -> torch.Tensor:
    """The module's forward on a tokenized batch, then the sentence pipeline (with gradients
    unless the caller turns them off). An exported graph holds the whole pipeline (export/onnx.py):
    its sentence_embedding output is returned as is."""
    out = model.module(**batch)
    if model.runtime != "torch" and normalize is None and getattr(out, "sentence_embedding", None) is not None:
        return out.sentence_embedding
    return sentence_embedding(model, out.last_hidden_state, batch["attention_mask"], normalize)


def tokenize_sentences(model: Model, sentences: list[str]) -> dict:
    max_len = min(model.pooling.max_length or model.arch.max_positions, model.arch.max_positions)
    return model.tokenizer(sentences, padding=True, truncation=True, max_length=max_len,
                           return_tensors="pt")


@torch.inference_mode()
def encode(model: Model, sentences: list[str], batch_size: int = 64) -> torch.Tensor:
    """[n, dim] embeddings; batches are formed by length (less padding), order is restored."""
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    chunks = []
    device = model.device
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in tokenize_sentences(model, [sentences[i] for i in idx]).items()}
        chunks.append(embed_batch(model, batch).float().cpu())
    if not chunks:
        return torch.empty(0)
    out = torch.empty(len(sentences), chunks[0].shape[1])
    out[torch.tensor(order)] = torch.cat(chunks)
    return out
