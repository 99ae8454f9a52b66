"""Calibration samples: what the engine feeds through the model to collect statistics.

Causal LMs: `samples` windows of `seq_len` tokens at random offsets (fixed seed) in running text
(default: WikiText-2 validation). Encoders: `samples` sentences (default: STS-B train, both
sides), batched with padding. The token ids' SHA-256 is recorded so a result names its data.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..errors import ConfigValueError, DataError
from ..model import Model
from .bundled import resolve_data
from .readers import read_sentences, read_text
from .tokens import text_ids

DEFAULT_DATA = {"causal": ("wikitext2", "validation", 64), "encoder": ("stsb", "train", 1024)}
ENCODER_BATCH = 32


@dataclass
class CalibrationSet:
    batches: list[dict]  # model inputs: input_ids [+ attention_mask, token_type_ids]
    data: str
    split: str
    samples: int
    seq_len: int
    tokens: int  # real (non-padding) tokens
    sha256: str
    dtype: str = "float32"  # the block forwards' compute precision (statistics accumulate in fp32 / fp64)
    device: str = "cpu"  # where the engine runs each block (resolved from the recipe's auto / cpu / cuda)

    def describe(self) -> dict:
        out = {"data": self.data, "split": self.split, "samples": self.samples, "seq_len": self.seq_len,
               "tokens": self.tokens, "sha256": self.sha256}
        if self.dtype != "float32":
            out["dtype"] = self.dtype
        if self.device != "cpu":
            out["device"] = self.device
        return out


def calibration_set(model: Model, data: str | None = None, split: str | None = None,
                    samples: int | None = None, seq_len: int = 1024, seed: int = 0,
                    dtype: str = "float32", device: str = "auto") -> CalibrationSet:
    device = engine_device(device)
    d_data, d_split, d_samples = DEFAULT_DATA[model.kind]
    data, split, samples = data or d_data, split or d_split, samples or d_samples
    if split == "test":
        raise DataError("calibration must not use the test split; use validation or train")
    path = resolve_data(data, split)
    gen = torch.Generator().manual_seed(seed)
    digest = hashlib.sha256()
    if model.is_causal:
        seq_len = min(seq_len, model.arch.max_positions)
        model.check_seq_len(seq_len)
        ids = text_ids(model.tokenizer, read_text(path))
        if ids.numel() <= seq_len:
            raise DataError(f"{path} has {ids.numel()} tokens, too few for one {seq_len}-token sample")
        starts = torch.randint(0, ids.numel() - seq_len, (samples,), generator=gen)
        batches = [{"input_ids": ids[s:s + seq_len][None].clone()} for s in starts.tolist()]
        tokens = samples * seq_len
    else:
        sentences = read_sentences(path)
        pick = torch.randperm(len(sentences), generator=gen)[:samples].tolist()
        chosen = [sentences[i] for i in pick]
        max_len = min(seq_len, model.pooling.max_length or model.arch.max_positions, model.arch.max_positions)
        batches = [dict(model.tokenizer(chosen[i:i + ENCODER_BATCH], padding=True, truncation=True,
                                        max_length=max_len, return_tensors="pt"))
                   for i in range(0, len(chosen), ENCODER_BATCH)]
        tokens = int(sum(b["attention_mask"].sum() for b in batches))
        samples = len(chosen)
    for b in batches:
        digest.update(b["input_ids"].numpy().tobytes())
    return CalibrationSet(batches=batches, data=str(data), split=split, samples=samples, seq_len=seq_len,
                          tokens=tokens, sha256=digest.hexdigest(), dtype=dtype, device=device)


def engine_device(device: str) -> str:
    """auto: the first CUDA device when torch sees one, else the CPU; cuda without one is refused."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigValueError("calibration device cuda: torch sees no CUDA device here (a CPU build, or no "
                               "driver); use device: auto or cpu")
    return device
