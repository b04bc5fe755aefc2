"""M2M: a low-loss path from a start model to a destination model (paper Algorithm 1).

``m2m_iteration`` is the loop body and reads line by line against Algorithm 1;
:class:`M2MRecords` is what an M2M path records, for one path or K batched
ones: the layer-wise distance to the destination at every evaluation, the
destination's own training loss, and the verdicts of paper section 4 in the
summary. :class:`M2M` is the two together for one path.

The variance sphere S_var that both VarianceCorrections project onto is the
start's in the paper (``sphere = "start"``); the paper's later version, for
modes trained with different hyperparameters, projects onto the destination's
(``"dest"``); ``"moving"`` takes a sphere from the start's to the
destination's over a phase (``llpf.schedule``). The floor a path can reach,
and so the verdict on its arrival, follows the sphere it ends on.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from ..config import PathConfig
from ..errors import PrerequisiteWarning
from ..flat import FlatParams
from ..geometry import distance_floor, layer_distances, move_, sphere_variance, variance_correction_
from ..schedule import ResolvedPhase
from ..train import TrainR
from .base import SMOOTH, Evaluate, FlatPaths, Record, SinglePath, ratio_to

PAPER_THRESHOLD = 0.1  # section 4: training losses and final layer-wise distances below 10^-1


def m2m_iteration(fp: FlatParams, dest: Tensor, v: Tensor, rp: ResolvedPhase, cfg: PathConfig, train_r: TrainR,
                  moved: Tensor, corrected: Tensor) -> tuple[Tensor, int]:
    """One iteration of Algorithm 1 (lines 5-8): Move, VarianceCorrection, Train_r, VarianceCorrection.

    ``v`` holds the variances of the sphere S_var (per layer; the start's in the paper).
    """
    ph = rp.phase
    with torch.no_grad():
        move_(fp.flat, dest, fp.seg, ph.step_a, ph.step_f, moved, cfg.step_rule)  # M1 = Move(P_i, D)
        variance_correction_(fp.flat, v, fp.seg, corrected)  # M2 = VarianceCorrection(M1, S_var)
    loss, rounds = train_r(ph)  # M3 = Train_r(M2)
    with torch.no_grad():
        variance_correction_(fp.flat, v, fp.seg, corrected)  # P_{i+1} = VarianceCorrection(M3, S_var)
    return loss, rounds


def smoothed_batch_loss_test(record: Record) -> dict:
    """Paper Figure 2's loss, tested: every iteration's batch loss as a trailing moving average over ``SMOOTH``
    iterations (fewer at the start), its largest value below 0.1 (true when no batch loss was recorded)."""
    top = record.max_smoothed_batch_loss if record.batch_losses else None
    return {"smoothed_batch_loss_max": top, "smoothed_over": SMOOTH,
            "smoothed_batch_loss_ok": top is None or top < PAPER_THRESHOLD}


class M2MRecords(FlatPaths):
    """What an M2M path records and how it is judged, for each of a method's paths.

    A subclass provides ``dest_module(k)`` (path k's destination as a module),
    ``dest_flat`` and the per-path points of :class:`FlatPaths`.
    """

    needs_dest = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dest_train_losses: list[float | None] = [None] * self.paths
        self.v_dest = self.seg.variance(self.dest_flat)  # the destination's variance sphere, per path and layer
        self.sphere_moves = any(rp.sphere != "start" for rp in self.schedule)
        self.fraction = 0.0  # the sphere of the last iteration: its fraction of the way to the destination's

    def sphere(self, iteration: int, phase: ResolvedPhase) -> Tensor:
        """S_var of this iteration: the variances VarianceCorrection projects onto (``v0``, the start's, by default)."""
        self.fraction = phase.sphere_fraction(iteration)
        return sphere_variance(self.v0, self.v_dest, self.fraction)

    def begin(self, evaluate: Evaluate) -> None:
        """Each destination's full training-set loss, once (for the relative threshold and section 3.2's premise)."""
        self.dest_train_losses = [evaluate(self.dest_module(k), sets=("train",)).get("train_loss")
                                  for k in range(self.paths)]

    def measure(self, k: int) -> dict:
        """Per-layer distances to D; where the sphere moves, also each layer's S_var over its start variance."""
        d = layer_distances(self.of_path(self.flat, k), self.of_path(self.dest_flat, k), self.seg).tolist()
        row = {**super().measure(k), **{f"dist/{n}": x for n, x in zip(self.names, d)}}
        if self.sphere_moves:
            v0 = self.of_path(self.v0, k)
            target = ratio_to(sphere_variance(v0, self.of_path(self.v_dest, k), self.fraction), v0).tolist()
            row["sphere_fraction"] = self.fraction
            row.update({f"target_var_ratio/{n}": x for n, x in zip(self.names, target)})
        return row

    def after_evaluation(self, k: int, iteration: int, row: dict, record: Record, measured: nn.Module) -> bool:
        if iteration == 0:
            self._warn_about_prerequisites(row.get("train_loss"), self.dest_train_losses[k])
        return False

    def _warn_about_prerequisites(self, start_loss: float | None, dest_loss: float | None) -> None:
        """Paper §3.2: endpoints must sit in flat minima with near-zero training loss."""
        for what, loss in (("start", start_loss), ("destination", dest_loss)):
            if loss is not None and loss > self.cfg.loss_threshold:
                warnings.warn(f"the {what} model's training loss {loss:.4f} is above the path's loss threshold "
                              f"{self.cfg.loss_threshold}: the paper's M2M needs endpoints with near-zero training "
                              f"loss (section 3.2); judge the path by its relative threshold", PrerequisiteWarning,
                              stacklevel=2)

    def state_dict(self, k: int) -> dict:
        return {**super().state_dict(k), "dest_train_loss": self.dest_train_losses[k]}

    def load_state_dict(self, k: int, state: dict) -> None:
        super().load_state_dict(k, state)
        self.dest_train_losses[k] = state["dest_train_loss"]

    def summary(self, k: int, record: Record) -> dict:
        """Two verdicts, both named: llpf's (``valid``) and the paper's (``valid_paper``, section 4).

        llpf's: the loss stays below L_thres and every layer reaches its
        variance-sphere floor within ``arrival_tolerance`` x its initial
        distance (the floor is 0 for a path that ends on the destination's
        sphere: it must reach the destination itself). The paper's: every
        training loss below 0.1 and every final layer-wise distance below 0.1.
        The loss is the full training-set loss every ``eval_every`` iterations
        where a ``train`` set was evaluated, else the batch losses
        (``judged_on``); the paper's verdict also needs every iteration's batch
        loss, smoothed over ``SMOOTH`` iterations as its Figure 2 draws it,
        below 0.1 (``smoothed_batch_loss_ok``).
        """
        cfg, seg = self.cfg, self.seg
        start, dest = self.of_path(self.start_flat, k), self.of_path(self.dest_flat, k)
        init = layer_distances(start, dest, seg)
        final = layer_distances(self.of_path(self.flat, k), dest, seg)
        ends_on = self.schedule[-1].sphere_to  # 1: the destination's sphere, where the floor is 0
        floor = distance_floor(start, dest, seg, ends_on)
        rel = torch.where(init > 0, final / torch.where(init > 0, init, 1.0), 0.0)
        floor_reached = bool((final <= floor + cfg.arrival_tolerance * init).all())
        judged_on = "train_loss" if math.isfinite(record.max_train_loss) else "batch_loss"
        loss = getattr(record, f"max_{judged_on}")
        loss = loss if math.isfinite(loss) else None
        ends = [record.start_metrics.get("train_loss"), self.dest_train_losses[k]]
        rel_thres = None
        if cfg.loss_threshold_relative and None not in ends:
            rel_thres = max(cfg.loss_threshold, cfg.loss_threshold_relative * max(ends))
        below = lambda thres: loss is not None and loss <= thres  # noqa: E731
        ok = not record.failure
        paper = {"loss_below": PAPER_THRESHOLD, "loss_ok": loss is not None and loss < PAPER_THRESHOLD,
                 "distance_below": PAPER_THRESHOLD, "distance_ok": bool((final < PAPER_THRESHOLD).all()),
                 **smoothed_batch_loss_test(record)}
        s = dict(
            judged_on=judged_on,
            judged_every=cfg.eval_every if judged_on == "train_loss" else 1,
            loss_threshold=cfg.loss_threshold,
            loss_ok=below(cfg.loss_threshold),
            batch_loss_exceedance=record.batch_losses_above / record.batch_losses if record.batch_losses else None,
            endpoint_train_loss={"start": ends[0], "dest": ends[1]},
            loss_threshold_relative=cfg.loss_threshold_relative or None,
            relative_threshold=rel_thres,
            loss_ok_relative=None if rel_thres is None else below(rel_thres),
            initial_distance=dict(zip(self.names, init.tolist())),
            final_distance=dict(zip(self.names, final.tolist())),
            distance_floor=dict(zip(self.names, floor.tolist())),
            excess_over_floor=dict(zip(self.names, (final - floor).tolist())),
            arrival_tolerance=cfg.arrival_tolerance,
            final_relative_distance_max=float(rel.max()),
            floor_reached=floor_reached,
            sphere={"phases": [rp.sphere for rp in self.schedule], "ends_on": "dest" if ends_on else "start"},
        )
        s["valid"] = bool(s["loss_ok"] and floor_reached and ok)
        s["valid_relative"] = None if rel_thres is None else bool(s["loss_ok_relative"] and floor_reached and ok)
        s["valid_paper"] = bool(paper["loss_ok"] and paper["smoothed_batch_loss_ok"] and paper["distance_ok"] and ok)
        s["paper_criteria"] = paper
        return s


class M2M(M2MRecords, SinglePath):
    """Algorithm 1 on one path; VarianceCorrection on every layer or only the moved ones (``cfg.correct``)."""

    name = "m2m"

    def iterate(self, iteration: int, phase: ResolvedPhase) -> tuple[Tensor, int]:
        moved = self.masks[phase.index]
        corrected = self.all_layers if self.cfg.correct == "all" else moved
        return m2m_iteration(self.fp, self.dest_flat, self.sphere(iteration, phase), phase, self.cfg, self.train_r,
                             moved, corrected)
