"""The Model every stage takes and returns: an HF module, its tokenizer, and its ArchMap."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigValueError
from .arch import ArchMap
from .masks import MaskStore
from .sentence_head import DenseLayer


@dataclass
class Pooling:
    """How an encoder turns token states into one sentence embedding, as the sentence-transformers
    modules after the Transformer do: pool, then each Dense layer in order, then Normalize."""
    mode: str = "mean"  # "mean" | "cls" | "max"
    normalize: bool = False
    max_length: int | None = None  # sentence-transformers' max_seq_length, if declared
    dense: tuple[DenseLayer, ...] = ()  # Dense modules after the pooling (2_Dense, ...)

    def describe(self) -> dict:
        """JSON form (export metadata): the Dense layers by path and shape, not their weights."""
        return {"mode": self.mode, "normalize": self.normalize, "max_length": self.max_length,
                "dense": [{"path": d.path, "in": d.weight.shape[1], "out": d.weight.shape[0],
                           "activation": d.activation} for d in self.dense]}


@dataclass
class Model:
    module: nn.Module
    tokenizer: object
    arch: ArchMap
    source: str  # what the user asked for (alias, path or hub id)
    path: Path | None = None  # folder the weights were read from; None once changed in memory
    pooling: Pooling = field(default_factory=Pooling)
    extra_files: dict[str, bytes] = field(default_factory=dict)  # e.g. sentence-transformers configs
    log: list[dict] = field(default_factory=list)  # one entry per stage applied
    masks: MaskStore = field(default_factory=MaskStore)  # linear name -> bool keep-mask, bit-packed
    source_bytes: int | None = None  # size on disk of what was loaded (weight files, or the .gguf)
    runtime: str = "torch"  # "onnxruntime" / "llama.cpp": module is a runtime adapter (runtime/)
    lazy: object = None  # lazy.LazyWeights when the blocks stay on disk until used (load(lazy=True))

    def __post_init__(self):
        if not isinstance(self.masks, MaskStore):  # a plain dict of bool masks (load, tests)
            self.masks = MaskStore(self.masks)

    @property
    def kind(self) -> str:
        return self.arch.kind

    @property
    def device(self) -> torch.device:
        # the first real parameter: a lazily loaded model's are on the meta device until read
        real = (p.device for p in self.module.parameters() if p.device.type != "meta") if self.runtime == "torch" else iter(())
        return next(real, torch.device("cpu"))  # runtimes run on the CPU

    @property
    def head_is_tied(self) -> bool:
        """Whether the LM head reads the input embeddings' own tensor. Checked on the tensors, not
        the load-time ArchMap flag: quantizing the head unties it. No head: the embeddings serve."""
        if not self.arch.head:
            return True
        from .arch import get_module
        head = getattr(get_module(self.module, self.arch.head), "weight", None)
        emb = get_module(self.module, self.arch.embeddings[0]).weight
        if head is None:
            return False
        if head.device.type == "meta":  # a lazily loaded model at rest: every meta pointer is 0
            return head is emb
        return head.data_ptr() == emb.data_ptr()

    @property
    def is_causal(self) -> bool:
        return self.arch.kind == "causal"

    @property
    def name(self) -> str:
        """The source, plus the stages applied to it (e.g. `smollm2+prune+quantize`)."""
        return "+".join([self.source] + [entry["stage"] for entry in self.log])

    def apply_masks(self) -> None:
        """Re-zero pruned weights (after an optimizer step, say)."""
        with torch.no_grad():
            for name, keep in self.masks.items():
                weight = getattr(self.module.get_submodule(name), "weight", None)
                if weight is not None:  # a quantized layer holds its zeros as codes equal to z
                    weight.mul_(keep)

    def check_seq_len(self, seq_len: int) -> None:
        if seq_len < 2:
            raise ConfigValueError(f"sequence length {seq_len} is too short; use at least 2")
        if seq_len > self.arch.max_positions:
            raise ConfigValueError(
                f"sequence length {seq_len} exceeds the model's {self.arch.max_positions} positions; "
                f"use --seq-len {self.arch.max_positions} or less")
