"""``[model] width``: the multiplier of a model's channels (ResNet18, LeNet5) or embedding dimension (CCT)."""
from __future__ import annotations

import math

from ..errors import ConfigError


def scaled(base: int, width: float, multiple: int = 1) -> int:
    """``base * width`` rounded to the nearest multiple of ``multiple`` (at least one); ``base`` itself at 1.0."""
    if not (math.isfinite(width) and width > 0):
        raise ConfigError(f"model.width must be a positive number, got {width!r}")
    return max(multiple, multiple * round(base * width / multiple))
