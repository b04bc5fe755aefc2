"""From a config and weight files to a finished run directory (what the CLI commands do).

Config -> (model, data) -> method and driver -> run directory -> figures. A run
directory copies its input weights, so ``resume`` needs nothing outside it.
"""
from __future__ import annotations

import dataclasses
import json
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
from .errors import ConfigError, DeviceError, LLPFError, PrerequisiteWarning, RunDirError
from .files import check_creatable, load_weights, save_weights, weights_metadata, write_json
from .methods import batched_class, config_table, method_class
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
          data: Bundle | None = None, recipe: str = "start") -> dict:
    """Train one endpoint (paper Table 3) and save it as safetensors. Returns its metrics.

    ``recipe`` "dest" trains with ``[train.dest]`` over ``[train]`` (a config
    without that table is refused); the weights file records the recipe.
    Under torchrun the ranks train it together (``train_endpoint``) and rank 0 saves it.
    """
    out = Path(out)
    if recipe == "dest" and not cfg.train.dest:
        raise ConfigError(f"config {cfg.name!r} has no [train.dest] table to train a destination with")
    settings = cfg.train.recipe(recipe)

    def check():
        if out.exists():
            raise C.ConfigError(f"{out} already exists; choose another --out")
        check_creatable(out)
    D.on_main(check)
    device = pick_device(device)
    data = data or prepare_data(cfg, device)
    torch.manual_seed(seed)
    model = build_model(cfg.model).to(device)
    train_endpoint(model, data.train, settings, seed, device, progress=progress, dataset=cfg.data.name)
    if D.is_leader():
        out.parent.mkdir(parents=True, exist_ok=True)
        save_weights(out, model.state_dict(), {"config": cfg.name, "model": cfg.model.name, "seed": str(seed),
                                               **recipe_metadata(cfg, recipe)})
    bs = cfg.data.eval_batch_size
    return {"train": D.evaluate_sharded(model, data.train, bs, F.cross_entropy),
            "test": D.evaluate_sharded(model, data.test, bs, F.cross_entropy)}


def recipe_metadata(cfg: C.Config, recipe: str) -> dict[str, str]:
    """What an endpoint's weights file says about the recipe that trained it: its name and its settings."""
    settings = {k: v for k, v in dataclasses.asdict(cfg.train.recipe(recipe)).items() if k != "dest"}
    return {"recipe": recipe, "recipe_settings": json.dumps(settings)}


def endpoint_recipes(rd: RunDir) -> dict:
    """Which recipe made each end of a run (from the metadata of its copies of the input weights; None where
    the weights were not trained by llpf)."""
    out = {}
    for end in ("start", "dest"):
        f = rd.path / f"{end}.safetensors"
        if f.is_file():
            meta = weights_metadata(f)
            out[end] = ({"recipe": meta["recipe"], **json.loads(meta.get("recipe_settings", "{}"))}
                        if "recipe" in meta else None)
    return out


def _path_config(cfg: C.Config, kind: str):
    """The table method ``kind`` reads (``[m2o]`` for M2O and its baselines); a baseline's defaults when absent."""
    table = config_table(kind)
    pc = getattr(cfg, table, None)
    if pc is None and table in C.BASELINE_TABLES:
        return C.BASELINE_TABLES[table]()
    if pc is None:
        raise ConfigError(f"config {cfg.name!r} has no [{table}] table")
    return pc


def resolved_config(cfg: C.Config, kind: str) -> str:
    """The config a run of ``kind`` records in its ``config.toml``: only the table it reads."""
    tables = {**{t: None for t in C.METHOD_TABLES}, config_table(kind): _path_config(cfg, kind)}
    return C.dumps(dataclasses.replace(cfg, **tables))


Weights = tuple[dict, Path]  # a state dict and the file it came from (named in errors)


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


def _driver(kind: str, cfgs: list[C.Config], starts: list[Weights], dests: list[Weights | None], device,
            data: Bundle | None, observers: list[Observer]) -> Driver:
    """Build the models, data, method and driver of one path (the method ``kind``) or of several run together
    (``kind``-batched); every input is checked here."""
    pc = _shared_path_config(cfgs, kind)
    cls, cfg = method_class(kind), cfgs[0]
    data = data or prepare_data(cfg, device)
    start_models = [_model(cfg, w, "start", src) for w, src in starts]
    dest_models = [_model(cfg, w, "destination", src) for w, src in dests] if cls.needs_dest else None
    if len(starts) == 1:
        method = cls(start_models[0], pc, data.train, dest=dest_models[0] if dest_models else None, device=device,
                     augmentation=default_augmentation(cfg.data.name))
    else:
        if D.is_distributed():
            raise ConfigError("paths batched together run in one process; under torchrun use --batch-paths 1")
        method = batched_class(kind)(start_models, pc, data.train, dest=dest_models, device=device,
                                     seeds=[_path_config(c, kind).seed for c in cfgs])
    return Driver(method, eval_sets=_eval_sets(data), observers=observers, keep_points=False,
                  eval_batch_size=cfg.data.eval_batch_size, recalibration_examples=cfg.data.recalibration_examples)


