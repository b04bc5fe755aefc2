"""What ``llpf layerwise`` writes: ``layerwise.csv``, ``layerwise.json`` and the figures.

- ``layerwise.csv``: one row per span, line (kind, group set, base) and λ, with
  the training and test loss and accuracy there;
- ``layerwise.json``: the numbers of :mod:`llpf.analysis.coupling` (no rows);
- ``layerwise-single.png``: single-group barriers (rest at A, rest at B) as bars
  beside the whole-model barrier;
- ``layerwise-cumulative.png``: the barrier as groups are added from the input
  side and from the output side;
- ``layerwise-coupling.png``: the coupling matrices as heatmaps;
- ``layerwise-segments.png`` (a path): per segment between saved points, the
  whole segment's barrier beside its single-group barriers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import write_csv, write_json

HEAD = ("span", "kind", "set", "base", "lambda")
BASE_STYLE = {"rest_at_a": ("rest at A", "-"), "rest_at_b": ("rest at B", "--")}


def write_layerwise(result: dict, out: str | Path, inputs: dict | None = None) -> dict[str, Path]:
    """Write the CSV, the JSON and the figures of ``result`` into ``out`` (made if missing); their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    columns = list(HEAD) + [k for k in rows[0] if k not in HEAD]
    files = {"csv": write_csv(out / "layerwise.csv", rows, columns)}
    write_json(out / "layerwise.json", {"inputs": inputs or {}, **{k: v for k, v in result.items() if k != "rows"}})
    files["json"] = out / "layerwise.json"
    files["single"] = single_figure(result, out / "layerwise-single.png")
    files["cumulative"] = cumulative_figure(result, out / "layerwise-cumulative.png")
    files["coupling"] = coupling_figure(result, out / "layerwise-coupling.png")
    if result.get("segments"):
        files["segments"] = segments_figure(result, out / "layerwise-segments.png")
    return files


def _whole_line(ax, result: dict) -> None:
    ax.axhline(result["whole_model_barrier"], color="k", lw=1, ls=":",
               label=f"whole model {result['whole_model_barrier']:.3g}")
    ax.axhline(0, color="0.6", lw=0.5)


def single_figure(result: dict, out: Path) -> Path:
    """Each group's barrier interpolated alone (rest at A, rest at B) beside the whole model's."""
    from ..plots import new_figure, save_figure

    names = result["groups"]
    fig = new_figure(figsize=(max(5.0, 0.45 * len(names) + 2), 3.4))
    ax = fig.subplots()
    x = np.arange(len(names))
    for k, (base, color) in enumerate((("rest_at_a", "tab:blue"), ("rest_at_b", "tab:orange"))):
        ax.bar(x + (k - 0.5) * 0.4, [result["single"][n][base] for n in names], 0.4, color=color,
               label=BASE_STYLE[base][0])
    _whole_line(ax, result)
    ax.set_xticks(x, names, rotation=90 if len(names) > 6 else 0, fontsize=7)
    ax.set_ylabel(f"{result['measure']} at λ=½ − mean(A, B)")
    ax.set_title("one group interpolated, the rest held at an endpoint", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, out)


def cumulative_figure(result: dict, out: Path) -> Path:
    """The barrier with the first (last) k groups interpolated together, k = 1..G."""
    from ..plots import new_figure, save_figure

    fig = new_figure(figsize=(9, 3.4))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (side, color) in zip(axes, (("from_input", "tab:blue"), ("from_output", "tab:red"))):
        steps = result["cumulative"][side]
        for base, (label, ls) in BASE_STYLE.items():
            ax.plot([s["k"] for s in steps], [s[base] for s in steps], "o" + ls, ms=3, color=color, label=label)
        _whole_line(ax, result)
        ax.set_xticks([s["k"] for s in steps], [f"+{s['added']}" for s in steps],
                      rotation=90 if len(steps) > 6 else 0, fontsize=7)
        ax.set_title(f"groups added {side.replace('_', ' ')} side", fontsize=9)
        ax.legend(fontsize=7)
    axes[0].set_ylabel(f"{result['measure']} at λ=½ − mean(A, B)")
    return save_figure(fig, out)


def coupling_figure(result: dict, out: Path) -> Path:
    """C_ij = L_ij(½) − L_i(½) − L_j(½) + L(base) as heatmaps, rest at A and at B, one colour scale around 0."""
    from ..plots import new_figure, save_figure

    names = result["groups"]
    mats = {b: np.array(m, dtype=float) for b, m in result["coupling"].items()}
    v = max(1e-12, max(float(np.abs(m).max()) for m in mats.values()))
    size = max(3.5, 0.35 * len(names) + 2)
    fig = new_figure(figsize=(2 * size + 1, size))
    axes = fig.subplots(1, 2)
    for ax, (base, m) in zip(axes, mats.items()):
        im = ax.imshow(m, cmap="RdBu_r", vmin=-v, vmax=v)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(f"coupling, {BASE_STYLE[base][0]}", fontsize=9)
        if len(names) <= 10:
            for i in range(len(names)):
                for j in range(len(names)):
                    ax.text(j, i, f"{m[i, j]:.2g}", ha="center", va="center", fontsize=6,
                            color="w" if abs(m[i, j]) > 0.6 * v else "k")
    fig.colorbar(im, ax=axes, shrink=0.8, label="L_ij(½) − L_i(½) − L_j(½) + L(base)")
    return save_figure(fig, out)


def segments_figure(result: dict, out: Path) -> Path:
    """Per segment between saved points: the segment's whole-model barrier and each group's (larger over bases)."""
    from ..plots import new_figure, save_figure

    segs = result["segments"]
    fig = new_figure(figsize=(7, 3.4))
    ax = fig.subplots()
    x = [s["to"] for s in segs]
    for n in result["groups"]:
        ax.plot(x, [max(s["single"][n].values()) for s in segs], "-", lw=0.8, alpha=0.7, label=n)
    ax.plot(x, [s["whole_model_barrier"] for s in segs], "o-k", ms=3, lw=1.5, label="whole segment")
    ax.axhline(0, color="0.6", lw=0.5)
    ax.set_xlabel("iteration at the segment's end")
    ax.set_ylabel(f"{result['measure']} at λ=½ − mean(ends)")
    ax.set_title("segments between consecutive saved points", fontsize=9)
    ax.legend(fontsize=6, ncol=2 if len(result["groups"]) > 8 else 1)
    return save_figure(fig, out)
