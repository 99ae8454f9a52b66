"""Peak memory of `compress` on models up to 7B shapes, loaded lazily (one block resident at a time).

    python benchmarks/large_models.py --shape tinyllama-1.1b --recipe gptq-int4
    python benchmarks/large_models.py --shape llama-7b --recipe gptq-int4 --samples 4 --seq-len 512

Each shape is built once with random weights (normal, std 0.02; norms at 1) saved tensor by tensor
as bf16 safetensors shards under runs/large-models/ (quality is not the point; SmolLM2's tokenizer,
so the vocabulary is its 49152 tokens where the real model's is smaller). "smollm2" is the real
embedded model. Then `slimformer.compress` runs the recipe in this process with lazy loading, one
window of WikiText-2 test text scored for the original and the compressed model (streamed too),
no fidelity, speed not timed (lazy). One JSON line per run in results/large_models.jsonl: the
process's peak RSS over the whole compress (bench's sampler), each stage's peak RSS and wall time,
wall time per block, weights' size on disk.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import slimformer
from slimformer.bench.env import environment
from slimformer.bench.memory import RssPeak

from common import append_row

# hidden, layers, FFN, heads, KV heads, vocab, tied: the public configs of these models
SHAPES = {
    "qwen2-0.5b": ("qwen2", 896, 24, 4864, 14, 2, 151936, True),
    "qwen2-1.5b": ("qwen2", 1536, 28, 8960, 12, 2, 151936, True),
    "tinyllama-1.1b": ("llama", 2048, 22, 5632, 32, 4, 49152, False),
    "llama-7b": ("llama", 4096, 32, 11008, 32, 32, 49152, False),
}
RECIPES = {
    "gptq-int4": {"quantize": {"method": "gptq", "bits": 4, "group_size": 128}},
    "w8a8": {"quantize": {"method": "rtn", "bits": 8, "activations": "dynamic"}},
}


def build(shape: str, root: Path, layers: int | None = None) -> Path:
    """A random-initialised model of the shape (with `layers` blocks instead of its own when given:
    the same per-block and embedding sizes in less time), written tensor by tensor (never whole in
    memory)."""
    from accelerate import init_empty_weights
    import transformers as T
    from slimformer.model.gguf_dequant import ShardWriter
    kind, hidden, depth, ffn, heads, kv, vocab, tied = SHAPES[shape]
    layers = layers or depth
    name = shape if layers == depth else f"{shape}-{layers}l"
    folder = root / name
    if (folder / "config.json").is_file():
        return folder
    cls = T.Qwen2Config if kind == "qwen2" else T.LlamaConfig
    cfg = cls(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=ffn, num_attention_heads=heads,
              num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=tied, max_position_embeddings=4096,
              bos_token_id=1, eos_token_id=2)
    cfg.dtype = torch.bfloat16
    with init_empty_weights():
        skeleton = T.AutoModelForCausalLM.from_config(cfg)
    tmp = root / f".{name}.partial"
    tmp.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(tmp, max_bytes=2 << 30)
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for name, t in skeleton.state_dict(keep_vars=True).items():
        if id(t) in seen:
            continue
        seen.add(id(t))
        value = torch.ones(t.shape) if "norm" in name else torch.randn(t.shape, generator=gen) * 0.02
        writer.add(name, value.to(torch.bfloat16))
    writer.close()
    cfg.save_pretrained(tmp)
    slimformer.load("smollm2").tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="tinyllama-1.1b", choices=["smollm2", *SHAPES])
    p.add_argument("--recipe", default="gptq-int4", choices=list(RECIPES))
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="calibration compute dtype")
    p.add_argument("--layers", type=int, help="blocks instead of the shape's own (same block and embedding sizes)")
    p.add_argument("--eval-seq-len", type=int, default=256)
    p.add_argument("--root", default="runs/large-models")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "large_models.jsonl"))
    args = p.parse_args()
    root = Path(args.root)
    source = "smollm2" if args.shape == "smollm2" else str(build(args.shape, root, args.layers))
    recipe = {"calibration": {"samples": args.samples, "seq_len": args.seq_len, "dtype": args.dtype},
              "stages": [RECIPES[args.recipe]],
              "evaluate": {"max_windows": 1, "seq_len": args.eval_seq_len, "fidelity": False}}
    out = root / f"out-{Path(source).name}-{args.recipe}"
    t0 = time.perf_counter()
    with RssPeak(interval_s=0.01) as mem:
        r = slimformer.compress(source, recipe, out=out, overwrite=True, lazy=True)
    wall = time.perf_counter() - t0
    stage = r.stages[0]
    layers = len(slimformer.load(out / "model", lazy=False).arch.blocks) if args.shape == "smollm2" \
        else args.layers or SHAPES[args.shape][2]
    row = {"shape": args.shape, "layers": layers, "recipe": args.recipe, "calibration": recipe["calibration"],
           "peak_rss_gib": round(mem.peak / 2**30, 3), "stage_peak_rss_gib": round(stage.peak_rss_bytes / 2**30, 3),
           "stage_wall_s": round(stage.wall_s, 1), "wall_s_per_block": round(stage.wall_s / layers, 2),
           "compress_wall_s": round(wall, 1), "memory": stage.memory,
           "step_peak_rss_gib": {k: round(v / 2**30, 3) for k, v in r.memory.items()},
           "source_weight_gib": round(sum(f.stat().st_size for f in Path(source).glob("*.safetensors")) / 2**30, 3)
           if args.shape != "smollm2" else None,
           "output_weight_gib": round(sum(f.stat().st_size for f in (out / "model").glob("*.safetensors")) / 2**30, 3),
           "ppl_original": r.quality["original"]["value"], "ppl_compressed": r.quality["compressed"]["value"],
           "threads": torch.get_num_threads(), "environment": environment()}
    print(json.dumps({k: v for k, v in row.items() if k != "environment"}))
    append_row(args.out, row)


if __name__ == "__main__":
    main()
