"""Figures from run directories, in the layout of the paper's Figures 2 and 3.

Three rows: training loss along the path (per-iteration batch loss and the
full training-set loss at evaluation points, with the loss thresholds for
M2M); the layer-wise L2 distance to the destination (M2M) or the variance
ratio toward the origin (M2O), one curve per layer; test loss and accuracy.
An M2M path whose variance sphere moves gets a fourth: each layer's target
variance (its sphere S_var) over its start variance.
One run is drawn as measured; several (repetitions) as mean and standard
deviation, smoothed over ``SMOOTH`` iterations as the paper does. Plots read
only run directories and metric rows.

Figures are built with matplotlib's object API and never pass through pyplot,
so importing llpf leaves the caller's backend (a notebook's, say) as it is.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from . import files
from .errors import RunDirError
from .methods.base import SMOOTH  # the paper's figures: moving average over 10 iterations
from .store import RunDir


def moving_average(y: np.ndarray, w: int = SMOOTH) -> np.ndarray:
    """Trailing moving average over ``w`` points (fewer at the start), NaNs ignored."""
    y = np.asarray(y, float)
    out = np.empty_like(y)
    for i in range(len(y)):
        win = y[max(0, i - w + 1):i + 1]
        win = win[np.isfinite(win)]
        out[i] = win.mean() if len(win) else np.nan
    return out


def _stack(runs: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Iterations where any run has ``key``, and a [runs, iterations] array (NaN where a run lacks it)."""
    its = sorted({int(r["iteration"]) for rows in runs for r in rows if r.get(key) is not None})
    index = {it: i for i, it in enumerate(its)}
    arr = np.full((len(runs), len(its)), np.nan)
    for j, rows in enumerate(runs):
        for r in rows:
            if r.get(key) is not None:
                arr[j, index[int(r["iteration"])]] = r[key]
    return np.array(its), arr


