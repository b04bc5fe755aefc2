"""How long a ResNet18 endpoint and path take on this machine at each width, for one M2M config.

For each width the config's model is built at that width and timed on random
CIFAR-shaped data held as the config's data would be (speed only): one
endpoint step (the config's [train] recipe: optimiser, batch, augmentation),
one M2M iteration with one Train_r step (Move, VarianceCorrection, the step on
the config's fast path, VarianceCorrection), one more Train_r step, and the
driver's evaluation and BatchNorm recalibration per example. From them it
prints the time of one endpoint (the config's epochs over its training
subset) and of one path (its iterations at 1 and at 2 Train_r steps per
iteration on average, plus an evaluation every ``eval_every``), and the widest
width whose endpoint fits ``--endpoint-minutes`` and whose path at 2 steps
per iteration fits ``--path-minutes``. Every time is the median of a few
blocks of the process's CPU time (one thread, so a machine shared with other
jobs slows the wall clock, not this); say the machine's load beside them.

    PYTHONPATH=src python benchmarks/resnet18_width.py benchmarks/resnet18-quarter-cifar10-six-phases.toml
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import torch
import torch.nn.functional as F

from llpf.bench import Clock, evaluation_costs
from llpf.config import load_config
from llpf.data import BatchStream, Split
from llpf.data.augment import augment, default_augmentation
from llpf.methods import M2M
from llpf.models import build_model
from llpf.train import endpoint_optimizer


class CpuClock(Clock):
    """CPU seconds of this process a function takes (one thread: its time on a core)."""

    def __call__(self, fn) -> float:
        t0 = time.process_time()
        fn()
        return time.process_time() - t0


def median_seconds(clock: Clock, fn, repeats: int) -> float:
    fn()  # warm-up
    return statistics.median(clock(fn) for _ in range(repeats))


def endpoint_step_s(cfg, split: Split, clock: Clock, repeats: int) -> float:
    """One step of the [train] recipe: draw, augment, forward, backward, optimiser step."""
    torch.manual_seed(0)
    model, recipe = build_model(cfg.model), cfg.train
    opt, stream = endpoint_optimizer(model, recipe), BatchStream(split, recipe.batch_size, seed=0)
    name = recipe.augmentation
    aug = augment(default_augmentation(cfg.data.name) if name == "default" else name)
    model.train()

    def step():
        x, y = next(stream)
        if aug is not None:
            x = aug(x)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return median_seconds(clock, step, repeats)


def path_costs(cfg, split: Split, clock: Clock, repeats: int) -> dict:
    """Seconds of an M2M iteration with one Train_r step, of one more step, of an evaluation's forward passes
    per example and of the recalibration per example."""
    torch.manual_seed(0)
    pc = cfg.m2m
    one = dataclasses.replace(pc.phases[0], rounds=1, until_loss=0.0)
    m = M2M(build_model(cfg.model), dataclasses.replace(pc, phases=[one]), split, dest=build_model(cfg.model))
    phase = m.schedule[0]
    iteration = median_seconds(clock, lambda: float(m.iterate(1, phase)[0]), repeats)
    step = median_seconds(clock, lambda: float(m.train_r.step(pc.lr)), repeats)
    n = min(len(split), 512)
    per_eval, per_recal, batch = evaluation_costs(m, Split(split.x[:n], split.y[:n]), repeats, clock)
    return {"iteration_s": iteration, "step_s": step, "eval_per_example_s": per_eval,
            "recal_per_example_s": per_recal or 0.0, "eval_batch": batch}


def estimate(cfg, c: dict, n_train: int, n_test: int) -> dict:
    pc, tr = cfg.m2m, cfg.train
    evals = pc.total_iterations // pc.eval_every + 1
    eval_s = c["eval_per_example_s"] * (n_train + n_test) + c["recal_per_example_s"] * min(
        cfg.data.recalibration_examples or n_train, n_train)
    path = {r: pc.total_iterations * (c["iteration_s"] + (r - 1) * c["step_s"]) + evals * eval_s for r in (1, 2)}
    return {"endpoint_min": tr.epochs * (n_train // tr.batch_size) * c["endpoint_step_s"] / 60,
            "eval_s": eval_s, "path_min_r1": path[1] / 60, "path_min_r2": path[2] / 60}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--widths", default="0.125,0.25,0.375,0.5")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--endpoint-minutes", type=float, default=12.0)
    ap.add_argument("--path-minutes", type=float, default=70.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg, clock = load_config(args.config), CpuClock(torch.device("cpu"))
    n_train, n_test = cfg.data.limit_train or 50000, cfg.data.limit_test or 10000
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(2048, 3, 32, 32, generator=g), torch.randint(0, 10, (2048,), generator=g))
    print(f"{cfg.name}: {n_train} training, {n_test} test images; load average {os.getloadavg()[0]:.2f}; "
          f"torch {torch.__version__}, 1 thread")
    print("width  params     endpoint step  iteration  +step   eval/ex  recal/ex  batch | endpoint  path r=1  r=2")
    widest = None
    for w in (float(x) for x in args.widths.split(",")):
        wcfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, width=w))
        c = {"endpoint_step_s": endpoint_step_s(wcfg, split, clock, args.repeats),
             **path_costs(wcfg, split, clock, args.repeats)}
        e = estimate(wcfg, c, n_train, n_test)
        params = sum(p.numel() for p in build_model(wcfg.model).parameters())
        print(f"{w:<6} {params:<10,} {c['endpoint_step_s']:>10.3f} s {c['iteration_s']:>8.3f} s {c['step_s']:>6.3f} s "
              f"{1e3 * c['eval_per_example_s']:>6.2f} ms {1e3 * c['recal_per_example_s']:>6.2f} ms {c['eval_batch']:>5} | "
              f"{e['endpoint_min']:>5.1f} min {e['path_min_r1']:>5.0f} min {e['path_min_r2']:>4.0f} min", flush=True)
        if e["endpoint_min"] <= args.endpoint_minutes and e["path_min_r2"] <= args.path_minutes:
            widest = w
    print(f"load average {os.getloadavg()[0]:.2f}; widest width within {args.endpoint_minutes:g} min per endpoint and "
          f"{args.path_minutes:g} min per path (2 steps per iteration): {widest}")


if __name__ == "__main__":
    main()
