"""Alignment before paths: the straight line's barrier, LLPF's highest training loss and its gradient steps,
without and with permutation alignment of the destination (docs/results.md).

    PYTHONPATH=src python benchmarks/alignment.py CONFIG --endpoints DIR --pairs 0 1 2 3 4 --out OUT \\
        [--train-samples N] [--points 41]

Pair k runs from ``DIR/seed{2k}.safetensors`` to ``DIR/seed{2k+1}.safetensors``.
For each pair it runs ``llpf compare CONFIG --methods llpf`` twice on the same
endpoints, into ``OUT/pair-k/plain`` and ``OUT/pair-k/aligned`` (the second
with ``--align``), so both paths are evaluated the same way (at least
``--points`` points, training loss on ``--train-samples`` fixed samples, 0:
all). The aligned comparison records the straight line from the start to the
destination before and after alignment (11 points, whole training set).
CONFIG's ``[m2m]`` should train each iteration until the batch loss is below a
bound (``until_loss``), so that the gradient steps are what differs. Running
the same command again continues what is unfinished; pairs may be split across
processes (``--pairs 0 2 4`` in one, ``--pairs 1 3`` in another, then all of
them once more to write the table). ``OUT/alignment.md`` and
``OUT/alignment.json`` hold the table of every pair given.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from llpf.comparison import compare
from llpf.files import write_json

COLUMNS = [("line max loss", "line_max_before", "line_max_after"),
           ("line barrier", "barrier_before", "barrier_after"),
           ("LLPF max training loss", "llpf_max_plain", "llpf_max_aligned"),
           ("LLPF gradient steps", "steps_plain", "steps_aligned")]


def run_pair(config: str, ends: Path, k: int, out: Path, points: int, train_samples: int) -> dict:
    """Pair k without and with alignment; its row of the table."""
    a, b = ends / f"seed{2 * k}.safetensors", ends / f"seed{2 * k + 1}.safetensors"
    results, walls = {}, {}
    for kind in ("plain", "aligned"):
        t0 = time.perf_counter()
        results[kind] = compare(config, out / f"pair-{k}" / kind, start=a, dest=b, methods="llpf", points=points,
                                train_samples=train_samples, device="cpu", align=kind == "aligned",
                                log=lambda line: print(f"pair {k} {kind}: {line}", flush=True))
        walls[kind] = time.perf_counter() - t0
    plain, aligned = (results[kind]["methods"][0] for kind in ("plain", "aligned"))
    record = results["aligned"]["alignment"][0]
    line = record["straight_line"]
    return {"pair": k, "seeds": [2 * k, 2 * k + 1],
            "line_max_before": line["before"]["max_train_loss"], "line_max_after": line["after"]["max_train_loss"],
            "barrier_before": line["before"]["barrier"], "barrier_after": line["after"]["barrier"],
            "llpf_max_plain": plain["max_train_loss"], "llpf_max_aligned": aligned["max_train_loss"],
            "steps_plain": int(plain["gradient_steps"]), "steps_aligned": int(aligned["gradient_steps"]),
            "groups_reordered": f"{record['groups_reordered']}/{record['groups']}",
            "test_accuracy_dest": record["test_accuracy"]["dest"],
            "test_accuracy_aligned": record["test_accuracy"]["aligned"],
            "max_output_difference": record["max_output_difference"], "wall_s_this_session": walls}


def table(rows: list[dict]) -> str:
    """The markdown table: one row per pair (without -> with alignment), then mean ± std over the pairs."""
    head = "| pair (seeds) | " + " | ".join(f"{name}: without -> with" for name, *_ in COLUMNS) + \
        " | B's test accuracy (aligned B's) |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    fmt = lambda v: f"{v:,}" if isinstance(v, int) else f"{v:.4f}"  # noqa: E731
    for r in rows:
        cells = [f"{fmt(r[x])} -> {fmt(r[y])}" for _, x, y in COLUMNS]
        lines.append(f"| {r['pair']} ({r['seeds'][0]}, {r['seeds'][1]}) | " + " | ".join(cells) +
                     f" | {r['test_accuracy_dest']:.4f} ({r['test_accuracy_aligned']:.4f}) |")
    if len(rows) > 1:
        def stat(key):
            vals = [r[key] for r in rows]
            return f"{statistics.mean(vals):.4g} ± {statistics.stdev(vals):.2g}"
        lines.append("| mean ± std | " + " | ".join(f"{stat(x)} -> {stat(y)}" for _, x, y in COLUMNS) + " | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--endpoints", required=True, help="folder of seedS.safetensors")
    ap.add_argument("--pairs", type=int, nargs="+", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--points", type=int, default=41)
    ap.add_argument("--train-samples", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    rows = [run_pair(args.config, Path(args.endpoints), k, out, args.points, args.train_samples) for k in args.pairs]
    write_json(out / "alignment.json", {"config": args.config, "endpoints": args.endpoints, "rows": rows})
    (out / "alignment.md").write_text(table(rows))
    print(table(rows), end="")


if __name__ == "__main__":
    main()
