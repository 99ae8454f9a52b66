"""What bf16 block forwards in calibration (`calibration: {dtype: bfloat16}`) cost in quality.

    python benchmarks/calibration_dtype.py                      # SmolLM2, GPTQ int4 g128
    python benchmarks/calibration_dtype.py --samples 16 --windows 16

GPTQ int4 g128 on the same calibration windows (WikiText-2 validation) with the block forwards in
fp32 and in bf16 (autocast; the Hessians are still summed in fp64 and the solve runs in fp32 /
fp64), then WikiText-2 test perplexity of both and of the original on the same windows; the
quantize stage's wall time and peak RSS; the share of int4 codes the two runs agree on.
One JSON line per run in results/calibration_dtype.jsonl.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

import slimformer
from slimformer.bench.env import environment
from slimformer.bench.memory import RssPeak
from slimformer.nn.quant_linear import QuantLinear
from slimformer.quant.stage import QuantizeConfig, quantize_model

from common import add_calibration_arguments, append_row, quality


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_calibration_arguments(p)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "calibration_dtype.jsonl"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = slimformer.load(args.model)
    row = {"model": args.model, "method": "gptq int4 g128", "samples": args.samples or 64, "seq_len": args.seq_len,
           "windows": args.windows, "ppl_original": quality(base, args.windows, args.seq_len)}
    codes = {}
    for dtype in ("float32", "bfloat16"):
        m = copy.deepcopy(base)
        cal = {"samples": args.samples, "seq_len": args.seq_len, "seed": args.seed, "dtype": dtype}
        t0 = time.perf_counter()
        with RssPeak(interval_s=0.01) as mem:
            quantize_model(m, QuantizeConfig(method="gptq", bits=4, group_size=128), cal, progress=False)
        row[f"{dtype}_stage_s"] = round(time.perf_counter() - t0, 1)
        row[f"{dtype}_stage_peak_rss_gib"] = round(mem.peak / 2**30, 3)
        row[f"{dtype}_ppl"] = quality(m, args.windows, args.seq_len)
        codes[dtype] = {n: q.qweight for n, q in m.module.named_modules() if isinstance(q, QuantLinear)}
        del m
    a, b = codes["float32"], codes["bfloat16"]
    # packed int4: two codes a byte; a byte equal in both means both codes are
    row["equal_code_bytes"] = round(sum(int((a[k] == b[k]).sum()) for k in a) / sum(v.numel() for v in a.values()), 4)
    row.update(threads=torch.get_num_threads(), environment=environment())
    print({k: v for k, v in row.items() if k != "environment"})
    append_row(args.out, row)


if __name__ == "__main__":
    main()
