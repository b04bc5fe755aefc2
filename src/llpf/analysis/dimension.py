"""The dimensionality of the low-loss space around one model (paper §5, "no redundant parameters").

From a trained model P, take N one-iteration low-loss moves: each is one
Train_r from P (plain SGD, ``rounds`` steps of batch ``batch_size``, a larger
batch and more rounds than a path uses, as the paper asks) drawing from its
own batch stream. Stack the displacement vectors per layer into an N x n_l
matrix and take its singular values. The paper reports that the rank always
equals min(N, n_l).

Precision. Each displacement is accumulated as the sum of ``-lr * grad`` over
its steps in float64, never as the difference of two float32 weight vectors
(which would keep only ~3 significant digits of a 1e-4 move on 0.1 weights).
The gradients themselves are computed in ``dtype``, float64 by default: on a
LeNet5 digits endpoint the smallest genuine singular values sit near 1e-9 of
the largest, below the ~1e-7 at which float32 rounding puts a structural zero
(measured, docs/results.md), so only float64 gradients separate the two. Every
entry carries a relative error of about eps(dtype);
the rank is therefore counted at the tolerance ``max(N, n_l) * eps(dtype) *
s_max`` (the rule of ``numpy.linalg.matrix_rank`` with the precision of the
computation), and also at ``sqrt(N + n_l + 1) / 2 * eps(dtype) * s_max`` (the
rule for independent rounding errors, less conservative for wide layers), at
the float64 and float32 versions of numpy's rule and at fixed relative
tolerances, beside two tolerance-free effective
dimensions: the participation ratio ``(sum s^2)^2 / sum s^4`` and the entropy
effective rank ``exp(H(s / sum s))`` (Roy and Vetterli, 2007). The moves
share their mean (the full-batch descent direction), which dominates the raw
spectrum; the participation ratio of the centred moves is reported as well.

Structure. Units that never activate on the training set freeze their
incoming weights and bias (see ``llpf.analysis.units``), and softmax
cross-entropy keeps the last bias to C-1 directions. Each layer's structural
bound ``min(N, free_l)`` is reported, and singular values beyond it are marked
as structural zeros.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import BatchStream, Split
from ..errors import ConfigError
from ..evaluation import eval_batch_for
from ..files import write_json
from ..schedule import select
from ..flat import FlatParams
from ..progress import progress_bar
from ..runtime import pick_device
from ..train import LossFn, TrainR, evaluate
from .units import LayerStructure, find_dead_units, structure

EPS64 = torch.finfo(torch.float64).eps
EPS32 = torch.finfo(torch.float32).eps
RELATIVE_TOLERANCES = (1e-6, 1e-4, 1e-3, 1e-2)
DTYPES = {"float32": torch.float32, "float64": torch.float64}
PLOT_FLOOR = 1e-18


@dataclass
class MoveSettings:
    """How the one-iteration moves are taken."""

    moves: int = 200
    rounds: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    dtype: str = "float64"  # precision of forward and backward; displacements always sum in float64
    seed: int = 0
    layers: list[str] = field(default_factory=lambda: ["*"])
    max_bytes: int = 4 << 30  # refuse displacement matrices larger than this (select fewer --layers)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for key in ("moves", "rounds", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")


# ---------------------------------------------------------------- the moves


def low_loss_moves(model: nn.Module, train: Split, settings: MoveSettings, loss_fn: LossFn = F.cross_entropy,
                   device=None, progress: bool = False) -> tuple[dict[str, Tensor], list[float]]:
    """N one-iteration moves from ``model``: per selected layer an N x n_l float64 displacement matrix.

    Move i is one Train_r of ``settings.rounds`` SGD steps from the model,
    drawing batches from its own stream (seed ``settings.seed + i``). Returns
    the matrices (on the CPU) and each move's last batch loss.
    """
    device = pick_device(device) if device is not None else next(model.parameters()).device
    dtype = DTYPES[settings.dtype]
    work = copy.deepcopy(model).to(device=device, dtype=dtype)
    fp = FlatParams(work)
    names = select(settings.layers, fp.layout.names)
    need = settings.moves * sum(n for name, n in zip(fp.layout.names, fp.layout.numels) if name in names) * 8
    if need > settings.max_bytes:
        raise ConfigError(f"the displacement matrices would take {need / 2**30:.1f} GiB for {settings.moves} moves; "
                          f"select fewer layers (layers = [...]) or fewer moves")
    start = fp.flat.clone()
    buffers = {k: b.clone() for k, b in work.named_buffers()}
    split = Split(train.x.to(device=device, dtype=dtype), train.y.to(device))
    spans = {n: (o, o + k) for n, o, k in zip(fp.layout.names, fp.layout.offsets, fp.layout.numels)}
    out = {n: torch.empty(settings.moves, spans[n][1] - spans[n][0], dtype=torch.float64) for n in names}
    disp = torch.zeros(fp.flat.numel(), dtype=torch.float64, device=device)
    losses = []
    for i in progress_bar(range(settings.moves), desc="moves", enabled=progress):
        with torch.no_grad():
            fp.flat.copy_(start)
            for k, b in work.named_buffers():
                b.copy_(buffers[k])
            disp.zero_()
        stream = BatchStream(split, settings.batch_size, seed=settings.seed + i)
        train_r = TrainR(fp, stream, loss_fn, settings.lr, device=device)
        work.train()
        for _ in range(settings.rounds):
            loss = train_r.step(settings.lr)  # P <- P - lr * grad, in dtype
            disp.add_(fp.grad.to(torch.float64), alpha=-settings.lr)  # the same update, summed in float64
        losses.append(loss)
        host = disp.cpu()
        for n in names:
            a, b = spans[n]
            out[n][i] = host[a:b]
    return out, torch.stack(losses).tolist()


# ---------------------------------------------------------------- spectra


def singular_values(matrix: Tensor) -> Tensor:
    """All min(N, n) singular values, descending, in float64."""
    return torch.linalg.svdvals(matrix.to(torch.float64))


def rank_at(s: Tensor, tolerance: float) -> int:
    """Number of singular values above ``tolerance`` (an absolute value)."""
    return int((s > tolerance).sum())


def participation_ratio(s: Tensor) -> float:
    """``(sum s^2)^2 / sum s^4``: the number of equally strong directions with the same spread."""
    e = s.double() ** 2
    return float(e.sum() ** 2 / (e * e).sum()) if e.sum() > 0 else 0.0


def entropy_rank(s: Tensor) -> float:
    """``exp(H(p))`` with ``p = s / sum s`` (Roy and Vetterli's effective rank)."""
    s = s.double()
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def tolerances(shape: tuple[int, int], s_max: float, dtype: str) -> dict[str, dict[str, Any]]:
    """The tolerances a rank is counted at, by name: relative value (to s_max) and absolute value.

    ``compute``: ``max(N, n) * eps(dtype)``, numpy's matrix_rank rule at the
    precision of the gradients (conservative for wide matrices: it grows with
    n); ``compute-sqrt``: ``sqrt(N + n + 1) / 2 * eps(dtype)``, the rule for
    independent rounding errors (Numerical Recipes, cited by numpy);
    ``float64 rule`` and ``float32 rule``: numpy's rule at each precision;
    ``relative X``: a fixed fraction X of s_max.
    """
    m = max(shape)
    eps = EPS64 if dtype == "float64" else EPS32
    rel = {"compute": m * eps, "compute-sqrt": 0.5 * math.sqrt(sum(shape) + 1) * eps,
           "float64 rule": m * EPS64, "float32 rule": m * EPS32}
    rel.update({f"relative {t:g}": t for t in RELATIVE_TOLERANCES})
    return {k: {"relative": v, "absolute": v * s_max} for k, v in rel.items()}


def layer_spectrum(name: str, matrix: Tensor, ls: LayerStructure | None, dtype: str) -> dict[str, Any]:
    """Everything reported about one layer's displacement matrix."""
    n_moves, n = matrix.shape
    s = singular_values(matrix)
    s_max = float(s[0]) if len(s) else 0.0
    full = min(n_moves, n)
    tols = tolerances((n_moves, n), s_max, dtype)
    ranks = {k: rank_at(s, t["absolute"]) for k, t in tols.items()}
    observed_zero = int((matrix == 0).all(0).sum())
    bound = min(n_moves, ls.free) if ls is not None else full
    rec: dict[str, Any] = {
        "numel": n,
        "moves": n_moves,
        "full_rank": full,
        "singular_values": s.tolist(),
        "relative_singular_values": (s / s_max).tolist() if s_max > 0 else [0.0] * len(s),
        "tolerances": tols,
        "rank": ranks,
        "participation_ratio": participation_ratio(s),
        "entropy_rank": entropy_rank(s),
        # the same after removing the mean move (the common descent direction dominates the raw moves)
        "participation_ratio_centred": participation_ratio(singular_values(matrix - matrix.mean(0))),
        "full_dimensionality": {k: r == full for k, r in ranks.items()},
        "zero_gradient_params_observed": observed_zero,
        "structural_bound": bound,
        "structural_zero_indices": list(range(bound, full)),
        "rank_equals_structural_bound": {k: r == bound for k, r in ranks.items()},
    }
    if ls is not None:
        rec.update(zero_gradient_params_predicted=int(ls.zero.sum()), dead_units=ls.dead_units,
                   dead_inputs=ls.dead_inputs, softmax_constraint=ls.softmax_constraint, structure=ls.reasons)
    if bound < full:
        rec["structural_zero_relative"] = [float(x / s_max) for x in s[bound:]] if s_max > 0 else []
    return rec


# ---------------------------------------------------------------- the analysis


def analyse_dimension(model: nn.Module, train: Split, settings: MoveSettings | None = None,
                      loss_fn: LossFn = F.cross_entropy, softmax_output: bool | None = None, device=None,
                      progress: bool = False, eval_batch_size: int = 0) -> dict[str, Any]:
    """The dimension analysis of the low-loss space around ``model``, as JSON-ready data.

    ``softmax_output`` (default: whether ``loss_fn`` is ``F.cross_entropy``)
    says the last layer sees the softmax constraint; ``eval_batch_size`` 0 is
    measured for the model on the device.
    """
    settings = settings or MoveSettings()
    if softmax_output is None:
        softmax_output = loss_fn is F.cross_entropy
    device = pick_device(device) if device is not None else next(model.parameters()).device
    model = copy.deepcopy(model).to(device)
    split = train.to(device)
    eval_batch_size = eval_batch_size or eval_batch_for(model, split)
    units = find_dead_units(model, split.batches(eval_batch_size), device)
    struct = structure(model, units, softmax_output)
    start = evaluate(model, split.batches(eval_batch_size), loss_fn, device=device)
    mats, losses = low_loss_moves(model, split, settings, loss_fn, device, progress)
    layers = {name: layer_spectrum(name, m, struct.get(name), settings.dtype) for name, m in mats.items()}
    for name, m in mats.items():
        layers[name]["mean_move_norm"] = float(m.norm(dim=1).mean())
    deficits = {}
    for name, rec in layers.items():
        if name.endswith("bias") and rec["full_rank"] == rec["numel"]:
            dead = len(rec.get("dead_units", []))
            softmax = bool(rec.get("softmax_constraint"))
            measured = {t: rec["numel"] - r for t, r in rec["rank"].items()}
            deficits[name] = {"structural_deficit": dead + softmax, "dead_units": dead, "softmax": softmax,
                              "rank_deficit": measured,
                              "explained_at": [t for t, d in measured.items() if d == dead + softmax]}
    tol_names = list(next(iter(layers.values()))["rank"]) if layers else []
    verdict = {t: {"full": [n for n, r in layers.items() if r["full_dimensionality"][t]],
                   "not_full": [n for n, r in layers.items() if not r["full_dimensionality"][t]],
                   "at_structural_bound": [n for n, r in layers.items() if r["rank_equals_structural_bound"][t]]}
               for t in tol_names}
    return {
        "settings": asdict(settings),
        "precision": (f"displacements summed in float64 from {settings.dtype} gradients; rank tolerance "
                      f"'compute' = max(N, n) * eps({settings.dtype}) * s_max, 'compute-sqrt' = "
                      f"sqrt(N + n + 1) / 2 * eps({settings.dtype}) * s_max"),
        "start_train": start,
        "move_last_batch_loss": {"mean": sum(losses) / len(losses), "max": max(losses)},
        "dead_units": units.names(),
        "rarely_active_units": units.rarely_active(0.01),  # alive on <= 1% of the training samples
        "dead_inputs": {k: len(v) for k, v in units.dead_inputs.items()},
        "unattributed_activations": units.unattributed,
        "output_module": units.output_module,
        "softmax_output": softmax_output,
        "layers": layers,
        "bias_rank_deficits": deficits,
        "verdict": verdict,
    }


# ---------------------------------------------------------------- figure and files


def dimension_figure(result: dict, out: str | Path) -> Path:
    """Singular-value spectrum per layer (log scale), tolerances and structural zeros marked."""
    from ..plots import new_figure, save_figure

    layers = result["layers"]
    n = len(layers)
    cols = min(5, n)
    rows = math.ceil(n / cols)
    fig = new_figure(figsize=(3.2 * cols, 2.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (name, rec) in zip(axes.flat, layers.items()):
        rel = torch.tensor(rec["relative_singular_values"], dtype=torch.float64)
        floor = PLOT_FLOOR  # exact zeros are drawn here, below float64 rounding
        idx = torch.arange(1, len(rel) + 1)
        b = rec["structural_bound"]
        ax.semilogy(idx[:b], rel[:b].clamp_min(floor), ".", ms=3, color="tab:blue")
        if b < len(rel):
            ax.semilogy(idx[b:], rel[b:].clamp_min(floor), "x", ms=5, color="tab:red", label="structural zero")
        for key, style in (("compute", "--"), ("compute-sqrt", ":")):
            ax.axhline(rec["tolerances"][key]["relative"], color="gray", ls=style, lw=0.8)
        ax.set_ylim(PLOT_FLOOR / 3, 3)
        r = rec["rank"]["compute"]
        ax.set_title(f"{name}\nrank {r}/{rec['full_rank']}  PR {rec['participation_ratio']:.1f}", fontsize=8)
        ax.tick_params(labelsize=7)
        if b < len(rel):
            ax.legend(fontsize=6, loc="lower left")
    s = result["settings"]
    fig.suptitle(f"singular values / s_max of {s['moves']} one-iteration moves ({s['rounds']} x batch "
                 f"{s['batch_size']}, {s['dtype']}); tolerances: dashed max(N,n)*eps, dotted sqrt(N+n+1)/2*eps", fontsize=9)
    return save_figure(fig, out)


def write_dimension(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """``dimension.json`` and ``spectrum.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    j = out_dir / "dimension.json"
    write_json(j, result)
    return {"json": j, "figure": dimension_figure(result, out_dir / "spectrum.png")}


def format_dimension(result: dict) -> str:
    """A short text table: one line per layer."""
    lines = [f"{'layer':16s} {'n':>7s} {'rank':>5s} {'bound':>5s} {'min(N,n)':>8s} {'PR':>7s} {'eff.rank':>8s}  structure"]
    for name, r in result["layers"].items():
        lines.append(f"{name:16s} {r['numel']:7d} {r['rank']['compute']:5d} {r['structural_bound']:5d} "
                     f"{r['full_rank']:8d} {r['participation_ratio']:7.1f} {r['entropy_rank']:8.1f}  "
                     f"{'; '.join(r.get('structure', [])) or '-'}")
    return "\n".join(lines)
