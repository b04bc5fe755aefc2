"""What the methods between two fixed models share: the straight line, AutoNEB and the one-bend curves.

Their ends are the two given models and never move; what moves lies between
them (a position along the line, a band of pivots, a bend). One driver
iteration is one step of that: the next point of the line, one band step,
one curve step. Each phase of the schedule is one stage of the method
(AutoNEB's cycles; one for a curve or a line), so the ``phase`` column of a run
counts cycles. The driver evaluates the method's representative point
(``model_of``: AutoNEB's and a curve's midpoint, the line's current point);
when the path ends the method hands over the path it built as
:class:`~llpf.methods.base.Knots`, which ``llpf compare`` evaluates densely.
"""
from __future__ import annotations

import copy
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Phase, method_config
from ..flat import cpu_state, layout_of
from ..runtime import pick_device
from ..schedule import ResolvedPhase
from ..train import LossFn
from .base import Method, TrainBatches


def stages(steps: list[int], names: tuple[str, ...]) -> list[ResolvedPhase]:
    """One schedule phase per stage of ``steps[i]`` iterations, every layer moved."""
    out, it = [], 0
    for i, n in enumerate(steps):
        out.append(ResolvedPhase(i, Phase(iterations=n), tuple(names), it + 1, it + n))
        it += n
    return out


class FixedEnds(Method):
    """A method from ``start`` to ``dest`` that never moves either; its table is a ``config_class``.

    Subclasses set ``config_class``, build their engine in ``build`` and give
    their stages' lengths (``stage_steps``), their representative point
    (``point``, a flat vector of ``self.fm``) and their state.
    """

    needs_dest = True
    config_class: ClassVar[type]

    def __init__(self, start: nn.Module, cfg, train_data, *, dest: nn.Module | None = None,
                 loss_fn: LossFn | None = None, device=None, augmentation: str | None = None):
        self.cfg = method_config(self.config_class, cfg)
        self.device = pick_device(device)
        self.loss_fn = loss_fn or F.cross_entropy
        self.zero_lengths = [self._check_models(start, dest)]
        torch.manual_seed(self.cfg.seed)
        self.names = layout_of(start).names
        self.end_states = (cpu_state(start), cpu_state(dest))  # the ends of the path, buffers included
        self.batches = TrainBatches(train_data, self.cfg.batch_size, self.cfg.seed, self.device, self.cfg.augment,
                                    augmentation)
        self.build(start, dest, train_data)
        self.restage()
        self._view: nn.Module | None = None

    def restage(self) -> None:
        """The schedule from ``stage_steps()``, again when a method sets a stage's length as it starts (AutoNEB
        with a budget): the stages already run keep theirs, so the driver's iteration stays in the same stage."""
        self.schedule = stages(self.stage_steps(), self.names)
        self.total = self.schedule[-1].last

    def build(self, start: nn.Module, dest: nn.Module, train_data) -> None:
        raise NotImplementedError

    def stage_steps(self) -> list[int]:
        raise NotImplementedError

    def point(self) -> Tensor:
        """The representative point, a flat vector of ``self.fm`` (the path's midpoint)."""
        raise NotImplementedError

    def model_of(self, k: int) -> nn.Module:
        if self._view is None:
            self._view = copy.deepcopy(self.fm.module)
        self._view.load_state_dict(self.fm.state_at(self.point()))
        return self._view

    def knot_states(self, vectors: list[Tensor]) -> list[dict[str, Tensor]]:
        """States of the flat ``vectors`` of a path from start to dest; the two ends are the given models."""
        inner = [{n: v.cpu().clone() for n, v in self.fm.state_at(vec).items()} for vec in vectors[1:-1]]
        return [self.end_states[0], *inner, self.end_states[1]]
