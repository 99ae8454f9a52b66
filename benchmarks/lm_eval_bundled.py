"""SmolLM2 and its W8A8 on lm-evaluation-harness's offline bundled task, the same items for both.

    python benchmarks/lm_eval_bundled.py [--limit N]

`lm-eval:sst2-bundled` (the bundled SST-2 dev split, lm-eval's GLUE SST-2 prompt, accuracy) on the
original and on slimformer's default-style W8A8 (GPTQ int8 per channel, dynamic int8 activations
per token, 16 x 1024 calibration tokens, slimformer's default calibration text), run through lm-eval's
HFLM over each loaded module (slimformer's integer kernels for the W8A8 one). With --gguf, also the
model's source GGUF (SmolLM2: the shipped Q4_1 file; the PyTorch model is it dequantized) run in
llama.cpp behind the same harness (evaluate/lm_eval_runtime.py), and slimformer's Q8_0 GGUF export
of the W8A8 model's codes.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import slimformer
from slimformer.bench.env import environment
from slimformer.quant import QuantizeConfig, quantize_model

from common import append_row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--gguf", action="store_true", help="also the source GGUF and the W8A8 export in llama.cpp")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "lm_eval_bundled.jsonl"))
    args = p.parse_args()
    base = slimformer.load(args.model)
    w8 = copy.deepcopy(base)
    quantize_model(w8, QuantizeConfig(method="gptq", bits=8, activations="dynamic", granularity="token"),
                   {"samples": 16, "seq_len": 1024}, progress=False)
    variants = [("original", base), ("W8A8", w8)]
    if args.gguf:
        import tempfile
        from slimformer.export import export
        from slimformer.export.gguf import source_gguf_of
        from slimformer.runtime import open_model
        tmp = Path(tempfile.mkdtemp(prefix="lm-eval-gguf-"))
        export(w8, "gguf", tmp / "w8.gguf")
        variants += [("source GGUF in llama.cpp", open_model(source_gguf_of(base))),
                     ("W8A8 as Q8_0 GGUF in llama.cpp", open_model(tmp / "w8.gguf"))]
    for name, m in variants:
        r = slimformer.evaluate(m, "lm-eval:sst2-bundled", limit=args.limit, batch_size=8, progress=False)
        row = {"model": args.model, "variant": name, "task": r.task, "metric": r.metric, "value": r.value,
               "n": r.n, "wall_s": r.wall_s, "protocol": r.protocol, "environment": environment()}
        append_row(args.out, row)
        print(f"{name}: {r.metric} {r.value:.4f} over {r.n} items ({r.wall_s:.0f} s)")


if __name__ == "__main__":
    main()
