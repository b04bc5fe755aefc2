"""The fast path of a training step: bf16 autocast, channels_last inputs, ``torch.compile``.

Three :class:`~llpf.config.PathConfig` settings choose it. ``bf16`` and
``channels_last`` are "auto" by default, which means on for CUDA and off
elsewhere ("on" and "off" force them); ``channels_last`` applies to conv nets
only. ``compile`` is off by default: it is turned on only where it was
measured to help. Only Train_r's steps take the fast path; evaluations run in
the parameters' own precision, so the recorded verdicts do not depend on it.

Under bf16 autocast the parameters and their gradients stay float32 (the
flat vector is updated in float32); convolutions and matrix products run in
bf16, while BatchNorm's statistics and the loss are computed in float32, as
autocast does for them.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class FastPath:
    """Which parts of the fast path a run's training steps take."""

    bf16: bool = False
    channels_last: bool = False
    compile: bool = False

    def autocast(self, device: torch.device):
        """The context a training step's forward pass and loss run in."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)

    @staticmethod
    def module(model: nn.Module) -> nn.Module:
        """A copy of ``model`` whose BatchNorm layers take float32 inputs under autocast.

        A vmapped BatchNorm needs its input in the dtype of its float32
        statistics (a one-path BatchNorm takes bf16 inputs as they are).
        """
        model = copy.deepcopy(model)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.register_forward_pre_hook(_float_inputs)
        return model

    def inputs(self, x: Tensor) -> Tensor:
        """A batch of images in the memory format the step wants (NHWC with channels_last)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


def _float_inputs(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _switch(value: str, default: bool) -> bool:
    return default if value == "auto" else value == "on"


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def fast_path(cfg, device, model: nn.Module) -> FastPath:
    """The fast path ``cfg`` (a PathConfig) asks for on ``device`` for ``model``."""
    cuda = torch.device(device).type == "cuda"
    return FastPath(bf16=_switch(cfg.bf16, cuda),
                    channels_last=_switch(cfg.channels_last, cuda) and has_conv(model),
                    compile=cfg.compile)
