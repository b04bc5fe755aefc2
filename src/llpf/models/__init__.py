"""The model zoo: architectures of the paper, built by name from a ModelConfig."""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from .cct import cct7_3x1
from .lenet5 import LeNet5
from .resnet18 import resnet18_cifar, resnet18_imagenet

MODELS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "lenet5": lambda c: LeNet5(c.num_classes, c.in_channels, c.image_size),
    "resnet18": lambda c: resnet18_cifar(c.num_classes, c.in_channels),
    "resnet18-imagenet": lambda c: resnet18_imagenet(c.num_classes, c.in_channels),
    "cct7-3x1": lambda c: cct7_3x1(c.num_classes, c.in_channels, c.image_size),
}


def build_model(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised model of the architecture ``cfg.name``."""
    try:
        make = MODELS[cfg.name]
    except KeyError:
        raise ConfigError(f"unknown model {cfg.name!r}; known: {', '.join(sorted(MODELS))}") from None
    return make(cfg)
