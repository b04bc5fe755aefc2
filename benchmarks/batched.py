"""K paths batched against the same K paths one after another, side by side in one process.

For each K, K LeNet5 M2M paths (batch 64 per path, r = 5 Train_r steps per
iteration, each path its own batch stream) advance ``--iterations``
iterations two ways, interleaved over ``--repeats`` rounds (medians reported):
  sequential - path after path with the one-path code (FlatParams, TrainR, m2m_iteration)
  batched    - all K at once (BatchedParams, BatchedTrainR, batched_m2m_iteration)
and prints the speed-up (sequential time / batched time) with the machine's
device, torch version and thread count. The data are random MNIST-sized
images held in memory (the time of a step does not depend on their values).

    python benchmarks/batched.py [--paths 1 4 10] [--device cpu] [--threads 1]
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from llpf.batched import BatchedParams, BatchedTrainR, StackedStreams, batched_m2m_iteration
from llpf.config import ModelConfig, PathConfig, Phase
from llpf.data import BatchStream, Split
from llpf.models import build_model
from llpf.methods import m2m_iteration
from llpf.schedule import resolve
from llpf.flat import FlatParams
from llpf.train import TrainR


def models(k, seed, mc, device):
    out = []
    for s in range(seed, seed + k):
        torch.manual_seed(s)
        out.append(build_model(mc).to(device))
    return out


class Sequential:
    def __init__(self, starts, dests, split, cfg):
        self.paths = []
        for k, (start, dest) in enumerate(zip(starts, dests)):
            fp = FlatParams(copy.deepcopy(start))
            train_r = TrainR(fp, BatchStream(split, cfg.batch_size, seed=k), F.cross_entropy, cfg.lr)
            d = torch.cat([p.detach().reshape(-1) for p in dest.parameters()])
            self.paths.append((fp, train_r, d, fp.seg.variance(fp.flat)))

    def run(self, n, rp, cfg, every):
        for fp, train_r, dest, v0 in self.paths:
            for _ in range(n):
                m2m_iteration(fp, dest, v0, rp, cfg, train_r, every, every)


class Batched:
    def __init__(self, starts, dests, split, cfg):
        self.bp = BatchedParams(starts)
        self.train_r = BatchedTrainR(self.bp, StackedStreams(split, cfg.batch_size, range(len(starts))),
                                     F.cross_entropy, cfg.lr)
        self.dest, self.v0 = BatchedParams(dests).flat, self.bp.seg.variance(self.bp.flat)

    def run(self, n, rp, cfg, every):
        for _ in range(n):
            batched_m2m_iteration(self.bp, self.dest, self.v0, rp, cfg, self.train_r, every, every)


def machine(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", type=int, nargs="+", default=[1, 4, 10])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    mc = ModelConfig("lenet5", 10, 1, 28)
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(4096, 1, 28, 28, generator=g), torch.randint(0, 10, (4096,), generator=g)).to(device)
    cfg = PathConfig(batch_size=args.batch, lr=0.01)
    print(f"{machine(device)}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); LeNet5, batch {args.batch} per path, "
          f"M2M iterations with r = {args.rounds}")
    print(f"{'K':>4} {'sequential ms/it':>17} {'batched ms/it':>14} {'speed-up':>9}")
    for k in args.paths:
        starts, dests = models(k, 0, mc, device), models(k, 1000, mc, device)
        layers = BatchedParams(starts[:1]).layout.names
        rp = resolve([Phase(iterations=10 ** 9, step_a=0.01, rounds=args.rounds)], layers)[0]
        every = torch.ones(len(rp.moved), dtype=torch.bool, device=device)
        runners = {"sequential": Sequential(starts, dests, split, cfg), "batched": Batched(starts, dests, split, cfg)}
        times = {name: [] for name in runners}
        for name, r in runners.items():  # warm-up
            r.run(1, rp, cfg, every)
        for _ in range(args.repeats):
            for name, r in runners.items():
                times[name].append(timed(lambda: r.run(args.iterations, rp, cfg, every), device) / args.iterations)
        seq, bat = statistics.median(times["sequential"]), statistics.median(times["batched"])
        print(f"{k:>4} {seq * 1e3:>17.1f} {bat * 1e3:>14.1f} {seq / bat:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()
