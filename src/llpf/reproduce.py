"""``llpf reproduce``: the paper's experiments (Appendix A.4, Tables 1-3) with repetitions.

::

    OUT/endpoints/seedS.safetensors   endpoint models (Table 3 recipe), seedS.json their metrics
    OUT/rep-XX/                       one run directory per repetition (M2M or M2O)
    OUT/reproduce.json                the experiment, its inputs and the wall time of each piece
    OUT/figure.png                    paper Figure 2 (M2M) or 3 (M2O): mean and std over repetitions
    OUT/summary.md, summary.json      per repetition and aggregated verdicts

Repetition k of an M2M experiment runs from the endpoint of seed 2k to that of
seed 2k+1; of an M2O experiment, from the endpoint of seed k. The aggregate is
redrawn after every repetition. Running the same command again skips the
endpoints and repetitions already finished, resumes an interrupted repetition
from its checkpoint, and redraws the aggregate.
``dry_run`` checks a config end to end on random tensors and estimates its cost.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import config as C
from .data import Bundle, Split
from .errors import ConfigError, DataError, RunDirError
from .models import build_model
from .paths import PathEngine, m2m_iteration, m2o_iteration, pick_device
from .plots import SMOOTH, paths_figure
from .schedule import normalisation_parameters, resolve
from .files import atomic_write, load_weights, save_weights, write_json
from .store import RunDir, read_metrics



def experiments() -> list[str]:
    """Names of the shipped experiment configs (every shipped config but the demo)."""
    return [n for n in C.shipped_configs() if n != "demo"]


def kind_of(cfg: C.Config) -> str:
    if (cfg.m2m is None) == (cfg.m2o is None):
        raise ConfigError(f"config {cfg.name!r} must have exactly one of [m2m] and [m2o] to be reproduced")
    return "m2m" if cfg.m2m is not None else "m2o"


def _load(name: str, data_dir: str | None) -> C.Config:
    cfg = C.load_config(name)
    if data_dir:
        cfg.data.root = str(data_dir)
    return cfg


# ---------------------------------------------------------------- data


def _imagenet_bundle(cfg: C.Config, pc: C.PathConfig, seed: int) -> Bundle:
    """ImageNet as loaders (iterables of batches) in a Bundle; the engine takes them where Splits go."""
    from .data.imagenet import imagenet_loaders

    train, val = imagenet_loaders(cfg.data.root, batch_size=pc.batch_size, eval_batch_size=cfg.data.eval_batch_size,
                                  seed=seed)
    return Bundle(train, val, cfg.model.num_classes)


def random_bundle(cfg: C.Config, n_train: int, n_test: int, seed: int = 0) -> Bundle:
    """Random inputs and labels of the shapes ``cfg.model`` takes (for dry runs without the dataset)."""
    g = torch.Generator().manual_seed(seed)
    m = cfg.model
    shape = (m.in_channels, m.image_size, m.image_size)

    def split(n):
        return Split(torch.randn(n, *shape, generator=g), torch.randint(0, m.num_classes, (n,), generator=g))
    return Bundle(split(n_train), split(n_test), m.num_classes)


# ---------------------------------------------------------------- bookkeeping


class Ledger:
    """OUT/reproduce.json: what this output directory reproduces, and what it took."""

    def __init__(self, out: Path, name: str, kind: str):
        self.file = out / "reproduce.json"
        self.data: dict[str, Any] = {"name": name, "kind": kind, "endpoints": {}, "reps": {}}
        if self.file.is_file():
            old = json.loads(self.file.read_text())
            if old.get("name") != name:
                raise RunDirError(f"{out} holds a reproduction of {old.get('name')!r}, not {name!r}; "
                                  f"choose another --out")
            self.data.update(old)

    def record(self, section: str, key: str, **values) -> None:
        entry = self.data[section].setdefault(key, {})
        if "wall_s" in values:
            values["wall_s"] = entry.get("wall_s", 0.0) + values["wall_s"]
        entry.update(values)
        write_json(self.file, self.data)


def _endpoint(cfg: C.Config, seed: int, out: Path, ledger: Ledger, device, data_fn, progress: bool,
              log) -> Path:
    """The endpoint of ``seed``: trained with the Table 3 recipe unless OUT/endpoints already holds it."""
    from .runner import train

    path = out / "endpoints" / f"seed{seed}.safetensors"
    if path.is_file():
        return path
    if cfg.data.name == "imagenet":
        return _torchvision_endpoint(cfg, out, log)
    log(f"training endpoint seed {seed} ({cfg.train.epochs} epochs)")
    t0 = time.perf_counter()
    metrics = train(cfg, seed, path, device=device, progress=progress, data=data_fn())
    ledger.record("endpoints", f"seed{seed}", wall_s=time.perf_counter() - t0, metrics=metrics)
    log(f"  seed {seed}: train loss {metrics['train']['loss']:.4f}, test accuracy {metrics['test']['accuracy']:.4f}")
    return path


def _torchvision_endpoint(cfg: C.Config, out: Path, log) -> Path:
    """ImageNet M2O starts from torchvision's ResNet18 weights (fetched once, kept in OUT/endpoints)."""
    from .models.resnet18 import load_torchvision_resnet18_weights

    path = out / "endpoints" / "torchvision-resnet18.safetensors"
    if not path.is_file():
        log("fetching torchvision's ResNet18 IMAGENET1K_V1 weights (pass --start FILE when offline)")
        model = load_torchvision_resnet18_weights(build_model(cfg.model))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_weights(path, model.state_dict(), {"source": "torchvision ResNet18_Weights.IMAGENET1K_V1"})
    return path


