"""What BatchNorm recalibration at evaluation changes in the demo's numbers (a measurement, not a timing).

A LeNet5 with BatchNorm after both convolutions and both hidden linear layers,
on scikit-learn's digits as the demo uses them: two endpoints trained with the
demo's recipe (seeds 0 and 1), then the demo's M2M path (seed 0 -> seed 1)
and its M2O path (from seed 0), each run twice with ``recalibrate_bn`` on and
off. The path is the same both times (the batch losses are compared); only
what is measured at the evaluation points differs. Prints a table.

    python benchmarks/bn_recalibration.py
"""
from __future__ import annotations

import dataclasses
import time

import torch
from torch import nn

import llpf
from llpf.config import load_config
from llpf.data import prepare_data
from llpf.train import train_endpoint


def bn_lenet5() -> nn.Sequential:
    """LeNet5 (32x32 inputs) with BatchNorm before each hidden ReLU."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.BatchNorm1d(120), nn.ReLU(),
        nn.Linear(120, 84), nn.BatchNorm1d(84), nn.ReLU(), nn.Linear(84, 10))


def run(kind: str, cfg, start, dest, data, recalibrate: bool):
    pc = dataclasses.replace(getattr(cfg, kind), recalibrate_bn=recalibrate)
    t0 = time.perf_counter()
    r = llpf.find_path(kind, start, data.train, pc, dest=dest, device="cpu",
                       eval_sets={"train": data.train, "test": data.test})
    return r, time.perf_counter() - t0


def evaluated(r, key: str) -> list[float]:
    return [row[key] for row in r.rows if row.get(key) is not None]


def main() -> None:
    torch.set_num_threads(1)
    cfg = load_config("demo")
    data = prepare_data(cfg, "cpu")
    ends = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = bn_lenet5()
        train_endpoint(m, data.train, cfg.train, seed, device="cpu", dataset="digits")
        ends.append(m)
    print(f"{len(data.train)} training, {len(data.test)} test images; torch {torch.__version__}, 1 thread")
    for kind in ("m2m", "m2o"):
        on, t_on = run(kind, cfg, ends[0], ends[1] if kind == "m2m" else None, data, True)
        off, t_off = run(kind, cfg, ends[0], ends[1] if kind == "m2m" else None, data, False)
        same = evaluated(on, "batch_loss") == evaluated(off, "batch_loss")
        print(f"\n{kind.upper()}: same path (identical batch losses): {same}; wall {t_on:.1f} s with, "
              f"{t_off:.1f} s without recalibration")
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            a, b = evaluated(on, key), evaluated(off, key)
            gap = max(abs(x - y) for x, y in zip(a, b))
            print(f"  {key:15s} with: start {a[0]:.4f} max {max(a):.4f} end {a[-1]:.4f} | without: start "
                  f"{b[0]:.4f} max {max(b):.4f} end {b[-1]:.4f} | largest difference at a point {gap:.4f}")
        keys = (("valid", "valid_paper", "max_train_loss", "batch_loss_exceedance", "final_relative_distance_max")
                if kind == "m2m" else ("best_iteration", "best_test_loss", "best_test_accuracy",
                                       "best_fraction_to_origin"))
        for key in keys:
            print(f"  {key:28s} with: {on.summary.get(key)}  without: {off.summary.get(key)}")


if __name__ == "__main__":
    main()
