"""Markdown tables of M2M runs that differ in their variance sphere (docs/results.md, two recipes).

For each run directory: its sphere setting, the largest training-set loss at its
evaluated points and the largest batch loss, the farthest layer's final distance
over its initial distance, whether every layer arrived (llpf's verdict) and the
test accuracy along the path. Then, per layer, each run's final distance beside
the floor the start's sphere leaves (paper Eq. 4, from the run's own copies of
its two endpoints), and the endpoints' layer-variance ratios.

    python benchmarks/spheres_table.py RUN [RUN ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

from llpf.analysis.variance import layer_distance_floor, layer_variances
from llpf.files import load_weights
from llpf.store import RunDir


def run_row(run: Path) -> str:
    rd = RunDir(run)
    s, rows = rd.summary(), rd.metrics()
    acc = [r["test_accuracy"] for r in rows if r.get("test_accuracy") is not None]
    sphere = "/".join(dict.fromkeys(s.get("sphere", {}).get("phases", ["start"])))
    return (f"| {run.name} | {sphere} | {s['max_train_loss']:.4f} | {s['max_batch_loss']:.4f} | "
            f"{s['final_relative_distance_max']:.4f} | {'yes' if s['floor_reached'] else 'no'} | "
            f"{min(acc):.4f} | {acc[-1]:.4f} |")


def layer_rows(runs: list[Path]) -> list[str]:
    start, dest = (load_weights(runs[0] / f"{end}.safetensors") for end in ("start", "dest"))
    vs, vd = layer_variances(start), layer_variances(dest)
    summaries = [RunDir(r).summary() for r in runs]
    out = []
    for name in summaries[0]["final_distance"]:
        floor = layer_distance_floor(start[name], dest[name])
        cells = " | ".join(f"{s['final_distance'][name]:.4g}" for s in summaries)
        out.append(f"| {name} | {vd[name] / vs[name]:.3f} | {summaries[0]['initial_distance'][name]:.4g} | "
                   f"{floor:.4g} | {cells} |")
    return out


def main(args: list[str]) -> None:
    runs = [Path(a) for a in args]
    print("| run | sphere | max training loss (evaluated) | max batch loss | max final/initial distance "
          "| every layer arrived | lowest test accuracy | final test accuracy |")
    print("|---|---|---|---|---|---|---|---|")
    for run in runs:
        print(run_row(run))
    print()
    print("| layer | Var(dest)/Var(start) | initial distance | start-sphere floor | "
          + " | ".join(f"final: {r.name}" for r in runs) + " |")
    print("|---|---|---|---|" + "---|" * len(runs))
    for row in layer_rows(runs):
        print(row)


if __name__ == "__main__":
    main(sys.argv[1:])
