"""report.md and its plot, built only from a CompressResult."""
from __future__ import annotations

from pathlib import Path

from .curves import CURVES_FILE, plot_recovery
from .stages import stage_section
from .table import md_table, mib, num, signed, times
from .views import COMPARISON_HEADERS, comparison_rows, environment_line


def summary_rows(result) -> list[list[str]]:
    q0, q1 = result.quality["original"], result.quality["compressed"]
    r = result.speed["ratios"]
    rows = [[f"{q0['task']} {q0['metric']} ({q0['data']}/{q0['split']})", num(q0["value"]), num(q1["value"]),
             signed(q1["value"] - q0["value"])]]
    if result.fidelity:
        f = result.fidelity
        rows.append([f"fidelity {f['metric']} vs original", "", num(f["value"], 4), ""])
        for name, v in (f.get("extra") or {}).get("sets", {}).items():  # encoders: per held-out domain
            rows.append([f"fidelity on {name} ({v['n']} texts): mean / 1st-percentile cosine", "",
                         f"{v['mean']:.4f} / {v['p01']:.4f}", ""])
        if "interchangeable" in (f.get("extra") or {}):
            rows.append(["embeddings interchangeable with the original's", "",
                         "yes" if f["extra"]["interchangeable"] else "NO: re-embed indexes", ""])
    rows.append(["throughput ratio", "1.00x", times(r["throughput"]), ""])
    if "decode_tokens_per_s" in r:
        rows.append(["decode tokens/s ratio", "1.00x", times(r["decode_tokens_per_s"]), ""])
    a, b = result.speed["base"], result.speed["other"]
    rows.append(["size on disk", f"{a['size_bytes'] / 2**20:.1f} MiB", f"{b['size_bytes'] / 2**20:.1f} MiB",
                 times(r["size"])])
    src = source_row(result)
    if src:
        rows.append(src)
    rows.append(["parameters", f"{a['params']:,}", f"{b['params']:,}", times(r["params"])])
    ex = getattr(result, "export", None)
    if ex:
        qe = ex["quality"]
        rows.append([f"export {ex['format']} ({ex['path']}, {ex['bytes'] / 2**20:.1f} MiB): {qe['metric']} "
                     f"in its runtime", "", num(qe["value"]), f"{signed(qe['value'] - q1['value'])} vs PyTorch"])
    return rows


def source_row(result) -> list[str] | None:
    """The size of the file the user gave beside the compressed weights, when it differs from the
    model as slimformer saves it (a GGUF or other quantized source, an fp16 folder) or the output
    is larger than it."""
    src = getattr(result, "source", None)
    if not src:
        return None
    base = result.speed["base"]["size_bytes"]
    if abs(src["bytes"] - base) <= 0.05 * base and src["output_ratio"] <= 1.0:
        return None
    name = Path(src["given"]).name or src["given"]
    larger = " (LARGER)" if src["output_ratio"] > 1.0 else ""
    return [f"size vs the file you gave ({name})", f"{src['bytes'] / 2**20:.1f} MiB",
            f"{src['output_bytes'] / 2**20:.1f} MiB", times(src["output_ratio"]) + larger]


LAYOUT_NAMES = {"hf": "a standard Hugging Face folder", "compressed-tensors": "compressed-tensors",
                "slimformer": "slimformer's own layout"}


def layout_lines(result) -> list[str]:
    """How model/ was written and what loads it (and, for slimformer's layout, why not a standard one)."""
    lay = getattr(result, "layout", None) or {}
    if not lay:
        return []
    details = [*lay.get("formats", []), *([mib(lay["bytes"]) + " of weights"] if lay.get("bytes") else [])]
    kind = LAYOUT_NAMES[lay["format"]] + (f" ({', '.join(details)})" if details else "")
    why = f" (not a standard format: {lay['why']})" if lay.get("why") else ""
    return [f"Saved model: `model/` is {kind}{why}; it loads in {lay['loads_in']}.", ""]


def memory_section(result) -> list[str]:
    """Peak RSS of every step of the run, the largest marked: which step held the most memory
    (for a lazily loaded model, whether anything held more than one block at a time)."""
    steps = [(f"stage {i}: {s.stage}" + (f" ({s.memory})" if s.memory else ""), s.peak_rss_bytes)
             for i, s in enumerate(result.stages, 1)]
    steps += list((getattr(result, "memory", None) or {}).items())
    if not steps:
        return []
    top = max(b for _, b in steps)
    rows = [[name, mib(b) + (" (largest)" if b == top else "")] for name, b in steps]
    return ["## Memory by step (peak RSS of the process)", "", md_table(["step", "peak RSS"], rows), ""]


def render(result) -> str:
    a = result.speed["base"]
    lines = [f"# slimformer report: {result.model}", ""]
    lines += [f"> {n}" for n in result.notes] + ([""] if result.notes else [])
    lines += ["## Summary", "", md_table(["", "original", "compressed", "change"], summary_rows(result)), ""]
    lines += layout_lines(result)
    lines += ["![quality vs speed](quality_vs_speed.png)", ""]
    lines += ["## Stages", ""]
    lines += stage_section(result.stages)
    lines += memory_section(result)
    lines += ["## Speed, memory and size (same process, back to back)", "",
              md_table(COMPARISON_HEADERS, comparison_rows(result.speed)), "",
              f"Machine: {environment_line(a)}.", "", "## Protocols", ""]
    lines.append(f"- quality: {result.quality['original']['protocol']}")
    if result.fidelity:
        lines.append(f"- fidelity: {result.fidelity['protocol']}")
    lines.append(f"- throughput: {a['throughput']['data']}, batch {a['throughput']['batch']}, "
                 f"best of {a['throughput']['passes']} passes")
    if a.get("decode"):
        lines.append(f"- decode: {a['decode']['note']}")
    return "\n".join(lines) + "\n"


def plot(result, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    q0, q1 = result.quality["original"], result.quality["compressed"]
    speed = result.speed["ratios"]["throughput"]
    if speed is None:  # not timed (a lazily loaded model): quality only, at 1.0
        speed = 1.0
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.scatter([1.0], [q0["value"]], label="original", marker="o", s=60)
    ax.scatter([speed], [q1["value"]], label="compressed", marker="*", s=120)
    # Never zoom into measurement noise: show at least 0.9x .. 1.1x around the original.
    ax.set_xlim(min(0.9, speed - 0.1), max(1.1, speed + 0.1))
    ax.set_xlabel("throughput relative to original (x)")
    ax.set_ylabel(f"{q0['metric']} ({'higher' if q0['higher_is_better'] else 'lower'} is better)")
    ax.set_title(f"{result.model}: quality vs speed")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(result, folder: Path) -> None:
    (folder / "report.md").write_text(render(result))
    plot(result, folder / "quality_vs_speed.png")
    for s in result.stages:
        if s.stage == "recover":  # the last recover stage's curves
            plot_recovery(s, folder / CURVES_FILE)
