"""What an evaluation's forward passes cost per example, by memory layout and batch, side by side in one run.

For LeNet5 (MNIST-sized inputs) and ResNet18 at width 0.25 (CIFAR-sized), on
random inputs held on the device: the model as it is (NCHW) against a copy in
``channels_last`` with the inputs held so (what ``llpf.evaluation`` does for conv
nets), at batches of 64 to 4,096 (ResNet18: to 1,024), under
``torch.inference_mode``; the medians of alternating blocks. Also prints the
batch ``measured_batch_size`` picks for each. One thread; say the machine's load.

    PYTHONPATH=src python benchmarks/eval_layout.py [--device cpu]
"""
from __future__ import annotations

import argparse
import os
import statistics

import torch

from llpf.bench import Clock
from llpf.config import ModelConfig
from llpf.evaluation import measured_batch_size, module_in
from llpf.models import build_model

CASES = (("lenet5", ModelConfig("lenet5", 10, 1, 32), (64, 128, 256, 512, 1024, 4096)),
         ("resnet18 width 0.25", ModelConfig("resnet18", 10, 3, 32, width=0.25), (64, 128, 256, 512, 1024)))


def per_example(clock: Clock, model, x: torch.Tensor, batch: int, n: int) -> float:
    def run():
        with torch.inference_mode():
            for i in range(0, n, batch):
                model(x[i:i + batch])
    return clock(run) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    clock = Clock(device)
    print(f"load average {os.getloadavg()[0]:.2f}; torch {torch.__version__}, {device}, 1 thread; us per example")
    for name, mc, batches in CASES:
        torch.manual_seed(0)
        plain = build_model(mc).to(device).eval()
        fast = module_in(plain, torch.channels_last)
        n = 8192 if mc.name == "lenet5" else 1024
        x = torch.randn(n, mc.in_channels, mc.image_size, mc.image_size, device=device)
        xcl = x.contiguous(memory_format=torch.channels_last)
        print(f"{name}: batch  NCHW  channels_last  ratio")
        for b in batches:
            per_example(clock, plain, x, b, n), per_example(clock, fast, xcl, b, n)  # warm-up
            a, c = [], []
            for i in range(args.repeats):
                pair = [(plain, x, a), (fast, xcl, c)]
                for model, inputs, out in (pair if i % 2 == 0 else pair[::-1]):
                    out.append(per_example(clock, model, inputs, b, n))
            ta, tc = statistics.median(a), statistics.median(c)
            print(f"  {b:>12} {1e6 * ta:7.1f} {1e6 * tc:11.1f} {ta / tc:8.2f}", flush=True)
        print(f"  measured_batch_size (channels_last): {measured_batch_size(fast, xcl)}")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
