"""The aggregate of an experiment's finished repetitions: OUT/summary.json, OUT/summary.md, OUT/figure.png.

Each repetition becomes one row of verdicts read from its summary.json and
metrics.csv; every numeric column gets its mean, std, min and max over the
repetitions, every flag a count ("3/5"), and the figure draws mean and std of
the metric curves (paper Figure 2 for M2M, Figure 3 for M2O).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import files
from ..files import write_json
from ..plots import SMOOTH, paths_figure
from ..store import read_metrics

FLAGS = ("valid", "valid_relative", "valid_paper", "floor_reached")


def aggregate(out: str | Path, unfinished: dict[str, str] | None = None) -> dict:
    """Write OUT/figure.png, OUT/summary.md and OUT/summary.json from the finished repetitions.

    ``unfinished`` names the repetitions asked for but not finished, each with why (failed, interrupted, ...).
    """
    out = Path(out)
    ledger = json.loads((out / "reproduce.json").read_text())
    kind = ledger["kind"]
    reps, runs = {}, []
    for rep in sorted(out.glob("rep-*")):
        if (rep / "summary.json").is_file():
            rows = read_metrics(rep / "metrics.csv")
            reps[rep.name] = rep_row(kind, json.loads((rep / "summary.json").read_text()), rows)
            reps[rep.name]["wall_s"] = ledger["reps"].get(rep.name, {}).get("wall_s")
            runs.append(rows)
    result = {"name": ledger["name"], "kind": kind, "device": ledger.get("device"), "reps": reps,
              "aggregate": statistics(reps), "unfinished": dict(unfinished or {}),
              "endpoints": ledger.get("endpoints", {})}
    write_json(out / "summary.json", result)
    files.atomic_write(out / "summary.md", markdown(result).encode())
    if runs:
        paths_figure(runs, out / "figure.png", f"{ledger['name']}: {len(runs)} repetition(s), mean ± std, "
                                                     f"moving average over {SMOOTH} iterations", list(reps.values()))
    return result


def rep_row(kind: str, s: dict, rows: list[dict]) -> dict:
    """One repetition's verdicts, from its summary ``s`` and its metric ``rows``."""
    acc = [r["test_accuracy"] for r in rows if r.get("test_accuracy") is not None]
    row = {"status": s.get("status"), "iterations": s.get("iterations"),
           "max_train_loss": s.get("max_train_loss"), "max_batch_loss": s.get("max_batch_loss"),
           "test_accuracy_min": min(acc) if acc else None, "test_accuracy_max": max(acc) if acc else None}
    if kind == "m2m":
        fd, init = s.get("final_distance", {}), s.get("initial_distance", {})
        pc = s.get("paper_criteria") or {}
        row.update(valid=s.get("valid"), valid_relative=s.get("valid_relative"), valid_paper=s.get("valid_paper"),
                   smoothed_batch_loss_max=pc.get("smoothed_batch_loss_max"),
                   loss_threshold=s.get("loss_threshold"), relative_threshold=s.get("relative_threshold"),
                   endpoint_train_loss_start=(s.get("endpoint_train_loss") or {}).get("start"),
                   endpoint_train_loss_dest=(s.get("endpoint_train_loss") or {}).get("dest"),
                   final_distance_max=max(fd.values()) if fd else None,
                   initial_distance_max=max(init.values()) if init else None,
                   final_relative_distance_max=s.get("final_relative_distance_max"),
                   floor_reached=s.get("floor_reached"))
    else:
        row.update(start_test_accuracy=s.get("start_test_accuracy"), best_test_accuracy=s.get("best_test_accuracy"),
                   best_variance_ratio=s.get("best_variance_ratio"), best_iteration=s.get("best_iteration"),
                   final_variance_ratio=s.get("final_variance_ratio"))
    return row


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def statistics(reps: dict[str, dict]) -> dict[str, Any]:
    """Mean, std, min and max of every numeric column over the repetitions; ``k/n`` for every flag."""
    agg: dict[str, Any] = {"repetitions": len(reps)}
    for k in sorted({k for r in reps.values() for k, v in r.items() if _number(v)}):
        vals = [r[k] for r in reps.values() if _number(r.get(k))]
        agg[k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "min": float(np.min(vals)),
                  "max": float(np.max(vals))}
    for k in FLAGS:
        flags = [r.get(k) for r in reps.values() if r.get(k) is not None]
        if flags:
            agg[f"{k}_count"] = f"{sum(bool(f) for f in flags)}/{len(flags)}"
    return agg


# ---------------------------------------------------------------- the markdown table


M2M_COLUMNS = ["valid", "valid_relative", "valid_paper", "max_train_loss", "smoothed_batch_loss_max",
               "loss_threshold", "relative_threshold",
               "endpoint_train_loss_start", "endpoint_train_loss_dest", "final_distance_max",
               "final_relative_distance_max", "test_accuracy_min", "test_accuracy_max", "wall_s"]
M2O_COLUMNS = ["status", "max_train_loss", "start_test_accuracy", "best_test_accuracy", "best_variance_ratio",
               "best_iteration", "final_variance_ratio", "test_accuracy_min", "test_accuracy_max", "wall_s"]


def markdown(result: dict) -> str:
    """OUT/summary.md: one row per repetition, the aggregate, and the endpoints' metrics."""
    kind, reps, agg = result["kind"], result["reps"], result["aggregate"]
    cols = M2M_COLUMNS if kind == "m2m" else M2O_COLUMNS
    lines = [f"# {result['name']} ({kind.upper()}), {agg['repetitions']} repetition(s) on {result.get('device')}", "",
             "| rep | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in reps.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    lines.append("| **all** | " + " | ".join(_aggregate_cell(agg, c) for c in cols) + " |")
    if result.get("unfinished"):
        lines += ["", "Not finished (run the same command again to complete them):", ""]
        lines += [f"- {name}: {why}" for name, why in result["unfinished"].items()]
    return "\n".join(lines + _endpoint_lines(result.get("endpoints") or {})) + "\n"


def _aggregate_cell(agg: dict, column: str) -> str:
    if f"{column}_count" in agg:
        return agg[f"{column}_count"]
    if isinstance(agg.get(column), dict):
        return f"{agg[column]['mean']:.4g} ± {agg[column]['std']:.2g}"
    return "-"


def _endpoint_lines(eps: dict) -> list[str]:
    if not eps:
        return []
    lines = ["", "Endpoints (paper Table 3 recipe; recipe dest: [train] with the config's [train.dest]):", "",
             "| endpoint | recipe | train loss | train acc | test loss | test acc | wall_s |",
             "|---|---|---|---|---|---|---|"]
    for k, e in sorted(eps.items()):
        m = e.get("metrics", {})
        tr, te = m.get("train", {}), m.get("test", {})
        lines.append(f"| {k} | {e.get('recipe', 'start')} | {_fmt(tr.get('loss'))} | {_fmt(tr.get('accuracy'))} | "
                     f"{_fmt(te.get('loss'))} | {_fmt(te.get('accuracy'))} | {_fmt(e.get('wall_s'))} |")
    return lines


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
