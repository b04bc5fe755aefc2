"""Layer-variance consistency across independently trained models (paper Appendix A.1, Figure 6).

M2M keeps its point on the start model's variance spheres and can come no
closer to the destination than the distance between the two spheres,
``sqrt(n_l) * |std(start_l) - std(dest_l)|`` per layer. The method therefore
presumes (paper Eq. 4) that models trained the same way sit on nearby
spheres. ``variance_table`` measures each layer's population variance in many
models, ``check_variance_pair`` names the layers where a start and a
destination disagree, and ``variance_figure`` draws Figure 6 with the spread
of every layer.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..files import write_json
from ..geometry import Layout, Segments, distance_floor
from ..schedule import normalisation_parameters

Weights = nn.Module | Mapping[str, Tensor]


def _params(model: Weights, names: Sequence[str] | None = None) -> dict[str, Tensor]:
    if isinstance(model, nn.Module):
        state = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    else:
        state = dict(model)
    if names is not None:
        state = {n: state[n] for n in names if n in state}
    return state


def layer_variances(model: Weights, names: Sequence[str] | None = None) -> dict[str, float]:
    """Population variance (divide by n) of every parameter tensor, Var(W) of the paper."""
    return {n: float(t.double().var(unbiased=False)) if t.numel() > 1 else 0.0 for n, t in _params(model, names).items()}


def relative_difference(start: float, dest: float) -> float:
    """``|Var(dest) / Var(start) - 1|``, relative to the start sphere the path stays on (inf if only start is 0)."""
    if start == 0:
        return 0.0 if dest == 0 else math.inf
    return abs(dest / start - 1.0)


def check_tolerance(tolerance: float) -> None:
    if not tolerance >= 0 or math.isinf(tolerance):
        raise ConfigError(f"the variance tolerance is a relative difference, a number >= 0; got {tolerance}")


def check_variance_pair(start_model: Weights, dest_model: Weights, tolerance: float = 0.25,
                        names: Sequence[str] | None = None) -> list[dict]:
    """The layers whose variances differ between start and destination by more than ``tolerance`` (relative).

    Each entry holds the layer, both variances, the relative difference
    ``|v_dest / v_start - 1|`` and the variance-sphere distance floor
    ``sqrt(n) * |std_start - std_dest|`` the M2M path cannot get below. Empty
    when the pair satisfies the paper's premise (Eq. 4) at this tolerance.
    """
    check_tolerance(tolerance)
    a, b = _params(start_model, names), _params(dest_model, names)
    out = []
    for n, ta in a.items():
        if n not in b or ta.numel() < 2:
            continue
        va, vb = float(ta.double().var(unbiased=False)), float(b[n].double().var(unbiased=False))
        rel = relative_difference(va, vb)
        if rel > tolerance:
            out.append({"layer": n, "start_variance": va, "dest_variance": vb, "relative_difference": rel,
                        "distance_floor": layer_distance_floor(ta, b[n])})
    return out


def layer_distance_floor(start: Tensor, dest: Tensor) -> float:
    """``geometry.distance_floor`` of one layer given as two tensors of the same shape (in float64)."""
    seg = Segments(Layout(("layer",), (tuple(start.shape),)), device=start.device, dtype=torch.float64)
    return float(distance_floor(start.double().reshape(-1), dest.double().reshape(-1).to(start.device), seg)[0])


def variance_table(models: Sequence[Weights], names: Sequence[str] | None = None) -> dict[str, list[float]]:
    """``{layer: [variance in model 0, model 1, ...]}`` over models of one architecture."""
    rows = [layer_variances(m, names) for m in models]
    layers = list(rows[0])
    return {n: [r[n] for r in rows] for n in layers}


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, coefficient of variation and max/min ratio of one layer's variances."""
    t = torch.tensor(values, dtype=torch.float64)
    mean = float(t.mean())
    cv = float(t.std(unbiased=False) / t.mean()) if mean > 0 else 0.0
    lo, hi = float(t.min()), float(t.max())
    return {"mean": mean, "min": lo, "max": hi, "cv": cv, "max_over_min": hi / lo if lo > 0 else math.inf}


def analyse_variances(models: Sequence[nn.Module], labels: Sequence[str], include_norm: bool = False) -> dict:
    """Per-layer variances of ``models`` and their spread; normalisation layers left out unless asked (as Figure 6)."""
    names = [n for n, p in models[0].named_parameters() if p.requires_grad]
    if not include_norm:
        norm = normalisation_parameters(models[0])
        names = [n for n in names if n not in norm]
    table = variance_table(models, names)
    return {"models": list(labels), "variances": table, "spread": {n: spread(v) for n, v in table.items()},
            "normalisation_layers_included": include_norm}


def variance_figure(result: dict, out: str | Path) -> Path:
    """Figure 6: each layer's variance per model on a log scale, and each layer's spread."""
    from ..plots import new_figure, save_figure

    table = result["variances"]
    fig = new_figure(figsize=(12, 4.5))
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    for n, v in table.items():
        ax.plot(range(len(v)), v, marker="o", ms=3, lw=1, label=n)
    ax.set_yscale("log")
    ax.set_xlabel("model index")
    ax.set_ylabel("layer variance")
    if len(table) <= 24:
        ax.legend(fontsize=6, ncol=2)
    names = list(table)
    lo = [result["spread"][n]["min"] for n in names]
    hi = [result["spread"][n]["max"] for n in names]
    mean = [result["spread"][n]["mean"] for n in names]
    y = range(len(names))
    bx.hlines(y, [max(x, 1e-300) for x in lo], hi, color="tab:blue", lw=3, alpha=0.6)
    bx.plot(mean, y, "k|", ms=8)
    bx.set_xscale("log")
    bx.set_yticks(list(y), [f"{n} (cv {result['spread'][n]['cv']:.2f})" for n in names], fontsize=6)
    bx.invert_yaxis()
    bx.set_xlabel("variance: min..max over models, | mean")
    fig.suptitle(f"layer variances of {len(result['models'])} models", fontsize=9)
    return save_figure(fig, out)


def write_variance(result: dict, out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "variance.json", result)
    return {"json": out_dir / "variance.json", "figure": variance_figure(result, out_dir / "variance.png")}
