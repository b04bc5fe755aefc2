"""``llpf demo``: the whole method on the embedded default, offline, in about a minute.

Trains two LeNet5 endpoints on scikit-learn's digits from seeds 0 and 1, runs
M2M from the first to the second and M2O from the first, and writes both run
directories with their figures under ``out``. For comparison the straight
line between the two endpoints is evaluated too (21 points, training and test
sets): its peak training loss joins the M2M summary, its rows go to
``m2m/straight_line.json``.
"""
from __future__ import annotations

from pathlib import Path

from .config import load_config
from .data import prepare_data
from .errors import RunDirError
from .runner import load_model, run_path, train
from .runtime import pick_device
from .store import RunDir


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
    m2m = run_path("m2m", cfg, a, b, out / "m2m", device=device, progress=progress, data=data)
    m2m.update(straight_line_summary(cfg, a, b, out / "m2m", data, device))
    return {
        "m2m": m2m,
        "m2o": run_path("m2o", cfg, a, None, out / "m2o", device=device, progress=progress, data=data),
    }


def straight_line_summary(cfg, a: Path, b: Path, run: Path, data, device) -> dict:
    """The straight line from ``a`` to ``b``: rows to ``run/straight_line.json``, its peak into the run's summary."""
    from .analysis.barriers import line_summary, straight_line, write_barrier

    rows = straight_line(load_model(cfg, a).to(device), load_model(cfg, b).to(device), data, points=21,
                         batch_size=cfg.data.eval_batch_size, device=device)
    write_barrier(rows, run, {"a": str(a), "b": str(b), "config": cfg.name}, name="straight_line",
                  figure_dir=run / "figures")
    extra = {"straight_line_max_train_loss": line_summary(rows)["max_train_loss"]}
    RunDir(run).update_summary(extra)
    return extra
