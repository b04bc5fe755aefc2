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
from .methods import batched_class, method_class
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
    pc = getattr(cfg, kind)
    if pc is None:
        raise ConfigError(f"config {cfg.name!r} has no [{kind}] table")
    return pc


def _eval_sets(data: Bundle) -> dict:
    """The training split when it is a tensor Split (a loader, as for ImageNet, is only drawn from); test and
    validation always."""
    sets = {"train": data.train} if isinstance(data.train, Split) else {}
    sets["test"] = data.test
    if data.validation is not None:
        sets["validation"] = data.validation
    return sets


def _shared_path_config(cfgs: list[C.Config], kind: str) -> C.PathConfig:
    """The path config of paths run together: one config, each path with its own seed."""
    pc = _path_config(cfgs[0], kind)
    for c in cfgs[1:]:
        other = _path_config(c, kind)
        if dataclasses.replace(other, seed=pc.seed) != pc or c.model != cfgs[0].model:
            raise ConfigError(f"paths run together must share their config but for the seed ({c.name!r})")
    return pc


def _driver(kind: str, cfgs: list[C.Config], starts: list[Path], dests: list[Path | None], device,
            data: Bundle | None, observers: list[RunDir]) -> Driver:
    """Load the models and data of one path (the method ``kind``) or several (``kind``-batched), and build the
    method and driver; every input is checked here."""
    pc = _shared_path_config(cfgs, kind)
    cls = method_class(kind)
    data = data or prepare_data(cfgs[0], device)
    start_models = [load_model(cfgs[0], a, "start") for a in starts]
    dest_models = [load_model(cfgs[0], b, "destination") for b in dests] if cls.needs_dest else None
    if len(starts) == 1:
        method = cls(start_models[0], pc, data.train, dest=dest_models[0] if dest_models else None, device=device,
                     augmentation=default_augmentation(cfgs[0].data.name))
    else:
        method = batched_class(kind)(start_models, pc, data.train, dest=dest_models, device=device,
                                     seeds=[_path_config(c, kind).seed for c in cfgs])
    return Driver(method, eval_sets=_eval_sets(data), observers=observers, keep_points=False,
                  eval_batch_size=cfgs[0].data.eval_batch_size)


def warn_if_variances_differ(driver: Driver, tolerance: float = 0.25) -> None:
    """Paper Eq. 4: start and destination should lie on nearby variance spheres, layer by layer."""
    from .analysis.variance import check_variance_pair

    m = driver.method
    for k in range(m.paths):
        far = check_variance_pair(m.model_of(k), m.dest_module(k), tolerance)
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
    return finish_all([rd], driver, progress)[0]


def finish_all(rds: list[RunDir], driver: Driver, progress: bool) -> list[dict]:
    """Run the driver, path k into ``rds[k]``; each path's summary (``{}`` where interrupted)."""
    with _stop_on_signals(driver):
        results = driver.run(progress=progress)
    return [_close(rd, driver, result.summary) for rd, result in zip(rds, results)]


def _close(rd: RunDir, driver: Driver, summary: dict) -> dict:
    """Mark one path's run complete, failed or interrupted; draw its figure."""
    if not summary:
        rd.set_status("interrupted", iteration=driver.iteration)
        return {}
    if summary["status"] == "complete":  # the driver saved the path's last point
        shutil.copyfile(rd.point_path(summary["iterations"]), rd.path / "final.safetensors")
        rd.set_status("complete")
    else:
        rd.set_status("failed", reason=summary.get("reason"))
    (rd.path / "checkpoint.pt").unlink(missing_ok=True)
    from .plots import path_figure
    path_figure(rd.path)
    return summary


def run_path(kind: str, cfg: C.Config, start: str | Path, dest: str | Path | None, out: str | Path,
             device=None, force: bool = False, progress: bool = False, data: Bundle | None = None) -> dict:
    """Run M2M (``kind="m2m"``, needs ``dest``) or M2O into the run directory ``out``; return its summary."""
    return run_paths(kind, [cfg], [start], [dest], [out], device, force, progress, data)[0]


