"""A curve with one trained bend between two fixed models (Garipov et al. 2018).

Garipov, Izmailov, Podoprikhin, Vetrov & Wilson (2018), "Loss surfaces, mode
connectivity, and fast ensembling of DNNs" (NeurIPS), §3: with the endpoints
``w_a``, ``w_b`` fixed, a curve ``phi_theta(t)``, ``t`` in [0, 1], is trained so
that the expected loss ``E_{t ~ U(0,1)} L(phi_theta(t))`` is low, by drawing one
``t`` per minibatch and stepping the bend ``theta`` along the gradient of that
batch's loss at ``phi_theta(t)``. Two curves, each with one bend:

- quadratic Bezier: ``phi(t) = (1-t)^2 w_a + 2 t (1-t) theta + t^2 w_b``;
- polygonal chain: ``w_a -> theta`` for ``t < 1/2``, ``theta -> w_b`` after.

The model is evaluated at ``phi(t)`` with :func:`torch.func.functional_call`
(:class:`~llpf.baselines.functional.FlatModel`), so any ``nn.Module`` works and
the gradient reaches ``theta`` through the curve formula. Only trainable
parameters lie on the curve; buffers and frozen parameters are the start
model's. BatchNorm normalises with batch statistics while training and has its
running statistics recomputed at every evaluated ``t``, as the paper does.

Settings (:class:`llpf.config.CurveConfig`, the ``[bezier]`` table) and why:

- ``kind = "bezier"``: the paper's main curve; ``"polychain"`` is the other;
- the bend starts at the midpoint of the endpoints (the paper's linear
  initialisation), so the untrained curve is the straight line;
- SGD with momentum 0.9 and the learning-rate schedule of the paper's code:
  constant for the first half of the steps, then linearly down to 1% of it at
  90%, then constant (:func:`lr_factor`);
- ``lr = 0.015``: the published rate for VGG16 curves (a network without
  BatchNorm, like LeNet5; the ResNet curves use 0.03). On the demo's LeNet5
  endpoints over digits (straight-line peak 1.54, endpoint losses 0.005 and
  0.003), 2000 steps of batch 64 left a peak training loss along the curve of
  0.055 at lr 0.003, 0.010 at 0.01, 0.005 at 0.015 and 0.005 at 0.03;
- ``weight_decay = 0``: the aim here is the loss along the curve, not the
  curve's generalisation, and a decay would pull the bend towards the origin,
  a direction no other method in the comparison is pushed;
- ``steps = 2000`` minibatch steps (about 90 epochs of digits at batch 64):
  the published commands train curves for one to three times the endpoints'
  epochs, so the right number depends on the endpoints and a comparison
  should set it. One step is one gradient evaluation, the comparison's unit
  of cost.
"""
from __future__ import annotations

import math
from typing import Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import CurveConfig, method_config
from ..data import Split
from ..errors import ConfigError, NonFiniteError
from ..progress import progress_bar
from ..train import DEFAULT_METRICS, LossFn, MetricFn
from .functional import FlatModel, make_optimizer, set_lr

__all__ = ["KINDS", "Curve", "CurveConfig", "curve_point", "lr_factor"]

KINDS = ("bezier", "polychain")


def curve_point(kind: str, a: Tensor, bend: Tensor, b: Tensor, t: float) -> Tensor:
    """The point at ``t`` of the curve from ``a`` through the bend to ``b``; exactly ``a`` at 0 and ``b`` at 1."""
    if t <= 0:
        return a
    if t >= 1:
        return b
    if kind == "bezier":
        return (1 - t) ** 2 * a + (2 * t * (1 - t)) * bend + t ** 2 * b
    if kind == "polychain":
        return torch.lerp(a, bend, 2 * t) if t < 0.5 else torch.lerp(bend, b, 2 * t - 1)
    raise ConfigError(f"unknown curve {kind!r}; known: {', '.join(KINDS)}")


