"""The model zoo: architectures of the paper, and torchvision's by builder name, built from a ModelConfig."""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError, ModelMismatchError
from .by_name import PREFIX, build_torchvision
from .cct import cct7_3x1
from .lenet5 import LeNet5
from .resnet18 import resnet18_cifar, resnet18_imagenet

MODELS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "lenet5": lambda c: LeNet5(c.num_classes, c.in_channels, c.image_size, c.width),
    "resnet18": lambda c: resnet18_cifar(c.num_classes, c.in_channels, c.width),
    "resnet18-imagenet": lambda c: resnet18_imagenet(c.num_classes, c.in_channels, c.width),
    "cct7-3x1": lambda c: cct7_3x1(c.num_classes, c.in_channels, c.image_size, c.width),
}

# Models whose training forward pass draws random numbers (dropout, stochastic depth): a batch of paths would
# draw them differently from each path alone, so their repetitions are not batched by default.
STOCHASTIC_MODELS = {"cct7-3x1"}


def build_model(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised model of the architecture ``cfg.name`` (``torchvision:<builder>``: ``by_name``)."""
    if cfg.name.startswith(PREFIX):
        return build_torchvision(cfg)
    if cfg.stem != "default":
        raise ConfigError(f"model.stem applies to torchvision:<builder> models; {cfg.name!r} has its own stem")
    try:
        make = MODELS[cfg.name]
    except KeyError:
        raise ConfigError(f"unknown model {cfg.name!r}; known: {', '.join(sorted(MODELS))} and "
                          f"torchvision:<builder> (torchvision's classification models)") from None
    return make(cfg)


def draws_random_numbers(cfg: ModelConfig) -> bool:
    """Whether the model's training forward pass draws random numbers (dropout, stochastic depth)."""
    if not cfg.name.startswith(PREFIX):
        return cfg.name in STOCHASTIC_MODELS
    from torchvision.ops import StochasticDepth

    return any(isinstance(m, (nn.modules.dropout._DropoutNd, StochasticDepth)) and m.p > 0
               for m in build_model(cfg).modules())


def load_state(model: nn.Module, state: dict, where: str) -> nn.Module:
    """Load a state dict into ``model``, naming missing, unexpected or misshapen tensors (ModelMismatchError)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ModelMismatchError(f"{where} does not fit the model (missing: {missing[:3] or '-'}; "
                                 f"unexpected: {unexpected[:3] or '-'})")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise ModelMismatchError(f"{where}: {k} has shape {list(v.shape)}, the model expects "
                                     f"{list(expected[k].shape)}")
    model.load_state_dict(state)
    return model