def run_paths(kind: str, cfgs: list[C.Config], starts: list, dests: list, outs: list, device=None,
              force: bool = False, progress: bool = False, data: Bundle | None = None) -> list[dict]:
    """Run paths of ``kind`` together (one batched method when more than one), path k into run directory
    ``outs[k]`` from ``starts[k]`` (to ``dests[k]``) with ``cfgs[k]`` (equal but for the seed).

    Each run directory is what :func:`run_path` would have written for its path alone.
    """
    for cfg in cfgs:
        _path_config(cfg, kind)
    device = pick_device(device)
    if method_class(kind).needs_dest and None in dests:
        raise ConfigError(f"{kind} needs --dest")
    rds = [RunDir(out) for out in outs]
    for rd in rds:
        rd.check_writable_for_new_run(force)
    # Building the engine validates every input (weights, shapes, patterns, data) before the
    # run directories are touched.
    driver = _driver(kind, cfgs, [Path(a) for a in starts], [Path(b) if b else None for b in dests], device, data,
                     rds)
    if driver.method.needs_dest:
        warn_if_variances_differ(driver)
    for rd, cfg, start, dest in zip(rds, cfgs, starts, dests):
        resolved = dataclasses.replace(cfg, **{"m2m": None, "m2o": None, kind: _path_config(cfg, kind)})
        inputs = {"start": str(start), "dest": str(dest) if dest else None, "config": cfg.name}
        rd.create(kind, C.dumps(resolved), inputs, str(device), force=force)
        save_weights(rd.path / "start.safetensors", load_weights(start))
        if dest is not None:
            save_weights(rd.path / "dest.safetensors", load_weights(dest))
    return finish_all(rds, driver, progress)


def resume(run: str | Path, device=None, progress: bool = False, data: Bundle | None = None) -> dict:
    """Continue a run from its last checkpoint; the result equals an uninterrupted run."""
    return resume_paths([run], device, progress, data)[0]


def _resumable(run: str | Path) -> RunDir:
    rd = RunDir(run)
    if not rd.exists:
        raise RunDirError(f"{run} holds no llpf run")
    info = rd.info()
    if info.get("status") == "complete":
        raise RunDirError(f"{run} is already complete")
    if info.get("status") == "failed":
        raise RunDirError(f"{run} failed ({info.get('reason')}); start it over with --force")
    return rd


def resume_paths(runs: list, device=None, progress: bool = False, data: Bundle | None = None) -> list[dict]:
    """Continue runs of one kind together from their checkpoints (which must be at one iteration).

    Path checkpoints do not depend on the company a path ran in: a path
    interrupted in a batch resumes alone, and paths run alone resume together.
    """
    rds = [_resumable(run) for run in runs]
    kinds = {rd.info()["kind"] for rd in rds}
    if len(kinds) > 1:
        raise RunDirError(f"runs resumed together must be of one kind, got {', '.join(sorted(kinds))}")
    kind = kinds.pop()
    cfgs = [C.load_config(rd.path / "config.toml") for rd in rds]
    device = pick_device(device or rds[0].info().get("device"))
    dests = [rd.path / "dest.safetensors" if (rd.path / "dest.safetensors").is_file() else None for rd in rds]
    driver = _driver(kind, cfgs, [rd.path / "start.safetensors" for rd in rds], dests, device, data, rds)
    states = [rd.load_checkpoint() for rd in rds]
    if len({None if s is None else int(s["iteration"]) for s in states}) > 1:
        raise RunDirError("runs resumed together must stand at one checkpoint iteration; resume them one by one")
    for k, (rd, state) in enumerate(zip(rds, states)):
        if state is not None:
            driver.load_state_dict(state, k)
        _rewind(rd, state, driver.iteration)
    return finish_all(rds, driver, progress)


def _rewind(rd: RunDir, state: dict | None, last: int) -> None:
    """Drop what a run wrote after its checkpoint at iteration ``last`` (all of it without a checkpoint)."""
    rd.remove_partial_writes()
    rd.truncate_metrics(last)
    for it, p in rd.points():
        if it > last:
            p.unlink()
    (rd.path / "summary.json").unlink(missing_ok=True)
    if state is None:
        (rd.path / "metrics.csv").unlink(missing_ok=True)
    rd.set_status("running")
