"""Training curves of a recover stage: distillation loss and held-out quality over steps."""
from __future__ import annotations

from pathlib import Path

CURVES_FILE = "recover_curves.png"


def plot_recovery(log, path: Path) -> None:
    """`log`: the recover stage's RecoverLog."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    hist = log.history or []
    train = [h for h in hist if "loss" in h]
    evals = [h for h in hist if "eval" in h]
    tracked = sorted({k for h in evals for k in h.get("track", {})})
    fig, axes = plt.subplots(1, 2 + bool(tracked), figsize=(9 + 4.5 * bool(tracked), 3.6), dpi=100)
    a, b = axes[0], axes[1]
    a.plot([h["step"] for h in train], [h["loss"] for h in train], lw=1.2)
    a.set_xlabel("optimizer step")
    a.set_ylabel("distillation loss (train)")
    a.set_yscale("log")
    a.grid(alpha=0.3)
    steps = [0] + [h["step"] for h in evals]
    values = [log.before] + [h["eval"] for h in evals]
    b.plot(steps, values, marker="o", lw=1.2)
    if log.best_step:
        b.axvline(log.best_step, color="gray", ls="--", lw=0.8, label=f"best (step {log.best_step})")
        b.legend()
    b.set_xlabel("optimizer step")
    b.set_ylabel(f"{log.metric} ({'higher' if log.higher_is_better else 'lower'} is better)")
    b.grid(alpha=0.3)
    if tracked:  # recorded at each evaluation, never used to select (RecoverConfig.track)
        c = axes[2]
        for name in tracked:
            pts = [(h["step"], h["track"][name]) for h in evals if name in h.get("track", {})]
            c.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", lw=1.2, label=name)
        c.set_xlabel("optimizer step")
        c.set_ylabel("tracked (not used to select)")
        c.legend(fontsize=7)
        c.grid(alpha=0.3)
    fig.suptitle(f"recover: {log.tokens:,} tokens in {log.train_wall_s:.0f} s")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
