"""Microbenchmark of the CPU kernels a quantized linear can run on (how quant/kernels.py chose).

    python benchmarks/kernels.py              # 1 thread; SmolLM2 decode shapes and MiniLM batch shapes

Times one linear y = x W^T for each kernel on the same shapes, median of repeated calls, in ms.
The weights are small enough to stay in cache, so this measures kernel compute, not the memory
traffic of a whole model (see quant_decode.py for that).
"""
from __future__ import annotations

import argparse
import torch
import torch.nn.functional as F

from slimformer.bench.timing import median, time_ms
from slimformer.nn import kernels
from slimformer.nn.spec import QuantSpec, quantize

SHAPES = [(1, 576, 1536), (1, 1536, 576), (1, 576, 49152), (512, 576, 1536), (4096, 384, 1536), (4096, 1536, 384)]


def ms(fn, reps: int) -> float:
    return median(time_ms(fn, 3, reps))


def row(m: int, k: int, n: int) -> dict:
    reps = 200 if m == 1 else 10
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g) * 0.02
    wb = w.bfloat16()
    q8, s8, _ = quantize(w, QuantSpec(8, 0, True))
    s8 = s8[:, 0]
    q4, s4, z4 = quantize(w, QuantSpec(4, 64, False))
    packed4, sz4, gk = kernels.int4_pack(q4, s4, z4, 64)
    fb = kernels.fbgemm_pack(q8, s8, None)
    colsum = q8.sum(1, dtype=torch.int32).float()
    r = {"fp32": ms(lambda: F.linear(x, w), reps),
         "bf16 (weights stored bf16)": ms(lambda: F.linear(x.bfloat16(), wb), reps),
         "fbgemm int8 dynamic (per call)": ms(lambda: kernels.fbgemm_dynamic(x, fb), reps),
         "int4pack g64, fp32 act.": ms(lambda: torch._weight_int4pack_mm_for_cpu(x, packed4, gk, sz4.float()), max(3, reps // 20)),
         "int4pack g64, bf16 act.": ms(lambda: kernels.int4_mm(x, packed4, sz4, gk), reps),
         "int8pack, fp32 act.": ms(lambda: torch._weight_int8pack_mm(x, q8, s8), max(3, reps // 20)),
         "int8pack, bf16 act.": ms(lambda: kernels.int8_weight_mm(x, q8, s8.bfloat16()), reps)}
    if m > 1:
        xq = torch.randint(-128, 127, (m, k), dtype=torch.int8, generator=g)
        r["_int_mm only"] = ms(lambda: torch._int_mm(xq, q8.t()), reps)
        r["_int_mm + per-token scales"] = ms(lambda: kernels.int8_per_token(x, q8.t(), colsum, s8), reps)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {torch.backends.cpu.get_cpu_capability()}; ms per call\n")
    for m, k, n in SHAPES:
        r = row(m, k, n)
        print(f"x [{m}, {k}] @ W^T [{k}, {n}]: " + ", ".join(f"{name} {v:.3f}" for name, v in r.items()), flush=True)


if __name__ == "__main__":
    main()
