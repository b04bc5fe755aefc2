"""AutoNEB (Draxler et al. 2018) as a path method: one driver iteration is one band step.

The algorithm is :class:`llpf.baselines.elastic_band.AutoNEB`; its cycles are the
phases of the schedule, so cycle boundaries and pivot insertions fall at the
iterations the ``[autoneb]`` table gives, and a resumed run continues inside a
cycle with the optimizer's state. Each iteration's ``batch_loss`` is the
highest batch loss over the pivots and ``rounds`` its gradient evaluations
(one per interior pivot). Evaluation rows are at the band's midpoint (half its
length) and add ``pivots``, ``cycle`` and ``band_max_loss``, the highest loss
on the insertion grid at the last cycle boundary. With a ``budget`` each
cycle's steps are set as it starts, and the schedule follows. The path handed
over at the end is the best cycle's band (``best_cycle`` in the summary).
"""
from __future__ import annotations

from torch import Tensor, nn

from ..baselines.elastic_band import AutoNEB, along
from ..config import AutoNEBConfig
from ..data import Split
from ..errors import ConfigError
from .base import Evaluate, Knots, Record
from .fixed_ends import FixedEnds


class AutoNEBPath(FixedEnds):
    name = "autoneb"
    config_class = AutoNEBConfig

    def build(self, start: nn.Module, dest: nn.Module, train_data) -> None:
        if not isinstance(train_data, Split):
            raise ConfigError("autoneb places its pivots by the loss on the training data, which must then be an "
                              "llpf Split (tensors)")
        grid_data = train_data.subset(self.cfg.insertion_samples, self.cfg.seed)
        self.neb = AutoNEB(start, dest, self.batches, grid_data, self.cfg, loss_fn=self.loss_fn, device=self.device)
        self.fm = self.neb.fm

    def stage_steps(self) -> list[int]:
        return list(self.neb.plan)

    def begin(self, evaluate: Evaluate) -> None:
        self.neb.begin()

    def iterate(self, iteration: int, phase) -> tuple[Tensor, int]:
        before, plan = self.neb.gradient_evals, list(self.neb.plan)
        losses = self.neb.step()
        if self.neb.plan != plan:
            self.restage()
        return losses.max(), self.neb.gradient_evals - before

    def point(self) -> Tensor:
        return along(self.neb.band.chain(), 0.5)  # the band as it is now (the path handed over is the best one)

    def measure(self, k: int) -> dict:
        last = self.neb.records[-1] if self.neb.records else {}
        return {"pivots": self.neb.band.pivots, "cycle": self.neb.cycle, "band_max_loss": last.get("max_loss")}

    def path(self, k: int) -> Knots:
        return Knots("polygon", self.knot_states(list(self.neb.path())))

    def summary(self, k: int, record: Record) -> dict:
        last = self.neb.records[-1]
        best = self.neb.best or {}
        return {"evaluated_point": "the band's midpoint", "pivots": self.neb.band.pivots,
                "gradient_evals": self.neb.gradient_evals, "band_max_loss": last["max_loss"],
                "best_cycle": best.get("cycle"), "best_band_max_loss": best.get("max_loss"),
                "path_pivots": len(self.neb.path()),
                "band_max_loss_samples": len(self.neb.eval_data), "cycles": self.neb.records}

    def state_dict(self, k: int) -> dict:
        return {"batches": self.batches.state_dict(), "autoneb": self.neb.state_dict()}

    def load_state_dict(self, k: int, state: dict) -> None:
        self.batches.load_state_dict(state["batches"])
        self.neb.load_state_dict(state["autoneb"])
        self.restage()
