"""The geometry of the paper: variance spheres, Move, VarianceCorrection, distances.

Every function here is pure tensor arithmetic over a *flat* parameter vector
(all layers of a model laid end to end) and a :class:`Layout` that says where
each layer starts and ends. Per-layer reductions are one ``index_add_`` over the
whole vector, so the cost does not grow with the number of layers and nothing
is synchronised with the host: the path loop can call these every iteration.

A leading batch dimension is allowed everywhere (``flat`` of shape ``[B, D]``),
so many independent paths can share one call.

A *layer* is one named parameter tensor (paper Figure 6). ``Var`` is the
population variance (divide by n), as in Algorithm 1 line 21.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

STEP_RULES = ("sum", "max")


@dataclass(frozen=True)
class Layout:
    """Names, shapes and offsets of the layers inside a flat parameter vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(int(torch.Size(s).numel()) for s in self.shapes)

    @property
    def offsets(self) -> tuple[int, ...]:
        out, o = [], 0
        for n in self.numels:
            out.append(o)
            o += n
        return tuple(out)

    @property
    def size(self) -> int:
        return sum(self.numels)

    def __len__(self) -> int:
        return len(self.names)

    def segment_ids(self, device=None) -> Tensor:
        """For every element of the flat vector, the index of its layer."""
        counts = torch.tensor(self.numels, device=device)
        return torch.repeat_interleave(torch.arange(len(self.names), device=device), counts)

    def split(self, flat: Tensor) -> list[Tensor]:
        """Views of each layer of ``flat`` in its own shape."""
        lead = flat.shape[:-1]
        parts = torch.split(flat, list(self.numels), dim=-1)
        return [p.view(*lead, *s) for p, s in zip(parts, self.shapes)]

    def mask(self, selected: Sequence[str], device=None) -> Tensor:
        """Per-layer boolean mask of the layers named in ``selected``."""
        chosen = set(selected)
        return torch.tensor([n in chosen for n in self.names], dtype=torch.bool, device=device)


# ---------------------------------------------------------------- reductions


