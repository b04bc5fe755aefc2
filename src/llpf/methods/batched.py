"""M2M and M2O over K paths of one architecture at once: ``m2m-batched`` and ``m2o-batched``.

The K points are one ``[K, n]`` tensor (:mod:`llpf.batched`): Move and both
VarianceCorrections are one operation over all paths, Train_r takes one
vmapped gradient per step. Path k draws its batches as it would alone with seed
``seeds[k]`` (default ``cfg.seed + k``, the seed ``llpf reproduce`` gives
repetition k), stops Train_r by its own "until loss < L" rule, gets its own
AngleConformal rates, and is recorded, judged and checkpointed exactly as a
one-path M2M or M2O (:class:`~llpf.methods.m2m.M2MRecords`,
:class:`~llpf.methods.m2o.M2ORecords`): its ``state_dict(k)`` is a one-path
checkpoint, so a path interrupted in a batch resumes alone or in another batch.

Each path's kind is ``m2m`` or ``m2o``: its summary and run directory read as
those of a path run alone. Train_r draws plain batches from a tensor
:class:`~llpf.data.Split`; ``augment = true`` and loaders take the one-path methods.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor, nn

from ..batched import BatchedParams, BatchedTrainR, StackedStreams, batched_m2m_iteration, batched_m2o_iteration
from ..config import PathConfig
from ..data import Split
from ..errors import ConfigError
from ..fast import fast_path
from ..flat import flat_of
from ..schedule import ResolvedPhase
from ..train import LossFn
from .base import FlatPaths, ratio_to
from .m2m import M2MRecords
from .m2o import M2ORecords


def _models(given, what: str) -> list[nn.Module]:
    if given is None:
        return []
    if isinstance(given, nn.Module):
        raise ConfigError(f"a batched method takes a list of {what} models, one per path")
    return list(given)


class BatchedPaths(FlatPaths):
    """K paths from ``start`` (a list of K models) to ``dest`` (K models, or None), drawing from one Split.

    ``seeds`` (default ``cfg.seed + k``) seeds path k's batch stream. The
    models passed in are not modified.
    """

    def __init__(self, start: Sequence[nn.Module], cfg: PathConfig | dict | None, train_data, *,
                 dest: Sequence[nn.Module] | None = None, seeds: Sequence[int] | None = None,
                 loss_fn: LossFn | None = None, device=None, augmentation: str | None = None):
        self._setup(cfg, device, loss_fn)
        starts, dests = _models(start, "start"), _models(dest, "destination")
        self._check_inputs(starts, dests, train_data, seeds)
        self.zero_lengths = [self._check_models(a, dests[k] if dests else None) for k, a in enumerate(starts)]
        self.paths = len(starts)
        self.seeds = [self.cfg.seed + k for k in range(self.paths)] if seeds is None else [int(s) for s in seeds]
        torch.manual_seed(self.seeds[0])
        self.bp = BatchedParams(starts, self.device)
        self.seg = self.bp.seg
        self._resolve(self.bp.layout, starts[0])
        self.start_flat = self.bp.flat.clone()
        self.v0 = self.seg.variance(self.start_flat)
        self.dests = dests or None
        if dests:
            self.dest_flat = torch.stack([flat_of(d, self.names).to(self.device, self.bp.flat.dtype) for d in dests])
        self.streams = StackedStreams(train_data.to(self.device), self.cfg.batch_size, self.seeds)
        self.train_r = BatchedTrainR(self.bp, self.streams, self.loss_fn, self.cfg.lr, self.cfg.momentum,
                                     self.weight_decay(), fast_path(self.cfg, self.device, starts[0]))

    def _check_inputs(self, starts: list, dests: list, train_data, seeds) -> None:
        if not starts:
            raise ConfigError(f"{self.name} needs at least one start model")
        if dests and len(dests) != len(starts):
            raise ConfigError(f"{self.name}: {len(starts)} start models but {len(dests)} destinations")
        if seeds is not None and len(seeds) != len(starts):
            raise ConfigError(f"{self.name}: {len(starts)} paths but {len(seeds)} seeds")
        if not isinstance(train_data, Split):
            raise ConfigError(f"{self.name} draws Train_r's batches from a tensor Split; use the one-path "
                              f"method for a loader")
        if self.cfg.augment:
            raise ConfigError(f"{self.name} draws plain batches; augment = true needs the one-path method")

    @property
    def flat(self) -> Tensor:
        return self.bp.flat

    def of_path(self, t: Tensor, k: int) -> Tensor:
        return t[k]

    def dest_module(self, k: int) -> nn.Module:
        return copy.deepcopy(self.dests[k]).to(self.device)

    def model_of(self, k: int) -> nn.Module:
        """Path k's point in the scratch module (overwritten by the next call for another path)."""
        return self.bp.model_of(k)

    def retire(self, k: int) -> None:
        self.bp.retire(k)

    def state_dict(self, k: int) -> dict:
        """Path k's checkpoint in the one-path format: weights, stream position, Train_r state."""
        return {"model": self.bp.state_dict(k), "stream": self.streams.state_dict(k), "augment": None,
                "train_r": self.train_r.state_dict(k)}

    def load_state_dict(self, k: int, state: dict) -> None:
        self.bp.load_(k, state["model"])
        self.streams.load_state_dict(k, state["stream"])
        self.train_r.load_state_dict(k, state["train_r"])


class BatchedM2M(M2MRecords, BatchedPaths):
    """Algorithm 1 on K paths at once, each from ``start[k]`` to ``dest[k]``."""

    name = "m2m-batched"
    kind = table = "m2m"

    def iterate(self, iteration: int, phase: ResolvedPhase) -> tuple[Tensor, Tensor]:
        moved = self.masks[phase.index]
        corrected = self.all_layers if self.cfg.correct == "all" else moved
        return batched_m2m_iteration(self.bp, self.dest_flat, self.sphere(iteration, phase), phase, self.cfg,
                                     self.train_r, moved, corrected)


class BatchedM2O(M2ORecords, BatchedPaths):
    """Algorithm 2 on K paths at once, each from ``start[k]`` toward the origin."""

    name = "m2o-batched"
    kind = table = "m2o"
    last_lr: Tensor | None = None  # [K, L]: each path's AngleConformal rates in the last iteration
    _ratios: list[float] | None = None

    def iterate(self, iteration: int, phase: ResolvedPhase) -> tuple[Tensor, Tensor]:
        loss, rounds, self.last_lr = batched_m2o_iteration(self.bp, self.v0, phase, self.cfg, self.train_r,
                                                           self.masks[phase.index])
        self._ratios = None
        return loss, rounds

    def mean_variance_ratio_now(self, k: int) -> float:
        """Every path's mean variance ratio comes to the host in one transfer per iteration."""
        if self._ratios is None:
            ratio = ratio_to(self.seg.variance(self.bp.flat), self.v0)
            self._ratios = ratio[:, self.ratio_layers()].mean(1).tolist()
        return self._ratios[k]
