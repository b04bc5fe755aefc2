"""Train_r for K paths at once (Algorithm 1 line 7, Algorithm 2 line 8), one vmapped step for all.

Each step computes every path's gradient with ``torch.func``: the loss is a
function of one path's flat vector (unflattened by views), its buffers and its
batch; ``vmap`` runs it over the K rows of :class:`BatchedParams`. BatchNorm
running statistics update per path as in a one-path step. A path whose
"until loss < L" rule is met, or that is retired, stops updating (masked)
while the others go on.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.func import functional_call, grad_and_value, vmap

from ..config import Phase
from ..fast import FastPath
from ..train import LossFn
from .params import BatchedParams
from .streams import StackedStreams


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    """A ``[K]`` mask shaped to broadcast over ``like`` (``[K, ...]``)."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


class BatchedTrainR:
    """Train_r over K paths: plain SGD (optionally momentum, weight decay) on ``BatchedParams.flat``.

    Path k draws from its own stream in ``streams`` exactly as a one-path
    :class:`llpf.train.TrainR` would. ``lr`` of a call may be a ``[K, L]``
    (or ``[L]``) per-layer tensor, as AngleConformal gives it.
    """

    def __init__(self, bp: BatchedParams, streams: StackedStreams, loss_fn: LossFn, lr: float,
                 momentum: float = 0.0, weight_decay: float | Tensor = 0.0, fast: FastPath | None = None):
        if len(streams) != bp.paths:
            raise ValueError(f"{len(streams)} batch streams for {bp.paths} paths")
        self.bp, self.streams, self.loss_fn = bp, streams, loss_fn
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.fast = fast or FastPath()
        self.module = self.fast.module(bp.scratch) if self.fast.bf16 else bp.scratch
        self.buf = torch.zeros_like(bp.flat) if momentum else None
        self.grad_fn = vmap(grad_and_value(self._loss, has_aux=True), randomness="different")
        if self.fast.compile:
            self.grad_fn = torch.compile(self.grad_fn)

    def _loss(self, row: Tensor, fixed: dict, buffers: dict, x: Tensor, y: Tensor):
        """One path's batch loss as a function of its flat vector; also its updated buffers.

        On the fast path the forward pass runs under bf16 autocast (channels_last
        does not apply inside vmap).
        """
        buffers = {n: b.clone() for n, b in buffers.items()}  # updated in place by the forward (BatchNorm)
        with self.fast.autocast(self.bp.device):
            out = functional_call(self.module, (self.bp.params(row), fixed, buffers), (x,))
            return self.loss_fn(out, y), buffers

    def step(self, lr_elem: Tensor | float, going: Tensor | None = None, drawing=None) -> Tensor:
        """One SGD step of every path with ``going[k]`` (all when None); returns the ``[K]`` batch losses."""
        bp = self.bp
        x, y = self.streams.next(drawing)
        grad, (loss, buffers) = self.grad_fn(bp.flat, bp.frozen, bp.buffers, x, y)
        with torch.no_grad():
            for name, new in buffers.items():
                old = bp.buffers[name]
                old.copy_(new if going is None else torch.where(_rows(going, old), new, old))
            if isinstance(self.weight_decay, Tensor):  # per element ([n]), the same for every path
                grad = grad.addcmul(bp.flat, self.weight_decay)
            elif self.weight_decay:
                grad = grad.add(bp.flat, alpha=self.weight_decay)
            if self.buf is not None:
                moment = self.buf * self.momentum + grad
                self.buf.copy_(moment if going is None else torch.where(going[:, None], moment, self.buf))
                grad = self.buf
            if going is not None:
                grad = torch.where(going[:, None], grad, 0.0)
            if isinstance(lr_elem, Tensor):
                bp.flat.addcmul_(grad, lr_elem, value=-1.0)
            else:
                bp.flat.add_(grad, alpha=-lr_elem)
        return loss

    def __call__(self, phase: Phase, lr_per_layer: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Run Train_r under ``phase``'s rule on every active path.

        Returns the last batch loss of each path (``[K]``, on the device; NaN for
        a retired path) and the rounds each took (``[K]`` int64 on the CPU; 0 for
        a retired path). Fixed r never waits on the device; with ``until_loss``
        set, each step from ``min_rounds`` on brings the K losses to the host in
        one transfer, and a path stops once its loss is below the threshold (or
        not finite), the step ending when no path goes on or at ``max_rounds``.
        """
        bp = self.bp
        self.module.train()
        lr_elem = self.lr if lr_per_layer is None else bp.seg.expand(lr_per_layer)
        if not any(bp.active):
            return self._no_losses(), torch.zeros(bp.paths, dtype=torch.long)
        if phase.until_loss <= 0:
            for _ in range(phase.rounds):
                loss = self.step(lr_elem, bp.active_mask, bp.active)
            loss = loss if bp.active_mask is None else torch.where(bp.active_mask, loss, math.nan)
            return loss, torch.tensor([phase.rounds if a else 0 for a in bp.active])
        return self._until_loss(phase, lr_elem)

    def _until_loss(self, phase: Phase, lr_elem: Tensor | float) -> tuple[Tensor, Tensor]:
        """Train_r's "until loss < L" rule, applied to each path on its own (masked once met)."""
        bp = self.bp
        going_host, going = list(bp.active), bp.active_mask
        rounds, last = [0] * bp.paths, self._no_losses()
        for r in range(1, phase.max_rounds + 1):
            loss = self.step(lr_elem, going, going_host)
            last = loss if going is None else torch.where(going, loss, last)
            if r >= phase.min_rounds:
                stopped = self._stopped(loss.tolist(), phase.until_loss, going_host)  # the one host sync
                for k in stopped:
                    going_host[k], rounds[k] = False, r
                if not any(going_host):
                    break
                if stopped:
                    going = torch.tensor(going_host, device=bp.device)
        rounds = [phase.max_rounds if g else n for g, n in zip(going_host, rounds)]
        return last, torch.tensor(rounds)

    def _no_losses(self) -> Tensor:
        return torch.full((self.bp.paths,), math.nan, device=self.bp.device, dtype=self.bp.flat.dtype)

    @staticmethod
    def _stopped(values: list[float], threshold: float, going: list[bool]) -> list[int]:
        """Paths still going whose rule is met by this step's loss."""
        return [k for k, (v, g) in enumerate(zip(values, going)) if g and (v < threshold or not math.isfinite(v))]

    def state_dict(self, k: int) -> dict:
        """Path k's Train_r state in the format of ``TrainR.state_dict``."""
        return {"momentum_buffer": None if self.buf is None else self.buf[k].clone()}

    def load_state_dict(self, k: int, state: dict) -> None:
        if state.get("momentum_buffer") is not None and self.buf is not None:
            self.buf[k].copy_(state["momentum_buffer"])
