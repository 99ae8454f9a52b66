"""What each llama.cpp architecture computes, so that the GGUF export checks a model against it.

The facts of a model come from its ArchMap (norms, per-head q/k norms, sandwich norms, fused
projections, activation, embedding scale, rotary, sliding window); the facts of the target come
from here: llama.cpp's graph for that architecture (llama-model.cpp, read for facts only) and the
tensors gguf-py says it holds (gguf.MODEL_TENSORS). A model is written only where the two agree;
everything else is refused with the reason, so a GGUF never computes something else than PyTorch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSOR, MODEL_TENSORS, TENSOR_NAMES

from ..errors import UnsupportedModelError
from ..model.arch import ArchMap


@dataclass(frozen=True)
class Target:
    arch: MODEL_ARCH
    acts: tuple[str, ...]  # transformers ACT2FN names of the FFN gate activation the graph applies
    interleaved_rope: bool = False  # llama.cpp's "norm" rope (pairs 2i, 2i+1); else NeoX rotate-half
    qkv_bias: bool = False  # reads q/k/v biases
    embed_scale_sqrt_hidden: bool = False  # multiplies token embeddings by sqrt(n_embd) itself
    sliding: bool = False  # sliding-window layers (window, per-layer pattern, their own rope base)
    tokens: tuple[str, ...] = ()  # tokens its vocabulary loader looks up (and fails without)

    @property
    def name(self) -> str:
        return MODEL_ARCH_NAMES[self.arch]

    def holds(self, tensor: MODEL_TENSOR) -> bool:
        return tensor in MODEL_TENSORS[self.arch]


SILU = ("silu", "swish")
TARGETS = {t.name: t for t in (
    Target(MODEL_ARCH.LLAMA, SILU, interleaved_rope=True, qkv_bias=True),
    Target(MODEL_ARCH.QWEN2, SILU, qkv_bias=True),
    Target(MODEL_ARCH.QWEN3, SILU),
    Target(MODEL_ARCH.PHI3, SILU, tokens=("<|endoftext|>",)),
    # ggml_gelu is the tanh approximation; Gemma 3 trains with it (gelu_pytorch_tanh)
    Target(MODEL_ARCH.GEMMA3, ("gelu_pytorch_tanh", "gelu_new"), embed_scale_sqrt_hidden=True, sliding=True),
)}


def target(name: str) -> Target:
    if name not in TARGETS:
        raise UnsupportedModelError(f"slimformer's GGUF export does not write llama.cpp's {name!r} architecture "
                                    f"(it writes {', '.join(TARGETS)}); export as hf")
    return TARGETS[name]


def check_model(arch: ArchMap, t: Target, attention_scales: list[float]) -> None:
    """Refuse what `t`'s graph would compute differently; every message names the fact."""
    def refuse(what: str) -> None:
        raise UnsupportedModelError(f"llama.cpp's {t.name} architecture {what}; export as hf")

    if arch.kind != "causal" or arch.bidirectional:
        refuse("is a causal decoder, and this model attends both ways (an encoder)")
    if arch.norm.kind != "rms":
        refuse("uses RMSNorm only, and this model has LayerNorms")
    scale_ok = math.isclose(arch.embed_scale, math.sqrt(arch.hidden_size), rel_tol=1e-6) \
        if t.embed_scale_sqrt_hidden else arch.embed_scale == 1.0
    if not scale_ok:
        refuse(f"scales token embeddings by {'sqrt(hidden)' if t.embed_scale_sqrt_hidden else '1'}, "
               f"this model by {arch.embed_scale:g}")
    for blk in arch.blocks:
        a, f = blk.attn, blk.ffn
        if not f.gated or f.act not in t.acts:
            refuse(f"runs a gated FFN with {' / '.join(t.acts)}; block {blk.index} has "
                   f"{'a gated' if f.gated else 'an ungated'} FFN with {f.act}")
        if a.bias and not t.qkv_bias:
            refuse("has no q/k/v biases")
        # llama.cpp requires the norms an architecture holds and has no place for the others
        for tensor, present in ((MODEL_TENSOR.ATTN_Q_NORM, a.q_norm), (MODEL_TENSOR.ATTN_POST_NORM, blk.post_attn_norm),
                                (MODEL_TENSOR.FFN_POST_NORM, blk.post_ffn_norm)):
            if bool(present) != t.holds(tensor):
                refuse(f"{'has no' if present else 'needs'} {TENSOR_NAMES[tensor].split('.')[-1]} tensors "
                       f"(block {blk.index} {'has' if present else 'lacks'} them)")
        if not t.holds(MODEL_TENSOR.ATTN_QKV if a.fused else MODEL_TENSOR.ATTN_Q):
            refuse(f"reads {'separate q, k, v' if a.fused else 'one fused qkv'} projection{'s' * a.fused}")
        if f.fused_gate_up and t.holds(MODEL_TENSOR.FFN_GATE):
            refuse("reads separate gate and up projections")
        if not f.fused_gate_up and not t.holds(MODEL_TENSOR.FFN_GATE):
            refuse("reads one fused [gate; up] projection")
    head_dim = arch.blocks[0].attn.head_dim
    if any(not math.isclose(s, head_dim ** -0.5, rel_tol=1e-6) for s in attention_scales):
        refuse(f"scales attention logits by head_dim^-0.5 = {head_dim ** -0.5:g}; this model by "
               f"{attention_scales[0]:g}")
    rope = arch.rope
    if rope is None:
        refuse("needs rotary positions")
    if rope.scaling not in ("default", "linear"):
        refuse(f"is written with default or linear rope scaling only (this model: {rope.scaling})")
    if rope.partial != 1.0 and t.interleaved_rope:
        refuse("is written with partial rotary only for NeoX-style rope")
    if rope.local_theta is not None and not t.sliding:
        refuse("has one rope base for every layer")


def check_vocabulary(tokens, t: Target) -> None:
    missing = [tok for tok in t.tokens if tok not in tokens]
    if missing:
        raise UnsupportedModelError(f"llama.cpp's {t.name} loader looks up the token(s) {', '.join(missing)}, which "
                                    "this tokenizer lacks (llama.cpp would refuse the file); export as hf")
