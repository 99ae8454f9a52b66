"""Weight quantization vs llm-compressor (optional peer): same model, same calibration windows,
same perplexity protocol, one process. Prints a Markdown table; one JSON line per run to --out.

    python benchmarks/quant_vs_peer.py                 # SmolLM2: RTN int8, RTN/GPTQ/AWQ int4
    python benchmarks/quant_vs_peer.py --peer          # + llm-compressor GPTQ and AWQ, same formats
    python benchmarks/quant_vs_peer.py --runs gptq:4:64 --peer

A run is METHOD:BITS[:GROUP][:sym|asym][:a8][:sq=ALPHA][:head][:act] (int4 defaults to
asymmetric, int8 to symmetric per-channel; a8: int8 per-token dynamic activations; sq:
SmoothQuant; head: the LM head quantized too; act: GPTQ act-order). slimformer's model is scored
running on its integer kernels (int4: bf16 activations); llm-compressor's is scored as it leaves
oneshot (fake-quantized fp32 weights).
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

import slimformer
from slimformer.bench.env import environment
from slimformer.bench.memory import RssPeak
from slimformer.data.calibration import calibration_set
from slimformer.quant import QuantizeConfig, quantize_model

from common import add_peer_arguments, append_row, metric_name, peer_dataset, quality

DEFAULT_RUNS = ["rtn:8", "rtn:8:a8:head", "gptq:8:a8:sq=0.5:head", "rtn:4:128", "rtn:4:64", "gptq:4:128",
                "gptq:4:64", "awq:4:128", "awq:4:64"]


def parse_run(text: str) -> QuantizeConfig:
    method, bits, *opts = text.split(":")
    cfg = QuantizeConfig(method=method, bits=int(bits), symmetric=int(bits) == 8)
    for o in opts:
        if o.isdigit():
            cfg.group_size = int(o)
        elif o in ("sym", "asym"):
            cfg.symmetric = o == "sym"
        elif o == "a8":
            cfg.activations = "dynamic"
        elif o.startswith("sq="):
            cfg.smoothquant = float(o[3:])
        elif o == "head":
            cfg.lm_head = True
        elif o == "act":
            cfg.act_order = True
        else:
            raise SystemExit(f"unknown run option {o!r} in {text!r}")
    return cfg


def label(cfg: QuantizeConfig) -> str:
    extra = (" A8 per-token" if cfg.activations == "dynamic" else "") + \
            (f" SmoothQuant {cfg.smoothquant}" if cfg.smoothquant is not None else "") + \
            (" +LM head" if cfg.lm_head else "") + (" act-order" if cfg.act_order else "")
    return f"{cfg.method} {cfg.spec.describe()}{extra}"


def run_slimformer(base, cfg: QuantizeConfig, cal: dict):
    model = copy.deepcopy(base)
    t0 = time.perf_counter()
    with RssPeak() as mem:
        log = quantize_model(model, cfg, cal, progress=False)
    return model, time.perf_counter() - t0, mem.increase, log.kernels


def run_peer(base, cfg: QuantizeConfig, calib):
    """llm-compressor's GPTQ or AWQ with the same grid, on the same windows; None for RTN."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.awq import AWQModifier
    from llmcompressor.modifiers.quantization import GPTQModifier
    weights = {"num_bits": cfg.bits, "type": "int", "symmetric": cfg.symmetric,
               "strategy": "group" if cfg.group_size else "channel"}
    if cfg.group_size:
        weights["group_size"] = cfg.group_size
    common = dict(config_groups={"g": {"targets": ["Linear"], "weights": weights}}, ignore=["lm_head"],
                  bypass_divisibility_checks=True)  # SmolLM2's 576 columns are not a multiple of 128
    if cfg.method == "gptq":
        recipe = GPTQModifier(**common, actorder="static" if cfg.act_order else None,
                              dampening_frac=cfg.damp, block_size=cfg.blocksize)
    elif cfg.method == "awq":
        # llm-compressor 0.14's AWQ pins cached activations for GPU transfers, which raises on a
        # machine without an accelerator; pinning changes nothing on a CPU, so it is skipped.
        from llmcompressor.pipelines.cache import IntermediatesCache
        if not torch.cuda.is_available():
            IntermediatesCache.pin_memory = lambda self, *a, **k: None
        recipe = AWQModifier(**common)
    else:
        return None
    ds = peer_dataset(calib)
    model = copy.deepcopy(base)
    t0 = time.perf_counter()
    with RssPeak() as mem:
        oneshot(model=model.module, dataset=ds, recipe=recipe, num_calibration_samples=len(ds),
                max_seq_length=calib.seq_len, shuffle_calibration_samples=False)
    return model, time.perf_counter() - t0, mem.increase, {"fake-quantized fp32": len(model.arch.linears)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_peer_arguments(p, "runs/quant_vs_peer.jsonl")
    p.add_argument("--runs", nargs="+", default=DEFAULT_RUNS)
    p.add_argument("--peer-runs", nargs="+", default=["gptq:4:128", "gptq:4:64", "awq:4:128", "awq:4:64"],
                   help="the runs the peer repeats (GPTQ and AWQ int4)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = slimformer.load(args.model)
    cal = {"samples": args.samples, "seq_len": args.seq_len, "seed": args.seed}
    calib = calibration_set(base, **cal)
    metric = metric_name(base)
    dense = quality(base, args.windows, args.seq_len)
    print(f"fp32 {metric}: {dense:.3f}", flush=True)
    rows = []
    for text in args.runs:
        cfg = parse_run(text)
        for tool in ["slimformer"] + (["llm-compressor"] if args.peer and text in args.peer_runs else []):
            try:
                res = run_slimformer(base, cfg, cal) if tool == "slimformer" else run_peer(base, cfg, calib)
            except Exception as e:  # a peer failure is reported, not fatal
                if tool == "slimformer":
                    raise
                print(f"{label(cfg)} {tool} failed: {type(e).__name__}: {e}".splitlines()[0], flush=True)
                continue
            model, wall, mem_inc, kernels = res
            q = quality(model, args.windows, args.seq_len)
            row = {"model": args.model, "run": label(cfg), "tool": tool, "quality": q, "metric": metric,
                   "fp32": dense, "wall_s": wall, "peak_rss_increase_mib": mem_inc / 2**20, "kernels": kernels,
                   "calibration": calib.describe(), "windows": args.windows,
                   "threads": torch.get_num_threads(), "environment": environment()}
            rows.append(row)
            append_row(args.out, row)
            print(f"{row['run']:<26} {tool:<15} {q:9.3f}  {wall:7.1f} s  +{row['peak_rss_increase_mib']:.0f} MiB"
                  f"  {kernels}", flush=True)
            del model
    print(f"\n| run | tool | {metric} | wall s | peak RSS increase | runs on |\n|---|---|---|---|---|---|")
    print(f"| fp32 | - | {dense:.2f} | - | - | fp32 |")
    for r in rows:
        print(f"| {r['run']} | {r['tool']} | {r['quality']:.2f} | {r['wall_s']:.0f} | "
              f"{r['peak_rss_increase_mib']:.0f} MiB | {', '.join(r['kernels'])} |")
    print(f"\n{torch.get_num_threads()} threads; calibration {calib.describe()}")


if __name__ == "__main__":
    main()
