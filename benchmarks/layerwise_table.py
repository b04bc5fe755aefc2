"""Several ``llpf layerwise`` outputs (one per model pair) as the Markdown tables of docs/results.md.

Reads each folder's ``layerwise.json`` and prints, per pair, the whole-model
barrier, the largest single-group barrier (either base), the inclusion-exclusion
decomposition of the midpoint's rise (singles, pairs, higher order; the mean
over the two bases), where half the barrier appears from either side, and the
largest couplings; then each group's single barriers, mean ± std over the pairs.
A measurement summary, not a timing.

    python benchmarks/layerwise_table.py /work/results/layerwise/digits-pair{0,1,2,3,4}
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def pair_row(d: Path, r: dict) -> str:
    largest = max((v, n, b[-1].upper()) for n, s in r["single"].items() for b, v in s.items())
    dec = {k: statistics.mean(x[k] for x in r["decomposition"].values()) for k in ("rise", "singles", "pairs",
                                                                                  "higher_order")}
    appears = "; ".join(f"{side.split('_')[1]}: +{'/'.join(sorted(set(filter(None, at.values())))) or '-'}"
                        for side, at in r["carriers"]["appears_at"].items())
    G = len(r["groups"])
    top = sorted(((max(c[i][j] for c in r["coupling"].values()), r["groups"][i], r["groups"][j])
                  for i in range(G) for j in range(i + 1, G)), reverse=True)[:2]
    couplings = ", ".join(f"{a}+{b} {v:.2f}" for v, a, b in top)
    return (f"| {d.name} | {r['whole_model_barrier']:.3f} | {largest[0]:.3f} ({largest[1]}, rest at {largest[2]}) | "
            f"{dec['rise']:.3f} = {dec['singles']:.3f} + {dec['pairs']:.3f} + {dec['higher_order']:.3f} | "
            f"{appears} | {couplings} |")


def main(folders: list[str]) -> None:
    results = [(Path(f), json.loads((Path(f) / "layerwise.json").read_text())) for f in folders]
    print("| pair | whole-model barrier | largest single-group barrier | rise at λ=½ = singles + pairs + higher "
          "order (mean of bases) | half the barrier appears on adding | largest couplings |")
    print("|---|---|---|---|---|---|")
    for d, r in results:
        print(pair_row(d, r))
    whole = [r["whole_model_barrier"] for _, r in results]
    print(f"\nwhole-model barrier over {len(results)} pair(s): {mean_std(whole)}\n")
    names = results[0][1]["groups"]
    print("| group | rest at A | rest at B | largest coupling with |")
    print("|---|---|---|---|")
    for i, n in enumerate(names):
        cells = [mean_std([r["single"][n][b] for _, r in results]) for b in ("rest_at_a", "rest_at_b")]
        partner = max(range(len(names)), key=lambda j: -1e9 if j == i else statistics.mean(
            max(c[i][j] for c in r["coupling"].values()) for _, r in results))
        strength = statistics.mean(max(c[i][partner] for c in r["coupling"].values()) for _, r in results)
        print(f"| {n} | {cells[0]} | {cells[1]} | {names[partner]} ({strength:.3f}) |")


if __name__ == "__main__":
    main(sys.argv[1:])
