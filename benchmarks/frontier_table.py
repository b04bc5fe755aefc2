"""Markdown tables of an ``llpf compare --budgets`` folder, for docs/results.md.

    python benchmarks/frontier_table.py DIR

prints, from DIR/frontier.csv and DIR/comparison_pairs.csv (written by the
command; nothing is recomputed): the frontier (per method and budget, the
gradient evaluations spent and the maximum training loss along the path, mean
± std and range over the pairs, beside LLPF's own evaluated maximum), and per
pair the maximum training loss of every method at every budget.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path


def read(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def num(v: str, fmt: str = ".3f") -> str:
    return "-" if v in ("", None) else format(float(v), fmt)


def frontier(rows: list[dict]) -> list[str]:
    out = ["| method | budget | gradient evaluations (min-max) | max training loss, mean ± std (min-max) | "
           "LLPF's own evaluated max | lowest test accuracy |", "|---|---|---|---|---|---|"]
    for r in rows:
        spent = f"{num(r['gradient_steps'], ',.0f')} ({num(r['gradient_steps_min'], ',.0f')}-" \
                f"{num(r['gradient_steps_max'], ',.0f')})"
        loss = f"**{num(r['max_train_loss'])} ± {num(r['max_train_loss_std'])}** " \
               f"({num(r['max_train_loss_min'])}-{num(r['max_train_loss_max'])})"
        budget = "-" if r["budget"] == "0" else f"{int(r['budget']):,}"
        out.append(f"| {r['method']} | {budget} | {spent} | {loss} | {num(r['walked_max_train_loss'])} | "
                   f"{num(r['min_test_accuracy'])} |")
    return out


def per_pair(rows: list[dict]) -> list[str]:
    done = [r for r in rows if r["status"] == "complete"]
    units = list(dict.fromkeys((r["method"], r["budget"]) for r in done))
    pairs = sorted({int(r["pair"]) for r in done})
    head = [f"{m} {b}" if b != "config" else m for m, b in units]
    out = ["| pair | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for k in pairs:
        cell = {(r["method"], r["budget"]): num(r["max_train_loss"]) for r in done if int(r["pair"]) == k}
        out.append(f"| {k} | " + " | ".join(cell.get(u, "-") for u in units) + " |")
    return out


def main(folder: str) -> None:
    d = Path(folder)
    print("\n".join(frontier(read(d / "frontier.csv"))))
    if (d / "comparison_pairs.csv").is_file():
        print()
        print("\n".join(per_pair(read(d / "comparison_pairs.csv"))))


if __name__ == "__main__":
    main(sys.argv[1])
