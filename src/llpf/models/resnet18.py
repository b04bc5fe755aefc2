"""ResNet18 (He et al. 2016) in torchvision's layout, in its CIFAR and ImageNet forms, at any width.

The paper's layer names "follow the PyTorch implementation" (Appendix A.4,
Table 1: ``conv1.weight``, ``bn1.*``, ``layer1.*`` ... ``fc.*``), so the
model is torchvision's ``resnet18``: the same modules under the same names,
torchvision's ``BasicBlock`` and its initialisation (Kaiming normal, fan-out,
for convolutions; BatchNorm weight 1, bias 0). The CIFAR form has a 3x3
stride-1 stem and no max-pool, the usual adaptation to 32x32 inputs; the
ImageNet form has torchvision's 7x7 stride-2 stem and max-pool. 11.17M
parameters with 10 classes (11.22M with 100); the ImageNet form has 11.69M.

``width`` scales the four stages' channels (64, 128, 256, 512 at 1.0, the
paper's model); at 0.25 they are 16, 32, 64, 128 and the model has about a
sixteenth of the parameters.
"""
from __future__ import annotations

from pathlib import Path
from torch import Tensor, nn

from ..errors import CheckpointError
from ..files import load_weights
from .width import scaled

STAGE_CHANNELS = (64, 128, 256, 512)

class ResNet18(nn.Module):
    """torchvision's ResNet18 (two BasicBlocks per stage) with ``width`` times its channels."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0, cifar: bool = True):
        from torchvision.models.resnet import BasicBlock, conv1x1  # here: LeNet5 on digits never imports torchvision

        super().__init__()
        channels = [scaled(c, width) for c in STAGE_CHANNELS]
        k, stride = (3, 1) if cifar else (7, 2)
        self.conv1 = nn.Conv2d(in_channels, channels[0], k, stride=stride, padding=k // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        planes_in = channels[0]
        for i, planes in enumerate(channels):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or planes_in != planes:
                down = nn.Sequential(conv1x1(planes_in, planes, stride), nn.BatchNorm2d(planes))
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(planes_in, planes, stride, down),
                                                         BasicBlock(planes, planes)))
            planes_in = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet18_cifar(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNet18:
    """ResNet18 with a 3x3 stride-1 stem and no max-pool, for 32x32 images."""
    return ResNet18(num_classes, in_channels, width, cifar=True)


def resnet18_imagenet(num_classes: int = 1000, in_channels: int = 3, width: float = 1.0) -> ResNet18:
    """torchvision's ImageNet ResNet18 (no weights; see ``load_torchvision_resnet18_weights``)."""
    return ResNet18(num_classes, in_channels, width, cifar=False)


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
