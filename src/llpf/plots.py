"""Figures from run directories, in the layout of the paper's Figures 2 and 3.

Three rows: training loss along the path (per-iteration batch loss and the
full training-set loss at evaluation points, with the loss threshold for M2M);
the layer-wise L2 distance to the destination (M2M) or to the origin as a
variance ratio (M2O), one curve per layer; test loss and accuracy. Plots read
only run directories.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .store import RunDir  # noqa: E402


def _series(rows, key):
    pts = [(r["iteration"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def path_figure(run: str | Path, out: str | Path | None = None) -> Path:
    """Write ``figures/path.png`` for one run (Figure 2 layout for M2M, Figure 3 for M2O)."""
    rd = RunDir(run)
    rows = rd.metrics()
    kind = rd.info().get("kind", "m2m")
    summary = rd.summary() if (rd.path / "summary.json").is_file() else {}
    fig, axes = plt.subplots(3, 1, figsize=(7, 9), sharex=True, constrained_layout=True)

    ax = axes[0]
    ax.plot(*_series(rows, "batch_loss"), lw=0.6, alpha=0.5, label="batch loss (Train_r)")
    ax.plot(*_series(rows, "train_loss"), "o-", ms=3, label="training-set loss")
    if kind == "m2m" and summary.get("loss_threshold"):
        ax.axhline(summary["loss_threshold"], color="red", ls="--", lw=1, label="L_thres")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)

    ax = axes[1]
    prefix = "dist/" if kind == "m2m" else "var_ratio/"
    layers = [k for k in (rows[0] if rows else {}) if k.startswith(prefix)]
    for k in layers:
        ax.plot(*_series(rows, k), lw=1, label=k[len(prefix):])
    ax.set_ylabel("layer-wise L2 distance to D" if kind == "m2m" else "layer variance / start variance")
    if kind == "m2m":
        ax.set_yscale("log")
    if len(layers) <= 12:
        ax.legend(fontsize=7, ncol=2)

    ax = axes[2]
    ax.plot(*_series(rows, "test_loss"), "o-", ms=3, color="tab:red", label="test loss")
    ax.set_ylabel("test loss", color="tab:red")
    ax2 = ax.twinx()
    ax2.plot(*_series(rows, "test_accuracy"), "s-", ms=3, color="tab:blue", label="test accuracy")
    ax2.set_ylabel("test accuracy", color="tab:blue")
    if kind == "m2o" and summary.get("best_iteration") is not None:
        ax.axvline(summary["best_iteration"], color="gray", ls=":", label="best point")
    ax.set_xlabel("iteration")
    fig.suptitle(f"{kind.upper()}: {rd.path.name}")
    out = Path(out) if out else rd.path / "figures" / "path.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
