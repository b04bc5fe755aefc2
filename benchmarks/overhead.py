"""What LLPF costs on top of training, measured side by side in one process.

Three things on the same model, data and batch size, interleaved over several
rounds (medians reported):
  plain   - a bare SGD step of torch.optim.SGD (the cost of training itself)
  trainr  - a Train_r step on the flat parameter vector (what LLPF trains with)
  m2m     - one M2M iteration with r = 1: Move, VarianceCorrection, one step,
            VarianceCorrection (Algorithm 1 lines 5-8)
and prints the ratios, plus the geometry alone as a fraction of a plain step
(design goal: under 5%).

    python benchmarks/overhead.py [--model lenet5] [--batch 64] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from llpf.config import ModelConfig, PathConfig, Phase
from llpf.geometry import move_, variance_correction_
from llpf.models import build_model
from llpf.flat import FlatParams
from llpf.methods.m2m import m2m_iteration
from llpf.schedule import resolve
from llpf.train import TrainR


def timed(fn, n, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    mc = ModelConfig(args.model, 10, args.channels, args.image_size)
    x = torch.randn(args.batch, args.channels, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    batches = iter(lambda: (x, y), None)

    torch.manual_seed(0)
    plain_model = build_model(mc).to(device)
    opt = torch.optim.SGD(plain_model.parameters(), lr=1e-3)

    def plain():
        opt.zero_grad(set_to_none=False)
        F.cross_entropy(plain_model(x), y).backward()
        opt.step()

    torch.manual_seed(0)
    model = build_model(mc).to(device)
    fp = FlatParams(model)
    dest = fp.flat.detach().clone() + 0.01 * torch.randn_like(fp.flat)
    v0 = fp.seg.variance(fp.flat)
    train_r = TrainR(fp, batches, F.cross_entropy, 1e-3)
    cfg = PathConfig(phases=[Phase(iterations=10**9, step_a=1e-4, step_f=1e-4, rounds=1)])
    rp = resolve(cfg.phases, fp.layout.names)[0]
    moved = fp.layout.mask(rp.moved, device)

    def trainr():
        train_r.step(1e-3)

    def m2m():
        m2m_iteration(fp, dest, v0, rp, cfg, train_r, moved, moved)

    def geometry():
        with torch.no_grad():
            move_(fp.flat, dest, fp.seg, 1e-4, 1e-4, moved)
            variance_correction_(fp.flat, v0, fp.seg, moved)
            variance_correction_(fp.flat, v0, fp.seg, moved)

    for f in (plain, trainr, m2m, geometry):
        timed(f, 5, device)
    res = {k: [] for k in ("plain", "trainr", "m2m", "geometry")}
    for _ in range(args.rounds):
        for name, f in (("plain", plain), ("trainr", trainr), ("m2m", m2m), ("geometry", geometry)):
            res[name].append(timed(f, args.steps, device))
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, model {args.model}, batch {args.batch}, "
          f"{len(fp.layout)} layers, {fp.layout.size} parameters")
    for k in ("plain", "trainr", "m2m", "geometry"):
        print(f"  {k:9s} {med[k] * 1e3:8.3f} ms   ratio to plain step {med[k] / med['plain']:.3f}")
    print(f"  geometry (Move + 2 VarianceCorrection) = {100 * med['geometry'] / med['plain']:.1f}% of a plain step")


if __name__ == "__main__":
    main()
