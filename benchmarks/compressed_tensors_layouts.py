"""SmolLM2 quantized by slimformer, saved in slimformer's own layout and as compressed-tensors:
the same perplexity from both, and from plain transformers reading the compressed-tensors folder.

    python benchmarks/compressed_tensors_layouts.py [--windows 16]

Rows: W8A8 (GPTQ int8 per channel, dynamic int8 activations per token) and W4A16 (GPTQ int4 g64
asymmetric; not g128: SmolLM2's 576 columns are not a multiple of 128, whose ragged last group compressed-tensors
does not describe). For each: WikiText-2 test perplexity (first N windows x 1024 tokens) of the model in
memory, of `slimformer.load` of each saved folder (slimformer's integer kernels), and of
`transformers.AutoModelForCausalLM.from_pretrained` of the compressed-tensors folder (the library
decompresses the weights and fake-quantizes the activations in fp32); size of each folder's weights.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import tempfile
from pathlib import Path

import slimformer
from slimformer.bench.env import environment
from slimformer.export import export
from slimformer.quant import QuantizeConfig, quantize_model

from common import append_row

RECIPES = {"W8A8": dict(method="gptq", bits=8, activations="dynamic", granularity="token"),
           "W4A16 g64": dict(method="gptq", bits=4, group_size=64, symmetric=False)}


def weights_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "compressed_tensors_layouts.jsonl"))
    args = p.parse_args()
    import transformers
    base = slimformer.load(args.model)
    kw = dict(task="ppl", data="wikitext2", split="test", seq_len=1024, max_windows=args.windows, progress=False)
    ppl = lambda m: slimformer.evaluate(m, **kw).value  # noqa: E731
    print(f"fp32: {ppl(base):.3f}")
    calib = {"samples": 64, "seq_len": 1024}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.recipes:
            cfg = RECIPES[name]
            m = copy.deepcopy(base)
            quantize_model(m, QuantizeConfig(**cfg), calib, progress=False)
            own, ct = Path(tmp) / f"{name}-own", Path(tmp) / f"{name}-ct"
            slimformer.save(m, own)
            export(m, "compressed-tensors", ct)
            hf = transformers.AutoModelForCausalLM.from_pretrained(ct)
            row = {"model": args.model, "recipe": name, "windows": args.windows,
                   "ppl_in_memory": ppl(m), "ppl_own_layout": ppl(slimformer.load(own)),
                   "ppl_compressed_tensors_slimformer": ppl(slimformer.load(ct)),
                   "ppl_compressed_tensors_transformers": ppl(dataclasses.replace(base, module=hf.eval())),
                   "mib_own_layout": weights_mib(own), "mib_compressed_tensors": weights_mib(ct),
                   "environment": environment()}
            append_row(args.out, row)
            print(row)


if __name__ == "__main__":
    main()
