"""The calibration engine and bench on a CUDA GPU: a device check (run it where the `device` tool
lends a GPU; it exits at once, saying so, where torch sees none).

    PYTHONPATH=src python benchmarks/gpu_check_engine.py

1. SmolLM2 GPTQ int4 g128 (16 x 512 calibration windows of WikiText-2 validation) with the engine
   on the CPU and on CUDA (`calibration: {device: cuda}`; one block on the GPU at a time), in fp32
   and with bf16 block forwards: the share of int4 codes equal to the CPU run's, WikiText-2 test
   perplexity (8 windows of 512) of each, the stage's wall time.
2. The same on the model loaded lazily (blocks read from disk, moved to the GPU, written back).
3. bench on CUDA: batch-1 latency of the original with CUDA-synchronised timers, against the CPU.
Prints one line per run and GPU CHECK PASSED / FAILED.
"""
from __future__ import annotations

import copy
import time

import torch

import slimformer
from slimformer.bench.workloads import latency_grid
from slimformer.nn.quant_linear import QuantLinear
from slimformer.quant.stage import QuantizeConfig, quantize_model

CFG = QuantizeConfig(method="gptq", bits=4, group_size=128)


def codes(model) -> dict[str, torch.Tensor]:
    return {n: m.qweight.detach().cpu() for n, m in model.module.named_modules() if isinstance(m, QuantLinear)}


def quantized(model, device: str, dtype: str = "float32"):
    m = copy.deepcopy(model)
    t0 = time.perf_counter()
    quantize_model(m, CFG, {"samples": 16, "seq_len": 512, "device": device, "dtype": dtype}, progress=False)
    return m, time.perf_counter() - t0


def ppl(model) -> float:
    return slimformer.evaluate(model, "ppl", seq_len=512, max_windows=8, progress=False).value


def main() -> None:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here (run this where the device tool lends a GPU)")
        return
    print("cuda:", torch.cuda.get_device_name(0), "torch", torch.__version__, flush=True)
    base = slimformer.load("smollm2")
    ref, cpu_s = quantized(base, "cpu")
    ref_codes, ref_ppl = codes(ref), ppl(ref)
    print(f"cpu   fp32: ppl {ref_ppl:.3f}, stage {cpu_s:.1f} s", flush=True)
    ok = True
    runs = [("cuda", "float32", base), ("cuda", "bfloat16", base), ("cuda", "float32", None)]
    for device, dtype, model in runs:
        lazy = model is None
        model = model or slimformer.load("smollm2", lazy=True)
        out, s = quantized(model, device, dtype)
        if lazy:
            out.lazy.load_all()
        got = codes(out)
        same = sum(int((got[k] == ref_codes[k]).sum()) for k in ref_codes) / sum(v.numel() for v in ref_codes.values())
        q = ppl(out)
        print(f"{device} {dtype}{' lazy' if lazy else ''}: ppl {q:.3f}, codes equal to the CPU run's "
              f"{100 * same:.2f}%, stage {s:.1f} s", flush=True)
        # float summation order differs between devices: a few codes at rounding boundaries flip
        ok &= abs(q / ref_ppl - 1) < 0.02 and same > (0.97 if dtype == "float32" else 0.8)
    cpu_ms = latency_grid(base, [1], [256], 1, 5)[0].median_ms
    gpu = copy.deepcopy(base)
    gpu.module.to("cuda")
    gpu_ms = latency_grid(gpu, [1], [256], 3, 20)[0].median_ms
    print(f"bench batch 1 x 256: cpu {cpu_ms:.2f} ms, cuda {gpu_ms:.2f} ms (synchronised)", flush=True)
    ok &= gpu_ms > 0
    print("GPU CHECK", "PASSED" if ok else "FAILED")


if __name__ == "__main__":
    main()
