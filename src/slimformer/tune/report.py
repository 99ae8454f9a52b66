"""A tune's output: report.md (the front as a table, the chosen point against the budget on the
test split), pareto.png, front/<id>.yaml (each front point's recipe, re-runnable with
`slimformer compress`) and results.json (every trial)."""
from __future__ import annotations

from pathlib import Path

import yaml

from ..atomic import atomic_file
from ..report.table import md_table
from .front import Point
from .space import describe

PLOT = "pareto.png"


def _causal(res) -> bool:
    return res.test.get("metric") == "perplexity"  # the task the chosen model was scored on


def _quality(res, p: dict) -> str:
    q = p["quality"]
    base = res.baseline["quality"]
    if _causal(res):
        return f"{q['score']:.2f} ({q['score'] / base:.3f}x)"
    return f"{q['score']:.2f} ({q['score'] - base:+.2f})"


def plot_front(res, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pts = [Point.from_dict(p) for p in res.points]
    front = [p for p in pts if p.id in res.front]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for phase, marker in (("one-shot", "o"), ("recovered", "s")):
        sel = [p for p in pts if p.phase == phase]
        ax.scatter([p.speed for p in sel], [p.quality["score"] for p in sel], marker=marker, s=22,
                   c=["tab:blue" if p.ok else "tab:gray" for p in sel], label=f"{phase} (gray: outside budget)")
    front = sorted(front, key=lambda p: p.speed)
    ax.plot([p.speed for p in front], [p.quality["score"] for p in front], color="tab:orange", lw=1.2, label="front")
    ax.scatter([1.0], [res.baseline["quality"]], marker="*", s=120, color="black", label="original (1.0x)")
    chosen = next((p for p in pts if p.id == res.chosen), None)
    if chosen is not None:
        ax.scatter([chosen.speed], [chosen.quality["score"]], marker="o", s=140, facecolors="none",
                   edgecolors="red", lw=1.5, label=f"chosen ({chosen.id})")
    ax.set_xlabel(f"{res.objective} vs the original ({res.baseline['runtime']}), x")
    ax.set_ylabel("validation perplexity" if _causal(res) else "validation STS x100")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_tune_report(res, out: Path) -> None:
    (out / "front").mkdir(exist_ok=True)
    by_id = {p["id"]: p for p in res.points}
    for pid in res.front:
        with atomic_file(out / "front" / f"{pid}.yaml", overwrite=True) as tmp:
            tmp.write_text(f"# slimformer tune front point {pid}: {describe(by_id[pid]['params'])}\n"
                           + yaml.safe_dump(by_id[pid]["recipe"], sort_keys=False))
    plot_front(res, out / PLOT)
    res.to_json(out / "results.json")
    rows = []
    for pid in res.front:
        p = by_id[pid]
        fid = p["quality"].get("fidelity")
        rows.append([f"**{pid}**" if pid == res.chosen else pid, describe(p["params"]), p["phase"],
                     _quality(res, p), "-" if fid is None else f"{fid:.3f}", f"{p['speed']:.2f}x",
                     "yes" if p["quality"]["ok"] else "no", f"front/{pid}.yaml"])
    cfg = res.config
    budget = ", ".join(f"{k} {cfg[k]}" for k in ("max_drop", "max_ppl_ratio", "min_fidelity") if cfg.get(k) is not None)
    t = res.test
    test_line = (f"{t.get('metric')}: original {t.get('original', float('nan')):.2f}, chosen "
                 f"{t.get('compressed', float('nan')):.2f}"
                 + (f", fidelity {t['fidelity']:.3f}" if "fidelity" in t else "")
                 + (" - **meets the budget**" if t.get("meets_budget") else
                    f" - **does not meet the budget** ({'; '.join(t.get('misses', []))})"))
    lines = [
        f"# slimformer tune: {res.model}", "",
        f"Budget {budget} (validation data), objective **{res.objective}** in **{res.runtime}** at "
        f"{cfg['threads']} thread(s); speed ratios against the original in {res.baseline['runtime']}, same process. "
        f"{res.trials.get('one-shot', 0)} one-shot trials ({res.trials.get('failed', 0)} failed), "
        f"{res.trials.get('recovered', 0)} recovered finalists, {res.wall_s / 60:.1f} min.", "",
        *[f"> {n}" for n in res.notes], "",
        "## Chosen point on the test split (read once, after the search)", "",
        f"{res.chosen}: {test_line}. The model, its export and its own report are in `chosen/`.", "",
        "## Pareto front (validation quality against speed)", "",
        md_table(["point", "recipe", "phase", "validation quality", "fidelity", res.objective, "in budget", "recipe file"],
                 rows), "",
        f"![front]({PLOT})", "",
        f"Every trial is in results.json; the Optuna study (study.db) resumes an interrupted tune "
        f"with `slimformer tune` and the same --out.", "",
    ]
    with atomic_file(out / "report.md", overwrite=True) as tmp:
        tmp.write_text("\n".join(lines))
