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
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
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
    fig.suptitle(f"recover: {log.tokens:,} tokens in {log.train_wall_s:.0f} s")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
