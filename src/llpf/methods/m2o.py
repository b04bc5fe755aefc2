"""M2O: a low-loss path from a model toward the origin (paper Algorithm 2).

``m2o_iteration`` is the loop body and reads line by line against Algorithm 2;
:class:`M2ORecords` (for one path or K batched ones) leaves normalisation layers
alone, stops early at a target mean variance ratio, and keeps the point with
the best held-out metric (:class:`BestPoint`), on the split ``cfg.select_on``
("test" as the paper did, or "validation"). :class:`M2O` is one path.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..config import PathConfig
from ..errors import ConfigError
from ..flat import FlatParams
from ..geometry import angle_conformal_lr, move_
from ..schedule import ResolvedPhase, normalisation_parameters
from ..train import TrainR
from .base import FlatPaths, Record, SinglePath, ratio_to


def m2o_iteration(fp: FlatParams, v0: Tensor, rp: ResolvedPhase, cfg: PathConfig, train_r: TrainR,
                  moved: Tensor) -> tuple[Tensor, int, Tensor]:
    """One iteration of Algorithm 2 (lines 6-8): Move toward O, AngleConformal, Train_r."""
    ph = rp.phase
    with torch.no_grad():
        move_(fp.flat, None, fp.seg, ph.step_a, ph.step_f, moved, cfg.step_rule)  # N = Move(P_i, O)
        lr = angle_conformal_lr(cfg.lr, fp.seg.variance(fp.flat), v0, moved)  # x = AngleConformal(N, v)
    loss, rounds = train_r(ph, lr)  # P_{i+1} = Train_r(N, x)
    return loss, rounds, lr


@dataclass
class BestPoint:
    """One path's best-generalising point so far: its score, row, variance ratio, weights and buffers."""

    score: float | None = None
    iteration: int = 0
    metrics: dict = field(default_factory=dict)
    variance_ratio: float = 1.0
    flat: Tensor | None = None
    buffers: dict[str, Tensor] | None = None

    def offer(self, cfg: PathConfig, iteration: int, row: dict, flat: Tensor, measured: nn.Module) -> bool:
        """Keep this point, as measured, when it is the best so far on ``select_on`` by ``select_by``."""
        key = f"{cfg.select_on}_{cfg.select_by}"
        if key not in row or not math.isfinite(row[key]):
            return False
        score = row[key] if cfg.select_by == "loss" else -row[key]
        if self.score is not None and score >= self.score:
            return False
        self.score, self.iteration, self.metrics = score, iteration, dict(row)
        self.variance_ratio = row["mean_variance_ratio"]
        self.flat = flat.clone()
        self.buffers = {n: b.clone() for n, b in measured.named_buffers()}
        return True

    def model(self, template: nn.Module) -> nn.Module | None:
        """A copy of ``template`` holding the best point (None before the first)."""
        if self.flat is None:
            return None
        best = copy.deepcopy(template)
        FlatParams(best).flat.copy_(self.flat)
        for n, b in best.named_buffers():
            b.copy_(self.buffers[n])
        return best

    def state_dict(self) -> dict:
        return {"best_score": self.score, "best_iteration": self.iteration, "best_metrics": self.metrics,
                "best_variance_ratio": self.variance_ratio,
                "best_flat": None if self.flat is None else self.flat.cpu(),
                "best_buffers": None if self.buffers is None else {n: v.cpu() for n, v in self.buffers.items()}}

    def load_state_dict(self, state: dict, device) -> None:
        self.score, self.iteration = state["best_score"], state["best_iteration"]
        self.metrics, self.variance_ratio = state["best_metrics"], state["best_variance_ratio"]
        if state["best_flat"] is not None:
            self.flat = state["best_flat"].to(device)
            self.buffers = {n: v.to(device) for n, v in state["best_buffers"].items()}


