"""One LLPF iteration over K paths: the loop bodies of Algorithms 1 and 2, batched.

The same operations as ``m2m_iteration`` / ``m2o_iteration`` for one path, on
the ``[K, n]`` tensor of :class:`BatchedParams`: per-path destinations
``[K, n]``, start variances ``[K, L]``, and layer masks ``[L]`` (shared) or
``[K, L]`` (per path). Retired paths are masked out of every operation.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..config import PathConfig
from ..geometry import angle_conformal_lr, move_, variance_correction_
from ..schedule import ResolvedPhase
from .params import BatchedParams
from .train_r import BatchedTrainR


def _active(mask: Tensor, bp: BatchedParams) -> Tensor:
    """A layer mask restricted to the active paths (``[K, L]`` once a path is retired)."""
    return mask if bp.active_mask is None else mask & bp.active_mask[:, None]


def batched_m2m_iteration(bp: BatchedParams, dest: Tensor, v: Tensor, rp: ResolvedPhase, cfg: PathConfig,
                          train_r: BatchedTrainR, moved: Tensor, corrected: Tensor) -> tuple[Tensor, Tensor]:
    """Algorithm 1 lines 5-8 for K paths: Move, VarianceCorrection, Train_r, VarianceCorrection.

    ``v`` ``[K, L]`` holds each path's sphere S_var. Returns the batch loss of
    each path ``[K]`` and its Train_r rounds ``[K]``.
    """
    ph = rp.phase
    moved, corrected = _active(moved, bp), _active(corrected, bp)
    with torch.no_grad():
        move_(bp.flat, dest, bp.seg, ph.step_a, ph.step_f, moved, cfg.step_rule)  # M1 = Move(P_i, D)
        variance_correction_(bp.flat, v, bp.seg, corrected)  # M2 = VarianceCorrection(M1, S_var)
    loss, rounds = train_r(ph)  # M3 = Train_r(M2)
    with torch.no_grad():
        variance_correction_(bp.flat, v, bp.seg, corrected)  # P_{i+1} = VarianceCorrection(M3, S_var)
    return loss, rounds


def batched_m2o_iteration(bp: BatchedParams, v0: Tensor, rp: ResolvedPhase, cfg: PathConfig,
                          train_r: BatchedTrainR, moved: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Algorithm 2 lines 6-8 for K paths: Move toward O, AngleConformal, Train_r.

    Returns the batch losses ``[K]``, rounds ``[K]`` and the per-path per-layer
    learning rates ``[K, L]`` Train_r used.
    """
    ph = rp.phase
    with torch.no_grad():
        move_(bp.flat, None, bp.seg, ph.step_a, ph.step_f, _active(moved, bp), cfg.step_rule)  # N = Move(P_i, O)
        lr = angle_conformal_lr(cfg.lr, bp.seg.variance(bp.flat), v0, moved)  # x = AngleConformal(N, v)
    loss, rounds = train_r(ph, lr)  # P_{i+1} = Train_r(N, x)
    return loss, rounds, lr
