"""What the tiny tests share: LeNet5 on a 256/128 slice of digits (seconds), a tiny conv net with BatchNorm,
and a torchrun launch of 2 CPU ranks."""
import os
import subprocess
import sys
from pathlib import Path

import torch.nn.functional as F
from torch import nn

LENET5_ON_DIGITS = """
[model]
name = "lenet5"
[data]
name = "digits"
limit_train = 256
limit_test = 128
"""


def torchrun(*args, cwd: Path | None = None, hooks: dict | None = None,
             timeout: int = 240) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2`` of a script or ``-m llpf ...``, one thread per rank;
    ``hooks`` are extra environment variables (see tests/ranked.py)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **(hooks or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


class ConvBN(nn.Module):
    """A tiny conv net with BatchNorm, to check that running statistics follow each path."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=3)
        self.norm = nn.BatchNorm2d(4)
        self.out = nn.Linear(4 * 10 * 10, 10)

    def forward(self, x):
        return self.out(F.relu(self.norm(self.conv(x))).flatten(1))
