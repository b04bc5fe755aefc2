"""ImageNet-1k (ILSVRC 2012) as torch DataLoaders over torchvision ``ImageFolder``s.

The paper's M2O on ImageNet (Table 2) starts from torchvision's ResNet18 and
trains with batches of 128. 1.28M images do not fit on a device as tensors,
so ImageNet is read lazily from ``root/train/<wnid>/*.JPEG`` and
``root/val/<wnid>/*.JPEG`` (the validation images sorted into class folders,
as torchvision's reference scripts expect). The path engine takes any
iterable of ``(x, y)`` batches, so these loaders plug in where the tensor
splits of smaller datasets go. Transforms are the standard ones, those
torchvision's ResNet18 weights were evaluated with: random resized crop to 224
and horizontal flip for training; resize to 256 and centre crop 224 for
evaluation; ImageNet mean and standard deviation.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from ..errors import DataError
from .sampler import ResumableLoader

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HOW_TO_GET = ("ImageNet cannot be downloaded automatically: get ILSVRC 2012 from image-net.org and arrange it "
              "as train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, then set data.root (--data-dir)")


def imagenet_root(root: str | Path) -> Path:
    """``root`` if it holds ``train/`` and ``val/`` folders; a DataError saying what is missing otherwise."""
    if not root:
        raise DataError(f"no folder given for ImageNet; {HOW_TO_GET}")
    root = Path(root).expanduser()
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"ImageNet not found: {root / split} is not a folder; {HOW_TO_GET}")
    return root


def imagenet_transforms(train: bool) -> v2.Compose:
    crop = [v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()] if train else \
        [v2.Resize(256, antialias=True), v2.CenterCrop(224)]
    return v2.Compose([v2.ToImage(), *crop, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD), v2.ToPureTensor()])


def imagenet_loaders(root: str | Path, batch_size: int = 128, eval_batch_size: int = 256, workers: int = 8,
                     seed: int = 0) -> tuple[ResumableLoader, DataLoader]:
    """Training loader (shuffled with ``seed``, last partial batch dropped) and validation loader (in order).

    The training loader is a :class:`~llpf.data.sampler.ResumableLoader`: its
    ``state_dict`` resumes the same epoch order and random crops mid-epoch.
    """
    root = imagenet_root(root)
    common = dict(num_workers=workers, pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)
    train = ResumableLoader(ImageFolder(str(root / "train"), imagenet_transforms(True)), batch_size, seed=seed,
                            drop_last=True, **common)
    val = DataLoader(ImageFolder(str(root / "val"), imagenet_transforms(False)), batch_size=eval_batch_size,
                     **common)
    return train, val
