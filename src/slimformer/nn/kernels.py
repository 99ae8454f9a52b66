"""The integer kernels quantized linears run on, chosen by measurement on this CPU (see README).

Measured with torch 2.13 on one AVX-512 VNNI core (`python benchmarks/kernels.py`):
- int8 weights x dynamically quantized 8-bit activations: fbgemm's `quantized::linear_dynamic`
  (quantize, VNNI GEMM and requantize fused) is 2.4x faster than fp32 for one token and 12x on
  an LM head; for many tokens, `torch._int_mm` (oneDNN int8 GEMM, int32 out) with per-token
  scales applied around it.
- int4 weights: `_weight_int4pack_mm_for_cpu` runs fast only with bf16 activations (1.5x fp32
  for one token; 20x slower than fp32 with fp32 activations), so activations are cast to bf16.
- int8 weight-only `_weight_int8pack_mm` is slower than fp32 with fp32 activations and 1.3x
  faster with bf16 ones.

Activation quantization here is asymmetric 8-bit (zero point), per token: what fbgemm does for
a single row, so decoding (one token per step) and scoring (many tokens) compute the same thing.
"""
from __future__ import annotations

import torch

KERNEL_GROUPS = (256, 128, 64, 32)


def quantize_tokens(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row asymmetric int8: x ~ s * (q - z); returns (q int8 [M, K], s [M, 1], z [M, 1])."""
    lo = x.amin(-1, keepdim=True).clamp_(max=0)
    hi = x.amax(-1, keepdim=True).clamp_(min=0)
    s = (hi - lo).div_(255)
    s = torch.where(s > 0, s, torch.ones_like(s))
    z = torch.round(-128 - lo / s)
    q = torch.round(x / s).add_(z).clamp_(-128, 127).to(torch.int8)
    return q, s, z


EXACT_FP32_K = 1024  # |int8 x int8| <= 128 * 127: 1024 such products sum below 2^24, exact in fp32


def _int_mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact integer sums of int8 a [M, K] @ b [K, N] from fp32 GEMMs over K-chunks small enough to
    be exact, added in float64; returned as float32 (as int32 sums cast to float32 would be)."""
    k = a.shape[1]
    if k <= EXACT_FP32_K:
        return a.float() @ b.float()
    acc = None
    for i in range(0, k, EXACT_FP32_K):
        part = (a[:, i:i + EXACT_FP32_K].float() @ b[i:i + EXACT_FP32_K].float()).double()
        acc = part if acc is None else acc.add_(part)
    return acc.float()


def int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int8 a [M, K] @ int8 b [K, N], exact sums as float32. oneDNN's int8 GEMM (torch._int_mm) where
    the CPU has VNNI; without it that op is a slow reference loop (40x slower than fp32 here on
    AVX2), so the same sums come from exact fp32 GEMMs instead."""
    if fbgemm_exact():
        return torch._int_mm(a, b).to(torch.float32)
    return _int_mm_fp32(a, b)


def int8_per_token(x2: torch.Tensor, w_t: torch.Tensor, w_colsum: torch.Tensor,
                   w_scale: torch.Tensor, mm=None) -> torch.Tensor:
    """x2 [M, K] fp32; w_t [K, N] int8 (a transposed view); returns fp32 [M, N]."""
    q, s, z = quantize_tokens(x2)
    acc = (mm or int_mm)(q, w_t)
    acc = torch.addr(acc, z.view(-1), w_colsum, alpha=-1)  # remove the activation zero point
    return acc.mul_(s).mul_(w_scale)


def int8_static(x2: torch.Tensor, inv_scale: torch.Tensor, w_t: torch.Tensor, out_scale: torch.Tensor,
                zero: int | None = None, z_colsum: torch.Tensor | None = None) -> torch.Tensor:
    """Per-tensor activations with a calibrated scale; inv_scale may be a [K] vector
    (SmoothQuant's 1/s folded with 1/act_scale). An asymmetric range adds its zero point before
    rounding to int8 and removes it after the integer product (z_colsum = z * the weight codes'
    row sums, [N])."""
    q = torch.round(x2 * inv_scale)
    if zero:
        q = q.add_(zero)
    q = q.clamp_(-128, 127).to(torch.int8)
    acc = int_mm(q, w_t)
    if zero:
        acc = acc.sub_(z_colsum)
    return acc.mul_(out_scale)


def fbgemm_pack(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    """Prepacked fbgemm weight from int8 codes [N, K] with per-row scales (symmetric)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized-tensor constructors warn of deprecation
        qw = torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(qw, bias)


def fbgemm_dynamic(x2: torch.Tensor, packed) -> torch.Tensor:
    return torch.ops.quantized.linear_dynamic(x2, packed, False)


def int8_per_tensor(x: torch.Tensor, w_t: torch.Tensor, w_colsum: torch.Tensor,
                    w_scale: torch.Tensor) -> torch.Tensor:
    """What fbgemm's dynamic kernel computes (one asymmetric int8 range for the whole tensor),
    on exact integer GEMMs (int_mm); x [..., K] fp32 -> [..., N]."""
    x2 = x.reshape(-1, x.shape[-1])
    q, s, z = quantize_tokens(x2.reshape(1, -1))
    acc = int_mm(q.view_as(x2), w_t)
    acc.sub_(w_colsum, alpha=float(z))
    y = acc.mul_(s.view(())).mul_(w_scale)
    return y.view(*x.shape[:-1], y.shape[-1])


_FBGEMM_EXACT: bool | None = None


def fbgemm_exact() -> bool:
    """Whether fbgemm's dynamic int8 kernel computes exact int32 sums on this CPU.

    Without VNNI (AVX2 only: AMD before Zen 4, many Intel CPUs) fbgemm multiplies uint8
    activations by int8 weights with VPMADDUBSW, which adds pairs into int16 with saturation:
    two products of 255 x 127 overflow, and full-range int8 weights give wrong outputs (PyTorch's
    own quantize_dynamic avoids it with 7-bit activations, reduce_range). Checked once by
    computing such a worst case both ways; where it fails, every call runs on int_mm's exact sums.
    """
    global _FBGEMM_EXACT
    if _FBGEMM_EXACT is None:
        k, n = 64, 8
        q = torch.full((n, k), 127, dtype=torch.int8)
        q[1::2] = -127
        x = torch.ones(1, k)
        x[0, ::4] = -1.0  # the range spans [-1, 1]: codes 0 and 255, the widest products
        scale = torch.ones(n)
        if not fbgemm_available():
            _FBGEMM_EXACT = False
        else:
            exact = int8_per_token(x, q.t(), q.sum(1, dtype=torch.int32).float(), scale, mm=_int_mm_fp32)
            fast = fbgemm_dynamic(x, fbgemm_pack(q, scale, None))
            _FBGEMM_EXACT = bool(torch.allclose(fast, exact, rtol=1e-4, atol=1e-3))
    return _FBGEMM_EXACT


_FBGEMM_AVAILABLE: bool | None = None


def fbgemm_available() -> bool:
    """Whether this PyTorch build has fbgemm's dynamic int8 kernel at all (x86; ARM has qnnpack only)."""
    global _FBGEMM_AVAILABLE
    if _FBGEMM_AVAILABLE is None:
        q = torch.ones(1, 8, dtype=torch.int8)
        try:
            fbgemm_dynamic(torch.ones(1, 8), fbgemm_pack(q, torch.ones(1), None))
            _FBGEMM_AVAILABLE = True
        except RuntimeError:
            _FBGEMM_AVAILABLE = False
    return _FBGEMM_AVAILABLE


def kernel_group(in_features: int, group_size: int) -> int | None:
    """Group size the int4 kernel can use to hold groups of `group_size` exactly (a divisor of
    both, since a wide group is the same scale repeated over narrower ones), or None."""
    for g in KERNEL_GROUPS:
        if in_features % g == 0 and (group_size == 0 or group_size % g == 0):
            return g
    return None


def int4_pack(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int):
    """(packed weight, bf16 scales_and_zeros, kernel group) for `_weight_int4pack_mm_for_cpu`.

    That kernel computes W = (u - 8) * scale + zero with u in [0, 15]; ours is W = s * (q - z) with
    q = u - 8, so scale = s and zero = -s * z.
    """
    n, k = q.shape
    gk = kernel_group(k, group_size)
    if gk is None:
        raise ValueError(f"no int4 kernel group divides in_features {k} and group {group_size}")
    width = group_size or k
    src = torch.arange(0, k, gk) // width  # stored group of each kernel group
    s = scales[:, src].T.float()
    zero = -(s * zeros[:, src].T.float())
    packed = torch._convert_weight_to_int4pack_for_cpu((q.to(torch.int32) + 8), 1)
    return packed, torch.stack([s, zero], -1).to(torch.bfloat16).contiguous(), gk


def int4_mm(x2: torch.Tensor, packed, scales_zeros: torch.Tensor, gk: int) -> torch.Tensor:
    return torch._weight_int4pack_mm_for_cpu(x2.to(torch.bfloat16), packed, gk, scales_zeros).float()


def int8_weight_mm(x2: torch.Tensor, q: torch.Tensor, scale_bf16: torch.Tensor) -> torch.Tensor:
    return torch._weight_int8pack_mm(x2.to(torch.bfloat16), q, scale_bf16).float()
