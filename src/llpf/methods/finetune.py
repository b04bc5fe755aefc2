"""The two baselines M2O is measured against: each one half of Algorithm 2.

M2O (Algorithm 2) alternates a Move toward the origin (line 6) with Train_r
(line 8). Taking one half away gives the simple alternatives a post-training
regulariser should beat:

* :class:`FineTune` keeps Train_r and drops Move: plain SGD at the config's
  ``lr`` and ``momentum``, with ``weight_decay`` shrinking a parameter by
  ``1 - lr x weight_decay`` per step, as Move shrinks a layer by ``1 - step_a``
  per iteration: every parameter, or with ``weight_decay_on = "moved"`` (as
  ``llpf m2o-baselines`` runs it) only the layers M2O moves, so normalisation
  layers are spared as M2O spares them. Its phases give only the iteration
  count and the rounds per iteration; their Move step sizes are not used.
* :class:`MoveOnly` keeps Move's schedule and drops Train_r: T Moves toward the
  origin and no gradient step, so a moved layer ends at ``(1 - step_a)^T``
  times its start when ``step_f`` is 0.

Both read the ``[m2o]`` table and keep M2O's bookkeeping (norm and variance
ratios of the layers M2O would move, the best point on ``select_on``), so the
three share run directories, evaluation, best-point selection and figures.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..geometry import move_
from ..schedule import ResolvedPhase
from .m2o import M2O


class FineTune(M2O):
    """Plain fine-tuning with weight decay: Train_r alone, at the uniform rate ``cfg.lr``."""

    name = "finetune"
    table = "m2o"

    def iterate(self, iteration: int, phase: ResolvedPhase) -> tuple[Tensor, int]:
        return self.train_r(phase.phase)  # no Move, no AngleConformal: every layer at cfg.lr


class MoveOnly(M2O):
    """Algorithm 2's Move (line 6) alone: no Train_r, no gradient step.

    The batch loss of a row is the loss of the next training batch at the
    moved point (a forward pass without gradients, in training mode as Train_r
    would see it), so the run's batch-loss column stays meaningful.
    """

    name = "move-only"
    table = "m2o"

    def iterate(self, iteration: int, phase: ResolvedPhase) -> tuple[Tensor, int]:
        ph = phase.phase
        with torch.no_grad():
            move_(self.fp.flat, None, self.fp.seg, ph.step_a, ph.step_f, self.masks[phase.index], self.cfg.step_rule)
            x, y = next(self.batches)
            self.model.train()
            loss = self.loss_fn(self.model(x.to(self.device)), y.to(self.device))
        return loss, 0
