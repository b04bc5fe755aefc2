"""The process's compute device and random state."""
from __future__ import annotations

import random

import numpy as np
import torch

from .errors import DeviceError


def pick_device(device=None) -> torch.device:
    """``device`` as a torch.device; by default CUDA when present, else the CPU.

    A device this machine cannot use (a string torch does not know, ``cuda``
    without a GPU, ``cuda:3`` on a two-GPU node) is a DeviceError naming
    the devices it can use.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        d = None
    if d is None or not _usable(d):
        what = "unknown device" if d is None else "this machine has no device"
        raise DeviceError(f"{what} {str(device)!r}; use one of: {', '.join(usable_devices())}")
    return d


def usable_devices() -> list[str]:
    """The device strings this machine can run on: cpu, then each GPU (cuda, cuda:0, ...) and mps where present."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        out.append("mps")
    return out


def _usable(d: torch.device) -> bool:
    if d.type == "cpu":
        return True
    if d.type == "cuda":
        return torch.cuda.is_available() and (d.index is None or d.index < torch.cuda.device_count())
    return d.type == "mps" and _mps_available()


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def rng_state() -> dict:
    """Every RNG state (Python, NumPy, torch CPU and CUDA), as data ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
