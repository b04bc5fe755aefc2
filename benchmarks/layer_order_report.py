"""The layer-order experiment's tables (docs/results.md) from its run directories.

    PYTHONPATH=src python benchmarks/layer_order_report.py RUNS/pair0/one-phase RUNS/pair0/six-phases \
        RUNS/pair0/line ... [--labels "one phase" "six phases" "straight line"] [--figure FILE.png]

For each M2M run: its gradient steps (all, and per phase), the largest
training-set loss at its evaluated points and the phase it was in, the
largest recorded batch loss and its phase, the training loss and test
accuracy at the start, their extremes along the path and at the end, the
largest final/initial distance over layers, whether every layer reached its
variance-sphere floor, and the verdicts. For each straight line (``llpf
line``): its largest training loss, the barrier above the endpoints' linear
interpolation, and the lowest test accuracy. Prints markdown. ``--figure``
draws every run's training-set loss and test accuracy against the fraction of
its way (iterations over the path's planned ones, t along a line). A run
not finished (stopped, or still running) is reported up to the iteration it
reached. ``--labels`` names the runs in the tables and the legend (default:
their paths). Each run's files are read once.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from llpf.analysis.barriers import line_summary
from llpf.config import load_config
from llpf.plots import new_figure, save_figure
from llpf.store import RunDir, gradient_steps


def column(rows: list[dict], key: str) -> list[tuple[dict, float]]:
    return [(r, r[key]) for r in rows if r.get(key) is not None]


def steps_per_phase(rows: list[dict]) -> list[int]:
    phases = int(max(r["phase"] for r in rows))
    return [int(sum(r.get("rounds") or 0 for r in rows if r["phase"] == p)) for p in range(1, phases + 1)]


@dataclass
class Run:
    path: Path
    label: str
    kind: str
    status: str
    rows: list[dict]
    summary: dict

    @classmethod
    def load(cls, path: Path, label: str) -> "Run":
        rd = RunDir(path)
        info = rd.info()
        status = info.get("status", "complete")
        return cls(path, label, info.get("kind", ""), status, rd.metrics(),
                   rd.summary() if status == "complete" else {})

    @property
    def planned(self) -> int:
        """Iterations the path was set to run (its config); a line's last point."""
        if self.kind == "line":
            return int(max(r["iteration"] for r in self.rows)) or 1
        return load_config(self.path / "config.toml").m2m.total_iterations


def m2m_row(run: Run) -> str:
    rows, s = run.rows, run.summary
    reached = max(r["iteration"] for r in rows)
    name = run.label if run.status == "complete" else (
        f"{run.label} ({run.status} at iteration {reached:.0f} of {run.planned:,})")
    train, test = column(rows, "train_loss"), column(rows, "test_accuracy")
    top, top_loss = max(train, key=lambda p: p[1])
    batch, batch_loss = max(column(rows, "batch_loss"), key=lambda p: p[1])
    per_phase = steps_per_phase(rows)
    return (f"| {name} | {gradient_steps(run.path):,} ({' + '.join(f'{n:,}' for n in per_phase)}) | "
            f"{top_loss:.4f} (iteration {top['iteration']:.0f}, phase {top['phase']:.0f}) | "
            f"{batch_loss:.4f} (phase {batch['phase']:.0f}) | {train[0][1]:.4f} / {train[-1][1]:.4f} | "
            f"{test[0][1]:.4f} / {min(v for _, v in test):.4f} / {test[-1][1]:.4f} | "
            f"{s.get('final_relative_distance_max', float('nan')):.3f}, floor reached: {s.get('floor_reached')} | "
            f"{s.get('valid')} / {s.get('valid_relative')} / {s.get('valid_paper')} |")


def line_row(run: Run) -> str:
    rows, last = run.rows, run.planned
    line = line_summary([{**r, "t": r["iteration"] / last} for r in rows if r.get("train_loss") is not None])
    test = [v for _, v in column(rows, "test_accuracy")]
    return (f"| {run.label} | {run.summary['points']} points | {line['max_train_loss']:.4f} at t = {line['t_at_max']:.2f} | "
            f"barrier {line['barrier']:.4f} over ends {line['start_train_loss']:.4f} / {line['end_train_loss']:.4f} | "
            f"lowest test accuracy {min(test):.4f} |")


def figure(runs: list[Run], out: Path) -> None:
    fig = new_figure(figsize=(11, 4.2))
    loss_ax, acc_ax = fig.subplots(1, 2)
    for run in runs:
        last, style = run.planned, "--" if run.kind == "line" else "-"
        for ax, key in ((loss_ax, "train_loss"), (acc_ax, "test_accuracy")):
            pts = column(run.rows, key)
            ax.plot([r["iteration"] / last for r, _ in pts], [v for _, v in pts], style, marker=".", label=run.label)
    loss_ax.set(xlabel="fraction of the way (iterations / planned; t on a line)", ylabel="training-set loss",
                yscale="log", title="training loss at evaluated points")
    acc_ax.set(xlabel="fraction of the way", ylabel="test accuracy", title="test accuracy")
    loss_ax.legend(fontsize=7)
    save_figure(fig, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--labels", nargs="+", default=None, help="one name per run, in the runs' order")
    ap.add_argument("--figure", default=None)
    args = ap.parse_args()
    labels = args.labels or args.runs
    if len(labels) != len(args.runs):
        ap.error(f"--labels: {len(labels)} names for {len(args.runs)} runs")
    runs = [Run.load(Path(p), label) for p, label in zip(args.runs, labels)]
    m2m = [r for r in runs if r.kind == "m2m"]
    lines = [r for r in runs if r.kind == "line"]
    if m2m:
        print("| run | gradient steps (per phase) | max training loss at evaluated points | max batch loss | "
              "training loss start / end | test accuracy start / lowest / end | max final/initial distance | "
              "valid / valid_relative / valid_paper |")
        print("|---|---|---|---|---|---|---|---|")
        for p in m2m:
            print(m2m_row(p))
    if lines:
        print("\n| straight line | evaluated | max training loss | barrier | test |")
        print("|---|---|---|---|---|")
        for p in lines:
            print(line_row(p))
    if args.figure:
        figure(m2m + lines, Path(args.figure))
        print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
