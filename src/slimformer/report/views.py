"""Rows for results: the same rows feed the CLI's text tables and the Markdown report."""
from __future__ import annotations

from .table import mib, num, times


def eval_rows(r: dict) -> list[list[str]]:
    rows = [[r["task"], r["model"], r["metric"], num(r["value"], 4 if r["task"] == "fidelity" else 2),
             f"{r['data']}/{r['split']}", str(r["n"])]]
    for k, v in r.get("extra", {}).items():
        if isinstance(v, float):
            rows.append(["", "", k, num(v, 4), "", ""])
    return rows


EVAL_HEADERS = ["task", "model", "metric", "value", "data/split", "n"]


def bench_rows(b: dict) -> list[list[str]]:
    rows = [["params", f"{b['params']:,}"], ["size on disk (saved)", mib(b["size_bytes"])],
            ["weights in memory", mib(b["weight_bytes"])],
            ["peak RSS", mib(b["peak_rss_bytes"])],
            [f"throughput ({b['throughput']['unit']})", num(b["throughput"]["items_per_s"], 1)]]
    if "tokens_per_s" in b["throughput"]:
        rows.append(["prefill tokens/s", num(b["throughput"]["tokens_per_s"], 1)])
    if b.get("decode"):
        rows.append([f"decode tokens/s (b1, {b['decode']['prompt']}+{b['decode']['new_tokens']})",
                     num(b["decode"]["tokens_per_s"], 2)])
    for p in b["latency"]:
        rows.append([f"latency b{p['batch']} x {p['seq_len']} (median / p90 ms)",
                     f"{p['median_ms']:.2f} / {p['p90_ms']:.2f}"])
    rows.append(["threads", str(b["threads"])])
    return rows


def comparison_rows(c: dict) -> list[list[str]]:
    a, b, r = c["base"], c["other"], c["ratios"]
    rows = [["params", f"{a['params']:,}", f"{b['params']:,}", times(r["params"], 3)],
            ["size on disk (saved)", mib(a["size_bytes"]), mib(b["size_bytes"]), times(r["size"], 3)],
            ["peak RSS", mib(a["peak_rss_bytes"]), mib(b["peak_rss_bytes"]), ""],
            [f"throughput ({a['throughput']['unit']})", num(a["throughput"]["items_per_s"], 1),
             num(b["throughput"]["items_per_s"], 1), times(r["throughput"], 3)]]
    if a.get("decode") and b.get("decode"):
        rows.append(["decode tokens/s", num(a["decode"]["tokens_per_s"], 2),
                     num(b["decode"]["tokens_per_s"], 2), times(r["decode_tokens_per_s"], 3)])
    for p, q in zip(a["latency"], b["latency"]):
        key = f"b{p['batch']}x{p['seq_len']}"
        rows.append([f"latency {key} median ms", f"{p['median_ms']:.2f}", f"{q['median_ms']:.2f}",
                     times(r["latency_speedup"][key], 3, "x faster")])
    return rows


COMPARISON_HEADERS = ["", "base", "other", "ratio"]


def environment_line(b: dict) -> str:
    e = b["environment"]
    return (f"{e['cpu']}, {b['threads']} thread(s); torch {e['torch']}, transformers {e['transformers']}, "
            f"python {e['python']}, slimformer {e['slimformer']}")
