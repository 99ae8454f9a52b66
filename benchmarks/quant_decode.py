"""Decode speed of quantized SmolLM2 (batch 1, greedy), fp32 and every variant back to back.

    python benchmarks/quant_decode.py                     # 1 thread, 32-token prompt + 64 tokens

Reports tokens/s, the ratio to fp32 HF in the same run, and the achieved weight bandwidth:
bytes of weights read per generated token (every block linear and the LM head; one embedding row
is negligible) x tokens/s. The peer, torchao's int8 weight-only (pip install -e .[bench]), runs on
the same model; its int4 weight-only does not run on a CPU in torchao 0.18 (reported, not faked).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses

import torch

import slimformer
from slimformer.bench.env import environment
from slimformer.bench.workloads import decode
from slimformer.model import get_module
from slimformer.quant import QuantizeConfig, QuantLinear, quantize_model

from common import append_row

SLIM = {
    "slimformer W8A8 (int8 per-token dynamic act.) +LM head": dict(bits=8, activations="dynamic", lm_head=True),
    "slimformer W8A8, LM head fp32": dict(bits=8, activations="dynamic"),
    "slimformer int8 weight-only (bf16 act.) +LM head": dict(bits=8, lm_head=True),
    "slimformer int4 g64 weight-only (bf16 act.) +LM head": dict(bits=4, group_size=64, symmetric=False, lm_head=True),
    "slimformer int4 g128 weight-only (bf16 act.)": dict(bits=4, group_size=128, symmetric=False),
}

FUSION_AB = "slimformer W8A8 (int8 per-token dynamic act.) +LM head"


def weight_bytes_per_token(model) -> int:
    total = 0
    for name in model.arch.linears + ([model.arch.head] if model.arch.head else []):
        mod = get_module(model.module, name)
        if isinstance(mod, QuantLinear):
            total += sum(b.numel() * b.element_size() for b in (mod.qweight, mod.scales, mod.zeros))
            continue
        w = mod.weight
        qdata, scale = getattr(w, "qdata", None), getattr(w, "scale", None)
        if qdata is not None:  # a torchao tensor subclass: its codes and scales
            total += qdata.numel() * qdata.element_size() + (scale.numel() * scale.element_size() if scale is not None else 0)
        else:
            total += w.numel() * w.element_size()
    return total


def variants(base):
    yield "fp32 (HF PyTorch)", base
    for name, qc in SLIM.items():
        m = copy.deepcopy(base)
        quantize_model(m, QuantizeConfig(**qc), None, progress=False)
        yield name, m
        if name == FUSION_AB:  # the same layers without the q/k/v and gate/up groups (quant/fusion.py)
            for lin in m.arch.linears:
                get_module(m.module, lin).unlink()
            yield name + ", each linear alone", m
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
        module = copy.deepcopy(base.module)
        quantize_(module, Int8WeightOnlyConfig())
        yield "torchao int8 weight-only (all linears incl. LM head)", dataclasses.replace(base, module=module)
    except Exception as e:  # the peer is optional
        print(f"torchao int8 weight-only unavailable: {type(e).__name__}: {e}".splitlines()[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="runs/quant_decode.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = slimformer.load(args.model)
    rows, ref = [], None
    for name, model in variants(base):
        d = decode(model, "wikitext2", args.prompt, args.new_tokens, args.repeats)
        tps = d["tokens_per_s"]
        ref = ref or tps
        wb = weight_bytes_per_token(model)
        row = {"model": args.model, "variant": name, "tokens_per_s": tps, "ratio": tps / ref,
               "weight_mib_per_token": wb / 2**20, "gb_per_s": wb * tps / 1e9, "threads": args.threads,
               "decode": d, "environment": environment()}
        rows.append(row)
        append_row(args.out, row)
        print(f"{name:<58} {tps:6.2f} tok/s ({tps / ref:.2f}x)  {wb / 2**20:6.1f} MiB/token  "
              f"{row['gb_per_s']:.2f} GB/s", flush=True)
        del model
    print("\n| variant | tokens/s | vs fp32 | weights read per token | achieved GB/s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['tokens_per_s']:.1f} | {r['ratio']:.2f}x | {r['weight_mib_per_token']:.0f} MiB | "
              f"{r['gb_per_s']:.2f} |")
    print(f"\n{args.threads} thread(s); prompt {args.prompt} tokens, {args.new_tokens} new tokens, greedy, "
          f"best of {args.repeats}; {environment().get('torch', '')}")


if __name__ == "__main__":
    main()
