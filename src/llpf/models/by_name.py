"""torchvision's classification models by builder name: ``[model] name = "torchvision:<builder>"``.

The paper's later version runs M2M on MobileNet, ShuffleNet, EfficientNet,
RegNet and others, most of them built by torchvision. Any builder that
``torchvision.models.list_models`` lists (``mobilenet_v2``,
``shufflenet_v2_x0_5``, ``efficientnet_b0``, ``regnet_y_400mf``,
``resnet50``, ``vgg11_bn``, ``convnext_tiny``, ``vit_b_16`` ...) is built
with ``weights=None`` (nothing is ever fetched), ``num_classes``, and:

* ``width``: the builder's width multiplier (``width_mult``) where it has one
  (MobileNetV2 and V3); other families carry their width in their name
  (``shufflenet_v2_x0_5``, ``mnasnet0_5``, ``regnet_x_400mf``).
* ``in_channels``: the first convolution takes that many channels.
* ``stem = "cifar"``: what the CIFAR versions of these nets do for 32x32
  inputs: the first convolution becomes a 3x3 stride-1 one, and a max-pool
  in the stem (before the second convolution: ResNet's, ShuffleNetV2's,
  DenseNet's) is removed. Every parameter keeps its name.
* ``image_size``: passed to the Vision Transformers, whose position
  embeddings are sized by it.
* GoogLeNet and Inception v3 are built without their auxiliary classifiers,
  so that training gives one output as every other model does.
"""
from __future__ import annotations

import difflib

from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError

PREFIX = "torchvision:"
WIDTH_KEYWORD = "width_mult"  # the builders' name for a width multiplier (MobileNetV2, MobileNetV3)
# Builders whose auxiliary classifiers make the training forward pass return a tuple: built without them.
AUX_CLASSIFIERS = {"googlenet", "inception_v3"}


def torchvision_names() -> list[str]:
    """The classification builders torchvision offers."""
    import torchvision  # imported where a torchvision model is named: LeNet5 on digits never needs it

    return torchvision.models.list_models(module=torchvision.models)


def builder_name(cfg: ModelConfig) -> str:
    """The builder ``cfg.name`` names (``"torchvision:mobilenet_v2"`` -> ``"mobilenet_v2"``), checked."""
    name = cfg.name[len(PREFIX):]
    known = torchvision_names()
    if name not in known:
        near = difflib.get_close_matches(name, known, n=3)
        hint = f" (did you mean {' or '.join(near)}?)" if near else ""
        raise ConfigError(f"model.name: torchvision has no classification model {name!r}{hint}; "
                          f"known: {', '.join(known)}")
    return name


def build_torchvision(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised torchvision model as ``cfg`` describes it (never pretrained weights)."""
    name = builder_name(cfg)
    kwargs = {"weights": None, "num_classes": cfg.num_classes}
    if cfg.width != 1.0:
        kwargs[WIDTH_KEYWORD] = cfg.width
    if name.startswith("vit_"):
        kwargs["image_size"] = cfg.image_size
    if name in AUX_CLASSIFIERS:
        kwargs["aux_logits"] = False
    from torchvision.models import get_model_builder

    try:
        model = get_model_builder(name)(**kwargs)
    except TypeError as e:
        if WIDTH_KEYWORD in str(e):
            raise ConfigError(f"model.width: torchvision:{name} takes no width multiplier (mobilenet_v2 and "
                              f"mobilenet_v3_* do; other families name their width: shufflenet_v2_x0_5, "
                              f"mnasnet0_5, regnet_x_400mf ...); remove width or set it to 1.0") from None
        raise
    return _adapt_stem(model, name, cfg)


def _adapt_stem(model: nn.Module, name: str, cfg: ModelConfig) -> nn.Module:
    """The first convolution takes ``in_channels``; with ``stem = "cifar"`` it is 3x3 stride 1 and the stem's
    max-pool goes."""
    from torchvision.models import MaxVit, SwinTransformer, VisionTransformer

    cifar = cfg.stem == "cifar"
    if cifar and isinstance(model, (VisionTransformer, SwinTransformer, MaxVit)):
        raise ConfigError(f"model.stem: torchvision:{name} embeds image patches and has no convolutional stem to "
                          f"adapt; leave stem at \"default\"")
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    first_name, first = convs[0]
    if cifar or cfg.in_channels != first.in_channels:
        kernel, stride, padding = ((3, 3), (1, 1), (1, 1)) if cifar else (first.kernel_size, first.stride,
                                                                             first.padding)
        conv = nn.Conv2d(cfg.in_channels, first.out_channels, kernel, stride=stride, padding=padding,
                         bias=first.bias is not None)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's CNNs do
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
        model.set_submodule(first_name, conv)
    if cifar:
        second = convs[1][0] if len(convs) > 1 else None
        for n, m in model.named_modules():
            if n == second:
                break
            if isinstance(m, nn.MaxPool2d):
                model.set_submodule(n, nn.Identity())
                break
    return model