def warn_if_variances_differ(driver: Driver, tolerance: float = 0.25) -> None:
    """Paper Eq. 4: start and destination should lie on nearby variance spheres, layer by layer.

    What the warning says follows the spheres of the schedule: a path that
    ends on the start's sphere cannot get closer to the destination than the
    distance between the spheres; one that switches to the destination's
    sphere at once (``sphere = "dest"``) rescales those layers in one
    iteration; one whose sphere moves there gradually needs no warning.
    """
    from .analysis.variance import check_variance_pair

    m = driver.method
    ends_on_dest = m.schedule[-1].sphere_to == 1
    jump = next((rp for rp in m.schedule if rp.sphere == "dest" and rp.sphere_from == 0), None)
    if ends_on_dest and jump is None:
        return
    for k in range(m.paths):
        far = check_variance_pair(m.model_of(k), m.dest_module(k), tolerance)
        if not far:
            continue
        worst = max(far, key=lambda r: r["relative_difference"])
        differ = (f"{len(far)} layer(s) of start and destination differ in variance by more than {tolerance:.0%} "
                  f"(worst {worst['layer']}: {worst['relative_difference']:.0%})")
        if ends_on_dest:
            warnings.warn(f"{differ}; sphere = \"dest\" rescales them onto the destination's variance sphere at "
                          f"iteration {jump.first}, at once; sphere = \"moving\" spreads that over the phase",
                          PrerequisiteWarning, stacklevel=2)
        else:
            warnings.warn(f"{differ}; the path cannot get closer than the distance between their variance spheres "
                          f"(paper Eq. 4); [m2m] sphere = \"dest\" or \"moving\" ends it on the destination's sphere",
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


def finish_all(rds: list[RunDir | None], driver: Driver, progress: bool) -> list[dict]:
    """Run the driver, path k into ``rds[k]``; each path's summary (``{}`` where interrupted).

    ``rds[k]`` is None on the ranks of a data-parallel run other than 0, which compute and write nothing.
    """
    with _stop_on_signals(driver):
        results = driver.run(progress=progress)
    return [result.summary if rd is None else _close(rd, driver, result.summary)
            for rd, result in zip(rds, results)]


def _close(rd: RunDir, driver: Driver, summary: dict) -> dict:
    """Mark one path's run complete, failed or interrupted; record its alignment in the summary; draw its figure."""
    if not summary:
        rd.set_status("interrupted", iteration=driver.iteration)
        return {}
    summary = rd.update_summary({"endpoint_recipes": endpoint_recipes(rd)})
    if summary["status"] == "complete":  # the driver saved the path's last point
        shutil.copyfile(rd.point_path(summary["iterations"]), rd.path / "final.safetensors")
        rd.set_status("complete")
    else:
        rd.set_status("failed", reason=summary.get("reason"))
    (rd.path / "checkpoint.pt").unlink(missing_ok=True)
    if (rd.path / ALIGNMENT).is_file():
        summary = rd.update_summary({"alignment": json.loads((rd.path / ALIGNMENT).read_text())}) or summary
    from .plots import path_figure
    path_figure(rd.path)
    return summary


def run_path(kind: str, cfg: C.Config, start: str | Path, dest: str | Path | None, out: str | Path,
             device=None, force: bool = False, progress: bool = False, data: Bundle | None = None,
             align: bool = False) -> dict:
    """Run method ``kind`` into the run directory ``out``; return its summary. M2M and the M2M baselines
    (``line``, ``autoneb``, ``bezier``) need ``dest``; M2O and its baselines do not. ``align``: the path goes
    to the destination with its units reordered to match the start's (:func:`align_dest`).

    Under torchrun the ranks compute the path together; every rank reads the
    inputs, rank 0 alone checks and writes ``out``.
    """
    return run_paths(kind, [cfg], [start], [dest], [out], device, force, progress, data, align)[0]


ALIGNMENT = "alignment.json"  # in a run directory whose destination was aligned: what alignment did


def align_dest(cfg: C.Config, start: Weights, dest: Weights, data: Bundle, device, lines: bool = True
               ) -> tuple[Weights, dict]:
    """The destination with its units reordered to match the start's (weight matching, ``llpf.alignment``),
    checked to compute what the destination computes; its record, with the straight line from the start to
    the destination before and after alignment when ``lines``."""
    from .alignment.pair import align_endpoints, line_change

    a = _model(cfg, start[0], "start", start[1]).to(device)
    b = _model(cfg, dest[0], "destination", dest[1]).to(device)
    aligned, record = align_endpoints(a, b, data, cfg.data.eval_batch_size)
    if lines:
        *_, record["straight_line"] = line_change(a, b, aligned, data, cfg.data.eval_batch_size, device=device)
    state = {k: v.detach().cpu() for k, v in aligned.state_dict().items()}
    return (state, dest[1]), {"dest": str(dest[1]), **record}


def run_paths(kind: str, cfgs: list[C.Config], starts: list, dests: list, outs: list, device=None,
              force: bool = False, progress: bool = False, data: Bundle | None = None,
              align: bool = False) -> list[dict]:
    """Run paths of ``kind`` together (one batched method when more than one), path k into run directory
    ``outs[k]`` from ``starts[k]`` (to ``dests[k]``, aligned to the start when ``align``) with ``cfgs[k]``
    (equal but for the seed).

    Each run directory is what :func:`run_path` would have written for its path alone.
    """
    if align and not method_class(kind).needs_dest:
        raise ConfigError(f"--align reorders a destination's units to match the start's; {kind} has no destination")
    for cfg in cfgs:
        _path_config(cfg, kind)
    device = pick_device(device)
    if method_class(kind).needs_dest and None in dests:
        raise ConfigError(f"{kind} needs --dest")
    rds = [RunDir(out) for out in outs]
    D.on_main(lambda: [rd.check_writable_for_new_run(force) for rd in rds])
    start_w = [(load_weights(a), Path(a)) for a in starts]
    dest_w = [None if b is None else (load_weights(b), Path(b)) for b in dests]
    leader = D.is_leader()
    records = [None] * len(dest_w)
    if align:  # every rank aligns (the result is deterministic); rank 0 alone records the straight lines
        data = data or prepare_data(cfgs[0], device)
        dest_w, records = map(list, zip(*(align_dest(cfg, a, b, data, device, leader)
                                          for cfg, a, b in zip(cfgs, start_w, dest_w))))
    # Building the engine validates every input (weights, shapes, patterns, data) before the
    # run directories are touched.
    driver = _driver(kind, cfgs, start_w, dest_w, device, data, rds if leader else [Observer() for _ in rds])
    if not leader:
        return finish_all([None] * len(rds), driver, progress)
    if kind == "m2m":
        warn_if_variances_differ(driver)
    for rd, cfg, start, dest, (a, _), b, record in zip(rds, cfgs, starts, dests, start_w, dest_w, records):
        inputs = {"start": str(start), "dest": str(dest) if dest else None, "config": cfg.name,
                  **({"aligned": True} if record else {})}
        rd.create(kind, resolved_config(cfg, kind), inputs, str(device), force=force)
        save_weights(rd.path / "start.safetensors", a, weights_metadata(start))
        if b is not None:
            save_weights(rd.path / "dest.safetensors", b[0], weights_metadata(dest))
        if record:
            write_json(rd.path / ALIGNMENT, record)
    return finish_all(rds, driver, progress)


def resolve_run(rd: RunDir, kind: str, cfg: C.Config, start: str | Path) -> None:
    """Refuse a run directory that holds a run of another method, config or start model than these.

    The configs are compared as read, so a run recorded before a key with a
    default was added to llpf is still the same run.
    """
    info, recorded = rd.info(), rd.path / "config.toml"
    same = (info.get("kind") == kind and info.get("inputs", {}).get("start") == str(start)
            and recorded.is_file() and _recorded_config(recorded, kind) == resolved_config(cfg, kind))
    if not same:
        raise RunDirError(f"{rd.path} holds a run of other settings (method, config or start); choose another --out")


def _recorded_config(path: Path, kind: str) -> str | None:
    try:
        return resolved_config(C.load_config(path), kind)
    except LLPFError:  # not a config this llpf reads: not the same run
        return None


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
    return resume_paths([run], device, progress, data)[0]


def _resume_device(asked, recorded):
    """The device asked for, else the one the run was made on, which this machine may lack (say so)."""
    if asked is not None or recorded is None:
        return pick_device(asked)
    try:
        return pick_device(recorded)
    except DeviceError as e:
        raise DeviceError(f"the run was made on {recorded}, which this machine lacks; resume it with --device "
                          f"({str(e).rsplit('; ', 1)[-1]})") from None


def resume_paths(runs: list, device=None, progress: bool = False, data: Bundle | None = None) -> list[dict]:
    """Continue runs of one kind together from their checkpoints (which must be at one iteration).

    A path's checkpoint does not depend on the company it ran in: a path
    interrupted in a batch resumes alone, and paths run alone resume together.
    """
    rds = [RunDir(run) for run in runs]
    read = D.on_main(lambda: [_resumable(rd) for rd in rds])
    kinds = {info["kind"] for info, *_ in read}
    if len(kinds) > 1:
        raise RunDirError(f"runs resumed together must be of one kind, got {', '.join(sorted(kinds))}")
    if len({None if r[4] is None else int(r[4]["iteration"]) for r in read}) > 1:
        raise RunDirError("runs resumed together must stand at one checkpoint iteration; resume them one by one")
    device = _resume_device(device, read[0][0].get("device"))
    leader = D.is_leader()
    driver = _driver(kinds.pop(), [r[1] for r in read], [r[2] for r in read], [r[3] for r in read], device, data,
                     rds if leader else [Observer() for _ in rds])
    for k, (*_, state) in enumerate(read):
        if state is not None:
            driver.load_state_dict(state, k)
    if not leader:
        return finish_all([None] * len(rds), driver, progress)
    for rd, (*_, state) in zip(rds, read):
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
    (rd.path / "path.json").unlink(missing_ok=True)
    if state is None:
        (rd.path / "metrics.csv").unlink(missing_ok=True)
    rd.set_status("running")
