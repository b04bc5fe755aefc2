"""From a config and weight files to a finished run directory (what the CLI commands do).

Config -> (model, data) -> method and driver -> run directory -> figures. A run
directory copies its input weights, so ``resume`` needs nothing outside it.
"""
from __future__ import annotations

import dataclasses
import shutil
import signal
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from . import config as C
from .data import Bundle, Split, prepare_data
from .data.augment import default_augmentation
from .driver import Driver
from .errors import ConfigError, PrerequisiteWarning, RunDirError
from .files import load_weights, save_weights
from .methods import config_table, method_class
from .models import build_model, load_state
from .runtime import pick_device
from .store import RunDir
from .train import evaluate, train_endpoint


def load_model(cfg: C.Config, path: str | Path, what: str = "model") -> nn.Module:
    """Build ``cfg.model`` and load weights into it, naming any mismatch."""
    model = build_model(cfg.model)
    return load_state(model, load_weights(path), f"{what} {path} (model {cfg.model.name!r})")


def train(cfg: C.Config, seed: int, out: str | Path, device=None, progress: bool = False,
          data: Bundle | None = None) -> dict:
    """Train one endpoint (paper Table 3) and save it as safetensors. Returns its metrics."""
    out = Path(out)
    if out.exists():
        raise C.ConfigError(f"{out} already exists; choose another --out")
    device = pick_device(device)
    data = data or prepare_data(cfg, device)
    torch.manual_seed(seed)
    model = build_model(cfg.model).to(device)
    train_endpoint(model, data.train, cfg.train, seed, device, progress=progress, dataset=cfg.data.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(out, model.state_dict(), {"config": cfg.name, "model": cfg.model.name, "seed": str(seed)})
    bs = cfg.data.eval_batch_size
    return {"train": evaluate(model, data.train.batches(bs)), "test": evaluate(model, data.test.batches(bs))}


def _path_config(cfg: C.Config, kind: str) -> C.PathConfig:
    """The table method ``kind`` reads (``[m2o]`` for M2O and its baselines)."""
    table = config_table(kind)
    pc = getattr(cfg, table)
    if pc is None:
        raise ConfigError(f"config {cfg.name!r} has no [{table}] table")
    return pc


def resolved_config(cfg: C.Config, kind: str) -> str:
    """The config a run of ``kind`` records in its ``config.toml``: only the table it reads."""
    return C.dumps(dataclasses.replace(cfg, **{"m2m": None, "m2o": None, config_table(kind): _path_config(cfg, kind)}))


def _driver(kind: str, cfg: C.Config, start: Path, dest: Path | None, device, data: Bundle | None,
            observer: RunDir) -> Driver:
    """Load the models and data a run needs and build its method and driver; every input is checked here.

    The training split is evaluated as ``train`` when it is a tensor Split (a
    loader, as for ImageNet, is only drawn from); test and validation always.
    """
    pc = _path_config(cfg, kind)
    cls = method_class(kind)
    data = data or prepare_data(cfg, device)
    start_model = load_model(cfg, start, "start")
    dest_model = load_model(cfg, dest, "destination") if cls.needs_dest else None
    sets = {"train": data.train} if isinstance(data.train, Split) else {}
    sets["test"] = data.test
    if data.validation is not None:
        sets["validation"] = data.validation
    method = cls(start_model, pc, data.train, dest=dest_model, device=device,
                 augmentation=default_augmentation(cfg.data.name))
    return Driver(method, eval_sets=sets, observers=[observer], keep_points=False,
                  eval_batch_size=cfg.data.eval_batch_size)


def warn_if_variances_differ(driver: Driver, tolerance: float = 0.25) -> None:
    """Paper Eq. 4: start and destination should lie on nearby variance spheres, layer by layer."""
    from .analysis.variance import check_variance_pair

    far = check_variance_pair(driver.method.model, driver.method.dest_model, tolerance)
    if far:
        worst = max(far, key=lambda r: r["relative_difference"])
        warnings.warn(f"{len(far)} layer(s) of start and destination differ in variance by more than "
                      f"{tolerance:.0%} (worst {worst['layer']}: {worst['relative_difference']:.0%}); the path "
                      f"cannot get closer than the distance between their variance spheres (paper Eq. 4)",
                      PrerequisiteWarning, stacklevel=2)


@contextmanager
def _stop_on_signals(driver: Driver):
    """SIGINT and SIGTERM ask the driver to checkpoint and return, so ``resume`` continues the run."""
    def handler(signum, frame):
        driver.stop_requested = True

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def finish(rd: RunDir, driver: Driver, progress: bool) -> dict:
    """Run the driver into ``rd``; mark the run complete, failed or interrupted; draw its figure."""
    with _stop_on_signals(driver):
        (result,) = driver.run(progress=progress)
    if not result.summary:
        rd.set_status("interrupted", iteration=driver.iteration)
        return {}
    if result.summary["status"] == "complete":  # the driver saved the last point
        shutil.copyfile(rd.point_path(driver.iteration), rd.path / "final.safetensors")
        rd.set_status("complete")
    else:
        rd.set_status("failed", reason=result.summary.get("reason"))
    (rd.path / "checkpoint.pt").unlink(missing_ok=True)
    from .plots import path_figure
    path_figure(rd.path)
    return result.summary


def run_path(kind: str, cfg: C.Config, start: str | Path, dest: str | Path | None, out: str | Path,
             device=None, force: bool = False, progress: bool = False, data: Bundle | None = None) -> dict:
    """Run method ``kind`` (M2M needs ``dest``; M2O, or a baseline) into the run directory ``out``; return its summary."""
    _path_config(cfg, kind)
    device = pick_device(device)
    if method_class(kind).needs_dest and dest is None:
        raise ConfigError(f"{kind} needs --dest")
    rd = RunDir(out)
    rd.check_writable_for_new_run(force)
    # Building the engine validates every input (weights, shapes, patterns, data) before the
    # run directory is touched.
    driver = _driver(kind, cfg, Path(start), Path(dest) if dest else None, device, data, rd)
    if driver.method.needs_dest:
        warn_if_variances_differ(driver)
    inputs = {"start": str(start), "dest": str(dest) if dest else None, "config": cfg.name}
    rd.create(kind, resolved_config(cfg, kind), inputs, str(device), force=force)
    save_weights(rd.path / "start.safetensors", load_weights(start))
    if dest is not None:
        save_weights(rd.path / "dest.safetensors", load_weights(dest))
    return finish(rd, driver, progress)


def resolve_run(rd: RunDir, kind: str, cfg: C.Config, start: str | Path) -> None:
    """Refuse a run directory that holds a run of another method, config or start model than these."""
    info = rd.info()
    same = (info.get("kind") == kind and info.get("inputs", {}).get("start") == str(start)
            and (rd.path / "config.toml").is_file() and (rd.path / "config.toml").read_text() == resolved_config(cfg, kind))
    if not same:
        raise RunDirError(f"{rd.path} holds a run of other settings (method, config or start); choose another --out")


def resume(run: str | Path, device=None, progress: bool = False, data: Bundle | None = None) -> dict:
    """Continue a run from its last checkpoint; the result equals an uninterrupted run."""
    rd = RunDir(run)
    if not rd.exists:
        raise RunDirError(f"{run} holds no llpf run")
    info = rd.info()
    if info.get("status") == "complete":
        raise RunDirError(f"{run} is already complete")
    if info.get("status") == "failed":
        raise RunDirError(f"{run} failed ({info.get('reason')}); start it over with --force")
    kind = info["kind"]
    cfg = C.load_config(rd.path / "config.toml")
    device = pick_device(device or info.get("device"))
    dest = rd.path / "dest.safetensors" if (rd.path / "dest.safetensors").is_file() else None
    driver = _driver(kind, cfg, rd.path / "start.safetensors", dest, device, data, rd)
    state = rd.load_checkpoint()
    last = 0
    if state is not None:
        driver.load_state_dict(state)
        last = driver.iteration
    rd.remove_partial_writes()
    rd.truncate_metrics(last)
    for it, p in rd.points():
        if it > last:
            p.unlink()
    (rd.path / "summary.json").unlink(missing_ok=True)
    if state is None:
        (rd.path / "metrics.csv").unlink(missing_ok=True)
    rd.set_status("running")
    return finish(rd, driver, progress)
