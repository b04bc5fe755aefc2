"""A comparison's results: one row per method (mean and spread over pairs) as CSV, and its figure."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np

from ..plots import new_figure, save_figure
from ..reproduce.aggregate import statistics

COLUMNS = ("max_train_loss", "mean_train_loss", "max_test_loss", "min_test_accuracy", "path_length",
           "gradient_steps", "wall_seconds")
EXTRA = ("max_test_accuracy",)
PAIR_COLUMNS = ("pair", "method", "status") + COLUMNS + EXTRA + ("max_train_loss_position", "run")


def method_rows(results: list[dict], names: Sequence[str], pairs: int) -> list[dict]:
    """One row per method: each column's mean over the pairs it finished, with std, min and max when pairs > 1."""
    out = []
    for name in names:
        mine = [r for r in results if r["method"] == name]
        done = {str(i): {c: r.get(c) for c in COLUMNS + EXTRA} for i, r in enumerate(mine)
                if r["status"] == "complete"}
        agg = statistics(done)
        row = {"method": name, **{c: agg[c]["mean"] if c in agg else None for c in COLUMNS + EXTRA},
               "pairs": len(done), "failed": len(mine) - len(done)}
        if pairs > 1:
            for stat in ("std", "min", "max"):
                row.update({f"{c}_{stat}": agg[c][stat] if c in agg else None for c in COLUMNS + EXTRA})
        out.append(row)
    return out


def table_columns(rows: list[dict]) -> list[str]:
    """The CSV's columns: the comparison's own first, then the counts and the spreads (with pairs)."""
    first = ["method", *COLUMNS, *EXTRA, "pairs", "failed"]
    return first + [k for k in rows[0] if k not in first] if rows else first


def _profile_band(ax, profiles: list[list[dict]], key: str, color, label: str) -> None:
    """One method's profile: as measured for one pair; otherwise, on a common grid, the mean over pairs with
    their range shaded and error bars of one std (cut at the range, so a log axis shows them)."""
    if len(profiles) == 1:
        p = profiles[0]
        ax.plot([r["position"] for r in p], [r[key] for r in p], "-", color=color, lw=1.3, label=label)
        return
    grid = np.linspace(0.0, 1.0, 101)
    ys = np.array([np.interp(grid, [r["position"] for r in p], [r[key] for r in p]) for p in profiles])
    m, s, lo, hi = ys.mean(0), ys.std(0), ys.min(0), ys.max(0)
    ax.plot(grid, m, "-", color=color, lw=1.3, label=f"{label} (mean of {len(profiles)})")
    ax.fill_between(grid, lo, hi, color=color, alpha=0.15)
    below = np.minimum(s, m - lo)
    ax.errorbar(grid[::10], m[::10], yerr=[below[::10], s[::10]], fmt="none", ecolor=color, capsize=2, lw=0.8)


def comparison_figure(results: list[dict], names: Sequence[str], out: Path, title: str) -> Path:
    """Training loss and test accuracy over normalised path position per method; each method's maximum."""
    fig = new_figure(figsize=(7, 9))
    ax_loss, ax_acc, ax_max = fig.subplots(3, 1)
    colors = matplotlib.colormaps["tab10"](np.arange(10))
    for i, name in enumerate(names):
        done = [r for r in results if r["method"] == name and r.get("profile")]
        if not done:
            continue
        profiles = [r["profile"] for r in done]
        _profile_band(ax_loss, profiles, "train_loss", colors[i % 10], name)
        _profile_band(ax_acc, profiles, "test_accuracy", colors[i % 10], name)
        peaks = np.array([r["max_train_loss"] for r in done])
        ax_max.bar(i, peaks.mean(), color=colors[i % 10], alpha=0.6,
                   yerr=peaks.std() if len(peaks) > 1 else None, capsize=4)
        ax_max.plot(np.full(len(peaks), i), peaks, "o", color="k", ms=3)
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("training loss" + (" (shaded: range over pairs)" if len({r["pair"] for r in results}) > 1
                                         else ""))
    ax_loss.legend(fontsize=8)
    ax_acc.set_ylabel("test accuracy")
    ax_acc.set_xlabel("position along the path (fraction of its length)")
    ax_max.set_xticks(range(len(names)), list(names))
    ax_max.set_yscale("log")
    ax_max.set_ylabel("max training loss on the path")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, out)
