"""Data augmentation for endpoint training, applied to whole batches on the device.

The paper's Table 3 gives the optimiser recipes for the start and destination
models, not their augmentation; the usual CIFAR augmentation is used here, as
in the authors' public code: a random 32x32 crop of the image padded by 4
pixels (reflected), then a horizontal flip with probability 1/2. The batch
never leaves the device: each sample's crop offset and flip are drawn there
and applied with two gathers and one select, with no per-sample Python loop.
MNIST-like sets and the embedded digits train without augmentation.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

Augment = Callable[..., Tensor]  # (x [N, C, H, W], generator=None) -> augmented x of the same shape


def random_crop(x: Tensor, padding: int, mode: str = "reflect", generator: torch.Generator | None = None) -> Tensor:
    """Each sample cropped back to its size at a random offset after padding it by ``padding`` on every side."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode=mode)
    top, left = torch.randint(0, 2 * padding + 1, (2, n, 1), device=x.device, generator=generator)
    rows = (top + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, c, h, padded.shape[3])
    cols = (left + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def random_flip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Each sample mirrored left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def crop_flip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The CIFAR augmentation: random crop with 4-pixel reflected padding, then a random horizontal flip."""
    return random_flip(random_crop(x, 4, "reflect", generator), generator)


AUGMENTATIONS: dict[str, Augment | None] = {"none": None, "crop-flip": crop_flip}
DEFAULT_AUGMENTATION = {"cifar10": "crop-flip", "cifar100": "crop-flip"}  # every other dataset: "none"


def augment(name: str | None) -> Augment | None:
    """The augmentation called ``name`` ("none" or None gives None: train on the images as they are).

    The result maps a batch ``x`` [N, C, H, W] on any device to an augmented
    batch of the same shape; pass ``generator=`` (on ``x``'s device) to make
    it reproducible.
    """
    if name is None:
        return None
    try:
        return AUGMENTATIONS[name]
    except KeyError:
        raise ConfigError(f"unknown augmentation {name!r}; known: {', '.join(AUGMENTATIONS)}") from None


def default_augmentation(dataset: str) -> str:
    """The augmentation name an endpoint recipe uses for ``dataset`` by default."""
    return DEFAULT_AUGMENTATION.get(dataset, "none")
