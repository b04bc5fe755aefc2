"""The numbers of a layer-wise analysis (:mod:`llpf.analysis.layerwise`): barriers, coupling, carriers.

L is the training loss (``measure``; ``loss`` when the data has one split),
L(A) and L(B) the endpoints', L_S(λ) the loss on the line that interpolates
the group set S with the rest held at the base (A or B).

- ``mid`` (Adilova et al., ICLR 2024, the layer-wise barrier):
  ``M_S = L_S(1/2) - (L(A) + L(B)) / 2``. ``single``, ``cumulative``,
  ``pairs`` and ``whole_model_barrier`` (S = every group) are this number.
- ``max`` (the barrier of ``llpf barrier``, on the line's own ends):
  ``max_λ L_S(λ) - ((1 - λ) L_S(0) + λ L_S(1))``, 0 when the loss along the
  line is convex (a single layer of a linear network, for one).
- ``coupling`` of groups i and j (their second-order interaction at the midpoint):
  ``C_ij = M_ij - M_i - M_j + M_0 = L_ij(1/2) - L_i(1/2) - L_j(1/2) + L(base)``,
  with M_0 the empty set's (the base itself). It is zero when the loss is a
  sum of per-group terms, whatever each term's own barrier; the pair's
  barrier minus the larger single barrier is not (two independent bumps add).
- ``decomposition``: ``L_all(1/2) - L(base) = Σ_i (L_i(1/2) - L(base)) + Σ_{i<j} C_ij + higher order``,
  the inclusion-exclusion expansion of the whole model's rise over its groups.
- ``carriers``: the groups whose single barrier, and the pairs whose coupling
  (the larger over the two bases), reach ``fraction`` of the whole-model
  barrier; ``appears_at``: per side and base, the group whose addition first
  brings the cumulative barrier to half the whole-model barrier.
"""
from __future__ import annotations

from typing import Sequence

from .barriers import line_summary

BASES = ("a", "b")

DEFINITIONS = {
    "mid": "L_S(1/2) - (L(A) + L(B)) / 2 (Adilova et al. 2024)",
    "max": "max over the grid of L_S(λ) - ((1 - λ) L_S(0) + λ L_S(1)), the line's own ends",
    "coupling": "L_ij(1/2) - L_i(1/2) - L_j(1/2) + L(base) = M_ij - M_i - M_j + M_0",
    "decomposition": "L_all(1/2) - L(base) = singles + pairs + higher_order",
}


def measure(row: dict) -> str:
    return "train_loss" if "train_loss" in row else "loss"


