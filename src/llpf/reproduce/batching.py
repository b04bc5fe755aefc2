"""Which repetitions of an experiment run together as one batched method (``llpf reproduce --batch-paths``).

Batched paths (``m2m-batched``, ``m2o-batched``) draw Train_r's plain batches
from a dataset held as tensors, and their steps draw no random numbers of
their own; an experiment that needs otherwise runs its paths one at a time.
"""
from __future__ import annotations

import torch

from .. import config as C
from ..errors import ConfigError
from ..models import draws_random_numbers


def unbatchable(cfg: C.Config, kind: str) -> str | None:
    """Why the repetitions of ``cfg`` cannot run as one batched method (None: they can)."""
    if cfg.data.name == "imagenet":
        return "ImageNet is read by a loader, and batched paths draw from a dataset held as tensors"
    if getattr(cfg, kind).augment:
        return "its Train_r augments batches, and batched paths draw plain ones"
    if draws_random_numbers(cfg.model):
        return f"{cfg.model.name} draws random numbers in training (dropout), which a batch draws differently"
    return None


def default_batch_paths(cfg: C.Config, kind: str, device: torch.device, reps: int) -> int:
    """All repetitions together on CUDA when the experiment allows it; one at a time elsewhere.

    On the 2-core CPU this was measured on, vmap over 4-64 LeNet5 steps ran at
    0.5-0.8x the speed of the same steps one by one (``llpf bench``: 0.7x at K = 10).
    """
    return reps if device.type == "cuda" and unbatchable(cfg, kind) is None else 1


def check_batch_paths(cfg: C.Config, kind: str, device: torch.device, reps: int, batch_paths: int | None) -> int:
    """How many repetitions run together: ``batch_paths``, checked, or the default."""
    if batch_paths is None:
        return default_batch_paths(cfg, kind, device, reps)
    if batch_paths < 1:
        raise ConfigError(f"--batch-paths must be at least 1, got {batch_paths}")
    why = unbatchable(cfg, kind)
    if batch_paths > 1 and why:
        raise ConfigError(f"--batch-paths {batch_paths}: {cfg.name} cannot batch its paths ({why}); use 1")
    return batch_paths
