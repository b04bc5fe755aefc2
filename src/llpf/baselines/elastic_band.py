"""AutoNEB: a nudged elastic band between two fixed models, grown in cycles.

Draxler et al. (2018), "Essentially no barriers in neural network energy
landscape" (ICML), §3: the path is a chain of pivots ``p_0 .. p_{P-1}`` whose
ends are the two given models, never moved. Every interior pivot feels the
NEB force (Henkelman & Jónsson 2000)::

    F_i = -(grad L(p_i) - (grad L(p_i) . tau_i) tau_i)          loss, perpendicular to the path
          + k (|p_{i+1} - p_i| - |p_i - p_{i-1}|) tau_i          spring, along the path

so the loss pulls pivots sideways, down into the valley, and the springs only
keep them spread along it. ``tau_i`` is the improved tangent of Henkelman &
Jónsson (2000), "Improved tangent estimate in the nudged elastic band method":
the segment towards the higher neighbour, and at a local extremum a blend of
both segments weighted by the loss differences (:func:`tangent`). The band is
moved by SGD (with momentum) or Adam on minibatches, one batch shared by all
pivots of a step.

AutoNEB runs the band in cycles. Each cycle optimises it for a number of steps,
then evaluates the loss at ``points_per_segment`` evenly spaced interior points
of every segment between neighbouring pivots; before the next cycle new pivots
go where the loss rises most above the straight interpolation between two
pivots (:func:`insert_pivot`). The path AutoNEB returns is the band of the
cycle whose highest evaluated loss was lowest (the published code keeps every
cycle's band and reads the best one), not necessarily the last.

Settings (:class:`llpf.config.AutoNEBConfig`, the ``[autoneb]`` table) and why:

- the cycle schedule has the shape of the one published with the paper's
  code for its CIFAR networks (:data:`llpf.config.PAPER_CYCLES`): 4 cycles of
  1000 steps at learning rate 0.1, 2 of 2000 at 0.1, 4 of 1000 at 0.01, 4 of
  1000 at 0.001, 14 cycles and 16,000 band steps, SGD with momentum 0.9, band
  steps on batches of 512 and a weight decay of 1e-4 added to each pivot's
  gradient before the projection (as the published NEB does). The paper's
  configs carry these settings; the table's defaults are the shape at 2% of
  its steps with a tenth of its rates (``paper_cycles(0.02, lr=0.01)``, the
  endpoints' own rate, 320 band steps), batch 64 and no decay, because on
  LeNet5 over digits (the demo endpoints, straight-line peak 1.54) the first
  rate 0.1 threw the band to chance-level loss (2.3) in the first cycle, while
  0.01 brought the peak to 0.015 (both measured with the earlier insertion at
  the highest loss). :func:`~llpf.config.paper_cycles` scales
  the step counts and the learning rates and keeps the shape;
- ``budget`` > 0 sets the gradient evaluations the whole run spends instead:
  the cycles' steps are then the shape, and each cycle's steps are set when it
  starts, from what is left and the pivots the band has (:func:`plan_steps`),
  so the run spends its budget however many pivots were inserted;
- the band starts as the straight line with 3 equally spaced interior pivots
  and up to 2 pivots are inserted per later cycle (as published), at most
  ``max_pivots = 31`` pivots in all (what that schedule reaches);
- 9 interior evaluation points per segment (as published), on the whole
  training split or on ``insertion_samples`` of it. These evaluations, not
  the band steps, dominate the time of a small run: a grid of
  ``(P-1) * 9 + P`` full passes per cycle;
- ``spring = inf`` (as published): no spring force; instead, after every step
  the pivots are moved along the polygonal chain so that consecutive arc
  lengths keep their target ratios (:func:`redistribute`). A finite spring
  constant has to match the scale of the loss gradient to the distances
  between models, which differs by architecture; redistribution has no such
  scale. The ratios start equal and a pivot inserted at ``alpha`` of a segment
  splits that segment's share into ``alpha`` and ``1 - alpha``, so it stays
  where it was put;
- the insertion rule is the published code's (``fill.highest``): at each
  evaluated point, the loss minus the straight interpolation between the
  losses at the segment's two pivots, divided by the range of the pivots'
  losses over the whole band; the segments with the largest such excess get
  a pivot at that point, and only where the excess is above
  ``insert_threshold`` (0.1, published). A segment whose loss stays below its
  chord (convex between two pivots) never gets one: a pivot there cannot lower
  the path's maximum.

Cost is counted in gradient evaluations (one forward and backward pass on one
batch at one pivot), the unit that also counts an LLPF Train_r step; a band
step over ``n`` interior pivots costs ``n`` (plus two forward passes at the
ends, whose batch losses the tangents need, not counted).
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import PAPER_CYCLES, AutoNEBConfig, Cycle, method_config, paper_cycles, projected_pivots
from ..data import Split
from ..errors import NonFiniteError
from ..progress import progress_bar
from ..train import LossFn
from .functional import FlatModel, make_optimizer

__all__ = ["PAPER_CYCLES", "AutoNEB", "AutoNEBConfig", "Band", "Cycle", "along", "chain_points", "insert_pivot", "neb_force",
           "paper_cycles", "plan_steps", "redistribute", "tangent"]


# ---------------------------------------------------------------- the pure pieces


def tangent(prev: Tensor, cur: Tensor, next: Tensor, losses: Sequence[float]) -> Tensor:
    """Unit tangent at ``cur`` by the improved tangent estimate of Henkelman & Jónsson (2000).

    ``losses`` are the losses at ``prev``, ``cur``, ``next``. If the loss rises
    monotonically through ``cur`` the tangent is the segment towards the higher
    neighbour; at a local maximum or minimum it is the sum of both segments,
    the one towards the higher neighbour weighted by the larger loss difference.
    Where the pivots leave no direction (all three coincide, or ``next`` is
    ``prev``) the tangent is zero: no part of the gradient is projected out.
    """
    l_prev, l_cur, l_next = (float(v) for v in losses)
    fwd, back = next - cur, cur - prev
    if l_next > l_cur > l_prev:
        tau = fwd
    elif l_next < l_cur < l_prev:
        tau = back
    else:
        big = max(abs(l_next - l_cur), abs(l_prev - l_cur))
        small = min(abs(l_next - l_cur), abs(l_prev - l_cur))
        tau = fwd * big + back * small if l_next > l_prev else fwd * small + back * big
    norm = tau.norm()
    if norm == 0:  # all three losses equal, or cur coincides with the neighbour that carries the weight
        tau = fwd + back
        norm = tau.norm()
    return tau / norm if norm > 0 else torch.zeros_like(tau)


def neb_force(grad: Tensor, tangent: Tensor, prev: Tensor, cur: Tensor, next: Tensor, k: float) -> Tensor:
    """NEB force on pivot ``cur``: minus the loss gradient's part perpendicular to the unit ``tangent``,
    plus the spring force ``k (|next - cur| - |cur - prev|)`` along it."""
    perpendicular = grad - (grad @ tangent) * tangent
    force = -perpendicular
    if k:
        force = force + k * ((next - cur).norm() - (cur - prev).norm()) * tangent
    return force


def redistribute(chain: Tensor, weights: Tensor) -> Tensor:
    """Pivots moved along the polygonal ``chain`` ([P, D]) so that the arc lengths between consecutive
    pivots are in the ratio ``weights`` ([P-1]). The ends stay bit-identical; the polygon is unchanged."""
    seg = (chain[1:] - chain[:-1]).norm(dim=1)
    cum = torch.cat([seg.new_zeros(1), seg.cumsum(0)])
    share = weights.to(seg) / weights.sum()
    target = share.cumsum(0)[:-1] * cum[-1]
    j = (torch.searchsorted(cum, target, right=True) - 1).clamp(0, len(seg) - 1)
    frac = ((target - cum[j]) / seg[j].clamp_min(torch.finfo(seg.dtype).tiny)).clamp(0, 1)
    out = chain.clone()
    out[1:-1] = chain[j] + frac[:, None] * (chain[j + 1] - chain[j])
    return out


def insert_pivot(chain: Tensor, weights: Tensor, losses: Tensor, alphas: Tensor, pivot_losses: Tensor,
                 count: int = 1, threshold: float = 0.1) -> tuple[Tensor, Tensor, list[tuple[int, float]]]:
    """Insert up to ``count`` pivots where the loss rises most above the straight interpolation between pivots.

    The published rule (Draxler et al. 2018, ``torch_autoneb.fill.highest``).
    ``losses`` [P-1, m] are the losses at the interior points ``alphas`` [m]
    (fractions in (0, 1)) of each segment of ``chain`` [P, D]; ``pivot_losses``
    [P] the losses at the pivots. Each interior loss minus the chord between
    its segment's two pivot losses, over the range of ``pivot_losses`` (max -
    min, the band's loss range), is its excess; the ``count`` segments with the
    largest excess each get one pivot at the point of that excess, by linear
    interpolation, if it is above ``threshold``. Returns the new chain, the new
    target arc-length ratios (the split segment's share divided at alpha) and
    the (segment index in the old chain, alpha) of each insertion.
    """
    alphas = alphas.to(losses)
    pivot_losses = pivot_losses.to(losses)
    chord = pivot_losses[:-1, None] * (1 - alphas) + pivot_losses[1:, None] * alphas
    excess = (losses - chord) / (float(pivot_losses.max() - pivot_losses.min()) + 1e-12)
    top, at = excess.max(dim=1)
    order = [s for s in torch.argsort(top, descending=True).tolist()[:max(count, 0)] if top[s] > threshold]
    rows, ratios, inserted = [chain[:1]], [], []
    for s in range(len(chain) - 1):
        if s in order:
            a = float(alphas[at[s]])
            rows.append(torch.lerp(chain[s], chain[s + 1], a)[None])
            ratios += [weights[s] * a, weights[s] * (1 - a)]
            inserted.append((s, a))
        else:
            ratios.append(weights[s])
        rows.append(chain[s + 1:s + 2])
    return torch.cat(rows), torch.stack([torch.as_tensor(r) for r in ratios]).to(weights), inserted


def plan_steps(shape: Sequence[int], pivots: Sequence[int], budget: int) -> list[int]:
    """Band steps of the cycles to come so that they spend ``budget`` gradient evaluations.

    ``shape`` are the cycles' steps as configured (their proportions are kept),
    ``pivots`` their interior pivots (the first as the band has them, the later
    ones projected). The first cycle's steps are what binds: the later ones are
    planned again when they start, and the last takes what is left.
    """
    if len(shape) == 1:
        return [max(1, round(budget / pivots[0]))]
    scale = budget / sum(s * n for s, n in zip(shape, pivots))
    return [max(1, round(scale * s)) for s in shape]


def along(chain: Tensor, fraction: float) -> Tensor:
    """The point ``fraction`` (in [0, 1]) of the way along the polygonal ``chain`` ([P, D]), by arc length."""
    seg = (chain[1:] - chain[:-1]).norm(dim=1).tolist()
    target, done = fraction * sum(seg), 0.0
    for s, length in enumerate(seg):
        if done + length >= target or s == len(seg) - 1:
            a = (target - done) / length if length > 0 else 0.0
            return torch.lerp(chain[s], chain[s + 1], min(max(a, 0.0), 1.0))
        done += length
    return chain[0].clone()


def chain_points(chain: Tensor, per_segment: int) -> Iterator[tuple[float, Tensor]]:
    """Every pivot and ``per_segment`` evenly spaced points inside each segment, with their position in [0, 1]
    as the fraction of the chain's Euclidean length travelled."""
    seg = (chain[1:] - chain[:-1]).norm(dim=1).tolist()
    total = sum(seg) or 1.0
    done = 0.0
    yield 0.0, chain[0]
    for s, length in enumerate(seg):
        for j in range(1, per_segment + 1):
            a = j / (per_segment + 1)
            yield (done + a * length) / total, torch.lerp(chain[s], chain[s + 1], a)
        done += length
        yield done / total, chain[s + 1]


# ---------------------------------------------------------------- the band


class Band:
    """Interior pivots between two fixed end vectors, moved by NEB forces.

    ``weight_decay`` adds ``weight_decay * p_i`` to each pivot's loss gradient
    before its projection, as the published NEB does.
    """

    def __init__(self, fm: FlatModel, a: Tensor, b: Tensor, interior: int, spring: float = math.inf,
                 weight_decay: float = 0.0):
        self.fm, self.a, self.b, self.spring, self.weight_decay = fm, a, b, spring, weight_decay
        ts = torch.linspace(0, 1, interior + 2, device=a.device, dtype=a.dtype)[1:-1]
        self.inner = torch.stack([torch.lerp(a, b, float(t)) for t in ts]).requires_grad_(True)
        self.weights = torch.ones(interior + 1, dtype=a.dtype, device=a.device)

    @property
    def pivots(self) -> int:
        return len(self.inner) + 2

    def chain(self) -> Tensor:
        """All pivots, ends included ([P, D], detached)."""
        return torch.cat([self.a[None], self.inner.detach(), self.b[None]])

    def forces(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Batch losses at every pivot ([P]) and the NEB force on each interior pivot ([P-2, D])."""
        n = len(self.inner)
        grads = torch.empty_like(self.inner, requires_grad=False)
        losses = self.a.new_empty(n + 2)
        with torch.no_grad():
            losses[0], losses[-1] = self.fm.loss(self.a, x, y), self.fm.loss(self.b, x, y)
        for i in range(n):
            losses[i + 1], grads[i] = self.fm.loss_and_grad(self.inner[i], x, y)
        values = losses.tolist()
        inner = self.inner.detach()
        if self.weight_decay:
            grads.add_(inner, alpha=self.weight_decay)
        k = 0.0 if math.isinf(self.spring) else self.spring
        force = torch.empty_like(grads)
        for i in range(n):
            prev = inner[i - 1] if i > 0 else self.a
            nxt = inner[i + 1] if i < n - 1 else self.b
            force[i] = neb_force(grads[i], tangent(prev, inner[i], nxt, values[i:i + 3]), prev, inner[i], nxt, k)
        return losses, force

    def step(self, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> Tensor:
        """One optimiser step along the NEB forces (then redistribution if the spring is infinite)."""
        losses, force = self.forces(x, y)
        self.inner.grad = -force
        opt.step()
        if math.isinf(self.spring):
            with torch.no_grad():
                self.inner.copy_(redistribute(self.chain(), self.weights)[1:-1])
        return losses

    def insert(self, losses: Tensor, alphas: Tensor, pivot_losses: Tensor, count: int,
               threshold: float) -> list[tuple[int, float]]:
        chain, self.weights, inserted = insert_pivot(self.chain(), self.weights, losses, alphas, pivot_losses, count,
                                                     threshold)
        self.inner = chain[1:-1].clone().requires_grad_(True)
        return inserted


# ---------------------------------------------------------------- the cycles


class AutoNEB:
    """AutoNEB between ``start`` and ``dest`` (module docstring): ``run()`` or one band ``step()`` at a time.

    ``batches`` is an endless iterator of training batches (e.g. a
    :class:`llpf.data.BatchStream`); ``eval_data`` is the split whose loss
    decides where pivots go (BatchNorm statistics are recomputed on it at every
    evaluated point). ``records`` holds one row per finished cycle (cycle 0 is
    the initial straight chain): its maximum loss on the evaluation grid,
    cumulative band steps and gradient evaluations, pivots, and the insertions
    made before it. ``plan`` holds every cycle's band steps (set again as each
    cycle starts when the config has a ``budget``); ``path()`` is the best
    cycle's band.
    """

    def __init__(self, start: nn.Module, dest: nn.Module, batches: Iterator, eval_data: Split,
                 config: AutoNEBConfig | dict | None = None, *, loss_fn: LossFn = F.cross_entropy, device=None,
                 eval_batch_size: int = 1024):
        self.config = config = method_config(AutoNEBConfig, config)
        self.fm = FlatModel(start, loss_fn, device)
        a, b = self.fm.vector(start), self.fm.vector(dest)
        self.band = Band(self.fm, a, b, config.initial_pivots, config.spring, config.weight_decay)
        self.batches = batches
        self.eval_data = eval_data.to(self.fm.device)
        self.eval_batch_size = eval_batch_size
        m = config.points_per_segment
        self.alphas = torch.linspace(0, 1, m + 2, dtype=a.dtype, device=a.device)[1:-1]
        self.cycle = self.cycle_step = self.band_steps = self.gradient_evals = 0
        self.plan = [c.steps for c in config.cycles]
        self._replan()
        self.records: list[dict] = []
        self.best: dict | None = None  # the best cycle so far: its number, max loss, pivots and ratios (on the CPU)
        self.opt: torch.optim.Optimizer | None = None
        self._grid: tuple[Tensor, Tensor] | None = None
        self._inserted: list = []
        self._end_losses: dict[int, float] = {}

    @property
    def finished(self) -> bool:
        return self.cycle >= len(self.config.cycles)

    @property
    def total_steps(self) -> int:
        return sum(self.plan)

    def _replan(self) -> None:
        """With a budget: the steps of this cycle and the later ones, from what is left (:func:`plan_steps`)."""
        cfg = self.config
        if not cfg.budget:
            return
        interior = len(self.band.inner)
        later = projected_pivots(interior, len(cfg.cycles) - self.cycle, cfg.insert_per_cycle, cfg.max_pivots)
        shape = [c.steps for c in cfg.cycles[self.cycle:]]
        self.plan[self.cycle:] = plan_steps(shape, later, cfg.budget - self.gradient_evals)

    def loss_at(self, vec: Tensor) -> float:
        """The evaluation split's loss at ``vec`` (eval mode, BatchNorm statistics recomputed)."""
        return self.fm.evaluate(vec, {"": self.eval_data}, batch_size=self.eval_batch_size)["loss"]

    def evaluate_grid(self) -> tuple[Tensor, Tensor]:
        """Losses at the interior grid points of every segment ([P-1, m]) and at the pivots ([P])."""
        chain = self.band.chain()
        last = len(chain) - 1
        for end in (0, last):
            if end not in self._end_losses:
                self._end_losses[end] = self.loss_at(chain[end])
        pivots = [self._end_losses[0]] + [self.loss_at(p) for p in chain[1:-1]] + [self._end_losses[last]]
        grid = [[self.loss_at(torch.lerp(chain[s], chain[s + 1], float(a))) for a in self.alphas]
                for s in range(last)]
        self._grid = (torch.tensor(grid, dtype=torch.float64), torch.tensor(pivots, dtype=torch.float64))
        return self._grid

    def _record(self) -> dict:
        grid, pivots = self.evaluate_grid()
        worst = max(float(grid.max()), float(pivots.max()))
        cycle = self.config.cycles[self.cycle - 1] if self.cycle else None
        row = {"cycle": self.cycle, "lr": cycle.lr if cycle else None, "steps": self.band_steps,
               "gradient_evals": self.gradient_evals, "pivots": self.band.pivots, "max_loss": worst,
               "pivot_max_loss": float(pivots.max()), "inserted": [list(i) for i in self._inserted]}
        self.records.append(row)
        if self.cycle and (self.best is None or worst < self.best["max_loss"]):  # cycle 0 is the straight line
            self.best = {"cycle": self.cycle, "max_loss": worst, "inner": self.band.inner.detach().cpu().clone(),
                         "weights": self.band.weights.cpu().clone()}
        return row

    def _start_cycle(self) -> None:
        cfg = self.config
        self._inserted = []
        if self.cycle > 0:
            count = min(cfg.insert_per_cycle, cfg.max_pivots - self.band.pivots)
            if count > 0:
                self._inserted = self.band.insert(self._grid[0], self.alphas, self._grid[1], count,
                                                  cfg.insert_threshold)
        self._replan()
        c = cfg.cycles[self.cycle]
        self.opt = make_optimizer([self.band.inner], cfg.optimizer, c.lr, cfg.momentum)

    def begin(self) -> None:
        """Evaluate the initial band (cycle 0's record), once."""
        if not self.records:
            self._record()

    def step(self) -> Tensor:
        """One band step (starting or finishing a cycle when due); the batch losses at every pivot."""
        self.begin()
        if self.finished:
            raise RuntimeError("autoneb has run all its cycles")
        if self.opt is None:
            self._start_cycle()
        losses = self.band.step(self.opt, *next(self.batches))
        self.cycle_step += 1
        self.band_steps += 1
        self.gradient_evals += self.band.pivots - 2
        if self.cycle_step >= self.plan[self.cycle]:
            self.cycle, self.cycle_step, self.opt = self.cycle + 1, 0, None
            self._record()
        return losses

    def run(self, progress: bool = False) -> list[dict]:
        """All remaining cycles; returns ``records``."""
        done = sum(self.plan[:self.cycle]) + self.cycle_step
        with progress_bar(total=self.total_steps, initial=done, desc="autoneb", enabled=progress) as bar:
            while not self.finished:
                losses = self.step()
                bar.total = self.total_steps
                bar.update()
                bar.set_postfix(cycle=self.cycle, pivots=self.band.pivots, max_batch_loss=f"{float(losses.max()):.3f}")
                worst = self.records[-1]["max_loss"]
                if not math.isfinite(worst):
                    raise NonFiniteError(f"autoneb: the loss along the band is {worst} after cycle {self.cycle}")
        if not self.records:
            self._record()
        return self.records

    def path(self) -> Tensor:
        """The best cycle's pivots, ends included ([P, D]): the band whose highest evaluated loss was lowest
        (the current band before any cycle has finished)."""
        if self.best is None:
            return self.band.chain()
        b = self.band
        return torch.cat([b.a[None], self.best["inner"].to(b.a), b.b[None]])

    def state_dict(self) -> dict:
        """Everything needed to continue (weights_only-loadable); the batch stream's state is the caller's."""
        return {"inner": self.band.inner.detach().clone(), "weights": self.band.weights.clone(),
                "cycle": self.cycle, "cycle_step": self.cycle_step, "band_steps": self.band_steps,
                "gradient_evals": self.gradient_evals, "records": [dict(r) for r in self.records],
                "inserted": list(self._inserted), "plan": list(self.plan), "best": self.best,
                "grid": self._grid, "optimizer": None if self.opt is None else self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.band.inner = state["inner"].to(self.band.a).clone().requires_grad_(True)
        self.band.weights = state["weights"].to(self.band.a)
        self.cycle, self.cycle_step = state["cycle"], state["cycle_step"]
        self.band_steps, self.gradient_evals = state["band_steps"], state["gradient_evals"]
        self.records, self._inserted, self._grid = state["records"], state["inserted"], state["grid"]
        self.plan, self.best = list(state["plan"]), state["best"]
        self.opt = None
        if state["optimizer"] is not None:
            c = self.config.cycles[self.cycle]
            self.opt = make_optimizer([self.band.inner], self.config.optimizer, c.lr, self.config.momentum)
            self.opt.load_state_dict(state["optimizer"])
