"""W8A8 on an encoder vs PyTorch's and ONNX Runtime's dynamic int8, same process, back to back.

    python benchmarks/quant_encoder.py                    # all-MiniLM-L6-v2, 1 and 2 threads

Every variant is scored by the same STS-B test protocol and timed by the same slimformer
workloads (STS-B test sentences, batches of 32 sorted by length; batch-1 latency at 32 tokens),
in alternating rounds (best of each); ratios are against fp32 PyTorch in the same run and thread
count. Peers (pip install -e .[bench]):
`torch.ao.quantization.quantize_dynamic` (fbgemm, its default qconfig) and ONNX Runtime's
`quantization.quantize_dynamic` (int8 per-channel weights) on a `torch.onnx` export of the model.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

import slimformer
from slimformer.bench.env import environment
from slimformer.quant import QuantizeConfig, quantize_model

from common import append_row, fastest_encoders, quality

SLIM = {
    "slimformer W8A8 dynamic (RTN)": dict(method="rtn", bits=8, activations="dynamic"),
    "slimformer W8A8 dynamic (GPTQ + SmoothQuant 0.5)": dict(method="gptq", bits=8, activations="dynamic",
                                                             smoothquant=0.5),
    "slimformer W8A8 dynamic per-tensor (GPTQ + SmoothQuant 0.5)": dict(
        method="gptq", bits=8, activations="dynamic", granularity="tensor", smoothquant=0.5),
    "slimformer W8A8 static (SmoothQuant 0.5)": dict(method="rtn", bits=8, activations="static", smoothquant=0.5),
}


class OrtEncoder(torch.nn.Module):
    """An ONNX Runtime session behind the HF encoder call convention (returns last_hidden_state)."""

    def __init__(self, path: Path, threads: int, config):
        super().__init__()
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self.config = config  # vocabulary size for the latency workload

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **_):
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)}
        out = self.session.run(None, {n: feeds[n].numpy() for n in self.names})[0]
        return SimpleNamespace(last_hidden_state=torch.from_numpy(out))


class _Positional(torch.nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.module(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state


def ort_int8(base, folder: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    ids = torch.randint(100, 1000, (2, 16))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    torch.onnx.export(_Positional(base.module).eval(), (ids, torch.ones_like(ids), torch.zeros_like(ids)),
                      str(fp32), input_names=names, output_names=["last_hidden_state"], opset_version=17,
                      dynamic_axes={n: {0: "batch", 1: "seq"} for n in names + ["last_hidden_state"]},
                      dynamo=False)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    return int8


def variants(base, folder: Path, threads: int):
    yield "fp32 PyTorch", base, None
    for name, qc in SLIM.items():
        m = copy.deepcopy(base)
        t0 = time.perf_counter()
        quantize_model(m, QuantizeConfig(**qc), None, progress=False)
        yield name, m, time.perf_counter() - t0
    td = torch.ao.quantization.quantize_dynamic(copy.deepcopy(base.module), {torch.nn.Linear}, dtype=torch.qint8)
    yield "PyTorch quantize_dynamic (fbgemm)", dataclasses.replace(base, module=td), None
    yield "ONNX Runtime dynamic int8", dataclasses.replace(base, module=OrtEncoder(folder / "model.int8.onnx", threads, base.module.config)), None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each variant counts")
    p.add_argument("--out", default="runs/quant_encoder.jsonl")
    args = p.parse_args()
    base = slimformer.load(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ort_int8(base, folder)
        scores: dict[str, float] = {}
        table = []
        for threads in args.threads:
            torch.set_num_threads(threads)
            models = list(variants(base, folder, threads))
            best = fastest_encoders([(name, model) for name, model, _ in models], args.rounds, args.passes)
            ref = best["fp32 PyTorch"]
            for name, model, quant_s in models:
                if name not in scores:
                    scores[name] = quality(model, 0)
                thr, lat = best[name]
                row = {"model": args.model, "variant": name, "threads": threads, "spearman": scores[name],
                       "sentences_per_s": thr, "latency_b1x32_ms": lat, "throughput_ratio": thr / ref[0],
                       "latency_ratio": ref[1] / lat, "quantize_s": quant_s, "rounds": args.rounds,
                       "environment": environment()}
                append_row(args.out, row)
                table.append(row)
                print(f"{threads}t {name:<50} {scores[name]:6.2f}  {thr:7.1f}/s ({thr / ref[0]:.2f}x)  "
                      f"b1 {lat:6.2f} ms ({ref[1] / lat:.2f}x)", flush=True)
    print("\n| threads | variant | STS-B test Spearman | sentences/s | throughput vs fp32 | b1x32 latency | "
          "latency vs fp32 |\n|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['threads']} | {r['variant']} | {r['spearman']:.2f} | {r['sentences_per_s']:.0f} | "
              f"{r['throughput_ratio']:.2f}x | {r['latency_b1x32_ms']:.1f} ms | {r['latency_ratio']:.2f}x |")


if __name__ == "__main__":
    main()