# ---------------------------------------------------------------- the experiment


def reproduce(name: str, reps: int, out: str | Path, data_dir: str | None = None, device=None,
              start: str | Path | None = None, dest: str | Path | None = None, progress: bool = True,
              log=print) -> dict:
    """Run (or continue) ``reps`` repetitions of experiment ``name`` into ``out``; return the aggregate."""
    from .runner import prepare_data, resume, run_path

    if reps < 1:
        raise ConfigError(f"--reps must be at least 1, got {reps}")
    cfg = _load(name, data_dir)
    kind = kind_of(cfg)
    pc = getattr(cfg, kind)
    if dest is not None and kind == "m2o":
        raise ConfigError("--dest is for M2M experiments; M2O walks toward the origin")
    device = pick_device(device)
    out = Path(out)
    (out / "endpoints").mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out, cfg.name, kind)
    ledger.data["device"] = str(device)

    cache: dict[str, Bundle] = {}

    def data_fn() -> Bundle:
        if "data" not in cache:
            cache["data"] = (_imagenet_bundle(cfg, pc, pc.seed) if cfg.data.name == "imagenet"
                             else prepare_data(cfg, device))
        return cache["data"]

    for k in range(reps):
        rep = out / f"rep-{k:02d}"
        rd = RunDir(rep)
        if (rep / "summary.json").is_file():
            log(f"rep {k}: finished, skipped")
            continue
        if cfg.data.name == "imagenet":  # loaders, not tensors: the engine is built here
            a = Path(start) if start else _endpoint(cfg, k, out, ledger, device, data_fn, progress, log)
            log(f"rep {k}: {'resuming ' if rd.exists else ''}M2O from {a.name}")
            t0 = time.perf_counter()
            summary = _run_on_loaders(cfg, k, a, rep, device, data_fn(), progress)
        elif rd.exists:
            log(f"rep {k}: resuming the interrupted run")
            if rd.info().get("status") == "complete":  # summary lost after completion: redo from the last checkpoint
                rd.set_status("interrupted")
            t0 = time.perf_counter()
            summary = resume(rep, device=device, progress=progress)
        else:
            if kind == "m2m":
                a = Path(start) if start else _endpoint(cfg, 2 * k, out, ledger, device, data_fn, progress, log)
                b = Path(dest) if dest else _endpoint(cfg, 2 * k + 1, out, ledger, device, data_fn, progress, log)
            else:
                a = Path(start) if start else _endpoint(cfg, k, out, ledger, device, data_fn, progress, log)
                b = None
            log(f"rep {k}: {kind.upper()} from {a.name}" + (f" to {b.name}" if b else ""))
            if rep.exists():  # a directory left without a run by a kill before the run began
                for p in sorted(rep.rglob("*"), reverse=True):
                    p.rmdir() if p.is_dir() else p.unlink()
            t0 = time.perf_counter()
            summary = run_path(kind, _rep_config(cfg, k), a, b, rep, device=device, progress=progress,
                               data=data_fn())
        ledger.record("reps", f"rep-{k:02d}", wall_s=time.perf_counter() - t0)  # the path alone, not its endpoints
        if not summary:
            raise KeyboardInterrupt
        log(f"rep {k}: {summary.get('status')}" + (f", valid {summary.get('valid')}, valid_relative "
                                                    f"{summary.get('valid_relative')}" if kind == "m2m" else ""))
        if k < reps - 1:
            aggregate(out)  # partial results are readable while the next repetition runs
    return aggregate(out)


