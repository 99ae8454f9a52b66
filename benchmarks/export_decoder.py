"""A Llama-family decoder exported to GGUF and run in llama.cpp, against PyTorch and llama.cpp's own
quantization, on the same WikiText-2 test windows in the same process.

    python benchmarks/export_decoder.py --trimmed runs/export-gguf/model.gguf

1. Fidelity: slimformer's F32 GGUF in llama.cpp vs the PyTorch model, perplexity on the same
   token windows (the HF tokenizer of the source; ids fed to llama.cpp as they are), and the greedy
   continuation of a fixed prompt.
2. Q4_0: slimformer GPTQ int4 symmetric g32 (default calibration: 64 x 1024 WikiText-2 validation
   windows; on the full-range grid, Q4_0's own scale rule, and on the max/7 grid) written bit for
   bit into Q4_0, vs llama.cpp's own Q4_0 (`llama_model_quantize`, its round-to-nearest) of the
   same F32 GGUF; token embeddings Q8_0 in both (printed: tensor types).
3. Decode tokens/s, batch 1, llama.cpp at --threads, prompt 32, 128 new tokens, alternating rounds:
   the original's shipped Q4_1 GGUF, the exports above, and --trimmed (a compressed model's GGUF,
   e.g. from src/slimformer/recipes/export-decoder-trim-gguf.yaml), with HF fp32 PyTorch beside.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import tempfile
import time
from pathlib import Path

import torch

import slimformer
from slimformer.bench.env import environment
from slimformer.bench.workloads import decode
from slimformer.export import export
from slimformer.model.sources import resolve
from slimformer.quant import QuantizeConfig, quantize_model
from slimformer.runtime import open_model

from common import append_row

PROMPT = "The history of the Roman Empire begins with"


def llama_cpp_quantize(src: Path, dst: Path, ftype: str, threads: int) -> float:
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype.upper()}")
    params.token_embedding_type = llama_cpp.GGML_TYPE_Q8_0
    params.output_tensor_type = llama_cpp.GGML_TYPE_Q8_0
    params.nthread = threads
    t0 = time.perf_counter()
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError("llama_model_quantize failed")
    return time.perf_counter() - t0


def ppl(model, windows: int) -> float:
    return slimformer.evaluate(model, "ppl", data="wikitext2", split="test", seq_len=1024, max_windows=windows,
                               progress=False).value


def greedy(model, n: int = 24) -> list[int]:
    ids = model.tokenizer(PROMPT, return_tensors="pt").input_ids
    kw = {} if model.runtime != "torch" else dict(do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
    with torch.inference_mode():
        return model.module.generate(ids, max_new_tokens=n, **kw)[0, ids.shape[1]:].tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--windows", type=int, default=32, help="WikiText-2 test windows of 1024 tokens")
    p.add_argument("--trimmed", help="a compressed model's .gguf to decode and score too")
    p.add_argument("--threads", type=int, default=1, help="decode threads (scoring uses all cores)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--grids", nargs="+", default=["full-act", "full", "plain"], choices=["full-act", "full", "plain"],
                   help="GPTQ int4 symmetric grids to run (full-range: Q4_0's own scale rule)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "export_decoder.jsonl"))
    args = p.parse_args()
    cores = torch.get_num_threads()
    base = slimformer.load(args.model)
    rows = []

    def record(name, **kw):
        row = {"model": args.model, "variant": name, "windows": args.windows, **kw, "environment": environment()}
        rows.append(row)
        append_row(args.out, row)
        print(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in kw.items()}, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        f32 = folder / "f32.gguf"
        export(base, "gguf", f32, dtype="f32")
        g32 = open_model(f32)
        p_torch, p_f32 = ppl(base, args.windows), ppl(g32, args.windows)
        same = greedy(base) == greedy(g32)
        record("fp32 PyTorch", ppl=p_torch)
        record("F32 GGUF in llama.cpp (slimformer export)", ppl=p_f32, rel_diff=p_f32 / p_torch - 1,
               same_greedy_24=same)

        theirs = folder / "llamacpp-q4_0.gguf"
        quant_s = llama_cpp_quantize(f32, theirs, "q4_0", cores)
        g_theirs = open_model(theirs)
        record("llama.cpp Q4_0 (llama_model_quantize of the F32 GGUF)", ppl=ppl(g_theirs, args.windows),
               quantize_s=quant_s, tensors=g_theirs.module.meta["_tensor_types"])
        for grid in args.grids:  # full: scale = largest weight / -8 (Q4_0's rule); plain: max|w| / 7;
            q = copy.deepcopy(base)  # full-act: full, columns by decreasing Hessian diagonal, scales
            t0 = time.perf_counter()  # from the original weights (the scales llama.cpp would pick)
            quantize_model(q, QuantizeConfig(method="gptq", bits=4, group_size=32, symmetric=True,
                                             full_range=grid != "plain", act_order=grid == "full-act"),
                           None, progress=False)
            gptq_s = time.perf_counter() - t0
            ours = folder / f"gptq-{grid}-q4_0.gguf"
            details = export(q, "gguf", ours, dtype="q8_0").details
            g_ours = open_model(ours)
            record(f"slimformer GPTQ int4 g32 ({grid}-range grid) -> Q4_0 (llama.cpp)", ppl=ppl(g_ours, args.windows),
                   quantize_s=gptq_s, tensors=g_ours.module.meta["_tensor_types"], exact_codes=details["exact_codes"])

        shipped = Path(resolve(args.model).location) if resolve(args.model).kind == "gguf" else None
        decoders = {"HF fp32 PyTorch": base, "F32 GGUF": g32, "slimformer GPTQ Q4_0": g_ours,
                    "llama.cpp Q4_0": g_theirs}  # g_ours: the last grid run
        if shipped:
            decoders["original's shipped GGUF"] = open_model(shipped)
        if args.trimmed:
            decoders["compressed GGUF (--trimmed)"] = small = open_model(args.trimmed)
            record("compressed GGUF (--trimmed) in llama.cpp", ppl=ppl(small, args.windows),
                   tensors=small.module.meta["_tensor_types"], bytes=Path(args.trimmed).stat().st_size)
        torch.set_num_threads(args.threads)
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            for name, m in decoders.items():
                tps = decode(m, "wikitext2", 32, 128, 1)["tokens_per_s"]
                best[name] = max(best.get(name, 0.0), tps)
        for name, tps in best.items():
            record(f"decode {name}", tokens_per_s=tps, threads=args.threads,
                   vs_hf_fp32=tps / best["HF fp32 PyTorch"])
        torch.set_num_threads(cores)


if __name__ == "__main__":
    main()
