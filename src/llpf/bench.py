"""``llpf bench``: what llpf's path loop costs beyond the training steps it must take, as ratios.

Every figure times llpf and a reference side by side in one process, on the
same model and the same kind of batches, in alternating blocks (the median of
the per-block ratios is reported), so a machine that slows down slows both:

``tick_ratio``
    one LLPF iteration through the driver (Move, VarianceCorrection, Train_r
    with r steps, VarianceCorrection, the recording of the batch loss) over
    the same r plain ``torch.optim.SGD`` steps;
``eval_share``
    the full evaluations every ``eval_every`` iterations, run as the driver
    runs them (``llpf.evaluation``: forward passes over the training and test
    sets in the evaluation layout and the batch measured for the device, plus
    the BatchNorm recalibration pass over its fixed slice where there is
    BatchNorm), as a share of a path's wall time at the experiment config's
    cadence; the time per example is measured on a slice and scaled to the
    dataset's size (and to the recalibration slice's);
``recalibration_s``
    that recalibration pass alone, where there is BatchNorm (ResNet18);
``geometry_overhead``
    Move and two VarianceCorrections over one training step;
``data_overhead``
    training steps with llpf's data pipeline (a shuffled stream over a
    device-held split) against the same steps on one pre-loaded batch, minus 1;
``batched_speedup``
    K LeNet5 paths batched (``m2m-batched``) against the same K paths one
    after another, per iteration.

The data are random tensors of the real datasets' shapes (MNIST-sized for
LeNet5, CIFAR-sized for ResNet18), held on the device. Nothing here asserts a
speed: it measures and prints.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import platform
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from .config import DataConfig, ModelConfig, PathConfig, Phase
from .data import BatchStream, Split
from .driver import Driver
from .evaluation import eval_format, module_in
from .geometry import move_, variance_correction_
from .methods import M2M, BatchedM2M
from .models import build_model
from .runtime import pick_device
from .train import TrainR, has_batchnorm

NEVER = 10 ** 9  # an evaluation, save and checkpoint cadence the timed blocks never reach


@dataclasses.dataclass(frozen=True)
class Case:
    """One model of the bench, its data's shape and size, and its experiment config's cadence."""

    name: str
    model: ModelConfig
    n_train: int
    n_test: int
    batch: int  # on CUDA
    cpu_batch: int
    eval_every: int
    cpu_eval_examples: int  # the slice the time per evaluated example is measured on, on a CPU


CASES = (Case("lenet5", ModelConfig("lenet5", 10, 1, 32), 60000, 10000, 64, 64, 500, 4096),
         Case("resnet18", ModelConfig("resnet18", 10, 3, 32), 50000, 10000, 256, 8, 500, 256))


@dataclasses.dataclass(frozen=True)
class Settings:
    """How long each measurement runs (``quick``: a few steps each, for tests)."""

    rounds: int = 5
    repeats: int = 5  # timed blocks of each side
    block_s: float = 1.0  # about how long one timed block lasts
    held: int = 10000  # examples held on a CPU (all of them on CUDA)
    eval_examples: int = 0  # the slice the time per evaluated example is measured on (0: each case's own on a CPU)
    batch_ks: tuple[int, ...] = (1, 10)
    cpu_batch: int = 0  # instead of each case's own (quick runs)

    @classmethod
    def for_device(cls, device: torch.device, quick: bool) -> "Settings":
        if quick:
            return cls(rounds=2, repeats=2, block_s=0.01, held=256, eval_examples=64, batch_ks=(1, 2), cpu_batch=2)
        if device.type == "cuda":
            return cls(repeats=7, block_s=0.5, held=0, eval_examples=10000, batch_ks=(1, 10, 50, 200))
        return cls()


class Clock:
    """Seconds a function takes, with the device synchronised before and after."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def side_by_side(clock: Clock, make_a: Callable[[int], Callable], make_b: Callable[[int], Callable],
                 s: Settings) -> tuple[float, float, float]:
    """Median of a/b over alternating blocks (a first, then b first), and the median seconds of one unit of each.

    ``make_a(n)`` and ``make_b(n)`` build blocks of n units (iterations,
    steps); n is chosen so that a block of ``a`` lasts about ``s.block_s``.
    """
    one = make_a(1)
    one()  # warm-up
    n = max(1, round(s.block_s / max(clock(one), 1e-9)))
    a, b = make_a(n), make_b(n)
    a(), b()
    repeats = s.repeats if n > 1 else min(s.repeats, 3)  # a unit longer than a block: fewer, longer blocks
    ta, tb = [], []
    for i in range(repeats):
        first, second = ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta))
        first[1].append(clock(first[0]))
        second[1].append(clock(second[0]))
    return statistics.median(x / y for x, y in zip(ta, tb)), statistics.median(ta) / n, statistics.median(tb) / n


