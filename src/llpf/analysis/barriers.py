"""Loss on straight lines: between any two models, and along the segments of a saved path.

A straight line between two minima usually crosses a loss barrier (paper §2;
the design notes measure 1.46 on digits where the M2M path stays below 0.05).
The saved points of a path are low-loss points, but a chain of points is a
path only if the pieces between them are low-loss too: ``path_segments``
evaluates the training loss on a grid along every straight segment between
consecutive saved points, and the largest value certifies the whole polygonal
path (at the grid's resolution), not only its points.

Models with BatchNorm get their running statistics recomputed at every
interpolated point (one pass over training batches in train mode with
``momentum=None``, i.e. the exact average, without gradients): interpolated
weights with interpolated statistics are not a model anyone trained, and
their loss says more about the stale statistics than about the weights.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import Bundle, Split, prepare_data
from ..errors import ConfigError, RunDirError
from ..files import load_weights, write_json
from ..flat import interpolate_state
from ..progress import progress_bar
from ..runtime import pick_device
from ..store import RunDir
from ..train import DEFAULT_METRICS, LossFn, MetricFn, evaluate_state, has_batchnorm


def _as_splits(data) -> dict[str, Split]:
    if isinstance(data, Bundle):
        out = {"train": data.train, "test": data.test}
        if data.validation is not None:
            out["validation"] = data.validation
        return out
    if isinstance(data, Split):
        return {"": data}
    return dict(data)


def _bn_split(splits: Mapping[str, Split], bn_data: Split | None) -> Split:
    if bn_data is not None:
        return bn_data
    return splits.get("train", splits.get("", next(iter(splits.values()))))


def straight_line(model_a: nn.Module, model_b: nn.Module, data_split, points: int = 21,
                  loss_fn: LossFn = F.cross_entropy, recompute_bn: bool | None = None,
                  metrics: Mapping[str, MetricFn] | None = None, batch_size: int = 1024, device=None,
                  bn_data: Split | None = None) -> list[dict]:
    """Loss and metrics at ``points`` evenly spaced points of the segment from ``model_a`` to ``model_b``.

    ``data_split`` is a Split (keys ``loss``, ``accuracy``), a Bundle or a
    mapping of name to Split (keys ``train_loss``, ``test_accuracy``, ...).
    ``recompute_bn`` defaults to whether the model has BatchNorm; statistics are
    recomputed on ``bn_data`` (default: the ``train`` split, else the only one).
    Each row also holds ``t`` in [0, 1].
    """
    if points < 2:
        raise ConfigError(f"a straight line needs at least 2 points (its two ends), got {points}")
    ev = PointEvaluator(model_a, data_split, loss_fn, recompute_bn, metrics, batch_size, device, bn_data)
    sa, sb = ev.state(model_a), ev.state(model_b)
    return [{"t": i / (points - 1), **ev.at(interpolate_state(sa, sb, i / (points - 1)))} for i in range(points)]


class PointEvaluator:
    """``at(state)``: loss and metrics of ``model``'s architecture at any state on every split, as on a line.

    ``data_split`` is read as :func:`straight_line` reads it; ``train_samples``
    (> 0) keeps a fixed random subset of the training split (the ``train``
    split, else the only one), which then also serves for the BatchNorm
    statistics unless ``bn_data`` is given; ``test_samples`` likewise of the
    ``test`` split. ``recompute`` says whether the statistics are recomputed at
    every point (``recompute_bn`` None: when the model has BatchNorm).
    """

    def __init__(self, model: nn.Module, data_split, loss_fn: LossFn = F.cross_entropy, recompute_bn: bool | None = None,
                 metrics: Mapping[str, MetricFn] | None = None, batch_size: int = 1024, device=None,
                 bn_data: Split | None = None, train_samples: int = 0, test_samples: int = 0):
        self.device = pick_device(device) if device is not None else next(model.parameters()).device
        self.splits = {k: v.to(self.device) for k, v in _as_splits(data_split).items()}
        name = "train" if "train" in self.splits else next(iter(self.splits))
        self.splits[name] = self.splits[name].subset(train_samples, seed=0)
        if "test" in self.splits:
            self.splits["test"] = self.splits["test"].subset(test_samples, seed=0)
        self.bn = _bn_split(self.splits, bn_data.to(self.device) if bn_data is not None else None)
        self.recompute = has_batchnorm(model) if recompute_bn is None else recompute_bn
        self.loss_fn, self.batch_size = loss_fn, batch_size
        self.metrics = DEFAULT_METRICS if metrics is None else metrics
        self.work = copy.deepcopy(model).to(self.device)

    def state(self, model: nn.Module) -> dict[str, Tensor]:
        """``model``'s state dict, detached, on the evaluation device."""
        return {k: v.detach().to(self.device) for k, v in model.state_dict().items()}

    def at(self, state: Mapping[str, Tensor]) -> dict[str, float]:
        return evaluate_state(self.work, state, self.splits, self.loss_fn, self.metrics, self.batch_size,
                              self.recompute, self.bn)

    @property
    def batchnorm(self) -> str:
        """How BatchNorm statistics are handled, in words."""
        if not has_batchnorm(self.work):
            return "the model has no BatchNorm"
        return ("BatchNorm statistics recomputed on the training samples at every point" if self.recompute
                else "raw BatchNorm statistics (interpolated, never recomputed)")