class Segments:
    """A Layout bound to a device: the per-element layer index and layer sizes.

    Built once per run; every reduction below takes one. On a GPU a per-layer
    sum is one ``index_add_`` over the whole vector (one kernel whatever the
    number of layers); on a CPU, where ``index_add_`` is a slow scalar loop,
    it is one vectorised sum per layer view.
    """

    def __init__(self, layout: Layout, device=None, dtype=torch.float32):
        self.layout = layout
        self.numels = list(layout.numels)
        self.ids = layout.segment_ids(device)
        self.n = torch.tensor(self.numels, device=device, dtype=dtype)
        self.per_view = self.ids.device.type == "cpu"

    def sum(self, x: Tensor) -> Tensor:
        """Per-layer sums of ``x`` (``[..., D]`` -> ``[..., L]``)."""
        if self.per_view:
            return torch.stack([p.sum(-1) for p in x.split(self.numels, -1)], -1)
        out = x.new_zeros(*x.shape[:-1], len(self.layout))
        return out.index_add_(x.dim() - 1, self.ids, x)

    def expand(self, per_layer: Tensor) -> Tensor:
        """Broadcast a per-layer value to every element of its layer."""
        return per_layer.index_select(per_layer.dim() - 1, self.ids)

    def scale_shift_(self, x: Tensor, scale: Tensor, shift: Tensor) -> None:
        """In place, per layer: ``x_l <- scale_l * x_l + shift_l``."""
        if self.per_view:
            for i, p in enumerate(x.split(self.numels, -1)):
                p.mul_(scale[..., i:i + 1]).add_(shift[..., i:i + 1])
        else:
            x.mul_(self.expand(scale)).add_(self.expand(shift))

    def add_scaled_(self, x: Tensor, y: Tensor, a: Tensor) -> None:
        """In place, per layer: ``x_l <- x_l + a_l * y_l``."""
        if self.per_view:
            for i, (p, q) in enumerate(zip(x.split(self.numels, -1), y.split(self.numels, -1))):
                p.addcmul_(q, a[..., i:i + 1])
        else:
            x.addcmul_(y, self.expand(a))

    def mean(self, x: Tensor) -> Tensor:
        return self.sum(x) / self.n

    def var_mean(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Population variance (Var(W) of Algorithm 1 line 21) and mean of every layer."""
        if self.per_view:
            views = x.split(self.numels, -1)
            means = [p.mean(-1, keepdim=True) for p in views]
            dev = torch.stack([torch.linalg.vector_norm(p - m, dim=-1) for p, m in zip(views, means)], -1)
            return dev * dev / self.n, torch.cat(means, -1)
        mean = self.mean(x)
        centred = x - self.expand(mean)
        return self.sum(centred * centred) / self.n, mean

    def variance(self, x: Tensor) -> Tensor:
        return self.var_mean(x)[0]

    def norm(self, x: Tensor) -> Tensor:
        """Per-layer L2 norm."""
        if self.per_view:
            return torch.stack([torch.linalg.vector_norm(p, dim=-1) for p in x.split(self.numels, -1)], -1)
        return self.sum(x * x).sqrt()


# ---------------------------------------------------------------- the operations


def move_(
    flat: Tensor,
    dest: Tensor | None,
    seg: Segments,
    step_a: float,
    step_f: float,
    moved: Tensor | None = None,
    rule: str = "sum",
) -> Tensor:
    """Move (Algorithm 1 line 5, Algorithm 2 line 6), in place.

    Per moved layer l: ``delta = D_l - P_l``, ``dist = ||delta||``, and
    ``P_l += min(step, dist) * delta / dist`` where ``step = step_a*dist + step_f``
    (rule "sum", the paper's) or ``max(step_a*dist, step_f)`` (rule "max", the
    authors' public code). The clamp at ``dist`` means a layer never overshoots
    its destination. ``dest=None`` moves toward the origin O. Returns the
    per-layer distance before the move.
    """
    if rule not in STEP_RULES:
        raise ValueError(f"step_rule must be one of {STEP_RULES}, got {rule!r}")
    delta = -flat if dest is None else dest - flat
    dist = seg.norm(delta)
    step = step_a * dist + step_f if rule == "sum" else torch.clamp(step_a * dist, min=step_f)
    frac = torch.where(dist > 0, torch.minimum(step, dist) / dist.clamp_min(torch.finfo(dist.dtype).tiny), 0.0)
    if moved is not None:
        frac = frac * moved
    seg.add_scaled_(flat, delta, frac)
    return dist


def variance_correction_(
    flat: Tensor, target: Tensor, seg: Segments, corrected: Tensor | None = None
) -> Tensor:
    """VarianceCorrection (Algorithm 1 lines 19-24), in place.

    ``W <- mean(W) + sqrt(v / Var(W)) * (W - mean(W))`` per layer, which puts W
    back on the variance sphere ``S_var=v`` and keeps its mean. Layers with fewer
    than two elements, zero or non-finite variance, or not in ``corrected``, are
    left as they are (no epsilon is added: it would silently switch the
    correction off for layers whose variance is tiny). Returns the per-layer
    scale applied (1 where skipped).
    """
    var, mean = seg.var_mean(flat)
    ok = (seg.n >= 2) & (var > 0) & torch.isfinite(var) & torch.isfinite(target) & (target >= 0)
    if corrected is not None:
        ok = ok & corrected
    scale = torch.where(ok, (target / torch.where(ok, var, 1.0)).sqrt(), 1.0)
    seg.scale_shift_(flat, scale, (1 - scale) * mean)  # W' = mean + scale * (W - mean)
    return scale


def angle_conformal_lr(lr_base: float, variance: Tensor, start_variance: Tensor, moved: Tensor | None = None) -> Tensor:
    """AngleConformal (Algorithm 2 lines 12-16): ``lr_l = lr_base * Var(N_l) / v_l``.

    Layers that are not moved (normalisation layers in M2O) keep ``lr_base``.
    """
    ratio = torch.where(start_variance > 0, variance / torch.where(start_variance > 0, start_variance, 1.0), 1.0)
    if moved is not None:
        ratio = torch.where(moved, ratio, 1.0)
    return lr_base * ratio


def layer_distances(a: Tensor, b: Tensor | None, seg: Segments) -> Tensor:
    """Layer-wise L2 distance ``||a_l - b_l||`` (to the origin when ``b`` is None)."""
    return seg.norm(a if b is None else a - b)


def sphere_variance(start_var: Tensor, dest_var: Tensor, fraction: float) -> Tensor:
    """The variance sphere a ``fraction`` of the way from the start's (0) to the destination's (1), per layer.

    The radius moves linearly: ``((1 - f) * std_start + f * std_dest) ** 2``,
    so the distance between this sphere and the destination's,
    ``sqrt(n) * |std - std_dest|``, shrinks linearly with f. At f = 0 and f = 1
    the given tensors come back themselves (the paper's Algorithm 1 is f = 0).
    """
    if fraction <= 0:
        return start_var
    if fraction >= 1:
        return dest_var
    return ((1 - fraction) * start_var.sqrt() + fraction * dest_var.sqrt()).square()


def distance_floor(start: Tensor, dest: Tensor, seg: Segments, fraction: float = 0.0) -> Tensor:
    """The distance between the variance sphere a path ends on and the destination's, per layer.

    A point P with ``Var(P_l) = Var(start_l)`` is at least
    ``sqrt(n_l) * |std(start_l) - std(dest_l)|`` from ``dest_l``: the nearest
    such point shares the destination's mean and direction and differs only in
    its radius. No M2M path, which keeps P on the start's sphere, can get closer.
    A path that ends on the sphere ``fraction`` of the way to the destination's
    (:func:`sphere_variance`) has ``1 - fraction`` of that floor: none on the
    destination's own sphere.
    """
    return (1.0 - fraction) * seg.n.sqrt() * (seg.variance(start).sqrt() - seg.variance(dest).sqrt()).abs()
