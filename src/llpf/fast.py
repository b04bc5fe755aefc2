"""The fast path of a training step: bf16 autocast, channels_last inputs, ``torch.compile``.

Three :class:`~llpf.config.PathConfig` settings choose it. ``bf16`` is off by
default: the paper's paths run in fp32, and bf16 changes Train_r's numerics,
its until-loss decisions (which step's batch loss falls below L) and a
batched path's BatchNorm against one path's; "on" (or "auto", on for CUDA
only) names it as the speed setting it is (``--bf16`` on the command line).
``channels_last`` is "auto" by default, on for CUDA and off elsewhere, and
applies to conv nets only; it changes the memory layout, not the arithmetic.
``compile`` is off by default: it is turned on only where it was measured to
help. Only Train_r's steps take the fast path; evaluations run in the
parameters' own precision. Every run's ``summary.json`` records the numerics
its steps ran with (``numerics``).

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

    def numerics(self, dtype: torch.dtype) -> dict:
        """What a path's ``summary.json`` records: the parameters' dtype and how its training steps computed."""
        name = str(dtype).removeprefix("torch.")
        return {"parameters": name, "train_steps": f"bf16 autocast ({name} parameters)" if self.bf16 else name,
                "channels_last": self.channels_last, "compile": self.compile}

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