def _mean_std(its: np.ndarray, arr: np.ndarray, smooth: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over runs, each smoothed over ``SMOOTH`` iterations when ``smooth``.

    The window counts iterations, not points: per-iteration series (the batch
    loss) average 10 points; series evaluated every k >= 10 iterations are
    left as they are, so a peak of the training-set loss is not flattened.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, std = np.nanmean(arr, 0), np.nanstd(arr, 0)
    if not smooth:
        return mean, std
    step = float(np.median(np.diff(its))) if len(its) > 1 else 1.0
    w = max(1, int(round(SMOOTH / max(step, 1.0))))
    return moving_average(mean, w), moving_average(std, w)


def new_figure(**kw) -> Figure:
    """A constrained-layout figure that pyplot does not know about (``kw``: ``figsize`` ...)."""
    return Figure(layout="constrained", **kw)


def save_figure(fig: Figure, out: str | Path) -> Path:
    """Write ``fig`` to ``out`` atomically (making its folder); every llpf figure ends here.

    The format follows the suffix (``.png``, ``.pdf``, ``.svg``), as ``savefig`` reads it.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format=out.suffix.lstrip(".") or "png")
    files.atomic_write(out, buf.getvalue())
    return out


def paths_figure(runs: list[list[dict]], path: Path, title: str, summaries: list[dict] = (),
                 smooth: bool = True, best_iteration: int | None = None) -> Path:
    """Paper Figure 2 (M2M) or Figure 3 (M2O) from the metric rows of one or more runs.

    What is drawn follows the columns, not the method: per-layer distances to
    the destination (``dist/``) when the rows have them, else per-layer
    variance ratios (``var_ratio/``); loss thresholds and the best point when
    the summaries name them.
    """
    columns = runs[0][0] if runs and runs[0] else {}
    spheres = [k for k in columns if k.startswith(SPHERE_PREFIX)]
    fig = new_figure(figsize=(7, 11 if spheres else 9))
    axes = fig.subplots(4 if spheres else 3, 1, sharex=True)

    def band(ax, key, label, **kw):
        its, arr = _stack(runs, key)
        if not len(its):
            return
        m, s = _mean_std(its, arr, smooth)
        line, = ax.plot(its, m, label=label, **kw)
        if len(runs) > 1:
            ax.fill_between(its, m - s, m + s, alpha=0.2, color=line.get_color())

    ax = axes[0]
    band(ax, "batch_loss", "batch loss", lw=0.6, alpha=0.6)
    band(ax, "train_loss", "training-set loss", lw=1.5, marker="o", ms=2)
    th = [s["loss_threshold"] for s in summaries if s.get("loss_threshold")]
    rel = [s["relative_threshold"] for s in summaries if s.get("relative_threshold")]
    if th:
        ax.axhline(th[0], color="red", ls="--", lw=1, label="L_thres")
    if rel:
        ax.axhline(float(np.mean(rel)), color="orange", ls=":", lw=1, label="relative threshold")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)

    _measures_panel(axes[1], runs, band)

    if spheres:
        _layer_curves(axes[3], spheres, SPHERE_PREFIX, band)
        axes[3].set_ylabel("target variance / start variance")

    ax = axes[2]
    band(ax, "test_loss", "test loss", color="tab:red", marker="o", ms=2)
    ax.set_ylabel("test loss", color="tab:red")
    ax2 = ax.twinx()
    band(ax2, "test_accuracy", "test accuracy", color="tab:blue", marker="s", ms=2)
    ax2.set_ylabel("test accuracy", color="tab:blue")
    if best_iteration is not None:
        ax.axvline(best_iteration, color="gray", ls=":", label="best point")
    axes[-1].set_xlabel("iteration")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


DRIVER_COLUMNS = {"iteration", "phase", "batch_loss", "rounds"}
SPHERE_PREFIX = "target_var_ratio/"  # M2M with a sphere that moves: each layer's S_var over its start variance
EVALUATED = ("train_", "test_", "validation_")


def _measures_panel(ax, runs: list[list[dict]], band) -> None:
    """Per-layer distances to the destination (``dist/``) or variance ratios (``var_ratio/``), one curve per
    layer; for a method without either (a baseline), its own measures, each over its largest value."""
    columns = runs[0][0] if runs and runs[0] else {}
    distances = any(k.startswith("dist/") for k in columns)
    prefix = "dist/" if distances else "var_ratio/"
    layers = [k for k in columns if k.startswith(prefix)]
    if not layers:
        own = [k for k in columns if k not in DRIVER_COLUMNS and not k.startswith(EVALUATED)]
        for k in own:
            vals = [abs(r[k]) for rows in runs for r in rows if isinstance(r.get(k), (int, float))]
            top = max(vals, default=0.0) or 1.0
            scaled = [[{**r, k: r[k] / top} if isinstance(r.get(k), (int, float)) else r for r in rows] for rows in runs]
            its, arr = _stack(scaled, k)
            if len(its):
                ax.plot(its, np.nanmean(arr, 0), lw=1, marker="o", ms=2, label=f"{k} (max {top:.3g})")
        ax.set_ylabel("the method's measures / their largest value")
        if own:
            ax.legend(fontsize=7)
        return
    _layer_curves(ax, layers, prefix, band)
    ax.set_ylabel("layer-wise L2 distance to D" if distances else "layer variance / start variance")
    if distances and any(isinstance(r.get(k), (int, float)) and r[k] > 0 for rows in runs for r in rows for k in layers):
        ax.set_yscale("log")  # not for a zero-length pair, whose distances are all 0


def _layer_curves(ax, layers: list[str], prefix: str, band) -> None:
    """One curve per layer column (``prefix`` + layer name), with a legend when there are few."""
    ax.set_prop_cycle(color=matplotlib.colormaps["tab20"](np.linspace(0, 1, 20))[:max(1, min(20, len(layers)))]
                      if len(layers) > 10 else matplotlib.colormaps["tab10"](np.arange(10)))
    for k in layers:
        band(ax, k, k[len(prefix):], lw=1)
    if len(layers) <= 12:
        ax.legend(fontsize=7, ncol=2)


def path_figure(run: str | Path, out: str | Path | None = None) -> Path:
    """Write ``figures/path.png`` for one run, as measured (no smoothing)."""
    rd = RunDir(run)
    if not rd.exists:
        raise RunDirError(f"{run} holds no llpf run")
    kind = rd.info().get("kind", "m2m")
    summary = rd.summary() if (rd.path / "summary.json").is_file() else {}
    where = f" (rows at {summary['evaluated_point']})" if summary.get("evaluated_point") else ""
    return paths_figure([rd.metrics()], Path(out) if out else rd.path / "figures" / "path.png",
                        f"{kind.upper()}: {rd.path.name}{where}", [summary], smooth=False,
                        best_iteration=summary.get("best_iteration"))
