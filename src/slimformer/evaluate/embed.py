"""Sentence embeddings of an encoder, computed the way its sentence-transformers modules say:
pool the token states, run the Dense layers, L2-normalise if it normalises."""
from __future__ import annotations

import torch

from ..model import Model


def token_states(model: Model, batch: dict) -> torch.Tensor:
    return model.module(**batch).last_hidden_state


def pool(states: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(states.dtype)
    if mode == "cls":
        return states[:, 0]
    if mode == "max":
        return states.masked_fill(m == 0, float("-inf")).max(dim=1).values
    return (states * m).sum(1) / m.sum(1).clamp(min=1e-9)


def sentence_embedding(model: Model, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[batch, dim] from token states [batch, seq, hidden]: pooling, Dense layers, Normalize."""
    emb = pool(states, mask, model.pooling.mode)
    for dense in model.pooling.dense:
        emb = dense(emb)
    if model.pooling.normalize:
        emb = torch.nn.functional.normalize(emb, dim=-1)
    return emb


def tokenize_sentences(model: Model, sentences: list[str]) -> dict:
    max_len = min(model.pooling.max_length or model.arch.max_positions, model.arch.max_positions)
    return model.tokenizer(sentences, padding=True, truncation=True, max_length=max_len,
                           return_tensors="pt")


def _embed_batch(model: Model, batch: dict) -> torch.Tensor:
    out = model.module(**batch)
    if model.runtime != "torch" and getattr(out, "sentence_embedding", None) is not None:
        return out.sentence_embedding  # an exported graph holds the whole pipeline (export/onnx.py)
    return sentence_embedding(model, out.last_hidden_state, batch["attention_mask"])


@torch.inference_mode()
def encode(model: Model, sentences: list[str], batch_size: int = 64) -> torch.Tensor:
    """[n, dim] embeddings; batches are formed by length (less padding), order is restored."""
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    chunks = []
    device = model.device
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in tokenize_sentences(model, [sentences[i] for i in idx]).items()}
        chunks.append(_embed_batch(model, batch).float().cpu())
    if not chunks:
        return torch.empty(0)
    out = torch.empty(len(sentences), chunks[0].shape[1])
    out[torch.tensor(order)] = torch.cat(chunks)
    return out
