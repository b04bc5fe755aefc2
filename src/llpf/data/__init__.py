"""Datasets as tensors on the compute device, and the batch stream Train_r draws from.

Small datasets (digits, MNIST-sized, CIFAR-sized) are held whole on the device;
batches are index slices of a permutation drawn there, so a training step never
waits on a loader. Loaders register themselves in ``DATASETS`` by name.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

from ..config import Config, DataConfig
from ..errors import ConfigError, DataError


@dataclass
class Split:
    """One split of a dataset: inputs ``x`` and integer labels ``y``, same length."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))

    def subset(self, n: int, seed: int = 0) -> "Split":
        """A fixed random ``n`` of its samples (drawn with ``seed``); itself when ``n`` is 0 or covers it."""
        if n <= 0 or n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].to(self.y.device)
        return Split(self.x[idx], self.y[idx])

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The split in order, in batches (for evaluation)."""
        for i in range(0, len(self), batch_size):
            yield self.x[i:i + batch_size], self.y[i:i + batch_size]


@dataclass
class Bundle:
    """The splits of a dataset and what a model needs to know about it."""

    train: Split
    test: Split
    num_classes: int
    validation: Split | None = None

    def to(self, device) -> "Bundle":
        v = self.validation.to(device) if self.validation is not None else None
        return Bundle(self.train.to(device), self.test.to(device), self.num_classes, v)


class BatchStream:
    """An endless stream of shuffled batches that continues across iterations.

    Each epoch is a fresh permutation drawn from the stream's own generator; the
    last partial batch of an epoch is dropped. ``state_dict`` holds the epoch
    position and generator state, so a resumed run draws the same batches.
    """

    def __init__(self, split: Split, batch_size: int, seed: int = 0):
        if len(split) == 0:
            raise DataError("the training split is empty")
        self.split = split
        self.batch_size = min(batch_size, len(split))
        self.gen = torch.Generator().manual_seed(seed)
        self.perm: Tensor | None = None
        self.pos = 0

    def __iter__(self):
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        if self.perm is None or self.pos + self.batch_size > len(self.perm):
            self.perm = torch.randperm(len(self.split), generator=self.gen).to(self.split.y.device)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return self.split.x[idx], self.split.y[idx]

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": None if self.perm is None else self.perm.cpu(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.perm = None if state["perm"] is None else state["perm"].to(self.split.y.device)
        self.pos = int(state["pos"])


DATASETS: dict[str, Callable[[DataConfig], Bundle]] = {}
# The built-in loaders and the module that registers each, imported when a config names it: the image datasets'
# module imports torchvision, which the embedded digits never need.
BUILT_IN = {"digits": "digits", "mnist": "vision", "fashion-mnist": "vision", "cifar10": "vision",
            "cifar100": "vision", "imagenet": "vision"}


def register(name: str):
    def deco(fn):
        DATASETS[name] = fn
        return fn
    return deco


def cut_validation(bundle: Bundle, fraction: float, seed: int = 0) -> Bundle:
    """Move a fixed random ``fraction`` of the training split into a validation split."""
    if fraction <= 0:
        return bundle
    n = len(bundle.train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = max(1, int(round(n * fraction)))
    val, train = perm[:k], perm[k:]
    tr = bundle.train
    return Bundle(Split(tr.x[train], tr.y[train]), bundle.test, bundle.num_classes, Split(tr.x[val], tr.y[val]))


def load_data(cfg: DataConfig, device=None) -> Bundle:
    """Load the dataset ``cfg.name`` as tensors on ``device``."""
    if cfg.name not in DATASETS and cfg.name in BUILT_IN:
        importlib.import_module(f"{__name__}.{BUILT_IN[cfg.name]}")  # registers its loaders
    try:
        loader = DATASETS[cfg.name]
    except KeyError:
        raise ConfigError(f"unknown dataset {cfg.name!r}; known: {', '.join(sorted({*DATASETS, *BUILT_IN}))}") from None
    bundle = loader(cfg)
    if cfg.limit_train:
        bundle.train = Split(bundle.train.x[:cfg.limit_train], bundle.train.y[:cfg.limit_train])
    if cfg.limit_test:
        bundle.test = Split(bundle.test.x[:cfg.limit_test], bundle.test.y[:cfg.limit_test])
    bundle = cut_validation(bundle, cfg.validation_fraction)
    for name, split in (("train", bundle.train), ("test", bundle.test)):
        if len(split) == 0:
            raise DataError(f"the {name} split of {cfg.name!r} is empty")
    return bundle.to(device) if device is not None else bundle


def check_data_fits(data: Bundle, cfg: Config) -> None:
    """Every label of the training and test splits must be an output of ``cfg.model``."""
    for name, split in (("train", data.train), ("test", data.test)):
        lo, hi = int(split.y.min()), int(split.y.max())
        if lo < 0 or hi >= cfg.model.num_classes:
            raise DataError(f"{name} labels span {lo}..{hi} but the model has {cfg.model.num_classes} outputs")


def prepare_data(cfg: Config, device) -> Bundle:
    """The dataset of ``cfg`` on ``device``, checked against the model's outputs."""
    data = load_data(cfg.data, device)
    check_data_fits(data, cfg)
    return data
