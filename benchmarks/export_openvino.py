"""Encoders in OpenVINO: slimformer's exports against OpenVINO's own fp32 and NNCF's int8.

    python benchmarks/export_openvino.py --trimmed runs/demo-recover/model   # after make demo-recover

Variants, all scored by the same STS-B test protocol and timed by the same slimformer workloads
(STS-B test sentences in batches of 32 sorted by length; batch-1 latency at 32 tokens), in
alternating rounds (best of each), ratios against fp32 PyTorch in the same run and thread count:
- fp32 PyTorch;
- the peers (pip install -e .[bench] for nncf): `openvino.convert_model` of the PyTorch model
  (with its pooling and normalisation) at OpenVINO's default CPU precision (bf16 where the CPU
  has it) and at f32; `nncf.quantize` of that IR (300 STS-B train sentences, model type
  transformer): NNCF's post-training int8 of the original;
- slimformer W8A8 as the default recipe makes it (GPTQ + SmoothQuant 0.5, dynamic activations),
  its static-activation variant (calibrated per-tensor scales) and the OpenVINO recipe's
  (recipes/w8a8-openvino.yaml: asymmetric static ranges, int8 attention scores) and that recipe with
  7-bit weight codes (bits: 7, for CPUs without VNNI), exported with
  `--format openvino` and with `--format onnx` (ONNX Runtime), the same codes in both;
- with --trimmed DIR: a compressed model folder (e.g. trimmed + recovered + W8A8) exported both ways.
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
from slimformer.data import read_sentences, resolve_data
from slimformer.evaluate.embed import sentence_embedding, tokenize_sentences
from slimformer.export import export
from slimformer.quant import QuantizeConfig, quantize_model
from slimformer.runtime import open_model
from slimformer.runtime.openvino import OpenVinoModule

from common import append_row, fastest_encoders, quality

W8A8 = {"dynamic": dict(method="gptq", bits=8, activations="dynamic", smoothquant=0.5),
        "static": dict(method="gptq", bits=8, activations="static", smoothquant=0.5),
        # recipes/w8a8-openvino.yaml: asymmetric static ranges (uint8 kernels) and int8 attention scores
        "static asymmetric + int8 attention": dict(method="gptq", bits=8, activations="static", smoothquant=0.5,
                                                   act_symmetric=False, attention="int8"),
        # the same with 7-bit weight codes ([-64, 63]): exact on CPUs without VNNI (no int16 saturation)
        "static asymmetric + int8 attention, 7-bit weights": dict(method="gptq", bits=7, activations="static",
                                                                  smoothquant=0.5, act_symmetric=False,
                                                                  attention="int8")}


class _Embedder(torch.nn.Module):
    """The model as a user converts it: token ids in, the sentence embedding out."""

    def __init__(self, model):
        super().__init__()
        self.model, self.module = model, model.module

    def forward(self, input_ids, attention_mask):
        states = self.module(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return sentence_embedding(self.model, states, attention_mask)


def peer_irs(base, folder: Path, calib: int) -> dict[str, Path]:
    """OpenVINO's own conversion of the original, and NNCF's int8 of it (if nncf is installed)."""
    import openvino as ov
    batch = tokenize_sentences(base, ["an example sentence to trace the model with"] * 2)
    ir = ov.convert_model(_Embedder(base).eval(), example_input=(batch["input_ids"], batch["attention_mask"]))
    ir.outputs[0].get_tensor().set_names({"sentence_embedding"})
    out = {"fp32": folder / "peer-fp32" / "model.xml"}
    out["fp32"].parent.mkdir(parents=True)
    ov.save_model(ir, str(out["fp32"]), compress_to_fp16=False)
    try:
        import nncf
    except ImportError:
        print("nncf is not installed (pip install -e .[bench]): no NNCF int8 row")
        return out
    train = read_sentences(resolve_data("stsb", "train"))[:calib]
    items = [{k: v.numpy() for k, v in tokenize_sentences(base, [s]).items() if k in ("input_ids", "attention_mask")}
             for s in train]
    q = nncf.quantize(ir, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(items))
    out["nncf"] = folder / "peer-nncf" / "model.xml"
    out["nncf"].parent.mkdir(parents=True)
    ov.save_model(q, str(out["nncf"]), compress_to_fp16=False)
    return out


def peer_model(base, xml: Path, precision: str | None):
    meta = {"outputs": ["sentence_embedding"], "inference_precision": precision,
            "vocab_size": base.module.config.vocab_size}
    return dataclasses.replace(base, module=OpenVinoModule(xml, meta), runtime="openvino")


def build(base, folder: Path, trimmed: str | None, calib: int):
    models = {"fp32 PyTorch": base}
    irs = peer_irs(base, folder, calib)
    models["OpenVINO fp32, default precision (peer)"] = peer_model(base, irs["fp32"], None)
    models["OpenVINO fp32, f32 (peer)"] = peer_model(base, irs["fp32"], "f32")
    if "nncf" in irs:
        models["OpenVINO + NNCF int8 (peer)"] = peer_model(base, irs["nncf"], None)
    sources = {}
    for kind, cfg in W8A8.items():
        m = copy.deepcopy(base)
        quantize_model(m, QuantizeConfig(**cfg), None, progress=False)
        sources[f"slimformer W8A8 {kind}"] = m
    if trimmed:
        sources["compressed"] = slimformer.load(trimmed)
    for name, m in sources.items():
        for fmt, runtime in (("onnx", "ONNX Runtime"), ("openvino", "OpenVINO")):
            path = folder / f"{name.replace(' ', '-')}-{fmt}"
            export(m, fmt, path)
            models[f"{name} -> {runtime}"] = open_model(path)
    return models


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--trimmed", help="a compressed model folder to export too (e.g. runs/demo-recover/model)")
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each variant counts")
    p.add_argument("--calib", type=int, default=300, help="STS-B train sentences NNCF calibrates on")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "export_openvino.jsonl"))
    args = p.parse_args()
    import openvino
    base = slimformer.load(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        models = build(base, Path(tmp), args.trimmed, args.calib)
        scores = {n: quality(m, 0) for n, m in models.items()}
        table = []
        for threads in args.threads:
            torch.set_num_threads(threads)
            best = fastest_encoders(list(models.items()), args.rounds, args.passes)
            ref = best["fp32 PyTorch"]
            for name in models:
                thr, lat = best[name]
                row = {"model": args.model, "variant": name, "threads": threads, "spearman": scores[name],
                       "sentences_per_s": thr, "latency_b1x32_ms": lat, "throughput_ratio": thr / ref[0],
                       "latency_ratio": ref[1] / lat, "trimmed": args.trimmed, "rounds": args.rounds,
                       "openvino": openvino.__version__, "environment": environment()}
                append_row(args.out, row)
                table.append(row)
                print(f"{threads}t {name:<44} {scores[name]:6.2f}  {thr:7.1f}/s ({thr / ref[0]:.2f}x)  "
                      f"b1 {lat:6.2f} ms ({ref[1] / lat:.2f}x)", flush=True)
    print(f"\nopenvino {openvino.__version__}\n| threads | variant | STS-B test Spearman | sentences/s | throughput vs "
          "fp32 PyTorch | b1x32 latency | latency vs fp32 |\n|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['threads']} | {r['variant']} | {r['spearman']:.2f} | {r['sentences_per_s']:.0f} | "
              f"{r['throughput_ratio']:.2f}x | {r['latency_b1x32_ms']:.2f} ms | {r['latency_ratio']:.2f}x |")


if __name__ == "__main__":
    main()
