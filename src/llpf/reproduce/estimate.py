"""``llpf reproduce --dry-run``: check an experiment end to end on random tensors and estimate its cost.

The dry run builds the model, reads the dataset's size (or assumes the usual
one when the dataset is absent), resolves every phase against the model and
times two path iterations with one training round each on random batches of
the model's input shape. The estimate multiplies the second (warm) iteration's
time by the training steps each phase takes (a range when a phase trains
until a loss is reached) and adds the evaluations and the endpoints' training.
Nothing is trained and nothing is written.
"""
from __future__ import annotations

import dataclasses
import time

import torch

from .. import config as C
from ..data import Bundle, Split, prepare_data
from ..errors import ConfigError, DataError
from ..models import build_model
from ..methods import method_class
from ..runtime import pick_device
from ..schedule import ResolvedPhase, normalisation_parameters, resolve
from ..train import endpoint_epochs
from .batching import check_batch_paths
from .experiment import check_request

USUAL_TRAIN = {"imagenet": 1281167, "cifar10": 50000, "cifar100": 50000}  # when the dataset is absent; else 60000
USUAL_TEST = {"imagenet": 50000}  # else 10000


def dry_run(name: str, data_dir: str | None = None, device=None, batch_size: int | None = None,
            log=print, method: str | None = None, *, reps: int = 1, start=None, dest=None,
            batch_paths: int | None = None, fast: dict | None = None) -> dict:
    """Build model and data, resolve every phase, time two iterations on random tensors; train nothing.

    It first checks what ``reproduce`` with the same arguments checks
    (``reps``, ``start``, ``dest``, ``batch_paths``, ``fast``), so a dry run
    that passes means the real run gets past its checks too.
    ``batch_size`` (default: the config's) sets the size of the random batches
    the two iterations draw; the estimate is only meaningful at the config's
    batch size (a smaller one times mostly per-step overhead).
    """
    cfg, kind = check_request(name, reps, data_dir, method, start, dest, fast)
    pc = getattr(cfg, kind)
    device = pick_device(device)
    check_batch_paths(cfg, kind, device, reps, batch_paths)
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"the dry run's batch size must be at least 1, got {batch_size}")
    n_train, n_test, source = dataset_size(cfg, log)
    bs = batch_size or pc.batch_size
    torch.manual_seed(0)
    start = build_model(cfg.model)
    nparams = sum(p.numel() for p in start.parameters() if p.requires_grad)
    names = tuple(n for n, p in start.named_parameters() if p.requires_grad)
    exclude = normalisation_parameters(start) if kind == "m2o" else set()
    schedule = resolve(pc.phases, names, exclude)
    times, fwd_s = time_iterations(cfg, kind, start, bs, device)
    step_s = times[1]  # one iteration with r = 1: geometry + one training step (the second: no warm-up)
    phases, lo_steps, hi_steps = phase_plan(schedule)
    n_evals = pc.total_iterations // pc.eval_every + 1
    eval_examples = n_test + (n_train if cfg.data.name != "imagenet" else 0)  # ImageNet: validation only
    endpoints = 0 if cfg.data.name == "imagenet" else (2 if kind == "m2m" else 1)
    recipes = [cfg.train.recipe("start"), cfg.train.recipe("dest")][:endpoints]  # M2M: a start and a destination
    ep_steps = sum(endpoint_epochs(r) * (n_train // r.batch_size) for r in recipes)
    plan = {
        "name": cfg.name, "kind": kind, "description": cfg.description, "device": str(device),
        "model": cfg.model.name, "parameters": nparams, "layers": len(names), "data": source,
        "batch_size": pc.batch_size, "timed_batch_size": bs, "iteration_s": times,
        "phases": phases, "iterations": pc.total_iterations, "steps_min": lo_steps, "steps_max": hi_steps,
        "estimate_s": {"path_min": lo_steps * step_s, "path_max": hi_steps * step_s,
                       "evaluation": n_evals * eval_examples * fwd_s, "endpoints": ep_steps * step_s},
        "endpoints_per_rep": endpoints, "endpoint_epochs": endpoint_epochs(cfg.train),
        "dest_endpoint_epochs": endpoint_epochs(recipes[-1]) if endpoints == 2 else None,
        "endpoint_steps": ep_steps,
    }
    log(format_plan(plan))
    return plan


def dataset_size(cfg: C.Config, log) -> tuple[int, int, str]:
    """Training and test set sizes of ``cfg``'s dataset, and a line saying where they come from."""
    n_train = n_test = None
    source = "random tensors (dataset not found)"
    try:
        if cfg.data.name == "imagenet":
            from ..data.imagenet import imagenet_loaders
            train_loader, val_loader = imagenet_loaders(cfg.data.root, workers=0)
            n_train, n_test = len(train_loader.dataset), len(val_loader.dataset)
        else:
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
    return n_train or USUAL_TRAIN.get(cfg.data.name, 60000), n_test or USUAL_TEST.get(cfg.data.name, 10000), source


def random_bundle(cfg: C.Config, n_train: int, n_test: int, seed: int = 0) -> Bundle:
    """Random inputs and labels of the shapes ``cfg.model`` takes (for dry runs without the dataset)."""
    g = torch.Generator().manual_seed(seed)
    m = cfg.model
    shape = (m.in_channels, m.image_size, m.image_size)

    def split(n):
        return Split(torch.randn(n, *shape, generator=g), torch.randint(0, m.num_classes, (n,), generator=g))
    return Bundle(split(n_train), split(n_test), m.num_classes)


def time_iterations(cfg: C.Config, kind: str, start: torch.nn.Module, bs: int, device) -> tuple[list[float], float]:
    """Seconds of two path iterations with r = 1 on random batches of ``bs``, and of a forward pass per example."""
    pc = getattr(cfg, kind)
    dest = build_model(cfg.model) if kind == "m2m" else None
    fake = random_bundle(cfg, 2 * bs, bs)
    first = dataclasses.replace(pc.phases[0], rounds=1, until_loss=0.0)
    tcfg = dataclasses.replace(pc, phases=[first] + pc.phases[1:], batch_size=bs)
    method = method_class(kind)(start, tcfg, fake.train, dest=dest, device=device)
    times = []
    for i in (1, 2):
        t0 = time.perf_counter()
        loss, _ = method.iterate(i, method.schedule[0])
        float(loss)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    with torch.no_grad():
        method.model.eval()
        method.model(fake.test.x.to(device))
        method.model.train()
    return times, (time.perf_counter() - t0) / bs  # per example, forward only


def phase_plan(schedule: list[ResolvedPhase]) -> tuple[list[dict], int, int]:
    """One line of plan per phase, and the fewest and most training steps of the whole schedule."""
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
    return phases, lo_steps, hi_steps


def format_plan(p: dict) -> str:
    """The plan as the lines ``llpf reproduce --dry-run`` prints."""
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
        epochs = (f"{p['endpoint_epochs']} epochs each" if p.get("dest_endpoint_epochs") in (None, p["endpoint_epochs"])
                  else f"{p['endpoint_epochs']} epochs (the destination {p['dest_endpoint_epochs']}, [train.dest])")
        lines.append(f"  endpoints: {p['endpoints_per_rep']} per repetition, {epochs}, "
                     f"~{_hms(e['endpoints'])} to train them")
    return "\n".join(lines)


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
