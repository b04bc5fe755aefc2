"""Every path evaluated the same way: loss and accuracy at dense points along it, by position along its length.

A path is read from its run directory: the path its method built
(``path.json``: AutoNEB's pivots, a polygonal chain, a Bezier curve's control
points, the straight line's two ends), or else its saved points followed by
the destination. For M2M that closing segment matters: its last point lies on
the start's variance spheres near the destination, not on the destination,
and a path from A to B must reach B.

A polygon is evaluated at every knot and at interior points of every straight
segment between consecutive knots (:func:`llpf.analysis.barriers.segment_rows`),
at least ``points_per_segment`` per segment and at least ``points`` along the
whole path; a Bezier curve at ``points`` evenly spaced ``t``. Positions are the
fraction of the path's Euclidean length in trainable-parameter space travelled
(for the curve by its arc length). The mean loss along a path is weighted by
length (the trapezoid rule over position), so a region crowded with knots does
not count more.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from torch import Tensor

from ..analysis.barriers import segment_rows
from ..baselines.bezier import curve_point
from ..files import load_weights
from ..store import RunDir

At = Callable[[dict], dict]


def read_path(run: str | Path) -> tuple[str, list[tuple[int, Callable[[], dict]]]]:
    """``(curve, knots)`` of a finished run: ``knots`` are ``(index, load)`` in path order (see the module docstring)."""
    rd = RunDir(run)
    built = rd.knots()
    if built is not None:
        curve, files = built
    else:
        curve, files = "polygon", [f for _, f in rd.points()]
        if (rd.path / "dest.safetensors").is_file():
            files.append(rd.path / "dest.safetensors")
    return curve, [(i, lambda f=f: load_weights(f)) for i, f in enumerate(files)]


def distance(a: Mapping[str, Tensor], b: Mapping[str, Tensor], names) -> float:
    """Euclidean distance between two states over the parameters ``names`` (float64)."""
    return math.sqrt(sum(float((a[n].double() - b[n].double()).pow(2).sum()) for n in names))


def polygon_profile(knots, at: At, names, points: int, points_per_segment: int, device=None,
                    progress: bool = False) -> tuple[list[dict], float]:
    """Rows along a polygon (knots and segment interiors) with their positions, and its length."""
    segments = max(1, len(knots) - 1)
    k = max(points_per_segment, math.ceil((points - 1) / segments) - 1)
    segs = segment_rows(knots, at, k, device, progress)
    lengths = []
    prev = knots[0][1]()
    for _, load in knots[1:]:
        cur = load()
        lengths.append(distance(prev, cur, names))
        prev = cur
    total = sum(lengths)
    rows, done = [], 0.0
    for s, (seg, length) in enumerate(zip(segs, lengths)):
        for j, (t, row) in enumerate(zip(seg["t"], seg["rows"])):
            if s > 0 and j == 0:
                continue  # the previous segment's end
            knot = j in (0, len(seg["t"]) - 1)
            rows.append({"position": (done + t * length) / total if total else (s + t) / len(segs),
                         "knot": knot, **row})
        done += length
    return rows, total


def bezier_state(a: Mapping[str, Tensor], bend: Mapping[str, Tensor], b: Mapping[str, Tensor],
                 t: float) -> dict[str, Tensor]:
    """The quadratic Bezier curve through every floating tensor of three states at ``t``; integers from ``a``."""
    return {n: curve_point("bezier", v, bend[n], b[n], t) if v.is_floating_point() else v for n, v in a.items()}


def bezier_profile(knots, at: At, names, points: int, device=None) -> tuple[list[dict], float]:
    """Rows at ``points`` evenly spaced ``t`` of the curve with control points ``knots``, and its arc length.

    The speed ``|phi'(t)| = 2 |u + t w|`` (``u = bend - a``, ``w = a - 2 bend + b``) is
    integrated on a fine grid for the positions.
    """
    a, bend, b = ({n: v.to(device) for n, v in load().items()} for _, load in knots)
    u = {n: bend[n].double() - a[n].double() for n in names}
    w = {n: a[n].double() - 2 * bend[n].double() + b[n].double() for n in names}
    uu, uw, ww = (sum(float((x[n] * y[n]).sum()) for n in names) for x, y in ((u, u), (u, w), (w, w)))
    fine = np.linspace(0.0, 1.0, 4001)
    speed = 2 * np.sqrt(np.maximum(uu + 2 * fine * uw + fine ** 2 * ww, 0.0))
    arc = np.concatenate([[0.0], np.cumsum((speed[1:] + speed[:-1]) / 2 * np.diff(fine))])
    total = float(arc[-1])
    rows = []
    for i in range(points):
        t = i / (points - 1)
        rows.append({"position": float(np.interp(t, fine, arc)) / total if total else t, "knot": i in (0, points - 1),
                     "t": t, **at(bezier_state(a, bend, b, t))})
    return rows, total


def stats(rows: list[dict], length: float) -> dict:
    """The comparison's numbers for one profile (the mean training loss weighted by length)."""
    pos = np.array([r["position"] for r in rows])
    train = np.array([r["train_loss"] for r in rows])
    top = int(np.argmax(train))
    out = {"max_train_loss": float(train.max()), "max_train_loss_position": float(pos[top]),
           "mean_train_loss": float(np.sum((train[1:] + train[:-1]) / 2 * np.diff(pos))) if len(rows) > 1
           else float(train[0]), "path_length": length}
    if "test_loss" in rows[0]:
        out["max_test_loss"] = max(r["test_loss"] for r in rows)
    if "test_accuracy" in rows[0]:
        out["min_test_accuracy"] = min(r["test_accuracy"] for r in rows)
        out["max_test_accuracy"] = max(r["test_accuracy"] for r in rows)
    return out


def profile_run(run: str | Path, at: At, names, points: int, points_per_segment: int, device=None,
                progress: bool = False) -> dict:
    """The dense evaluation of a finished run's path: ``curve``, ``rows`` (by position) and ``stats``."""
    curve, knots = read_path(run)
    if curve == "bezier":
        rows, length = bezier_profile(knots, at, names, points, device)
    else:
        rows, length = polygon_profile(knots, at, names, points, points_per_segment, device, progress)
    return {"curve": curve, "knots": len(knots), "points": len(rows), "rows": rows, "stats": stats(rows, length)}