class M2ORecords(FlatPaths):
    """What an M2O path records, when it stops, and which of its points it keeps, for each of a method's paths."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.n0 = self.seg.norm(self.start_flat)  # |P0_l| of every path
        self.best = [BestPoint() for _ in range(self.paths)]

    def excluded_layers(self, model: nn.Module) -> set[str]:
        return normalisation_parameters(model)  # neither moved nor rescaled (paper section 3.3)

    def ratio_layers(self) -> Tensor:
        return self.ever_moved

    def check_eval_sets(self, names: set[str]) -> None:
        if self.cfg.select_on not in names:
            raise ConfigError(f"M2O selects its best point on the {self.cfg.select_on!r} split, which was not given")

    def norm_ratio(self, k: int = 0) -> Tensor:
        """Per-layer |P_l| / |P0_l| of path k: the share of the way to the origin that is left (1 where |P0_l| is 0)."""
        return ratio_to(self.seg.norm(self.of_path(self.flat, k)), self.of_path(self.n0, k))

    def measure(self, k: int) -> dict:
        """Variance and norm ratios of the moved layers, each layer and their mean.

        The paper's Figure 3 caption ("reduce the layer variance by a factor of
        0.76") gives the fraction of the way removed, ``fraction_to_origin`` =
        1 - norm ratio, not the variance ratio that remains.
        """
        moved = self.ever_moved.tolist()
        r, nr = self.variance_ratio(k), self.norm_ratio(k)
        mean_nr = float(nr[self.ever_moved].mean())
        row = {**super().measure(k), "mean_norm_ratio": mean_nr, "fraction_to_origin": 1 - mean_nr}
        row.update({f"var_ratio/{n}": x for n, x, m in zip(self.names, r.tolist(), moved) if m})
        row.update({f"norm_ratio/{n}": x for n, x, m in zip(self.names, nr.tolist(), moved) if m})
        return row

    def finished(self, k: int) -> bool:
        target = self.cfg.target_variance_ratio
        return bool(target) and self.mean_variance_ratio_now(k) <= target

    def mean_variance_ratio_now(self, k: int) -> float:
        """Path k's mean variance ratio on the host (the target rule needs the value)."""
        return float(self.mean_variance_ratio(k))

    def after_evaluation(self, k: int, iteration: int, row: dict, record: Record, measured: nn.Module) -> bool:
        return self.best[k].offer(self.cfg, iteration, row, self.of_path(self.flat, k), measured)

    def best_model(self, k: int) -> nn.Module | None:
        return self.best[k].model(self.model_of(k))

    def state_dict(self, k: int) -> dict:
        return {**super().state_dict(k), **self.best[k].state_dict()}

    def load_state_dict(self, k: int, state: dict) -> None:
        super().load_state_dict(k, state)
        self.best[k].load_state_dict(state, self.device)

    def summary(self, k: int, record: Record) -> dict:
        start, best, sel = record.start_metrics, self.best[k], self.cfg.select_on
        nr = self.norm_ratio(k)
        mean_nr = float(nr[self.ever_moved].mean())
        s = dict(selected_on=sel, selected_by=self.cfg.select_by, stopped_at_target=record.stopped_early,
                 target_variance_ratio=self.cfg.target_variance_ratio or None, best_iteration=best.iteration,
                 best_variance_ratio=best.variance_ratio, final_variance_ratio=float(self.mean_variance_ratio(k)),
                 norm_ratio=mean_nr, fraction_to_origin=1 - mean_nr,
                 norm_ratio_per_layer={n: x for n, x, m in zip(self.names, nr.tolist(), self.ever_moved.tolist()) if m},
                 best_norm_ratio=best.metrics.get("mean_norm_ratio"),
                 best_fraction_to_origin=best.metrics.get("fraction_to_origin"))
        for split in ("test", "validation"):
            for key in [key for key in start if key.startswith(f"{split}_")]:
                s[f"start_{key}"] = start[key]
                s[f"best_{key}"] = best.metrics.get(key)
        return s


class M2O(M2ORecords, SinglePath):
    """Algorithm 2 on one path, keeping its best-generalising point."""

    name = "m2o"
    last_lr: Tensor | None = None  # the per-layer AngleConformal rates of the last iteration

    def iterate(self, iteration: int, phase: ResolvedPhase) -> tuple[Tensor, int]:
        loss, rounds, self.last_lr = m2o_iteration(self.fp, self.v0, phase, self.cfg, self.train_r,
                                                   self.masks[phase.index])
        return loss, rounds
