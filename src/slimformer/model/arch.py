"""ArchMap: where every block's attention and FFN projections, norms, embeddings and head are.

Every method reaches layers through an ArchMap, so no method branches on `model_type`.
Modules are named by their dotted path from the loaded root module: names stay valid when
a stage swaps a Linear for a compressed one. The map also carries every architectural fact a
method or exporter needs (norm formula, per-head q/k norms, sandwich norms, activation, embedding
scale, rotary settings, sliding-window layers), so that no code outside model/families reads a
model type. Adding a family is one module in model/families/.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class AttentionMap:
    o: str
    n_heads: int
    n_kv_heads: int
    head_dim: int
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None  # fused projection (GPT-2's c_attn): rows are [q; k; v]
    module: str = ""  # the attention module holding the head counts the forward reads (trimming sets them)
    q_norm: str | None = None  # per-head norm over head_dim applied to q (Qwen3, Gemma 3)
    k_norm: str | None = None
    bias: bool = False  # q/k/v carry biases (BERT, GPT-2, Qwen2)

    @property
    def fused(self) -> bool:
        return self.qkv is not None

    @property
    def inputs(self) -> list[str]:
        """Projections reading the block's hidden state."""
        return [self.qkv] if self.fused else [self.q, self.k, self.v]

    @property
    def linears(self) -> list[str]:
        return self.inputs + [self.o]


@dataclass(frozen=True)
class FFNMap:
    up: str
    down: str
    width: int
    gate: str | None = None  # gated FFNs (SwiGLU, GeGLU): act(gate(x)) * up(x)
    act: str = "gelu"  # transformers' ACT2FN name of the activation
    # `up` holds [gate; up] rows, width neurons each, and the FFN computes act(rows[:width]) * rows[width:]:
    # Phi-3's gate_up_proj ([gate; up]) and ModernBERT's Wi (its [input; gate] halves are the same
    # layout: transformers applies the activation to the first half, `input`). Neuron j is rows j
    # and width + j; a stage slicing or scaling `up` must touch both halves.
    fused_gate_up: bool = False

    @property
    def gated(self) -> bool:
        return self.gate is not None or self.fused_gate_up

    @property
    def inputs(self) -> list[str]:
        """Projections reading the FFN's input."""
        return ([self.gate] if self.gate else []) + [self.up]

    @property
    def linears(self) -> list[str]:
        return self.inputs + [self.down]


@dataclass(frozen=True)
class BlockMap:
    index: int
    name: str
    attn: AttentionMap
    ffn: FFNMap
    attn_norm: str | None  # None: the attention reads the residual stream as is (ModernBERT's first
    # block: its input is the embedding norm's output, which the residual carries on too)
    ffn_norm: str
    pre_norm: bool  # True: norm before each sub-layer (GPT-2, Llama); False: after (BERT)
    post_attn_norm: str | None = None  # sandwich norms on the sub-layer outputs (Gemma 3)
    post_ffn_norm: str | None = None
    attention_type: str = "full_attention"  # or "sliding_attention" (Gemma 3, Mistral-style windows)

    @property
    def linears(self) -> list[str]:
        return self.attn.linears + self.ffn.linears

    @property
    def input_groups(self) -> list[list[str]]:
        """Linears that read the same input (q/k/v; gate/up): their input statistics are equal."""
        return [self.attn.inputs, [self.attn.o], self.ffn.inputs, [self.ffn.down]]


@dataclass(frozen=True)
class NormSpec:
    """How the family's norms compute: "layer" (mean and variance, weight and bias) or "rms"
    (x / rms(x) * (offset + w)); Gemma stores w with offset 1, so scaling its effect by 1/s means
    w' = (offset + w) / s - offset."""
    kind: str = "layer"
    offset: float = 0.0
    eps: float = 1e-5
    bias: bool = True  # layer norms carry a bias (ModernBERT's have none: norm_bias false)


@dataclass(frozen=True)
class RelativeBias:
    """A learned per-head attention bias indexed by the bucket of the distance k - q (T5-style
    buckets, bidirectional: half the buckets for each sign, exact up to buckets / 4, logarithmic
    up to max_distance). `table` is an Embedding [n_table, heads]; with `shared` one table serves
    every block (MPNet computes it once in its encoder), so a block cannot lose heads on its own."""
    table: str
    buckets: int = 32  # the buckets the forward computes (MPNet: 32, whatever the config's table size)
    max_distance: int = 128
    shared: bool = True


@dataclass(frozen=True)
class RopeSpec:
    theta: float = 10000.0
    partial: float = 1.0  # fraction of head_dim rotated (Phi-3 variants, some NeoX-style models)
    scaling: str = "default"  # rope_type: default, linear, llama3, yarn, longrope, ...
    factor: float = 1.0
    local_theta: float | None = None  # Gemma 3: a different base on sliding-window layers


@dataclass(frozen=True)
class ArchMap:
    family: str  # adapter name: "bert", "distilbert", "gpt2", "llama"
    model_type: str  # the config's model_type
    kind: str  # "encoder" or "causal"
    hidden_size: int
    max_positions: int
    blocks: tuple[BlockMap, ...]
    embeddings: tuple[str, ...]  # token embeddings first, then positions / token types
    final_norm: str | None = None
    head: str | None = None  # LM head, for causal models
    tied_head: bool = False
    conv1d_transposed: tuple[str, ...] = field(default=())  # GPT-2 Conv1D turned into Linear at load
    embedding_norm: str | None = None  # LayerNorm applied to the embeddings (BERT family)
    pooler: str | None = None  # BERT's pooler dense (hidden -> hidden), kept consistent when trimming
    norm: NormSpec = NormSpec()
    embed_scale: float = 1.0  # token embeddings are multiplied by this (Gemma: sqrt(hidden))
    rope: RopeSpec | None = None  # rotary positions (decoders, ModernBERT); None: learned / relative
    position_offset: int = 0  # learned position ids start after this (RoBERTa: padding_idx + 1)
    # Window of the blocks whose attention_type is sliding: causal stacks see keys q - window < k <= q
    # (Mistral, Gemma 3); bidirectional ones |q - k| <= window (ModernBERT: local_attention // 2).
    sliding_window: int | None = None
    bidirectional: bool = False  # attention without a causal mask (Gemma 3 embedders, ModernBERT)
    relative_bias: RelativeBias | None = None  # per-head relative position bias (MPNet)
    attn_scale: float | None = None  # attention logits scale; None: head_dim^-0.5 (Gemma: query_pre_attn_scalar^-0.5)
    attn_softcap: float | None = None  # logits -> cap * tanh(logits / cap) before the mask (Gemma 2 style)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def linears(self) -> list[str]:
        return [name for b in self.blocks for name in b.linears]

    @property
    def input_groups(self) -> list[list[str]]:
        """Every block's groups of linears that read one input (q/k/v, o, gate/up, down)."""
        return [g for b in self.blocks for g in b.input_groups]


def get_module(root: nn.Module, name: str) -> nn.Module:
    return root.get_submodule(name) if name else root


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(get_module(root, parent_name), child, new)


def conv1d_to_linear(conv: nn.Module) -> nn.Linear:
    """GPT-2's Conv1D computes x @ W + b with W stored [in, out]; a Linear stores W.T."""
    in_features, out_features = conv.weight.shape
    lin = nn.Linear(in_features, out_features, bias=conv.bias is not None,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.t())
        if conv.bias is not None:
            lin.bias.copy_(conv.bias)
    return lin
