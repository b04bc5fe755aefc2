"""The straight line between two models as a path method: the baseline every other path is measured against.

Iteration i moves to ``t = i / (points - 1)`` of the way from start to
destination (every floating tensor interpolated, BatchNorm statistics too) and
the driver evaluates it there. With ``recalibrate_bn`` (the default) a model
with BatchNorm is evaluated with its running statistics recomputed on the
training set at every point, as ``llpf barrier`` does: interpolated weights
with interpolated statistics are not a model anyone trained. ``recalibrate_bn
= false`` gives the raw interpolation. Each iteration records the loss of one
training batch at the new point (eval mode) and costs no gradient.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..config import LineConfig
from ..flat import interpolate_state
from ..train import has_batchnorm
from .base import Knots, Record
from .fixed_ends import FixedEnds


class Line(FixedEnds):
    name = "line"
    config_class = LineConfig

    def build(self, start: nn.Module, dest: nn.Module, train_data) -> None:
        self.model = copy.deepcopy(start).to(self.device)
        self.sa = {n: v.to(self.device) for n, v in self.end_states[0].items()}
        self.sb = {n: v.to(self.device) for n, v in self.end_states[1].items()}
        self.position = 0

    def stage_steps(self) -> list[int]:
        return [self.cfg.points - 1]

    @property
    def t(self) -> float:
        return self.position / (self.cfg.points - 1)

    def _move(self) -> None:
        self.model.load_state_dict(interpolate_state(self.sa, self.sb, self.t))

    def iterate(self, iteration: int, phase) -> tuple[Tensor, int]:
        self.position = iteration
        self._move()
        x, y = next(self.batches)
        self.model.eval()
        with torch.no_grad():
            loss = self.loss_fn(self.model(x.to(self.device)), y.to(self.device))
        return loss, 0

    def model_of(self, k: int) -> nn.Module:
        return self.model

    def measure(self, k: int) -> dict:
        return {"t": self.t}

    def path(self, k: int) -> Knots:
        return Knots("polygon", list(self.end_states))

    def summary(self, k: int, record: Record) -> dict:
        return {"points": 1 if self.zero_length(k) else self.cfg.points, "batchnorm": batchnorm_note(self.model, self.cfg.recalibrate_bn),
                "gradient_evals": 0}

    def state_dict(self, k: int) -> dict:
        return {"batches": self.batches.state_dict(), "position": self.position}

    def load_state_dict(self, k: int, state: dict) -> None:
        self.batches.load_state_dict(state["batches"])
        self.position = int(state["position"])
        self._move()


def batchnorm_note(model: nn.Module, recalibrate: bool) -> str:
    """How a model's BatchNorm statistics were treated at the evaluated points, in words."""
    if not has_batchnorm(model):
        return "the model has no BatchNorm"
    return ("BatchNorm statistics recomputed on the training set at every point" if recalibrate
            else "raw: the two models' BatchNorm statistics interpolated")
