"""M2O: a low-loss path from a model toward the origin (paper Algorithm 2).

``m2o_iteration`` is the loop body and reads line by line against Algorithm 2;
:class:`M2O` leaves normalisation layers alone, stops early at a target mean
variance ratio, and keeps the point with the best held-out metric, on the
split ``cfg.select_on`` ("test" as the paper did, or "validation").
"""
from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from ..config import PathConfig
from ..errors import ConfigError
from ..flat import FlatParams
from ..geometry import angle_conformal_lr, move_
from ..schedule import ResolvedPhase, normalisation_parameters
from ..train import TrainR
from .base import Record, SinglePath


def m2o_iteration(fp: FlatParams, v0: Tensor, rp: ResolvedPhase, cfg: PathConfig, train_r: TrainR,
                  moved: Tensor) -> tuple[Tensor, int, Tensor]:
    """One iteration of Algorithm 2 (lines 6-8): Move toward O, AngleConformal, Train_r."""
    ph = rp.phase
    with torch.no_grad():
        move_(fp.flat, None, fp.seg, ph.step_a, ph.step_f, moved, cfg.step_rule)  # N = Move(P_i, O)
        lr = angle_conformal_lr(cfg.lr, fp.seg.variance(fp.flat), v0, moved)  # x = AngleConformal(N, v)
    loss, rounds = train_r(ph, lr)  # P_{i+1} = Train_r(N, x)
    return loss, rounds, lr


class M2O(SinglePath):
    """Algorithm 2 on one path, keeping its best-generalising point."""

    name = "m2o"
    last_lr: Tensor | None = None  # the per-layer AngleConformal rates of the last iteration

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.n0 = self.fp.seg.norm(self.start_flat)  # |P0_l|
        self.best_score: float | None = None
        self.best_iteration = 0
        self.best_metrics: dict = {}
        self.best_variance_ratio = 1.0
        self.best_flat: Tensor | None = None
        self.best_buffers: dict[str, Tensor] | None = None

    def excluded_layers(self, model: nn.Module) -> set[str]:
        return normalisation_parameters(model)  # neither moved nor rescaled (paper section 3.3)

    def ratio_layers(self) -> Tensor:
        return self.ever_moved

    def check_eval_sets(self, names: set[str]) -> None:
        if self.cfg.select_on not in names:
            raise ConfigError(f"M2O selects its best point on the {self.cfg.select_on!r} split, which was not given")

    def iterate(self, iteration: int, phase: ResolvedPhase) -> tuple[Tensor, int]:
        loss, rounds, self.last_lr = m2o_iteration(self.fp, self.v0, phase, self.cfg, self.train_r,
                                                   self.masks[phase.index])
        return loss, rounds

    def norm_ratio(self) -> Tensor:
        """Per-layer |P_l| / |P0_l|: the share of the way to the origin that is left (1 where |P0_l| is 0)."""
        n = self.fp.seg.norm(self.fp.flat)
        return torch.where(self.n0 > 0, n / torch.where(self.n0 > 0, self.n0, 1.0), 1.0)

    def measure(self, k: int) -> dict:
        """Variance and norm ratios of the moved layers, each layer and their mean.

        The paper's Figure 3 caption ("reduce the layer variance by a factor of
        0.76") gives the fraction of the way removed, ``fraction_to_origin`` =
        1 - norm ratio, not the variance ratio that remains.
        """
        moved = self.ever_moved.tolist()
        r, nr = self.variance_ratio(), self.norm_ratio()
        mean_nr = float(nr[self.ever_moved].mean())
        row = {**super().measure(k), "mean_norm_ratio": mean_nr, "fraction_to_origin": 1 - mean_nr}
        row.update({f"var_ratio/{n}": x for n, x, m in zip(self.names, r.tolist(), moved) if m})
        row.update({f"norm_ratio/{n}": x for n, x, m in zip(self.names, nr.tolist(), moved) if m})
        return row

    def finished(self, k: int) -> bool:
        target = self.cfg.target_variance_ratio
        return bool(target) and float(self.mean_variance_ratio()) <= target

    def after_evaluation(self, k: int, iteration: int, row: dict, record: Record, measured: nn.Module) -> bool:
        """Keep this point, as measured, when it is the best so far on ``select_on`` by ``select_by``."""
        key = f"{self.cfg.select_on}_{self.cfg.select_by}"
        if key not in row or not math.isfinite(row[key]):
            return False
        score = row[key] if self.cfg.select_by == "loss" else -row[key]
        if self.best_score is not None and score >= self.best_score:
            return False
        self.best_score, self.best_iteration, self.best_metrics = score, iteration, dict(row)
        self.best_variance_ratio = row["mean_variance_ratio"]
        self.best_flat = self.fp.flat.clone()
        self.best_buffers = {n: b.clone() for n, b in measured.named_buffers()}
        return True

    def best_model(self, k: int) -> nn.Module | None:
        if self.best_flat is None:
            return None
        best = copy.deepcopy(self.model)
        FlatParams(best).flat.copy_(self.best_flat)
        for n, b in best.named_buffers():
            b.copy_(self.best_buffers[n])
        return best

    def state_dict(self, k: int) -> dict:
        return {**super().state_dict(k), "best_score": self.best_score, "best_iteration": self.best_iteration,
                "best_metrics": self.best_metrics, "best_variance_ratio": self.best_variance_ratio,
                "best_flat": None if self.best_flat is None else self.best_flat.cpu(),
                "best_buffers": None if self.best_buffers is None else {n: v.cpu() for n, v in self.best_buffers.items()}}

    def load_state_dict(self, k: int, state: dict) -> None:
        super().load_state_dict(k, state)
        self.best_score, self.best_iteration = state["best_score"], state["best_iteration"]
        self.best_metrics, self.best_variance_ratio = state["best_metrics"], state["best_variance_ratio"]
        if state["best_flat"] is not None:
            self.best_flat = state["best_flat"].to(self.device)
            self.best_buffers = {n: v.to(self.device) for n, v in state["best_buffers"].items()}

    def summary(self, k: int, record: Record) -> dict:
        start, best, sel = record.start_metrics, self.best_metrics, self.cfg.select_on
        nr = self.norm_ratio()
        mean_nr = float(nr[self.ever_moved].mean())
        s = dict(selected_on=sel, selected_by=self.cfg.select_by, stopped_at_target=record.stopped_early,
                 target_variance_ratio=self.cfg.target_variance_ratio or None, best_iteration=self.best_iteration,
                 best_variance_ratio=self.best_variance_ratio, final_variance_ratio=float(self.mean_variance_ratio()),
                 norm_ratio=mean_nr, fraction_to_origin=1 - mean_nr,
                 norm_ratio_per_layer={n: x for n, x, m in zip(self.names, nr.tolist(), self.ever_moved.tolist()) if m},
                 best_norm_ratio=best.get("mean_norm_ratio"), best_fraction_to_origin=best.get("fraction_to_origin"))
        for split in ("test", "validation"):
            for key in [key for key in start if key.startswith(f"{split}_")]:
                s[f"start_{key}"] = start[key]
                s[f"best_{key}"] = best.get(key)
        return s
