"""One architecture evaluated anywhere in its flat parameter space.

The baselines hold their points (AutoNEB's pivots, a curve's bend) as flat
vectors in the order of :func:`llpf.train.layout_of`, and evaluate the model at
any such vector with :func:`torch.func.functional_call`: no copy of the model
per point and no curve-aware layer types, so every ``nn.Module`` llpf accepts
works. Gradients flow back into whatever tensor the vector was computed from
(a pivot, or a curve's bend through the curve formula).

Training-time losses run in train mode: BatchNorm normalises with the batch's
own statistics and its running buffers (in the scratch copy this class owns)
are never trusted. Evaluated points get their running statistics recomputed
over a data split (:func:`llpf.analysis.barriers.recompute_bn_stats`), the way
Garipov et al. (2018) and ``llpf barrier`` do.
"""
from __future__ import annotations

import copy
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..data import Split
from ..errors import ConfigError
from ..evaluation import RECALIBRATION_BATCH
from ..flat import check_same_architecture, layout_of
from ..runtime import pick_device
from ..train import DEFAULT_METRICS, LossFn, MetricFn, evaluate_state, has_batchnorm, recompute_bn_stats

OPTIMIZERS = ("sgd", "adam")  # the choices of AutoNEBConfig.optimizer and CurveConfig.optimizer


class FlatModel:
    """A scratch copy of ``model`` that computes losses at flat parameter vectors."""

    def __init__(self, model: nn.Module, loss_fn: LossFn = F.cross_entropy, device=None):
        device = pick_device(device) if device is not None else next(model.parameters()).device
        self.module = copy.deepcopy(model).to(device)
        self.layout = layout_of(self.module)
        self.loss_fn = loss_fn
        self.device = device
        self.batchnorm = has_batchnorm(self.module)
        self._base_state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def vector(self, model: nn.Module) -> Tensor:
        """``model``'s trainable parameters as one new flat vector (layout order) on this device."""
        check_same_architecture(self.module, model)
        params = dict(model.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.layout.names]).to(self.device).clone()

    def params(self, vec: Tensor) -> dict[str, Tensor]:
        """The layers of ``vec`` by name (views, so gradients reach ``vec``)."""
        return dict(zip(self.layout.names, self.layout.split(vec)))

    def loss(self, vec: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Batch loss at ``vec`` in train mode, differentiable in ``vec``."""
        self.module.train()
        out = functional_call(self.module, self.params(vec), (x.to(self.device),))
        return self.loss_fn(out, y.to(self.device))

    def loss_and_grad(self, vec: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Batch loss at ``vec`` and its gradient with respect to ``vec``."""
        v = vec.detach().requires_grad_(True)
        loss = self.loss(v, x, y)
        (g,) = torch.autograd.grad(loss, v)
        return loss.detach(), g

    def state_at(self, vec: Tensor) -> dict[str, Tensor]:
        """A full state dict: parameters from ``vec``, buffers (and frozen parameters) from the first model."""
        state = dict(self._base_state)
        state.update({n: v.detach() for n, v in self.params(vec).items()})
        return state

    def evaluate(self, vec: Tensor, splits: Mapping[str, Split], bn_data: Split | None = None,
                 metrics: Mapping[str, MetricFn] = DEFAULT_METRICS, batch_size: int = 1024) -> dict[str, float]:
        """Loss and metrics of every split at ``vec`` (keys ``NAME_loss``; bare ``loss`` for the name "").

        BatchNorm statistics are recomputed over ``bn_data`` (default: the
        ``train`` split, else the first one) when the model has BatchNorm.
        """
        bn = bn_data if bn_data is not None else splits.get("train", next(iter(splits.values())))
        return evaluate_state(self.module, self.state_at(vec), splits, self.loss_fn, metrics, batch_size,
                              self.batchnorm, bn)

    def model_at(self, vec: Tensor, bn_data: Split | None = None, batch_size: int = 1024) -> nn.Module:
        """A new module holding ``vec`` (BatchNorm statistics recomputed over ``bn_data`` if it has BatchNorm)."""
        m = copy.deepcopy(self.module)
        m.load_state_dict(self.state_at(vec))
        if self.batchnorm:
            if bn_data is None:
                raise ValueError("a model with BatchNorm needs bn_data to recompute its statistics")
            recompute_bn_stats(m, bn_data.batches(batch_size or RECALIBRATION_BATCH))
        return m.eval()


def make_optimizer(params: Iterable[Tensor], name: str, lr: float, momentum: float = 0.0,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """SGD (with ``momentum``) or Adam over ``params``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
