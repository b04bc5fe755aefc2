"""The embedded default: scikit-learn's handwritten digits, offline.

1797 real 8x8 images (values 0-16) resized to the model's input size with
bilinear interpolation and standardised; a fixed 80/20 train/test split.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import DataConfig
from . import Bundle, Split, register

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def digits_tensors(image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    return x, torch.tensor(d.target, dtype=torch.long)


@register("digits")
def load_digits_bundle(cfg: DataConfig, image_size: int = 32) -> Bundle:
    x, y = digits_tensors(image_size)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    k = int(len(y) * TEST_FRACTION)
    test, train = perm[:k], perm[k:]
    return Bundle(Split(x[train], y[train]), Split(x[test], y[test]), num_classes=10)
