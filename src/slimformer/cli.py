"""slimformer command line: info, eval, bench, export, compress, tune. User mistakes: one line, exit 2."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import SlimformerError
from .runtime import RUNTIMES


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 1,8,32")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .export.gguf_blocks import DENSE_TYPES
    p = argparse.ArgumentParser(prog="slimformer", description="Make Transformers smaller and faster; "
                                "measure quality, speed, memory and size before and after.")
    sub = p.add_subparsers(dest="command", required=True)
    model_help = "an alias (minilm, smollm2), an HF model folder, a .gguf file, or a hub id (online)"
    runtime_help = ("auto (default): a .onnx file or ONNX export folder runs in onnxruntime, a .gguf path in "
                    "llama.cpp, an OpenVINO export folder or model.xml in openvino, anything else in PyTorch; torch: dequantize a .gguf into PyTorch")

    s = sub.add_parser("info", help="family, shapes and parameter split of a model")
    s.add_argument("model", help=model_help)
    s.add_argument("--json", metavar="PATH", help="also write the result as JSON")

    s = sub.add_parser("eval", help="quality on real data (sts, ppl, fidelity)")
    s.add_argument("model", help=model_help)
    s.add_argument("--task", help="sts, ppl, fidelity, or lm-eval:TASK[,TASK...] (lm-evaluation-harness; "
                   "lm-eval:sst2-bundled runs offline); default: ppl for LMs, sts for encoders")
    s.add_argument("--limit", type=_positive, help="lm-eval: items per task")
    s.add_argument("--data", help="a bundled set (stsb, wikitext2, sst2) or a TSV / JSONL / text file")
    s.add_argument("--split", default="test")
    s.add_argument("--reference", help="the model to compare with (fidelity)")
    s.add_argument("--seq-len", type=_positive, default=1024)
    s.add_argument("--max-windows", type=_positive)
    s.add_argument("--batch-size", type=_positive)
    s.add_argument("--runtime", choices=RUNTIMES, default="auto", help=runtime_help)
    s.add_argument("--json", metavar="PATH", help="also write the result as JSON (no file without it)")

    s = sub.add_parser("bench", help="latency, throughput, decode speed, memory and size")
    s.add_argument("model", help=model_help)
    s.add_argument("--vs", metavar="MODEL2", help="bench MODEL2 right after MODEL and report ratios")
    s.add_argument("--threads", type=_positive, help="torch threads (default: all cores)")
    s.add_argument("--batch-sizes", type=_ints)
    s.add_argument("--seq-lens", type=_ints)
    s.add_argument("--repeats", type=_positive, default=10)
    s.add_argument("--decode-new-tokens", type=_positive, default=128)
    s.add_argument("--runtime", choices=RUNTIMES, default="auto", help=runtime_help)
    s.add_argument("--json", metavar="PATH", help="also write the result as JSON (no file without it)")

    s = sub.add_parser("export", help="write a model as an HF folder, ONNX or OpenVINO IR (encoders) or GGUF (Llama family)")
    s.add_argument("model", help=model_help + ", or a `slimformer compress` output folder")
    s.add_argument("--format", required=True, choices=["hf", "compressed-tensors", "onnx", "gguf", "openvino"])
    s.add_argument("--out", required=True, help="folder (hf, onnx, openvino) or .gguf file; must not exist unless --overwrite")
    s.add_argument("--type", dest="dtype", choices=list(DENSE_TYPES),
                   help="gguf: type of the weights slimformer did not quantize (default f16); quantized "
                        "layers keep their own codes in the GGUF type that holds them exactly")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--json", metavar="PATH", help="also write the result as JSON")

    s = sub.add_parser("compress", help="run a recipe, evaluate and bench against the original")
    s.add_argument("model", help=model_help)
    s.add_argument("--recipe", help="YAML recipe (default: the bundled default recipe)")
    s.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--resume", action="store_true", help="continue an interrupted recover stage from its "
                   "checkpoint in OUT.recover (same recipe and model)")
    s.add_argument("--lazy", choices=["auto", "yes", "no"], default="auto",
                   help="read the model's blocks from disk as the stages reach them (a model larger than memory); "
                        "auto (default): when its fp32 weights exceed half the memory available")

    s = sub.add_parser("tune", help="search trim / quantize / recover for the fastest model within a quality budget")
    s.add_argument("model", help=model_help)
    s.add_argument("--max-drop", type=float, help="encoders: STS points (x100) the model may lose on dev data")
    s.add_argument("--max-ppl-ratio", type=float, help="causal LMs: validation perplexity at most R x the original's")
    s.add_argument("--min-fidelity", type=float, help="mean cosine to the original's embeddings (encoders) / "
                   "top-1 agreement (causal LMs) at least this")
    s.add_argument("--objective", default="throughput", choices=["throughput", "latency", "decode", "size"])
    s.add_argument("--runtime", default="auto", choices=["auto", "torch", "onnxruntime", "llama.cpp", "openvino"],
                   help="where the model will be served (auto: onnxruntime for encoders, llama.cpp for LMs)")
    s.add_argument("--threads", type=_positive, default=1)
    s.add_argument("--budget", default="60m", help="wall time of the whole tune: 60m, 1.5h, 900s")
    s.add_argument("--trials", type=_positive, help="cap on one-shot trials (default: as the budget allows)")
    s.add_argument("--finalists", type=int, default=3, help="front points that get recovery (0: none)")
    s.add_argument("--data", help="your validation file (STS pairs TSV for encoders, text for LMs)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="output folder; an interrupted tune's folder resumes")
    return p


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _quiet_libraries()
        return COMMANDS[args.command](args)
    except SlimformerError as e:
        print(f"slimformer: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slimformer: interrupted; nothing was written", file=sys.stderr)
        return 130


def _write_json(obj, path: str | None) -> None:
    if path:
        obj.to_json(path)
        print(f"\nwritten: {path}")


def cmd_info(args) -> int:
    from . import api
    from .report import text_table
    i = api.info(args.model)
    rows = [["family", f"{i.family} ({i.model_type}, {i.kind})"], ["layers", i.layers],
            ["hidden size", i.hidden_size], ["heads / KV heads", f"{i.heads} / {i.kv_heads}"],
            ["head dim", i.head_dim], ["FFN width", f"{i.ffn_width} ({'gated' if i.ffn_gated else 'plain'})"],
            ["vocab", i.vocab_size], ["max positions", i.max_positions]]
    rows += [[f"params: {k}", f"{v:,} ({v / i.params['total']:.1%})"] for k, v in i.params.items()]
    rows += [["dtype", i.dtype], ["size on disk", "-" if i.size_on_disk_bytes is None
                                  else f"{i.size_on_disk_bytes / 2**20:.1f} MiB"],
             ["uniform blocks", i.uniform]]
    print(text_table(["model", i.model], [[str(a), str(b)] for a, b in rows]))
    _write_json(i, args.json)
    return 0


def cmd_eval(args) -> int:
    from . import api
    from .report import EVAL_HEADERS, eval_rows, text_table
    r = api.evaluate(args.model, args.task, data=args.data, split=args.split, reference=args.reference,
                     seq_len=args.seq_len, max_windows=args.max_windows, batch_size=args.batch_size,
                     runtime=args.runtime, limit=args.limit)
    print(text_table(EVAL_HEADERS, eval_rows(r.to_dict())))
    print(f"protocol: {r.protocol}; {r.wall_s:.1f} s")
    _write_json(r, args.json)
    return 0


def cmd_bench(args) -> int:
    from . import api
    from .report import (bench_rows, comparison_rows, environment_line,
                         text_table)
    cfg = api.BenchConfig(threads=args.threads, batch_sizes=args.batch_sizes, seq_lens=args.seq_lens,
                          repeats=args.repeats, decode_new_tokens=args.decode_new_tokens)
    r = api.bench(args.model, cfg, vs=args.vs, runtime=args.runtime)
    d = r.to_dict()
    if args.vs:
        print(text_table(["", args.model, args.vs, "ratio"], comparison_rows(d)))
        env_from = d["base"]
    else:
        print(text_table(["", args.model], bench_rows(d)))
        env_from = d
    print(f"machine: {environment_line(env_from)}")
    _write_json(r, args.json)
    return 0


def cmd_export(args) -> int:
    from . import api
    r = api.export(args.model, args.format, args.out, dtype=args.dtype, overwrite=args.overwrite)
    details = ", ".join(f"{k}: {v}" for k, v in r.details.items())
    print(f"written: {r.path} ({r.format}, {r.bytes / 2**20:.1f} MiB, {r.wall_s:.1f} s){'; ' + details if details else ''}")
    _write_json(r, args.json)
    return 0


def cmd_compress(args) -> int:
    from . import api
    from .recipe import load_recipe
    from .report import md_table
    from .report.markdown import summary_rows
    recipe = load_recipe(args.recipe)  # validated before the model is loaded
    if Path(args.out).exists() and not args.overwrite:
        raise SlimformerError(f"{args.out} already exists; choose another --out or pass --overwrite")
    lazy = {"auto": "auto", "yes": True, "no": False}[args.lazy]
    r = api.compress(args.model, recipe, out=args.out, overwrite=args.overwrite, resume=args.resume, lazy=lazy)
    if not r.quality:  # a non-main process of a multi-process launch
        return 0
    for note in r.notes:
        print(f"note: {note}")
    print(md_table(["", "original", "compressed", "change"], summary_rows(r)))
    exported = f", {args.out}/{r.export['path']}" if r.export else ""
    print(f"\nwritten: {args.out}/model{exported}, {args.out}/results.json, {args.out}/report.md "
          f"({r.wall_s:.0f} s)")
    return 0


def cmd_tune(args) -> int:
    from . import api
    from .tune import TuneConfig, parse_budget
    cfg = TuneConfig(max_drop=args.max_drop, max_ppl_ratio=args.max_ppl_ratio, min_fidelity=args.min_fidelity,
                     objective=args.objective, runtime=args.runtime, threads=args.threads,
                     budget_s=parse_budget(args.budget), trials=args.trials, finalists=args.finalists,
                     data=args.data, seed=args.seed)
    cfg.validate(None)  # a missing budget fails before the model is loaded
    r = api.tune(args.model, cfg, args.out)
    for note in r.notes:
        print(f"note: {note}")
    chosen = next(p for p in r.points if p["id"] == r.chosen)
    t = r.test
    print(f"chosen {r.chosen}: {chosen['speed']:.2f}x {r.objective} in {r.runtime}; test {t['metric']} "
          f"{t['original']:.2f} -> {t['compressed']:.2f} ({'meets' if t['meets_budget'] else 'MISSES'} the budget)")
    print(f"written: {args.out}/report.md, {args.out}/pareto.png, {args.out}/front/, {args.out}/chosen/ "
          f"({r.wall_s / 60:.1f} min, {r.trials['one-shot']} one-shot trials, {r.trials['recovered']} recovered)")
    return 0


COMMANDS = {"info": cmd_info, "eval": cmd_eval, "bench": cmd_bench, "export": cmd_export,
            "compress": cmd_compress, "tune": cmd_tune}

if __name__ == "__main__":
    sys.exit(main())