def lr_factor(progress: float) -> float:
    """The paper's learning-rate schedule as a multiple of the base rate, ``progress`` in [0, 1]."""
    if progress <= 0.5:
        return 1.0
    if progress <= 0.9:
        return 1.0 - (progress - 0.5) / 0.4 * 0.99
    return 0.01


class Curve:
    """A Bezier curve or polygonal chain from ``start`` to ``dest`` with one trained bend.

    ``batches`` is an endless iterator of training batches (e.g. a
    :class:`llpf.data.BatchStream`). ``run()`` trains for ``config.steps``
    steps, or ``step()`` one at a time; ``point(t)`` is the curve, ``evaluate``
    and ``model_at`` evaluate it with BatchNorm statistics recomputed.
    """

    def __init__(self, start: nn.Module, dest: nn.Module, batches: Iterator,
                 config: CurveConfig | dict | None = None, *, loss_fn: LossFn = F.cross_entropy, device=None):
        self.config = config = method_config(CurveConfig, config)
        self.fm = FlatModel(start, loss_fn, device)
        self.a, self.b = self.fm.vector(start), self.fm.vector(dest)
        self.bend = torch.lerp(self.a, self.b, 0.5).requires_grad_(True)
        self.opt = make_optimizer([self.bend], config.optimizer, config.lr, config.momentum, config.weight_decay)
        self.gen = torch.Generator().manual_seed(config.seed)
        self.batches = batches
        self.steps_done = 0

    @property
    def finished(self) -> bool:
        return self.steps_done >= self.config.steps

    @torch.no_grad()
    def point(self, t: float) -> Tensor:
        """The curve at ``t`` (a new tensor; the ends are bit-exact copies of the endpoints)."""
        return curve_point(self.config.kind, self.a, self.bend.detach(), self.b, float(t)).clone()

    def step(self) -> Tensor:
        """One minibatch step on the bend at a fresh ``t ~ U(0, 1)``; the batch loss."""
        cfg = self.config
        t = float(torch.rand((), generator=self.gen))
        set_lr(self.opt, cfg.lr * lr_factor(self.steps_done / cfg.steps))
        x, y = next(self.batches)
        self.opt.zero_grad(set_to_none=True)
        loss = self.fm.loss(curve_point(cfg.kind, self.a, self.bend, self.b, t), x, y)
        loss.backward()
        self.opt.step()
        self.steps_done += 1
        return loss.detach()

    def run(self, progress: bool = False) -> "Curve":
        """Train the bend for the remaining steps."""
        with progress_bar(total=self.config.steps, initial=self.steps_done, desc=self.config.kind,
                          enabled=progress) as bar:
            while not self.finished:
                loss = self.step()
                bar.update()
                if self.steps_done % 50 == 0 or self.finished:
                    value = float(loss)
                    if not math.isfinite(value):
                        raise NonFiniteError(f"{self.config.kind}: the batch loss is {value} at step "
                                             f"{self.steps_done}; try a lower lr")
                    bar.set_postfix(batch_loss=f"{value:.4f}")
        return self

    def evaluate(self, ts: Iterable[float], splits: Mapping[str, Split], bn_data: Split | None = None,
                 metrics: Mapping[str, MetricFn] = DEFAULT_METRICS, batch_size: int = 1024) -> list[dict]:
        """One row per ``t``: ``t`` and every split's loss and metrics (BatchNorm recomputed at each ``t``)."""
        return [{"t": float(t), **self.fm.evaluate(self.point(t), splits, bn_data, metrics, batch_size)}
                for t in ts]

    def model_at(self, t: float, bn_data: Split | None = None, batch_size: int = 1024) -> nn.Module:
        """A new module holding the curve's point at ``t``."""
        return self.fm.model_at(self.point(t), bn_data, batch_size)

    def state_dict(self) -> dict:
        """Everything needed to continue (weights_only-loadable); the batch stream's state is the caller's."""
        return {"bend": self.bend.detach().clone(), "optimizer": self.opt.state_dict(),
                "generator": self.gen.get_state(), "steps_done": self.steps_done}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.bend.copy_(state["bend"])
        self.opt.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"])
        self.steps_done = int(state["steps_done"])
