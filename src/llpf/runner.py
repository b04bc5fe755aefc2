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
import torch.nn.functional as F
from torch import nn

from . import config as C
from . import distributed as D
from .data import Bundle, Split, prepare_data
from .data.augment import default_augmentation
from .driver import Driver
from .errors import ConfigError, PrerequisiteWarning, RunDirError
from .files import load_weights, save_weights
from .methods import config_table, method_class
from .models import build_model, load_state
from .observer import Observer
from .runtime import pick_device
from .store import RunDir
from .train import train_endpoint


def load_model(cfg: C.Config, path: str | Path, what: str = "model") -> nn.Module:
    """Build ``cfg.model`` and load weights into it, naming any mismatch."""
    return _model(cfg, load_weights(path), what, path)


def _model(cfg: C.Config, state: dict, what: str, source) -> nn.Module:
    return load_state(build_model(cfg.model), state, f"{what} {source} (model {cfg.model.name!r})")


def train(cfg: C.Config, seed: int, out: str | Path, device=None, progress: bool = False,
          data: Bundle | None = None) -> dict:
    """Train one endpoint (paper Table 3) and save it as safetensors. Returns its metrics.

    Under torchrun the ranks train it together (``train_endpoint``) and rank 0 saves it.
    """
    out = Path(out)

    def check():
        if out.exists():
            raise C.ConfigError(f"{out} already exists; choose another --out")
    D.on_main(check)
    device = pick_device(device)
    data = data or prepare_data(cfg, device)
    torch.manual_seed(seed)
    model = build_model(cfg.model).to(device)
    train_endpoint(model, data.train, cfg.train, seed, device, progress=progress, dataset=cfg.data.name)
    if D.is_leader():
        out.parent.mkdir(parents=True, exist_ok=True)
        save_weights(out, model.state_dict(), {"config": cfg.name, "model": cfg.model.name, "seed": str(seed)})
    bs = cfg.data.eval_batch_size
    return {"train": D.evaluate_sharded(model, data.train, bs, F.cross_entropy),
            "test": D.evaluate_sharded(model, data.test, bs, F.cross_entropy)}


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


Weights = tuple[dict, Path]  # a state dict and the file it came from (named in errors)


def _driver(kind: str, cfg: C.Config, start: Weights, dest: Weights | None, device, data: Bundle | None,
            observer: Observer) -> Driver:
    """Build the models, data, method and driver of a run; every input is checked here.

    The training split is evaluated as ``train`` when it is a tensor Split (a
    loader, as for ImageNet, is only drawn from); test and validation always.
    """
    pc = _path_config(cfg, kind)
    cls = method_class(kind)
    data = data or prepare_data(cfg, device)
    start_model = _model(cfg, start[0], "start", start[1])
    dest_model = _model(cfg, dest[0], "destination", dest[1]) if cls.needs_dest else None
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


def finish(rd: RunDir | None, driver: Driver, progress: bool) -> dict:
    """Run the driver into ``rd``; mark the run complete, failed or interrupted; draw its figure.

    ``rd`` is None on the ranks of a data-parallel run other than 0, which compute and write nothing.
    """
    with _stop_on_signals(driver):
        (result,) = driver.run(progress=progress)
    if rd is None:
        return result.summary
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
    """Run method ``kind`` (M2M needs ``dest``; M2O, or a baseline) into the run directory ``out``; return its summary.

    Under torchrun the ranks compute the path together; every rank reads the
    inputs, rank 0 alone checks and writes ``out``.
    """
    _path_config(cfg, kind)
    device = pick_device(device)
    if method_class(kind).needs_dest and dest is None:
        raise ConfigError(f"{kind} needs --dest")
    rd = RunDir(out)
    D.on_main(lambda: rd.check_writable_for_new_run(force))
    start_state = load_weights(start)
    dest_state = load_weights(dest) if dest is not None else None
    # Building the engine validates every input (weights, shapes, patterns, data) before the
    # run directory is touched.
    driver = _driver(kind, cfg, (start_state, Path(start)), None if dest is None else (dest_state, Path(dest)),
                     device, data, rd if D.is_leader() else Observer())
    if not D.is_leader():
        return finish(None, driver, progress)
    if driver.method.needs_dest:
        warn_if_variances_differ(driver)
    inputs = {"start": str(start), "dest": str(dest) if dest else None, "config": cfg.name}
    rd.create(kind, resolved_config(cfg, kind), inputs, str(device), force=force)
    save_weights(rd.path / "start.safetensors", start_state)
    if dest is not None:
        save_weights(rd.path / "dest.safetensors", dest_state)
    return finish(rd, driver, progress)


def resolve_run(rd: RunDir, kind: str, cfg: C.Config, start: str | Path) -> None:
    """Refuse a run directory that holds a run of another method, config or start model than these."""
    info, recorded = rd.info(), rd.path / "config.toml"
    same = (info.get("kind") == kind and info.get("inputs", {}).get("start") == str(start)
            and recorded.is_file() and recorded.read_text() == resolved_config(cfg, kind))
    if not same:
        raise RunDirError(f"{rd.path} holds a run of other settings (method, config or start); choose another --out")


def _resumable(rd: RunDir) -> tuple[dict, C.Config, Weights, Weights | None, dict | None]:
    """What a resume reads from the run directory (rank 0 alone under torchrun): run.json, config, inputs, checkpoint."""
    if not rd.exists:
        raise RunDirError(f"{rd.path} holds no llpf run")
    info = rd.info()
    if info.get("status") == "complete":
        raise RunDirError(f"{rd.path} is already complete")
    if info.get("status") == "failed":
        raise RunDirError(f"{rd.path} failed ({info.get('reason')}); start it over with --force")
    cfg = C.load_config(rd.path / "config.toml")
    start = rd.path / "start.safetensors"
    dest = rd.path / "dest.safetensors"
    dest_weights = (load_weights(dest), dest) if dest.is_file() else None
    return info, cfg, (load_weights(start), start), dest_weights, rd.load_checkpoint()


def resume(run: str | Path, device=None, progress: bool = False, data: Bundle | None = None) -> dict:
    """Continue a run from its last checkpoint; the result equals an uninterrupted run.

    Under torchrun rank 0 reads the run directory (its config, weights and
    checkpoint) and hands it to every rank, so the run directory need only be
    visible to rank 0; the ranks may be more or fewer than those that started it.
    """
    rd = RunDir(run)
    info, cfg, start, dest, state = D.on_main(lambda: _resumable(rd))
    device = pick_device(device or info.get("device"))
    driver = _driver(info["kind"], cfg, start, dest, device, data, rd if D.is_leader() else Observer())
    last = 0
    if state is not None:
        driver.load_state_dict(state)
        last = driver.iteration
    if not D.is_leader():
        return finish(None, driver, progress)
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
