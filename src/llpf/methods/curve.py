"""A one-bend curve (Garipov et al. 2018) as a path method: one driver iteration is one step on the bend.

The algorithm is :class:`llpf.baselines.bezier.Curve`; ``[bezier] kind``
chooses the quadratic Bezier curve or the polygonal chain. Each iteration
draws one ``t`` and one batch (``rounds`` = 1 gradient evaluation); evaluation
rows are at the curve's midpoint ``t = 1/2`` and add ``bend_offset``, the
bend's distance from the straight line's midpoint over the distance between
the ends.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..baselines.bezier import Curve
from ..config import CurveConfig
from .base import Knots, Record
from .fixed_ends import FixedEnds


class CurvePath(FixedEnds):
    name = "bezier"
    config_class = CurveConfig

    def build(self, start: nn.Module, dest: nn.Module, train_data) -> None:
        self.curve = Curve(start, dest, self.batches, self.cfg, loss_fn=self.loss_fn, device=self.device)
        self.fm = self.curve.fm

    def stage_steps(self) -> list[int]:
        return [self.cfg.steps]

    def iterate(self, iteration: int, phase) -> tuple[Tensor, int]:
        return self.curve.step(), 1

    def point(self) -> Tensor:
        return self.curve.point(0.5)

    def measure(self, k: int) -> dict:
        c = self.curve
        offset = (c.bend.detach() - (c.a + c.b) / 2).norm() / (c.b - c.a).norm().clamp_min(1e-30)
        return {"bend_offset": float(offset)}

    def path(self, k: int) -> Knots:
        c = self.curve
        states = self.knot_states([c.a, c.bend.detach(), c.b])
        return Knots("bezier" if self.cfg.kind == "bezier" else "polygon", states)

    def summary(self, k: int, record: Record) -> dict:
        return {"evaluated_point": "the curve at t = 1/2", "curve": self.cfg.kind,
                "gradient_evals": self.curve.steps_done, **self.measure(k)}

    def state_dict(self, k: int) -> dict:
        return {"batches": self.batches.state_dict(), "curve": self.curve.state_dict()}

    def load_state_dict(self, k: int, state: dict) -> None:
        self.batches.load_state_dict(state["batches"])
        self.curve.load_state_dict(state["curve"])
