"""Generalisation along M2O paths (paper Figure 5): held-out metrics against the variance ratio.

Algorithm 2 walks a model toward the origin across variance spheres; the
paper finds a minimum of the test loss (and a peak of test accuracy) on the
way. This module reads M2O run directories and draws test (and validation,
when the run has that split) loss and accuracy against the mean variance
ratio Var(P_l)/v_l, from 1 at the start toward 0, marking the point the run
selected (on the split named in its summary: the paper chose on test; a
validation split cut from train is the honest choice).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..errors import RunDirError
from ..files import write_json
from ..store import RunDir
from .runs import expand_runs, run_kind


def m2o_curve(run: str | Path) -> dict:
    """One M2O run's evaluated rows (variance ratio, test/validation metrics) and its selected point."""
    rd = RunDir(run)
    rows = [r for r in rd.metrics() if r.get("mean_variance_ratio") is not None]
    keys = [k for k in ("test_loss", "test_accuracy", "validation_loss", "validation_accuracy", "train_loss")
            if any(r.get(k) is not None for r in rows)]
    curve = {"iteration": [int(r["iteration"]) for r in rows],
             "mean_variance_ratio": [r["mean_variance_ratio"] for r in rows]}
    for k in keys:
        curve[k] = [r.get(k) for r in rows]
    summary = rd.summary() if (rd.path / "summary.json").is_file() else {}
    best = None
    if "best_iteration" in summary:
        it = summary["best_iteration"]
        at = [r for r in rows if int(r["iteration"]) == it]
        best = {"iteration": it, "selected_on": summary.get("selected_on"), "selected_by": summary.get("selected_by"),
                "mean_variance_ratio": summary.get("best_variance_ratio")}
        if at:
            best.update({k: at[0].get(k) for k in keys})
    start = {k: curve[k][0] for k in keys} if rows else {}
    return {"run": str(run), "curve": curve, "best": best, "start": start}


def analyse_generalisation(runs: Iterable[str | Path]) -> dict:
    """The M2O curves of every M2O run among ``runs`` (run directories, or folders holding them)."""
    found = [r for r in expand_runs(runs) if run_kind(r) == "m2o"]
    if not found:
        raise RunDirError("no M2O run among the given directories")
    return {"runs": [m2o_curve(r) for r in found]}


def generalisation_figure(result: dict, out: str | Path) -> Path:
    """Loss (top) and accuracy (bottom) against the mean variance ratio, selected point starred."""
    from matplotlib import rcParams

    from ..plots import new_figure, save_figure

    fig = new_figure(figsize=(6.5, 6))
    ax, bx = fig.subplots(2, 1, sharex=True)
    colors = rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(result["runs"]):
        c = colors[i % len(colors)]
        x = run["curve"]["mean_variance_ratio"]
        label = Path(run["run"]).name if len(result["runs"]) <= 8 else None
        for axis, metric in ((ax, "loss"), (bx, "accuracy")):
            for split, style in (("test", "-"), ("validation", "--")):
                y = run["curve"].get(f"{split}_{metric}")
                if y is None:
                    continue
                pts = [(a, b) for a, b in zip(x, y) if b is not None]
                axis.plot([p[0] for p in pts], [p[1] for p in pts], style, color=c, lw=1,
                          label=f"{label} {split}" if label and metric == "loss" else None)
            best = run["best"]
            if best and best.get(f"test_{metric}") is not None:
                axis.plot(best["mean_variance_ratio"], best[f"test_{metric}"], "*", color=c, ms=12, mec="k",
                          label=(f"selected on {best['selected_on']}" if i == 0 and metric == "loss" else None))
    ax.set_ylabel("loss")
    bx.set_ylabel("accuracy")
    bx.set_xlabel("mean variance ratio Var(P)/v (1 = start; toward the origin ->)")
    ax.invert_xaxis()
    ax.legend(fontsize=7)
    fig.suptitle("M2O: generalisation on smaller variance spheres (solid test, dashed validation)", fontsize=9)
    return save_figure(fig, out)


def write_generalisation(result: dict, out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "generalisation.json", result)
    return {"json": out_dir / "generalisation.json",
            "figure": generalisation_figure(result, out_dir / "generalisation.png")}
