"""``llpf demo``: the whole method on the embedded default, offline, in about a minute.

Trains two LeNet5 endpoints on scikit-learn's digits from seeds 0 and 1, runs
M2M from the first to the second and M2O from the first, and writes both run
directories with their figures under ``out``.
"""
from __future__ import annotations

from pathlib import Path

from .config import load_config
from .errors import RunDirError
from .paths import pick_device
from .runner import prepare_data, run_path, train


def run_demo(out: str | Path, device=None, progress: bool = True, config: str = "demo") -> dict:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise RunDirError(f"{out} is not empty; choose another --out")
    cfg = load_config(config)
    device = pick_device(device)
    data = prepare_data(cfg, device)
    a, b = out / "endpoints" / "seed0.safetensors", out / "endpoints" / "seed1.safetensors"
    for seed, path in ((0, a), (1, b)):
        train(cfg, seed, path, device=device, progress=progress, data=data)
    return {
        "m2m": run_path("m2m", cfg, a, b, out / "m2m", device=device, progress=progress, data=data),
        "m2o": run_path("m2o", cfg, a, None, out / "m2o", device=device, progress=progress, data=data),
    }
