"""A comparison's results: one row per method (mean and spread over pairs) as CSV, and its figure."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np

from ..plots import new_figure, save_figure
from ..reproduce.aggregate import statistics
from .options import budget_label

COLUMNS = ("max_train_loss", "walked_max_train_loss", "mean_train_loss", "max_test_loss", "min_test_accuracy",
           "path_length", "planned_gradient_steps", "gradient_steps", "wall_seconds")
EXTRA = ("max_test_accuracy",)
PAIR_COLUMNS = ("pair", "budget", "method", "status") + COLUMNS + EXTRA + ("max_train_loss_position", "run")
FRONTIER = ("gradient_steps", "max_train_loss", "walked_max_train_loss", "mean_train_loss", "min_test_accuracy")


def method_rows(results: list[dict], opts, pairs: int) -> list[dict]:
    """One row per method and budget, in the order they run: each column's mean over the pairs it finished, with
    std, min and max when pairs > 1. ``budget`` is what compare was asked ("config": the config's own, a number,
    "matched")."""
    return [_aggregate_row(name, label, [r for r in results if r["method"] == name and r["budget"] == label], pairs)
            for label, name in ((budget_label(slot), name) for slot, name in opts.units())]


def _aggregate_row(name: str, budget, mine: list[dict], pairs: int) -> dict:
    done = {str(i): {c: r.get(c) for c in COLUMNS + EXTRA} for i, r in enumerate(mine) if r["status"] == "complete"}
    agg = statistics(done)
    row = {"method": name, "budget": budget, **{c: agg[c]["mean"] if c in agg else None for c in COLUMNS + EXTRA},
           "pairs": len(done), "failed": len(mine) - len(done)}
    if pairs > 1:
        for stat in ("std", "min", "max"):
            row.update({f"{c}_{stat}": agg[c][stat] if c in agg else None for c in COLUMNS + EXTRA})
    return row


def frontier_rows(results: list[dict], opts) -> list[dict]:
    """The loss-budget frontier: per method and budget, the gradient evaluations spent and the maximum training
    loss along the path, as mean, std, min and max over the pairs; the line (no budget) once."""
    rows = []
    for name in opts.methods:
        for budget in ["config"] if name == "line" else opts.budgets:
            done = {str(i): {c: r.get(c) for c in FRONTIER} for i, r in enumerate(results)
                    if r["method"] == name and r["budget"] == budget and r["status"] == "complete"}
            if not done:
                continue
            agg = statistics(done)
            row = {"method": name, "budget": 0 if budget == "config" else budget, "pairs": len(done)}
            for c in FRONTIER:
                row.update({c: agg[c]["mean"] if c in agg else None,
                            **{f"{c}_{s}": agg[c][s] if c in agg else None for s in ("std", "min", "max")}})
            rows.append(row)
    return rows


def table_columns(rows: list[dict]) -> list[str]:
    """The CSV's columns: the comparison's own first, then the counts and the spreads (with pairs)."""
    first = ["method", "budget", *COLUMNS, *EXTRA, "pairs", "failed"]
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


def frontier_figure(rows: list[dict], opts, out: Path, title: str) -> Path:
    """The loss-budget frontier: maximum training loss along the path against gradient evaluations (log-log),
    one line per method through its budgets' means over the pairs, error bars of one std (cut at the range, so
    the log axis shows them), the range over pairs shaded; the straight line, which costs nothing, dashed."""
    fig = new_figure(figsize=(7, 5))
    ax = fig.subplots()
    colors = matplotlib.colormaps["tab10"](np.arange(10))
    for i, name in enumerate(opts.methods):
        mine = [r for r in rows if r["method"] == name and r["max_train_loss"] is not None]
        if not mine:
            continue
        c = colors[i % 10]
        y = np.array([r["max_train_loss"] for r in mine])
        lo, hi = np.array([r["max_train_loss_min"] for r in mine]), np.array([r["max_train_loss_max"] for r in mine])
        if name == "line":
            ax.axhline(y[0], color=c, ls="--", lw=1, label=f"line (no training): {y[0]:.3g}")
            continue
        x = np.array([r["gradient_steps"] for r in mine], float)
        sd = np.array([r["max_train_loss_std"] or 0.0 for r in mine])
        ax.errorbar(x, y, yerr=[np.minimum(sd, y - lo), sd], fmt="o-", color=c, capsize=3, lw=1.3, label=name)
        ax.fill_between(x, lo, hi, color=c, alpha=0.12)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("gradient evaluations (mean over pairs)")
    ax.set_ylabel("maximum training loss along the path")
    ax.legend(fontsize=8)
    fig.suptitle(title + f"\nbudgets {', '.join(map(str, opts.budgets))}; shaded: range over pairs", fontsize=9)
    return save_figure(fig, out)
