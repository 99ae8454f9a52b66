"""What decides the best checkpoint and early stopping: the student's quality on data it never
trains on. Causal LMs: perplexity of the held-out windows of the training text. Encoders, by
default (`eval: fidelity`): the mean cosine between the student's and the original's sentence
embeddings on the held-out texts of every training source, the closeness to the original a user
relies on when an index built with the original must keep working; `eval: heldout` is the
distillation loss there; a sentence-pair file (`eval: stsb:dev`, never a test split) selects on
that task's Spearman instead, which fits the checkpoint to one task's distribution."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data import read_pairs, resolve_data
from ..data.bundled import BUNDLED
from ..errors import ConfigValueError
from ..evaluate.embed import encode
from ..evaluate.perplexity import window_nll
from ..evaluate.sts import sts
from ..model import Model
from .data import TrainSet, resolve_source
from .losses import encoder_losses
from .trainer import Evaluation


def held_out_evaluation(model: Model, original: Model, cfg, data: TrainSet) -> Evaluation:
    ev = _selection(model, original, cfg, data)
    if cfg.track and model.is_causal:
        raise ConfigValueError("recover track scores sentence pairs (encoders); a causal LM's curve is its "
                               "held-out perplexity: remove track")
    for spec in cfg.track:
        ev.track[f"Spearman x100 on {spec}"] = _tracked_sts(spec)
    return ev


def _tracked_sts(spec: str):
    """Spearman on a pair file or bundled 'name:split' (test splits allowed: only recorded)."""
    name, _, split = str(spec).partition(":")
    pairs = read_pairs(resolve_data(name, split or "test") if name in BUNDLED else resolve_data(spec, ""))
    return lambda m: sts(m, pairs).value


def _selection(model: Model, original: Model, cfg, data: TrainSet) -> Evaluation:
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
    if cfg.eval == "fidelity":
        sentences = list(data.heldout)
        reference = {}  # the original's embeddings: computed once, on the first evaluation

        def fidelity(m: Model) -> float:
            if "emb" not in reference:
                reference["emb"] = encode(original, sentences)
            return float(F.cosine_similarity(encode(m, sentences), reference["emb"], dim=-1).mean())
        return Evaluation(f"fidelity (mean cosine to the original, {len(sentences)} held-out texts)", fidelity,
                          higher_is_better=True)
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