def _rep_config(cfg: C.Config, k: int) -> C.Config:
    """Repetition k's config: its own batch-stream seed (path seed + k)."""
    rcfg = copy.deepcopy(cfg)
    pc = getattr(rcfg, kind_of(rcfg))
    pc.seed = pc.seed + k
    return rcfg


def _run_on_loaders(cfg: C.Config, k: int, start: Path, rep: Path, device, data: Bundle, progress: bool) -> dict:
    """M2O on ImageNet loaders: evaluated on the validation set only (no pass over 1.28M training images).

    A resumed run continues from its checkpoint's weights and tracking; the
    loader's shuffle position is not checkpointed, so it is not bit-identical.
    """
    from .runner import _finish, load_model

    rd, cfg = RunDir(rep), _rep_config(cfg, k)
    pc = cfg.m2o
    state = None
    if not rd.exists:
        load_model(cfg, start, "start")
        resolved = C.Config(cfg.name, cfg.description, cfg.model, cfg.data, cfg.train, None, pc)
        rd.create("m2o", C.dumps(resolved), {"start": str(start), "dest": None, "config": cfg.name}, str(device),
                  force=True)
        save_weights(rd.path / "start.safetensors", load_weights(start))
    else:
        state = rd.load_checkpoint()
    model = load_model(cfg, rd.path / "start.safetensors", "start")
    eng = PathEngine("m2o", model, pc, data.train, eval_sets={"test": data.test}, device=device, observer=rd,
                     keep_points=False, eval_batch_size=cfg.data.eval_batch_size)
    last = 0
    if state is not None:
        eng.load_state_dict(state)
        last = eng.iteration
    if rd.exists and (rd.path / "metrics.csv").is_file():
        rd.truncate_metrics(last) if state is not None else (rd.path / "metrics.csv").unlink()
    for it, p in rd.points():
        if it > last:
            p.unlink()
    rd.set_status("running")
    return _finish(rd, eng, progress)


# ---------------------------------------------------------------- aggregation