def line_summary(rows: list[dict], key: str = "train_loss") -> dict[str, float]:
    """The highest ``key`` on a line, where it is, and the barrier above the endpoints' linear interpolation."""
    vals = [(r["t"], r[key]) for r in rows if r.get(key) is not None]
    t_max, v_max = max(vals, key=lambda p: p[1])
    (t0, v0), (t1, v1) = vals[0], vals[-1]
    barrier = max(v - (v0 + (v1 - v0) * (t - t0) / ((t1 - t0) or 1)) for t, v in vals)
    return {f"max_{key}": v_max, "t_at_max": t_max, "barrier": barrier, f"start_{key}": v0, f"end_{key}": v1}


# ---------------------------------------------------------------- the segments of a path


def segment_rows(states: Sequence[tuple[Any, Callable[[], Mapping[str, Tensor]]]], at: Callable[[dict], dict],
                 points_per_segment: int, device=None, progress: bool = False) -> list[dict[str, Any]]:
    """``at(state)`` along every straight segment between consecutive states of a polygonal path.

    ``states`` holds ``(label, load)`` pairs in path order, ``load()`` giving a
    state dict (read when needed, so a long path is never all in memory). Each
    segment is evaluated at its two ends and ``points_per_segment`` evenly
    spaced interior points; a shared end is evaluated once. One entry per
    segment: ``from`` and ``to`` (the labels), ``t`` (the fractions of the
    segment) and ``rows`` (what ``at`` returned at each).
    """
    k = points_per_segment
    ts = [j / (k + 1) for j in range(k + 2)]
    loaded = lambda load: {n: v.to(device) for n, v in load().items()}  # noqa: E731
    prev_label, prev_state = states[0][0], loaded(states[0][1])
    prev_row = at(prev_state)
    segments = []
    for label, load in progress_bar(states[1:], desc="segments", enabled=progress):
        state = loaded(load)
        end_row = at(state)
        rows = [prev_row] + [at(interpolate_state(prev_state, state, t)) for t in ts[1:-1]] + [end_row]
        segments.append({"from": prev_label, "to": label, "t": ts, "rows": rows})
        prev_label, prev_state, prev_row = label, state, end_row
    return segments


def check_points_per_segment(points_per_segment: int) -> None:
    """A segment certified by no point between its ends certifies nothing: at least one interior point."""
    if points_per_segment < 1:
        raise ConfigError(f"points per segment must be at least 1, got {points_per_segment}")


def path_segments(run_dir: str | Path, data=None, points_per_segment: int = 5, recompute_bn: bool | None = None,
                  loss_fn: LossFn = F.cross_entropy, batch_size: int | None = None, device=None,
                  progress: bool = False) -> dict[str, Any]:
    """Training loss on the straight segments between consecutive saved points of a run.

    Each segment is evaluated at its two ends and ``points_per_segment``
    interior points (the ends are shared, so each saved point is evaluated
    once). ``data`` is a Bundle or Split whose training split is used (default:
    the run's own config's data). Returns the per-segment losses, the largest
    (``segment_max_train_loss``) and where it is.
    """
    from .runs import run_config

    check_points_per_segment(points_per_segment)
    rd = RunDir(run_dir)
    cfg = run_config(run_dir)
    pts = rd.points()
    if len(pts) < 2:
        raise RunDirError(f"{run_dir} has fewer than two saved points; nothing to connect")
    from ..models import build_model

    device = pick_device(device)
    if data is None:
        data = prepare_data(cfg, device)
    train = data.train if isinstance(data, Bundle) else data
    train = train.to(device)
    batch_size = batch_size or cfg.data.eval_batch_size
    model = build_model(cfg.model).to(device)
    recompute = has_batchnorm(model) if recompute_bn is None else recompute_bn
    splits = {"train": train}

    def at(state):
        return evaluate_state(model, state, splits, loss_fn, DEFAULT_METRICS, batch_size, recompute, train)

    states = [(it, lambda f=f: load_weights(f)) for it, f in pts]
    segments = []
    for seg in segment_rows(states, at, points_per_segment, device, progress):
        losses = [r["train_loss"] for r in seg["rows"]]
        j = max(range(len(losses)), key=losses.__getitem__)
        segments.append({"from": seg["from"], "to": seg["to"], "t": seg["t"], "train_loss": losses,
                         "train_accuracy": [r.get("train_accuracy") for r in seg["rows"]],
                         "max_train_loss": losses[j], "t_at_max": seg["t"][j]})
    pc = getattr(cfg, rd.info().get("kind", "m2m"), None)
    return segments_verdict(segments, points_per_segment, recompute, pc.loss_threshold if pc is not None else None)