def random_split(case: Case, n: int, device, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    m = case.model
    x = torch.randn(n, m.in_channels, m.image_size, m.image_size, generator=g)
    return Split(x, torch.randint(0, m.num_classes, (n,), generator=g)).to(device)


def path_config(batch: int, rounds: int) -> PathConfig:
    """An M2M config with the paper's LeNet5 shape (step_f = 1e-3, r steps, lr 1e-3) that never evaluates."""
    return PathConfig(phases=[Phase(iterations=NEVER, step_a=0.0, step_f=1e-3, rounds=rounds)], batch_size=batch,
                      lr=1e-3, eval_every=NEVER, save_every=NEVER, checkpoint_every=NEVER)


# ---------------------------------------------------------------- one model: the tick, the geometry, the data


def plain_sgd_block(model, split: Split, cfg: PathConfig, fast, device, steps: int) -> Callable[[], None]:
    """``steps`` plain torch.optim.SGD steps of ``model`` on batches drawn as llpf draws them (on the same fast
    path: autocast and input format)."""
    stream = BatchStream(split, cfg.batch_size, seed=cfg.seed + 1)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    model.train()

    def block():
        for _ in range(steps):
            x, y = next(stream)
            with fast.autocast(device):
                loss = F.cross_entropy(model(fast.inputs(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        float(loss.detach())
    return block


def llpf_block(driver: Driver, ticks: int) -> Callable[[], None]:
    """``ticks`` driver iterations, then the recorded batch losses brought to the host as the driver does."""
    def block():
        for _ in range(ticks):
            driver.step()
        torch.stack([p[2] for p in driver.pending]).tolist()
        driver.pending = []
    return block


def measure_case(case: Case, s: Settings, device: torch.device, log) -> dict:
    """tick_ratio, eval_share, geometry_overhead and data_overhead of one model."""
    clock = Clock(device)
    batch = case.batch if device.type == "cuda" else (s.cpu_batch or case.cpu_batch)
    held = case.n_train if not s.held else min(s.held, case.n_train)
    split = random_split(case, max(held, batch), device)
    torch.manual_seed(0)
    start, dest = build_model(case.model), build_model(case.model)
    cfg = path_config(batch, s.rounds)
    method = M2M(start, cfg, split, dest=dest, device=device)
    fast, driver, ref = method.train_r.fast, Driver(method), copy.deepcopy(start).to(device)
    tick, t_llpf, t_sgd = side_by_side(clock, lambda n: llpf_block(driver, n),
                                       lambda n: plain_sgd_block(ref, split, cfg, fast, device, n * s.rounds), s)
    out = {"batch": batch, "r": s.rounds, "tick_ratio": tick, "tick_s": t_llpf, "sgd_steps_s": t_sgd,
           "held_examples": len(split), "fast_path": dataclasses.asdict(fast)}
    if batch != case.batch:
        out["note"] = f"batch {batch} on the CPU (the experiment's is {case.batch})"
    out.update(eval_share(case, method, split, t_llpf, s, clock))
    out["geometry_overhead"] = geometry_overhead(method, cfg, clock, s)
    out["data_overhead"] = data_overhead(method, split, cfg, clock, s)
    log(format_case(case.name, out))
    return out


def eval_share(case: Case, method: M2M, split: Split, tick_s: float, s: Settings, clock: Clock) -> dict:
    """The full evaluations' share of a path's wall time at ``case.eval_every``, as the driver runs them (scaled
    from a slice): forward passes over the training and test sets, and the BatchNorm recalibration pass."""
    n = min(s.eval_examples or case.cpu_eval_examples, len(split))
    per_example, per_recal, batch = evaluation_costs(method, Split(split.x[:n], split.y[:n]), s.repeats, clock)
    out = {"eval_every": case.eval_every, "eval_batch": batch, "eval_s": per_example * (case.n_train + case.n_test)}
    if per_recal is not None:
        out["recalibration_examples"] = min(DataConfig().recalibration_examples, case.n_train)
        out["recalibration_s"] = per_recal * out["recalibration_examples"]
        out["eval_s"] += out["recalibration_s"]
    out["eval_share"] = out["eval_s"] / (case.eval_every * tick_s + out["eval_s"])
    return out


def evaluation_costs(method, part: Split, repeats: int, clock: Clock) -> tuple[float, float | None, int]:
    """Seconds per example of the driver's evaluation of ``method``'s model on ``part`` (the forward passes, in
    the evaluation layout and measured batch) and of its BatchNorm recalibration (None without BatchNorm), the
    medians of ``repeats`` passes after a warm-up; and the evaluation batch."""
    model, n = method.model_of(0), len(part)
    driver = Driver(method, eval_sets={"test": part})  # no training set: the forward passes alone
    driver.evaluate(model)  # warm-up; measures the evaluation batch
    per_example = statistics.median(clock(lambda: driver.evaluate(model)) for _ in range(repeats)) / n
    per_recal = None
    if has_batchnorm(model):
        recal = Driver(method, eval_sets={"train": part}, recalibration_examples=n)
        work = module_in(model, eval_format(model))
        recal.evaluator.recalibrate(work)
        per_recal = statistics.median(clock(lambda: recal.evaluator.recalibrate(work)) for _ in range(repeats)) / n
    return per_example, per_recal, driver.evaluator.batch_size


def geometry_overhead(method: M2M, cfg: PathConfig, clock: Clock, s: Settings) -> float:
    """Move + two VarianceCorrections (Algorithm 1 lines 5, 6 and 8) over one training step."""
    flat, seg, ph = method.flat, method.seg, method.schedule[0].phase

    def geometry(n):
        def run():
            with torch.no_grad():
                for _ in range(n):
                    move_(flat, method.dest_flat, seg, ph.step_a, ph.step_f, method.masks[0], cfg.step_rule)
                    variance_correction_(flat, method.v0, seg, method.all_layers)
                    variance_correction_(flat, method.v0, seg, method.all_layers)
        return run

    def steps(n):
        def run():
            for _ in range(n):
                loss = method.train_r.step(cfg.lr)
            float(loss)
        return run
    return 1.0 / side_by_side(clock, steps, geometry, s)[0]


def data_overhead(method: M2M, split: Split, cfg: PathConfig, clock: Clock, s: Settings) -> float:
    """Steps drawing from llpf's shuffled stream over steps on one pre-loaded batch, minus 1."""
    pre = next(BatchStream(split, cfg.batch_size, seed=3))
    preloaded = TrainR(method.fp, itertools.repeat(pre), method.loss_fn, cfg.lr, device=method.device,
                       fast=method.train_r.fast)

    def steps(train_r):
        def make(n):
            def run():
                for _ in range(n):
                    loss = train_r.step(cfg.lr)
                float(loss)
            return run
        return make
    return side_by_side(clock, steps(method.train_r), steps(preloaded), s)[0] - 1.0


# ---------------------------------------------------------------- many paths at once


def batched_speedup(s: Settings, device: torch.device, log) -> dict:
    """K LeNet5 paths (batch 64 each) batched against the same K paths one after another, per iteration."""
    case, clock, out = CASES[0], Clock(device), {}
    split = random_split(case, case.n_train if not s.held else min(s.held, case.n_train), device)
    cfg = path_config(64, s.rounds)
    for k in s.batch_ks:
        torch.manual_seed(0)
        starts = [build_model(case.model) for _ in range(k)]
        dests = [build_model(case.model) for _ in range(k)]
        batched = BatchedM2M(starts, cfg, split, dest=dests, device=device)
        alone = [M2M(a, dataclasses.replace(cfg, seed=j), split, dest=b, device=device)
                 for j, (a, b) in enumerate(zip(starts, dests))]
        phase = batched.schedule[0]

        def together(n):
            return lambda: [float(batched.iterate(1, phase)[0].sum()) for _ in range(n)]

        def one_by_one(n):
            return lambda: [float(sum(m.iterate(1, phase)[0] for m in alone)) for _ in range(n)]
        out[str(k)] = side_by_side(clock, one_by_one, together, s)[0]
        log(f"  batched_speedup K={k}: {out[str(k)]:.2f}")
    return out



# ---------------------------------------------------------------- the whole bench


def machine(device: torch.device) -> dict:
    """The device's name, torch's version, the thread count, the date and the load the machine was under."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as fh:
                name = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
        except (OSError, StopIteration):
            pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"device": str(device), "device_name": name, "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
            "load_average": list(load) if load else None}


def bench(device=None, threads: int = 1, quick: bool = False, log=print) -> dict:
    """Measure every figure on ``device`` with ``threads`` CPU threads; return them (and print them)."""
    device = pick_device(device)
    torch.set_num_threads(threads)
    s = Settings.for_device(device, quick)
    result = machine(device)
    log(f"llpf bench on {result['device_name']} ({device}), torch {result['torch']}, {threads} thread(s)"
        + (f", load average {result['load_average'][0]:.2f}" if result["load_average"] else ""))
    for case in CASES:
        result[case.name] = measure_case(case, s, device, log)
    log(f"batched_speedup (LeNet5, batch 64 per path, r = {s.rounds})")
    result["batched_speedup"] = batched_speedup(s, device, log)
    if quick:
        result["quick"] = True
    return result


def format_case(name: str, r: dict) -> str:
    return (f"{name} (batch {r['batch']}, r = {r['r']}{'; ' + r['note'] if 'note' in r else ''}):\n"
            f"  tick_ratio {r['tick_ratio']:.3f} (tick {1e3 * r['tick_s']:.1f} ms; {r['r']} SGD steps "
            f"{1e3 * r['sgd_steps_s']:.1f} ms)\n"
            f"  eval_share {r['eval_share']:.3f} (every {r['eval_every']} iterations, {r['eval_s']:.1f} s each, "
            f"batch {r['eval_batch']})\n"
            + (f"  recalibration_s {r['recalibration_s']:.1f} (BatchNorm statistics over "
               f"{r['recalibration_examples']} training examples, part of each evaluation)\n"
               if "recalibration_s" in r else "") +
            f"  geometry_overhead {r['geometry_overhead']:.3f}\n"
            f"  data_overhead {r['data_overhead']:+.3f}")
