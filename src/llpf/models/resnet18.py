"""ResNet18 (He et al. 2016) as torchvision builds it, in its CIFAR and ImageNet forms.

The paper's layer names "follow the PyTorch implementation" (Appendix A.4,
Table 1: ``conv1.weight``, ``bn1.*``, ``layer1.*`` ... ``fc.*``), so both
variants are torchvision's ``resnet18`` itself. The CIFAR form swaps the 7x7
stride-2 stem for a 3x3 stride-1 convolution and drops the max-pool, the usual
adaptation to 32x32 inputs; the replaced modules keep their names, so every
parameter name is the same as in torchvision. 11.17M parameters with 10
classes (11.22M with 100); the ImageNet form has 11.69M.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from ..errors import CheckpointError
from ..files import load_weights

if TYPE_CHECKING:
    import torchvision  # imported where a ResNet is built: LeNet5 on digits never needs it


def _stem(in_channels: int, kernel_size: int, stride: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, 64, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as torchvision initialises convs
    return conv


def resnet18_cifar(num_classes: int = 10, in_channels: int = 3) -> torchvision.models.ResNet:
    """torchvision's ResNet18 with a 3x3 stride-1 stem and no max-pool, for 32x32 images."""
    import torchvision

    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = _stem(in_channels, 3, 1)
    model.maxpool = nn.Identity()
    return model


def resnet18_imagenet(num_classes: int = 1000, in_channels: int = 3) -> torchvision.models.ResNet:
    """torchvision's ImageNet ResNet18 as is (no weights; see ``load_torchvision_resnet18_weights``)."""
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = _stem(in_channels, 7, 2)
    return model


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]


def load_torchvision_resnet18_weights(model: nn.Module, path: str | Path | None = None) -> nn.Module:
    """Load ImageNet ResNet18 weights into ``model`` (strictly) and return it.

    ``path`` None asks torchvision for ``ResNet18_Weights.IMAGENET1K_V1`` (the
    69.758% top-1 model the paper's M2O starts from): it comes from torch's
    hub cache, or the network when the cache lacks it. Otherwise ``path`` is a
    local ``.safetensors`` file or a ``torch.save`` file read with
    ``weights_only=True`` (torchvision's own ``resnet18-f37072fd.pth`` works).
    """
    if path is None:
        import torchvision

        weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
        try:
            state = weights.get_state_dict(progress=False)
        except (OSError, RuntimeError) as e:  # URLError is an OSError; a bad hash is a RuntimeError
            raise CheckpointError(
                f"could not get torchvision's ResNet18 {weights.name} weights ({_one_line(e)}); "
                f"offline, fetch {weights.url} elsewhere and pass the file") from None
        where = f"torchvision {weights.name}"
    else:
        state = load_weights(path)
        where = str(path)
    from . import load_state

    return load_state(model, state, where)
