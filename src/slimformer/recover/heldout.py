"""What decides the best checkpoint and early stopping: the student's quality on data it never
trains on. Causal LMs: perplexity of the held-out windows of the training text. Encoders: Spearman
on a sentence-pair file (STS-B dev by default; never a test split), or the distillation loss on
the held-out sentences (`eval: heldout`)."""
from __future__ import annotations

import math

import torch

from ..data import read_pairs
from ..errors import ConfigValueError
from ..evaluate.perplexity import window_nll
from ..evaluate.sts import sts
from ..model import Model
from .data import TrainSet, resolve_source
from .losses import encoder_losses
from .trainer import Evaluation


def held_out_evaluation(model: Model, original: Model, cfg, data: TrainSet) -> Evaluation:
    if model.is_causal:
        if cfg.eval != "heldout":
            raise ConfigValueError("a causal LM's recovery evaluates on held-out text: use eval: heldout")
        windows = data.heldout

        def ppl(m: Model) -> float:
            device = next(m.module.parameters()).device
            with torch.no_grad():
                nll = sum(float(window_nll(m, w[None].to(device)).sum()) for w in windows)
            return math.exp(nll / (windows.shape[0] * (windows.shape[1] - 1)))
        return Evaluation("held-out perplexity", ppl, higher_is_better=False)
    if cfg.eval == "heldout":
        weights = cfg.loss_weights()
        held = TrainSet(data.heldout, None, data.seq_len, data.sources)

        def loss(m: Model) -> float:
            device = next(m.module.parameters()).device
            total = 0.0
            original.module.to(device)
            with torch.no_grad():
                for i in range(0, len(data.heldout), 64):
                    b = {k: v.to(device) for k, v in held.batch(m, list(range(i, min(i + 64, len(data.heldout))))).items()}
                    total += float(encoder_losses(m.module(**b), original.module(**b), b, weights,
                                                  m.pooling, original.pooling)["total"].sum())
            return total / len(data.heldout)
        return Evaluation("held-out distillation loss", loss, higher_is_better=False)
    pairs = read_pairs(resolve_source(cfg.eval))
    return Evaluation(f"Spearman x100 on {cfg.eval}", lambda m: sts(m, pairs).value, higher_is_better=True)