def _rep_row(kind: str, s: dict, rows: list[dict]) -> dict:
    acc = [r["test_accuracy"] for r in rows if r.get("test_accuracy") is not None]
    row = {"status": s.get("status"), "iterations": s.get("iterations"),
           "max_train_loss": s.get("max_train_loss"), "max_batch_loss": s.get("max_batch_loss"),
           "test_accuracy_min": min(acc) if acc else None, "test_accuracy_max": max(acc) if acc else None}
    if kind == "m2m":
        fd, init = s.get("final_distance", {}), s.get("initial_distance", {})
        row.update(valid=s.get("valid"), valid_relative=s.get("valid_relative"),
                   loss_threshold=s.get("loss_threshold"), relative_threshold=s.get("relative_threshold"),
                   endpoint_train_loss_start=(s.get("endpoint_train_loss") or {}).get("start"),
                   endpoint_train_loss_dest=(s.get("endpoint_train_loss") or {}).get("dest"),
                   final_distance_max=max(fd.values()) if fd else None,
                   initial_distance_max=max(init.values()) if init else None,
                   final_relative_distance_max=s.get("final_relative_distance_max"),
                   floor_reached=s.get("floor_reached"))
    else:
        row.update(start_test_accuracy=s.get("start_test_accuracy"), best_test_accuracy=s.get("best_test_accuracy"),
                   best_variance_ratio=s.get("best_variance_ratio"), best_iteration=s.get("best_iteration"),
                   final_variance_ratio=s.get("final_variance_ratio"))
    return row


