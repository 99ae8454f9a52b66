"""slimformer's GPTQ codes on llama.cpp's grids against llama.cpp's own quantization, per type mix,
at the same tensor types (so the same file size), scored on the same token ids in llama.cpp.

    python benchmarks/gguf_kquants.py --model smollm2 --mixes q4_k_m,q4_0 --windows 16 [--imatrix] [--decode 3]

For each llama.cpp mix (llama_model_quantize's file type, e.g. Q4_K_M with its per-tensor choices
and fallbacks on widths that are not multiples of 256):
- llama.cpp: its quantization of slimformer's F32 GGUF export, without an importance matrix
  (llama_model_quantize through llama-cpp-python) and, with --imatrix, `llama-imatrix` on the same
  calibration text slimformer uses (WikiText-2 validation, windows of 1024) then
  `llama-quantize --imatrix` (tools from benchmarks/build_llama_tools.sh);
- slimformer: `quantize: {method: gptq, ggml_mix: <mix>}`, which gives every tensor the type
  llama-quantize --imatrix gives it (checked here against llama.cpp's file, tensor by tensor),
  sub-block scales chosen first with the Hessian's diagonal as importance, then GPTQ's codes and
  the refit of the scales, written exactly; the token table in llama.cpp's type for it (Q8_0 or
  Q6_K), round-to-nearest on both sides.
Every file is run in llama.cpp on the first --windows WikiText-2 test windows of 1024 tokens (the
HF tokenizer's ids): perplexity, and the KL divergence to the F32 GGUF's next-token distribution
over every predicted token (mean, 99th percentile); with --decode N, llama-bench's tg128 decode
tokens/s at 1 thread (N repetitions, one file after another). Rows in results/gguf_kquants.jsonl.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import json
import subprocess
import tempfile
import time
from pathlib import Path

import gguf
import torch

import slimformer
from slimformer.bench.env import environment
from slimformer.data import data_root
from slimformer.evaluate.windows import token_windows
from slimformer.export import export
from slimformer.export.gguf import source_gguf_of, write_gguf
from slimformer.quant import QuantizeConfig, quantize_model
from slimformer.runtime import open_model

from common import append_row

TOOLS = Path(__file__).parent / ".llama-tools" / "bin"


def llama_quantize(src: Path, dst: Path, ftype: str, threads: int, imatrix: Path | None) -> float:
    t0 = time.perf_counter()
    if imatrix is not None:
        subprocess.run([str(TOOLS / "llama-quantize"), "--imatrix", str(imatrix), str(src), str(dst), ftype.upper(),
                        str(threads)], check=True, capture_output=True)
        return time.perf_counter() - t0
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype.upper()}")
    params.nthread = threads
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError("llama_model_quantize failed")
    return time.perf_counter() - t0


def decode_tokens_per_s(path: Path, threads: int, repeats: int) -> dict:
    """llama-bench tg128 (decode of 128 tokens, no prompt) at `threads` threads: mean and std."""
    out = subprocess.run([str(TOOLS / "llama-bench"), "-m", str(path), "-p", "0", "-n", "128", "-t", str(threads),
                          "-r", str(repeats), "-o", "json"], check=True, capture_output=True, text=True).stdout
    row = json.loads(out)[0]
    return {"decode_tg128": round(float(row["avg_ts"]), 2), "decode_std": round(float(row["stddev_ts"]), 2),
            "decode_threads": threads}


def tensor_types(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name.lower() for t in gguf.GGUFReader(str(path)).tensors}


def kl_and_ppl(files: dict[str, Path], windows: torch.Tensor, rows: int = 256) -> dict[str, dict]:
    """Per file: perplexity and KL(F32 || file) over every predicted token of the windows. One
    llama.cpp model open at a time (a 262k vocabulary makes each context's logits 1 GB per 1024
    tokens); the reference's log-probabilities kept in float32, the sums in float64, `rows`
    positions at a time."""
    import gc
    ref, res = [], {}
    for name, path in files.items():
        m = open_model(str(path))
        nll, kl = [], []
        for j, w in enumerate(windows):
            with torch.no_grad():
                logits = m.module(input_ids=w[None]).logits[0, :-1].float()
            if len(ref) <= j:
                ref.append(torch.log_softmax(logits, -1))  # the first file is the reference
            for r in range(0, logits.shape[0], rows):
                logp = torch.log_softmax(logits[r:r + rows].double(), -1)
                rp = ref[j][r:r + rows].double()
                nll.append(-logp.gather(1, w[1 + r:1 + r + rows, None])[:, 0])
                kl.append((rp.exp() * (rp - logp)).sum(-1))
            del logits
        del m
        gc.collect()
        nll, kl = torch.cat(nll), torch.cat(kl)
        res[name] = {"ppl": float(nll.mean().exp()), "kld_mean": float(kl.mean()),
                     "kld_p99": float(kl.quantile(0.99)), "tokens": int(kl.numel())}
    return res


def calibration_text(path: Path) -> None:
    path.write_text((data_root() / "wikitext2" / "wiki.valid.raw").read_text())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2")
    p.add_argument("--mixes", default="q4_k_m,q4_0")
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--samples", type=int, default=64, help="calibration windows of 1024 (both sides)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--imatrix", action="store_true", help="also llama.cpp with an importance matrix")
    p.add_argument("--decode", type=int, default=0, metavar="REPEATS",
                   help="also llama-bench tg128 at 1 thread per file, REPEATS repetitions (files in turn)")
    p.add_argument("--damp", type=float, default=QuantizeConfig.damp, help="GPTQ's Hessian dampening")
    p.add_argument("--out", default="results/gguf_kquants.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = slimformer.load(args.model)
    windows = token_windows(model, (data_root() / "wikitext2" / "wiki.test.raw").read_text(), 1024, args.windows)
    with tempfile.TemporaryDirectory(prefix="kquants-") as tmp:
        tmp = Path(tmp)
        f32 = tmp / "f32.gguf"
        export(model, "gguf", f32, dtype="f32")
        imatrix = None
        if args.imatrix:
            calibration_text(tmp / "calib.txt")
            imatrix = tmp / "imatrix.gguf"
            t0 = time.perf_counter()
            subprocess.run([str(TOOLS / "llama-imatrix"), "-m", str(f32), "-f", str(tmp / "calib.txt"), "-o",
                            str(imatrix), "-c", "1024", "--chunks", str(args.samples), "-t", str(args.threads)],
                           check=True, capture_output=True)
            print(f"llama-imatrix: {time.perf_counter() - t0:.0f} s ({args.samples} x 1024 tokens)")
        files = {"F32": f32}
        meta = {}
        for mix in args.mixes.split(","):
            peer = tmp / f"llama-{mix}.gguf"
            secs = llama_quantize(f32, peer, mix, args.threads, None)
            files[f"llama.cpp {mix}"] = peer
            meta[f"llama.cpp {mix}"] = {"seconds": secs}
            if imatrix is not None:
                files[f"llama.cpp {mix} + imatrix"] = tmp / f"llama-{mix}-imatrix.gguf"
                meta[f"llama.cpp {mix} + imatrix"] = {
                    "seconds": llama_quantize(f32, files[f"llama.cpp {mix} + imatrix"], mix, args.threads, imatrix)}
            m = copy.deepcopy(model)
            t0 = time.perf_counter()
            log = quantize_model(m, QuantizeConfig(method="gptq", ggml_mix=mix, damp=args.damp),
                                 {"samples": args.samples, "seq_len": 1024}, progress=False)
            secs = time.perf_counter() - t0
            ours = tmp / f"slimformer-{mix}.gguf"
            details = write_gguf(m, ours, dtype="f32", embedding_dtype=log.ggml_embedding,
                                 source_gguf=source_gguf_of(m))
            # ggml_mix follows llama.cpp's rules for quantization from data: the types of the imatrix file
            # (without --imatrix, Q4_0 / Q5_0 files differ from the plain peer in the first eighth of ffn_down)
            if imatrix is not None:
                want, got = tensor_types(files[f"llama.cpp {mix} + imatrix"]), tensor_types(ours)
                differ = {k: (got.get(k), want.get(k)) for k in want.keys() | got.keys() if want.get(k) != got.get(k)}
                assert not differ, f"slimformer's {mix} must hold llama.cpp's tensor types: {differ}"
            files[f"slimformer GPTQ {mix}"] = ours
            meta[f"slimformer GPTQ {mix}"] = {"seconds": secs, "exact_codes": details["exact_codes"],
                                              "types": log.ggml_types, "embedding": log.ggml_embedding,
                                              "damp": args.damp}
            print(mix, "types:", dict(sorted(log.ggml_types.items())), f"embeddings {log.ggml_embedding}; "
                  f"GPTQ {secs:.0f} s")
            del m
        n_params = sum(t.n_elements for t in gguf.GGUFReader(str(f32)).tensors)
        del model
        scores = kl_and_ppl(files, windows)
        for name, s in scores.items():
            if args.decode:
                s.update(decode_tokens_per_s(files[name], 1, args.decode))
            size = files[name].stat().st_size
            row = {"model": args.model, "file": name, **s, "bytes": size, "bpw": size * 8 / n_params,
                   "windows": args.windows, "calibration": f"{args.samples} x 1024 WikiText-2 validation",
                   **meta.get(name, {}), "threads": args.threads, "environment": environment()}
            append_row(args.out, row)
            print(f"{name:34s} ppl {s['ppl']:8.3f}  KLD {s['kld_mean']:.4f} (p99 {s['kld_p99']:.3f})  "
                  f"{row['bpw']:.2f} bpw" + (f"  {s['decode_tg128']:.1f} tok/s" if args.decode else ""))


if __name__ == "__main__":
    main()
