"""Data augmentation for endpoint training (and, optionally, Train_r), applied to whole batches on the device.

The paper's Table 3 gives the optimiser recipes for the start and destination
models, not their augmentation; the usual CIFAR augmentation is used here, as
in the authors' public code: a random 32x32 crop of the image padded by 4
pixels (reflected), then a horizontal flip with probability 1/2. The batch
never leaves the device: each sample's crop offset and flip are drawn there
and applied with two gathers and one select, with no per-sample Python loop.
MNIST-like sets and the embedded digits train without augmentation.

Train_r draws plain batches, as in the paper; ``augmented`` wraps its batch
source when a path config sets ``augment = true``.
"""
from __future__ import annotations

from collections.abc import Iterator
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


class AugmentedBatches:
    """``(x, y)`` batches of ``source`` with ``fn`` applied to each ``x``, drawing from one ``generator``.

    The wrapper keeps the source's kind: over a stream (an iterator, such as
    :class:`~llpf.data.BatchStream`) it is a stream; over a re-iterable (a
    list, a DataLoader) each pass re-reads the source, with new draws. The
    generator must live on the device the batches arrive on; its state is the
    wrapper's ``state_dict``, so a resumed run draws the same augmentations.
    """

    def __init__(self, source, fn: Augment, generator: torch.Generator | None = None):
        self.source, self.fn, self.generator = source, fn, generator
        self.stream = isinstance(source, Iterator)

    def apply(self, batch) -> tuple[Tensor, Tensor]:
        x, y = batch
        return self.fn(x, generator=self.generator), y

    def __iter__(self):
        return self if self.stream else map(self.apply, self.source)

    def __next__(self) -> tuple[Tensor, Tensor]:
        if not self.stream:
            raise TypeError("a wrapper over a re-iterable is not itself an iterator: iterate over it")
        return self.apply(next(self.source))

    def state_dict(self) -> dict:
        return {"generator": None if self.generator is None else self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if self.generator is not None and state.get("generator") is not None:
            self.generator.set_state(state["generator"])


def augmented(batches, name: str | None, generator: torch.Generator | None = None):
    """Train_r's batches with the augmentation called ``name`` (``PathConfig.augment``).

    ``name`` is an augmentation name (``default_augmentation(dataset)`` gives a
    dataset's); "none" or None returns ``batches`` itself, untouched.
    """
    fn = augment(name)
    return batches if fn is None else AugmentedBatches(batches, fn, generator)
