"""Layer-wise linear connectivity: which layers, alone or together, make the barrier on the straight line.

The paper's later version (arXiv 2505.02604) explains the barrier between two
independently trained modes by coupling between layers: the two models are
often linearly connected within the parameters of one layer, and the barrier
appears only when layers move together. Adilova et al. (ICLR 2024,
"Layer-wise linear mode connectivity") measure it: interpolate one layer (a
module's parameters together) with every other parameter held at one
endpoint, and read the loss at the midpoint against the endpoints' mean; grow
the interpolated set layer by layer from the input or the output side.

Terms. The parameters fall into groups g = 1..G (``layer_groups``: a module's
parameters together, a block of modules, or one tensor each), in the order the model lists them
(input to output for the shipped models). A *point* gives every group a
coefficient t_g; its state is ``a_g + t_g (b_g - a_g)`` group by group (ends
exact: t = 0 is A's tensor, t = 1 is B's). A *line* interpolates a set S of
groups, t_g = λ for g in S, over the grid λ = 0, 1/(n-1), ..., 1, with the rest
held at A (t = 0, ``rest_at_a``) or at B (t = 1, ``rest_at_b``):

- ``whole``: every group (the straight line of ``llpf barrier``);
- ``single``: one group, rest at A and at B;
- ``input`` / ``output``: the first (last) k groups, k = 1..G, rest at A and at B;
- ``pair``: two groups at λ = 1/2 only (what the coupling needs), rest at A and at B.

A point that several lines share (A, B, a cumulative set that is also a pair,
...) is evaluated once. What the numbers are is in :mod:`llpf.analysis.coupling`.
BatchNorm statistics are recomputed at every point by default, as for the
straight line (:class:`~llpf.analysis.barriers.PointEvaluator`); with them
raw, a module's buffers move with its group.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, RunDirError
from ..flat import check_same_architecture, interpolate_state
from ..progress import progress_bar
from ..train import LossFn, MetricFn
from .barriers import PointEvaluator
from .coupling import summarise

GROUPINGS = ("modules", "blocks", "tensors")
Key = tuple[int, ...]


def layer_groups(model: nn.Module, mode: str = "modules") -> dict[str, list[str]]:
    """Group name -> its state-dict keys, in state-dict order.

    ``modules``: a module's parameters together (Adilova et al.'s layer: weight
    and bias), named after the module. ``blocks``: everything under the same
    first two levels of the module tree (a ResNet's residual blocks,
    ``layer1.0``; a flat model's modules). ``tensors``: one parameter tensor
    each. A buffer (BatchNorm running statistics) goes with its module's
    (first) group; a module with buffers and no parameters is a group of its own.
    """
    if mode not in GROUPINGS:
        raise ConfigError(f"groups must be one of {', '.join(GROUPINGS)}, got {mode!r}")
    params = {n for n, _ in model.named_parameters()}
    groups: dict[str, list[str]] = {}
    first: dict[str, str] = {}
    for key in model.state_dict():
        owner = key.rpartition(".")[0]
        if mode == "blocks":
            owner = ".".join(owner.split(".")[:2])
        if key in params:
            name = key if mode == "tensors" or not owner else owner
            first.setdefault(owner, name)
        else:
            name = first.get(owner, owner or key)
        groups.setdefault(name, []).append(key)
    return groups


@dataclass(frozen=True)
class Line:
    """Groups ``members`` interpolated together over grid ``steps``, the rest held at ``base`` ("a", "b"; "": none)."""

    kind: str
    name: str
    members: tuple[int, ...]
    base: str
    steps: tuple[int, ...]

    def key(self, step: int, groups: int, last: int) -> Key:
        rest = last if self.base == "b" else 0
        return tuple(step if g in self.members else rest for g in range(groups))


def plan_lines(names: Sequence[str], points: int, full: bool = True) -> list[Line]:
    """The lines of one analysis: whole and single always; with ``full`` the cumulative sets and the pairs."""
    G, grid, mid = len(names), tuple(range(points)), (points - 1) // 2
    lines = [Line("whole", "all", tuple(range(G)), "", grid)]
    for base in ("a", "b"):
        lines += [Line("single", names[g], (g,), base, grid) for g in range(G)]
        if not full:
            continue
        for k in range(1, G + 1):
            lines.append(Line("input", _span_name(names[:k]), tuple(range(k)), base, grid))
        for k in range(1, G + 1):
            lines.append(Line("output", _span_name(names[G - k:]), tuple(range(G - k, G)), base, grid))
        lines += [Line("pair", f"{names[i]}+{names[j]}", (i, j), base, (mid,))
                  for i in range(G) for j in range(i + 1, G)]
    return lines


def _span_name(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}"


@dataclass
class Span:
    """Two states and the lines drawn between them; ``ends`` name them so that a shared end is evaluated once."""

    label: str
    load_a: Callable[[], Mapping[str, Tensor]]
    load_b: Callable[[], Mapping[str, Tensor]]
    lines: list[Line]
    ends: tuple[object, object]

    def keys(self, groups: int, points: int) -> dict[Key, object]:
        """Every point the lines need, once each, mapped to its cache key (an end's key is its name)."""
        out: dict[Key, object] = {}
        for line in self.lines:
            for s in line.steps:
                k = line.key(s, groups, points - 1)
                out.setdefault(k, self.ends[0] if set(k) == {0} else self.ends[1] if set(k) == {points - 1}
                               else (self.label, k))
        return out


def blend(sa: Mapping[str, Tensor], sb: Mapping[str, Tensor], groups: Sequence[Sequence[str]],
          coefficients: Sequence[float]) -> dict[str, Tensor]:
    """The state with group g at ``(1 - t_g) a + t_g b`` (exactly A's or B's tensors at t = 0 or 1)."""
    out: dict[str, Tensor] = {}
    for keys, t in zip(groups, coefficients):
        out.update(interpolate_state({k: sa[k] for k in keys}, {k: sb[k] for k in keys}, t))
    return out


def evaluate_spans(spans: Sequence[Span], group_keys: Mapping[str, list[str]], points: int, at,
                   progress: bool = False) -> tuple[list[list[dict]], int]:
    """Evaluate every span's points, each shared point once, under one progress bar.

    Returns the rows of each span (one per line and λ: the CSV) and the
    number of evaluations made.
    """
    G, keys = len(group_keys), list(group_keys.values())
    lambdas = [j / (points - 1) for j in range(points)]
    plans = [s.keys(G, points) for s in spans]
    cache: dict[object, dict] = {}
    out = []
    total = len({c for p in plans for c in p.values()})
    with progress_bar(total=total, desc="layerwise points", enabled=progress) as bar:
        for span, plan in zip(spans, plans):
            sa, sb = span.load_a(), span.load_b()
            for k, c in plan.items():
                if c not in cache:
                    cache[c] = at(blend(sa, sb, keys, [lambdas[j] for j in k]))
                    bar.update()
            out.append([{"span": span.label, "kind": line.kind, "set": line.name, "base": line.base,
                         "lambda": lambdas[s], **cache[plan[line.key(s, G, points - 1)]]}
                        for line in span.lines for s in line.steps])
    return out, len(cache)


def check_settings(groups: str, points: int, train_samples: int, test_samples: int, carrier_fraction: float) -> None:
    """Every setting checked before any evaluation: one ConfigError line for the first bad one."""
    if groups not in GROUPINGS:
        raise ConfigError(f"groups must be one of {', '.join(GROUPINGS)}, got {groups!r}")
    if points < 3 or points % 2 == 0:
        raise ConfigError(f"points must be odd and at least 3, so that the grid holds λ = 0.5; got {points}")
    if train_samples < 0 or test_samples < 0:
        raise ConfigError(f"train and test samples must be 0 (all) or positive, got {train_samples}, {test_samples}")
    if not 0 < carrier_fraction <= 1:
        raise ConfigError(f"carrier fraction must be in (0, 1], got {carrier_fraction}")


def layerwise(model_a: nn.Module, model_b: nn.Module, data, *, groups: str = "modules", points: int = 11,
              train_samples: int = 0, test_samples: int = 0, recompute_bn: bool | None = None,
              loss_fn: LossFn = F.cross_entropy, metrics: Mapping[str, MetricFn] | None = None, batch_size: int = 1024,
              device=None, progress: bool = False, carrier_fraction: float = 0.25) -> dict:
    """Layer-wise linear connectivity between ``model_a`` and ``model_b`` (see the module docstring).

    ``data`` is read as :func:`~llpf.analysis.barriers.straight_line` reads it
    (a Split, a Bundle, or name -> Split); ``train_samples`` (``test_samples``)
    > 0 evaluates on that many fixed random training (test) samples. Returns the
    numbers of :func:`llpf.analysis.coupling.summarise` (``whole_model_barrier``,
    ``single``, ``cumulative``, ``coupling``, ``carriers`` ...), ``settings``,
    and ``rows`` (one per line and λ, the CSV). The models are not modified.
    """
    check_settings(groups, points, train_samples, test_samples, carrier_fraction)
    check_same_architecture(model_a, model_b, ("A", "B"))
    ev = PointEvaluator(model_a, data, loss_fn, recompute_bn, metrics, batch_size, device,
                        train_samples=train_samples, test_samples=test_samples)
    group_keys = layer_groups(model_a, groups)
    sa, sb = ev.state(model_a), ev.state(model_b)
    span = Span("a-b", lambda: sa, lambda: sb, plan_lines(list(group_keys), points), ("a", "b"))
    (rows,), evaluations = evaluate_spans([span], group_keys, points, ev.at, progress)
    result = summarise(rows, list(group_keys), carrier_fraction)
    result["settings"] = _settings(ev, groups, points, group_keys, evaluations)
    result["rows"] = rows
    return result


def _settings(ev: PointEvaluator, groups: str, points: int, group_keys, evaluations: int) -> dict:
    return {"groups": groups, "points": points, "group_tensors": group_keys, "evaluations": evaluations,
            "recompute_bn": ev.recompute, "batchnorm": ev.batchnorm,
            **{f"{k or 'data'}_samples": len(v) for k, v in ev.splits.items()}}


PATH_KINDS = ("m2m", "m2o")


def path_layerwise(run: str | Path, data=None, *, groups: str = "modules", points: int = 11, train_samples: int = 0,
                   test_samples: int = 0, recompute_bn: bool | None = None, batch_size: int | None = None,
                   device=None, progress: bool = False, carrier_fraction: float = 0.25) -> dict:
    """:func:`layerwise` between a path's first and last saved points, and on every segment between consecutive ones.

    A segment gets the whole-model and single-group lines (its ``single``
    barriers say whether the path's neighbouring points are layer-wise
    connected); the first-to-last span gets the full analysis, whose numbers
    are the result's top-level keys. ``data`` defaults to the run's config's
    (a Bundle); the loss is cross-entropy, as the paths are trained.
    """
    from ..data import prepare_data
    from ..runner import load_model
    from ..runtime import pick_device
    from ..store import RunDir
    from .coupling import segment_summary
    from .runs import run_config, run_kind

    check_settings(groups, points, train_samples, test_samples, carrier_fraction)
    cfg, kind, pts = run_config(run), run_kind(run), RunDir(run).points()
    if kind not in PATH_KINDS:
        raise RunDirError(f"{run} is a {kind} run; layerwise RUN reads the saved points of an M2M or M2O path")
    if len(pts) < 2:
        raise RunDirError(f"{run} has fewer than two saved points; nothing to interpolate")
    device = pick_device(device)
    data = data if data is not None else prepare_data(cfg, device)
    ev = PointEvaluator(load_model(cfg, pts[0][1], "saved point"), data, F.cross_entropy, recompute_bn, None,
                        batch_size or cfg.data.eval_batch_size, device, train_samples=train_samples,
                        test_samples=test_samples)
    group_keys = layer_groups(ev.work, groups)
    names = list(group_keys)
    load = lambda f: lambda: ev.state(load_model(cfg, f, "saved point"))  # noqa: E731
    (i0, f0), (i1, f1) = pts[0], pts[-1]
    spans = [Span(f"{i0}-{i1}", load(f0), load(f1), plan_lines(names, points), (i0, i1))]
    spans += [Span(f"{ia}-{ib}", load(fa), load(fb), plan_lines(names, points, full=False), (ia, ib))
              for (ia, fa), (ib, fb) in zip(pts, pts[1:])]
    done, evaluations = evaluate_spans(spans, group_keys, points, ev.at, progress)
    result = summarise(done[0], names, carrier_fraction)
    result["segments"] = [{"from": ia, "to": ib, **segment_summary(rows, names)}
                          for ((ia, _), (ib, _)), rows in zip(zip(pts, pts[1:]), done[1:])]
    result["run"] = {"path": str(run), "kind": kind, "points": [i for i, _ in pts]}
    result["settings"] = _settings(ev, groups, points, group_keys, evaluations)
    result["rows"] = [r for rows in done for r in rows]
    return result