def segments_verdict(segments: list[dict], points_per_segment: int, recompute_bn: bool,
                     threshold: float | None) -> dict[str, Any]:
    """The largest loss on the segments and where it is, against the largest at the saved points and L_thres."""
    worst = max(segments, key=lambda s: s["max_train_loss"])
    point_losses = [segments[0]["train_loss"][0]] + [s["train_loss"][-1] for s in segments]
    out = {
        "points_per_segment": points_per_segment,
        "recompute_bn": recompute_bn,
        "segments": segments,
        "segment_max_train_loss": worst["max_train_loss"],
        "segment_max_at": {"from": worst["from"], "to": worst["to"], "t": worst["t_at_max"]},
        "point_max_train_loss": max(point_losses),
        "loss_threshold": threshold,
    }
    if threshold is not None:
        out["continuous_below_threshold"] = bool(worst["max_train_loss"] <= threshold)
    return out


def segments_figure(result: dict, out: str | Path, title: str = "") -> Path:
    """Training loss along the polygonal path (segments densely), saved points marked."""
    from ..plots import new_figure, save_figure

    fig = new_figure(figsize=(7, 3.2))
    ax = fig.subplots()
    for s in result["segments"]:
        xs = [s["from"] + t * (s["to"] - s["from"]) for t in s["t"]]
        ax.plot(xs, s["train_loss"], "-", color="tab:blue", lw=1)
        ax.plot([xs[0], xs[-1]], [s["train_loss"][0], s["train_loss"][-1]], "o", color="k", ms=3)
    if result.get("loss_threshold"):
        ax.axhline(result["loss_threshold"], color="red", ls="--", lw=1, label="L_thres")
        ax.legend(fontsize=8)
    ax.set_xlabel("iteration (segments between saved points)")
    ax.set_ylabel("training-set loss")
    ax.set_title(title or f"max on segments {result['segment_max_train_loss']:.4f}, "
                 f"at saved points {result['point_max_train_loss']:.4f}", fontsize=9)
    return save_figure(fig, out)


def write_segments(run_dir: str | Path, result: dict) -> Path:
    """``RUN/segments.json``, ``RUN/figures/segments.png``, and ``segment_max_train_loss`` in the run's summary."""
    rd = RunDir(run_dir)
    write_json(rd.path / "segments.json", result)
    segments_figure(result, rd.path / "figures" / "segments.png")
    verdicts = {"segment_max_train_loss": result["segment_max_train_loss"]}
    if "continuous_below_threshold" in result:
        verdicts["segments_below_threshold"] = result["continuous_below_threshold"]
    rd.update_summary(verdicts)
    return rd.path / "segments.json"


# ---------------------------------------------------------------- figure for a straight line


def line_figure(rows: list[dict], out: str | Path, title: str = "") -> Path:
    """Loss (left axis, log) and accuracy (right axis) along a straight line, one curve per split."""
    from ..plots import new_figure, save_figure

    fig = new_figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax2 = ax.twinx()
    t = [r["t"] for r in rows]
    losses = [k for k in rows[0] if k.endswith("loss")]
    for k, c in zip(losses, ("tab:blue", "tab:red", "tab:green", "tab:purple")):
        ax.plot(t, [r[k] for r in rows], "o-", ms=3, color=c, label=k)
        acc = k[:-4] + "accuracy"
        if acc in rows[0]:
            ax2.plot(t, [r[acc] for r in rows], "s:", ms=2, color=c, alpha=0.6, label=acc)
    ax.set_yscale("log")
    ax.set_xlabel("t (0 = A, 1 = B)")
    ax.set_ylabel("loss (solid)")
    ax2.set_ylabel("accuracy (dotted)")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, out)


def write_barrier(rows: list[dict], out_dir: str | Path, inputs: dict | None = None, name: str = "barrier",
                  figure_dir: str | Path | None = None) -> dict[str, Path]:
    """``NAME.json`` (rows and summary) in ``out_dir`` and ``NAME.png`` in ``figure_dir`` (default ``out_dir``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = "train_loss" if "train_loss" in rows[0] else "loss"
    summary = line_summary(rows, key)
    data = {"inputs": inputs or {}, "points": len(rows), "summary": summary, "rows": rows}
    write_json(out_dir / f"{name}.json", data)
    title = f"straight line: max {key} {summary[f'max_{key}']:.4f} at t={summary['t_at_max']:.2f}"
    fig = Path(figure_dir or out_dir) / f"{name}.png"
    return {"json": out_dir / f"{name}.json", "figure": line_figure(rows, fig, title)}