def by_line(rows: Sequence[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """Rows grouped by line (kind, set, base), in the order they were planned."""
    out: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        out.setdefault((r["kind"], r["set"], r["base"]), []).append(r)
    return out


class Reading:
    """The loss at the points of the lines of one span, read as the module docstring's numbers."""

    def __init__(self, rows: Sequence[dict]):
        self.key = measure(rows[0])
        self.lines = by_line(rows)
        whole = self.lines[("whole", "all", "")]
        self.ends = {"a": whole[0][self.key], "b": whole[-1][self.key]}
        self.mean = (self.ends["a"] + self.ends["b"]) / 2

    def at_mid(self, kind: str, name: str, base: str) -> float:
        return next(r[self.key] for r in self.lines[(kind, name, base)] if r["lambda"] == 0.5)

    def mid(self, kind: str, name: str, base: str) -> float:
        return self.at_mid(kind, name, base) - self.mean

    def max(self, kind: str, name: str, base: str) -> dict:
        s = line_summary([{"t": r["lambda"], self.key: r[self.key]} for r in self.lines[(kind, name, base)]], self.key)
        return {"max": s["barrier"], "t_at_max": s["t_at_max"]}

    def per_base(self, kind: str, name: str, what: str = "mid") -> dict[str, float]:
        return {f"rest_at_{b}": getattr(self, what)(kind, name, b) for b in BASES}

    def named(self, kind: str, base: str) -> list[str]:
        return [n for (k, n, b) in self.lines if k == kind and b == base]


def basic(reading: Reading, names: Sequence[str]) -> dict:
    """Whole-model and single-group numbers (what every span has)."""
    whole_max = reading.max("whole", "all", "")
    return {
        "measure": reading.key,
        "endpoints": {"a": reading.lines[("whole", "all", "")][0], "b": reading.lines[("whole", "all", "")][-1]},
        "whole_model_barrier": reading.mid("whole", "all", ""),
        "whole_model": {"mid": reading.mid("whole", "all", ""), **whole_max},
        "single": {n: reading.per_base("single", n) for n in names},
        "single_max": {n: {f"rest_at_{b}": reading.max("single", n, b)["max"] for b in BASES} for n in names},
    }


def cumulative(reading: Reading, names: Sequence[str]) -> dict:
    """From each side, k = 1..G groups interpolated together: the group added, and the barriers (mid and max)."""
    G = len(names)
    out = {}
    for side, kind in (("from_input", "input"), ("from_output", "output")):
        sets = reading.named(kind, "a")
        out[side] = [{"k": k + 1, "set": s, "added": names[k] if kind == "input" else names[G - 1 - k],
                      **reading.per_base(kind, s),
                      "max": {f"rest_at_{b}": reading.max(kind, s, b)["max"] for b in BASES}}
                     for k, s in enumerate(sets)]
    return out


def pair_tables(reading: Reading, names: Sequence[str]) -> tuple[dict, dict, dict]:
    """Per base: the pair barriers M_ij (diagonal: M_i), the coupling C_ij (diagonal 0) and the decomposition."""
    G = len(names)
    pairs, coupling, decomposition = {}, {}, {}
    for b in BASES:
        base = reading.ends[b]
        single = [reading.at_mid("single", n, b) for n in names]
        m = [[single[i] - reading.mean if i == j else None for j in range(G)] for i in range(G)]
        c = [[0.0] * G for _ in range(G)]
        for s, (i, j) in zip(reading.named("pair", b), ((i, j) for i in range(G) for j in range(i + 1, G))):
            both = reading.at_mid("pair", s, b)
            m[i][j] = m[j][i] = both - reading.mean
            c[i][j] = c[j][i] = both - single[i] - single[j] + base
        rise = reading.at_mid("whole", "all", "") - base
        singles = sum(x - base for x in single)
        paired = sum(c[i][j] for i in range(G) for j in range(i + 1, G))
        pairs[f"rest_at_{b}"], coupling[f"rest_at_{b}"] = m, c
        decomposition[f"rest_at_{b}"] = {"rise": rise, "singles": singles, "pairs": paired,
                                         "higher_order": rise - singles - paired}
    return pairs, coupling, decomposition


def carriers(result: dict, names: Sequence[str], fraction: float) -> dict:
    """The groups and pairs that carry the whole-model barrier, and where the cumulative barrier appears."""
    whole = result["whole_model_barrier"]
    out = {"fraction": fraction, "groups": [], "pairs": [], "appears_at": {}}
    if whole <= 0:
        return out
    out["groups"] = [n for n in names if max(result["single"][n].values()) >= fraction * whole]
    G = len(names)
    strength = {(i, j): max(result["coupling"][f"rest_at_{b}"][i][j] for b in BASES)
                for i in range(G) for j in range(i + 1, G)}
    out["pairs"] = [[names[i], names[j]] for (i, j), v in sorted(strength.items(), key=lambda kv: -kv[1])
                    if v >= fraction * whole]
    for side, steps in result["cumulative"].items():
        out["appears_at"][side] = {
            f"rest_at_{b}": next((s["added"] for s in steps if s[f"rest_at_{b}"] >= whole / 2), None) for b in BASES}
    return out


def summarise(rows: Sequence[dict], names: Sequence[str], fraction: float = 0.25) -> dict:
    """Every number of the module docstring from the rows of one span planned in full."""
    reading = Reading(rows)
    out = {"groups": list(names), **basic(reading, names), "cumulative": cumulative(reading, names)}
    out["pairs"], out["coupling"], out["decomposition"] = pair_tables(reading, names)
    out["carriers"] = carriers(out, names, fraction)
    out["definitions"] = DEFINITIONS
    return out



def segment_summary(rows: Sequence[dict], names: Sequence[str]) -> dict:
    """A span planned with whole and single lines only: their numbers and the largest single-group barrier."""
    out = basic(Reading(rows), names)
    group, base = max(((n, b) for n in names for b in out["single"][n]), key=lambda nb: out["single"][nb[0]][nb[1]])
    out["largest_single"] = {"group": group, "base": base, "value": out["single"][group][base]}
    return out
