"""Encoders exported to ONNX and run in ONNX Runtime, against PyTorch and ONNX Runtime's own int8.

    python benchmarks/export_encoder.py --trimmed runs/demo-recover/model   # after make demo-recover

Variants, all scored by the same STS-B test protocol and timed by the same slimformer workloads
(STS-B test sentences in batches of 32 sorted by length; batch-1 latency at 32 tokens), in
alternating rounds (best of each), ratios against fp32 PyTorch in the same run and thread count:
- fp32 PyTorch; its slimformer ONNX export (fp32) in ONNX Runtime;
- the peer: ONNX Runtime's `quantization.quantize_dynamic` (int8 per-channel weights, dynamic uint8
  activations) of a `torch.onnx` export of the original (pip install -e .[bench]);
- slimformer W8A8 as the default recipe makes it (GPTQ + SmoothQuant 0.5, dynamic activations),
  in PyTorch and exported to ONNX with its own codes and scales;
- with --trimmed DIR: a compressed model folder (e.g. trimmed + recovered + W8A8), in PyTorch and
  exported to ONNX.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import tempfile
from pathlib import Path

import torch

import slimformer
from slimformer.bench.env import environment
from slimformer.evaluate.embed import encode
from slimformer.data import read_sentences, resolve_data
from slimformer.export import export
from slimformer.quant import QuantizeConfig, quantize_model
from slimformer.runtime import open_model

from common import append_row, fastest_encoders, quality
from quant_encoder import OrtEncoder, ort_int8

DEFAULT_W8A8 = dict(method="gptq", bits=8, activations="dynamic", smoothquant=0.5)


def build(base, folder: Path, trimmed: str | None):
    """name -> (model, peer ONNX path or None); exports written under `folder`."""
    models = {"fp32 PyTorch": base}
    export(base, "onnx", folder / "fp32")
    models["fp32 ONNX (slimformer export)"] = open_model(folder / "fp32")
    w8a8 = copy.deepcopy(base)
    quantize_model(w8a8, QuantizeConfig(**DEFAULT_W8A8), None, progress=False)
    models["slimformer W8A8 PyTorch"] = w8a8
    export(w8a8, "onnx", folder / "w8a8")
    models["slimformer W8A8 -> ONNX"] = open_model(folder / "w8a8")
    if trimmed:
        small = slimformer.load(trimmed)
        models["compressed PyTorch"] = small
        export(small, "onnx", folder / "trimmed")
        models["compressed -> ONNX"] = open_model(folder / "trimmed")
    return models


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--trimmed", help="a compressed model folder to export too (e.g. runs/demo-recover/model)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each variant counts")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "export_encoder.jsonl"))
    args = p.parse_args()
    base = slimformer.load(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        peer_path = ort_int8(base, folder)
        models = build(base, folder, args.trimmed)
        sentences = read_sentences(resolve_data("stsb", "test"))
        ref_emb = encode(base, sentences)
        fid = {n: float(torch.nn.functional.cosine_similarity(encode(m, sentences), ref_emb).min())
               for n, m in models.items() if "fp32" in n}
        scores = {n: quality(m, 0) for n, m in models.items()}
        table = []
        for threads in args.threads:
            torch.set_num_threads(threads)
            peer = dataclasses.replace(base, module=OrtEncoder(peer_path, threads, base.module.config))
            run = {**models, "ONNX Runtime dynamic int8 (peer)": peer}
            if "ONNX Runtime dynamic int8 (peer)" not in scores:
                scores["ONNX Runtime dynamic int8 (peer)"] = quality(peer, 0)
            best = fastest_encoders(list(run.items()), args.rounds, args.passes)
            ref = best["fp32 PyTorch"]
            for name in run:
                thr, lat = best[name]
                row = {"model": args.model, "variant": name, "threads": threads, "spearman": scores[name],
                       "sentences_per_s": thr, "latency_b1x32_ms": lat, "throughput_ratio": thr / ref[0],
                       "latency_ratio": ref[1] / lat, "min_cosine_vs_fp32_pytorch": fid.get(name),
                       "trimmed": args.trimmed, "rounds": args.rounds, "environment": environment()}
                append_row(args.out, row)
                table.append(row)
                print(f"{threads}t {name:<36} {scores[name]:6.2f}  {thr:7.1f}/s ({thr / ref[0]:.2f}x)  "
                      f"b1 {lat:6.2f} ms ({ref[1] / lat:.2f}x)", flush=True)
    print(f"\nfp32 ONNX vs fp32 PyTorch, min cosine over STS-B test sentences: "
          f"{fid['fp32 ONNX (slimformer export)']:.6f}")
    print("\n| threads | variant | STS-B test Spearman | sentences/s | throughput vs fp32 PyTorch | b1x32 latency "
          "| latency vs fp32 |\n|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['threads']} | {r['variant']} | {r['spearman']:.2f} | {r['sentences_per_s']:.0f} | "
              f"{r['throughput_ratio']:.2f}x | {r['latency_b1x32_ms']:.2f} ms | {r['latency_ratio']:.2f}x |")


if __name__ == "__main__":
    main()
