"""report.md's Stages section, from the StageLogs: per stage a heading with what it cost, the
calibration in one line, its settings as a short table, and per-layer detail as one compact row per
field (min / median / max over layers). The full per-layer values are in results.json."""
from __future__ import annotations

import statistics

from .curves import CURVES_FILE
from .table import md_table, mib, not_finite

# detail the section shows another way: trim's per-block shapes (a table), recover's history (curves)
SHOWN_ELSEWHERE = {("trim", "blocks"), ("recover", "history")}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def fmt(v) -> str:
    """One table cell: numbers short, small lists and dicts inline, long ones summarised."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return not_finite(v) or f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        if not v:
            return "none"
        if all(_is_number(x) for x in v):
            if len(set(v)) == 1:
                return f"{fmt(v[0])} in each of {len(v)}"
            return ", ".join(fmt(x) for x in v) if len(v) <= 6 else spread(v)
        if len(v) <= 3 and all(isinstance(x, str) for x in v):
            return "; ".join(fmt(x) for x in v)
        return f"{len(v)} entries (in results.json)"
    if isinstance(v, dict):
        if not v:
            return "none"
        if len(v) <= 4 and all(_is_number(x) or isinstance(x, (str, bool)) or x is None for x in v.values()):
            return ", ".join(f"{k}: {fmt(x)}" for k, x in v.items())
        return f"{len(v)} entries (in results.json)"
    return str(v).replace("|", "\\|").replace("\n", " ")


def spread(values) -> str:
    """min / median / max of numbers, with their count."""
    vals = [float(x) for x in values]
    return (f"min {fmt(min(vals))}, median {fmt(statistics.median(vals))}, max {fmt(max(vals))} "
            f"over {len(vals)}")


def detail_cell(v) -> tuple[str, str]:
    """(entries, values) of one per-layer field: a spread for numbers, the value when they all agree."""
    items = list(v.values()) if isinstance(v, dict) else list(v)
    if not items:
        return "0", "none"
    if all(_is_number(x) for x in items):
        if len(set(items)) == 1:
            return str(len(items)), f"all {fmt(items[0])}"
        return str(len(items)), spread(items).rsplit(" over ", 1)[0]
    if all(isinstance(x, str) for x in items):
        if len(set(items)) == 1:
            return str(len(items)), f"all {fmt(items[0])}"
        first = f"{next(iter(v))}: {items[0]}" if isinstance(v, dict) else items[0]
        return str(len(items)), f"first: {fmt(first)}"
    return str(len(items)), "in results.json"


def calibration_line(c: dict) -> str:
    """The calibration set in one line: data/split, samples x seq_len, tokens."""
    split = f"/{c['split']}" if c.get("split") else ""
    return (f"{c.get('data')}{split}, {fmt(c.get('samples'))} samples x seq_len {fmt(c.get('seq_len'))}, "
            f"{fmt(c.get('tokens'))} tokens")


def stage_lines(i: int, s) -> list[str]:
    lines = [f"### {i}. {s.stage} ({s.wall_s:.1f} s, peak RSS {mib(s.peak_rss_bytes)})", ""]
    if s.calibration:
        lines += [f"Calibration: {calibration_line(s.calibration)}.", ""]
    rows = [[k, fmt(v)] for k, v in s.settings()]
    if rows:
        lines += [md_table(["setting", "value"], rows), ""]
    detail = [[k, *detail_cell(v)] for k, v in s.detail().items() if (s.stage, k) not in SHOWN_ELSEWHERE]
    if detail:
        lines += [md_table(["per-layer detail", "entries", "values"], detail), "",
                  f"Every value: results.json, stages[{i - 1}].", ""]
    if s.stage == "trim" and getattr(s, "blocks", None):  # the shapes a trim left, block by block
        kind = "standard config" if s.standard else "NON-STANDARD: loads through slimformer.load only"
        lines += [f"Trimmed blocks ({kind}):", "",
                  md_table(["block", "heads", "KV heads", "FFN width"],
                           [[str(j), str(b["heads"]), str(b["kv_heads"]), str(b["ffn"])]
                            for j, b in enumerate(s.blocks)]), ""]
    if s.stage == "recover" and hasattr(s, "before"):
        best = f" (best at step {s.best_step})" if s.best_step is not None else ""
        lines += [f"Recovery ({s.metric}): {s.before:.4g} before, {s.after:.4g} after {s.steps} steps, "
                  f"{s.tokens:,} tokens, {s.train_wall_s:.0f} s of training{best}.", ""]
        lines += recover_detail_lines(s) + [f"![recovery curves]({CURVES_FILE})", ""]
    return lines


def recover_detail_lines(s) -> list[str]:
    """What recovery trained on, what chose its checkpoint, and its evaluations step by step."""
    lines = []
    mix = (s.data or {}).get("mixture")
    if mix:
        parts = [f"{k} ({v['texts']:,} texts, {v['heldout']} held out, share {v['share']:.0%})" for k, v in mix.items()]
        lines += [f"Training text, mixed: {'; '.join(parts)}.", ""]
    if s.metric.startswith("Spearman"):
        lines += [f"> The checkpoint was chosen on a task score ({s.metric}), not on fidelity to the original: "
                  "quality on that task's distribution is optimistic, and on other data it may drop more.", ""]
    evals = [h for h in s.history or [] if "eval" in h]
    if evals:
        tracked = sorted({k for h in evals for k in h.get("track", {})})
        head = ["step", "tokens", s.metric + " (selects)"] + [f"{k} (tracked, not used to select)" for k in tracked]
        rows = [[str(h["step"]), f"{h['tokens']:,}", fmt(h["eval"])] +
                [fmt(h.get("track", {}).get(k)) for k in tracked] for h in evals]
        lines += [md_table(head, rows), ""]
    return lines


def stage_section(stages) -> list[str]:
    """The lines of the Stages section (without its heading)."""
    if not stages:
        return ["- none", ""]
    lines: list[str] = []
    for i, s in enumerate(stages, 1):
        lines += stage_lines(i, s)
    return lines