def aggregate(out: str | Path) -> dict:
    """Write OUT/figure.png, OUT/summary.md and OUT/summary.json from the finished repetitions."""
    out = Path(out)
    ledger = json.loads((out / "reproduce.json").read_text())
    kind = ledger["kind"]
    reps, runs = {}, []
    for rep in sorted(out.glob("rep-*")):
        if (rep / "summary.json").is_file():
            rows = read_metrics(rep / "metrics.csv")
            reps[rep.name] = _rep_row(kind, json.loads((rep / "summary.json").read_text()), rows)
            reps[rep.name]["wall_s"] = ledger["reps"].get(rep.name, {}).get("wall_s")
            runs.append(rows)
    agg: dict[str, Any] = {"repetitions": len(reps)}
    if reps:
        keys = sorted({k for r in reps.values() for k, v in r.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)})
        for k in keys:
            vals = [r[k] for r in reps.values() if isinstance(r.get(k), (int, float)) and not isinstance(r[k], bool)]
            agg[k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "min": float(np.min(vals)),
                      "max": float(np.max(vals))}
        for k in ("valid", "valid_relative", "floor_reached"):
            flags = [r.get(k) for r in reps.values() if r.get(k) is not None]
            if flags:
                agg[f"{k}_count"] = f"{sum(bool(f) for f in flags)}/{len(flags)}"
    result = {"name": ledger["name"], "kind": kind, "device": ledger.get("device"), "reps": reps,
              "aggregate": agg, "endpoints": ledger.get("endpoints", {})}
    write_json(out / "summary.json", result)
    atomic_write(out / "summary.md", _markdown(result).encode())
    if runs:
        paths_figure(runs, kind, out / "figure.png", f"{ledger['name']}: {len(runs)} repetition(s), mean ± std, "
                                                     f"moving average over {SMOOTH} iterations", list(reps.values()))
    return result


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _markdown(result: dict) -> str:
    kind, reps, agg = result["kind"], result["reps"], result["aggregate"]
    if kind == "m2m":
        cols = ["valid", "valid_relative", "max_train_loss", "loss_threshold", "relative_threshold",
                "endpoint_train_loss_start", "endpoint_train_loss_dest", "final_distance_max",
                "final_relative_distance_max", "test_accuracy_min", "test_accuracy_max", "wall_s"]
    else:
        cols = ["status", "max_train_loss", "start_test_accuracy", "best_test_accuracy", "best_variance_ratio",
                "best_iteration", "final_variance_ratio", "test_accuracy_min", "test_accuracy_max", "wall_s"]
    lines = [f"# {result['name']} ({kind.upper()}), {agg['repetitions']} repetition(s) on {result.get('device')}", "",
             "| rep | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in reps.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    cells = []
    for c in cols:
        if f"{c}_count" in agg:
            cells.append(agg[f"{c}_count"])
        elif isinstance(agg.get(c), dict):
            cells.append(f"{agg[c]['mean']:.4g} ± {agg[c]['std']:.2g}")
        else:
            cells.append("-")
    lines.append("| **all** | " + " | ".join(cells) + " |")
    eps = result.get("endpoints") or {}
    if eps:
        lines += ["", "Endpoints (paper Table 3 recipe):", "", "| endpoint | train loss | train acc | test loss | test acc | wall_s |",
                  "|---|---|---|---|---|---|"]
        for k, e in sorted(eps.items()):
            m = e.get("metrics", {})
            lines.append(f"| {k} | {_fmt(m.get('train', {}).get('loss'))} | {_fmt(m.get('train', {}).get('accuracy'))} "
                         f"| {_fmt(m.get('test', {}).get('loss'))} | {_fmt(m.get('test', {}).get('accuracy'))} "
                         f"| {_fmt(e.get('wall_s'))} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- dry run


def dry_run(name: str, data_dir: str | None = None, device=None, batch_size: int | None = None,
            log=print) -> dict:
    """Build model and data, resolve every phase, time two iterations on random tensors; train nothing.

    ``batch_size`` (default: the config's) sets the size of the random batches
    the two iterations draw; the estimate is only meaningful at the config's
    batch size (a smaller one times mostly per-step overhead).
    """
    cfg = _load(name, data_dir)
    kind = kind_of(cfg)
    pc = getattr(cfg, kind)
    device = pick_device(device)
    n_train = n_test = None
    source = "random tensors (dataset not found)"
    try:
        if cfg.data.name == "imagenet":
            from .data.imagenet import imagenet_loaders
            train_loader, val_loader = imagenet_loaders(cfg.data.root, workers=0)
            n_train, n_test = len(train_loader.dataset), len(val_loader.dataset)
        else:
            from .runner import prepare_data
            real = prepare_data(cfg, "cpu")
            n_train, n_test = len(real.train), len(real.test)
            real_shape = tuple(real.train.x.shape[1:])
            want = (cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size)
            if real_shape != want:
                raise DataError(f"{cfg.data.name} images have shape {list(real_shape)}, model expects {list(want)}")
            del real
        source = f"{cfg.data.name}: {n_train} training, {n_test} test images"
    except DataError as e:
        if "shape" in str(e):
            raise
        log(f"dataset not available ({str(e)[:120]}...); using random tensors")
    n_train = n_train or {"imagenet": 1281167, "cifar10": 50000, "cifar100": 50000}.get(cfg.data.name, 60000)
    n_test = n_test or {"imagenet": 50000}.get(cfg.data.name, 10000)

    bs = batch_size or pc.batch_size
    torch.manual_seed(0)
    start = build_model(cfg.model)
    nparams = sum(p.numel() for p in start.parameters() if p.requires_grad)
    names = tuple(n for n, p in start.named_parameters() if p.requires_grad)
    exclude = normalisation_parameters(start) if kind == "m2o" else set()
    schedule = resolve(pc.phases, names, exclude)
    dest = build_model(cfg.model) if kind == "m2m" else None
    fake = random_bundle(cfg, 2 * bs, bs)
    first = dataclasses.replace(pc.phases[0], rounds=1, until_loss=0.0)
    tcfg = dataclasses.replace(pc, phases=[first] + pc.phases[1:], batch_size=bs)
    eng = PathEngine(kind, start, tcfg, fake.train, dest=dest, eval_sets={"test": fake.test}, device=device,
                     keep_points=False, eval_batch_size=bs)
    rp = eng.schedule[0]
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        if kind == "m2m":
            loss, _ = m2m_iteration(eng.fp, eng.dest_flat, eng.v0, rp, tcfg, eng.train_r, eng.masks[0], eng.all_layers)
        else:
            loss, _, _ = m2o_iteration(eng.fp, eng.v0, rp, tcfg, eng.train_r, eng.masks[0])
        float(loss)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step_s = times[1]  # one iteration with r = 1: geometry + one training step (the second: no warm-up)
    t0 = time.perf_counter()
    with torch.no_grad():
        eng.model.eval()
        eng.model(fake.test.x.to(device))
        eng.model.train()
    fwd_s = (time.perf_counter() - t0) / bs  # per example, forward only

    phases, lo_steps, hi_steps = [], 0, 0
    for rp in schedule:
        ph = rp.phase
        if ph.until_loss > 0:
            lo, hi = ph.iterations * ph.min_rounds, ph.iterations * ph.max_rounds
            rule = f"until loss<{ph.until_loss:g} or r>{ph.max_rounds} (r>={ph.min_rounds})"
        else:
            lo = hi = ph.iterations * ph.rounds
            rule = f"r={ph.rounds}"
        lo_steps, hi_steps = lo_steps + lo, hi_steps + hi
        phases.append({"phase": rp.index + 1, "iterations": ph.iterations, "first": rp.first, "last": rp.last,
                       "layers": len(rp.moved), "rule": rule, "step_a": ph.step_a, "step_f": ph.step_f,
                       "steps_min": lo, "steps_max": hi})
    n_evals = pc.total_iterations // pc.eval_every + 1
    eval_examples = n_test + (n_train if cfg.data.name != "imagenet" else 0)  # ImageNet: validation only
    eval_s = n_evals * eval_examples * fwd_s
    endpoints = 2 if kind == "m2m" else 1
    ep_steps = 0 if cfg.data.name == "imagenet" else endpoints * cfg.train.epochs * (n_train // cfg.train.batch_size)
    ep_s = ep_steps * step_s
    plan = {
        "name": cfg.name, "kind": kind, "description": cfg.description, "device": str(device),
        "model": cfg.model.name, "parameters": nparams, "layers": len(names), "data": source,
        "batch_size": pc.batch_size, "timed_batch_size": bs, "iteration_s": times,
        "phases": phases, "iterations": pc.total_iterations, "steps_min": lo_steps, "steps_max": hi_steps,
        "estimate_s": {"path_min": lo_steps * step_s, "path_max": hi_steps * step_s, "evaluation": eval_s,
                       "endpoints": ep_s},
        "endpoints_per_rep": 0 if cfg.data.name == "imagenet" else endpoints,
    }
    log(format_plan(plan))
    return plan


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def format_plan(p: dict) -> str:
    e = p["estimate_s"]
    lines = [f"{p['name']} ({p['kind'].upper()}): {p['description']}",
             f"  model {p['model']}: {p['parameters']:,} parameters in {p['layers']} layers; data {p['data']}",
             f"  two iterations (r=1, batch {p['timed_batch_size']}) on {p['device']}: "
             + ", ".join(f"{t * 1000:.1f} ms" for t in p["iteration_s"])]
    for ph in p["phases"]:
        lines.append(f"  phase {ph['phase']}: iterations {ph['first']}-{ph['last']}, {ph['layers']} layers moved, "
                     f"{ph['rule']}, step_a {ph['step_a']:g}, step_f {ph['step_f']:g}")
    span = (_hms(e["path_min"]) if e["path_min"] == e["path_max"]
            else f"{_hms(e['path_min'])} to {_hms(e['path_max'])}")
    steps = (f"{p['steps_min']:,}" if p["steps_min"] == p["steps_max"]
             else f"{p['steps_min']:,} to {p['steps_max']:,}")
    lines.append(f"  per repetition: {p['iterations']:,} iterations, {steps} training steps (batch {p['batch_size']}): "
                 f"~{span} + ~{_hms(e['evaluation'])} evaluation on this device")
    if p["timed_batch_size"] != p["batch_size"]:
        lines.append(f"  (timed at batch {p['timed_batch_size']}, not {p['batch_size']}: the times above are not estimates "
                     f"for the real batch size)")
    if p["endpoints_per_rep"]:
        lines.append(f"  endpoints: {p['endpoints_per_rep']} per repetition, ~{_hms(e['endpoints'])} to train them")
    return "\n".join(lines)
