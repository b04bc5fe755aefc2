"""What ``llpf --help`` and a command's ``--help`` cost, beside ``import torch``, timed per process.

Each command runs as a fresh interpreter (``python -m llpf ...``), the three
interleaved round after round so a busy machine slows them alike; a process's
wall time is the parent's clock around it, its CPU time the child's user +
system time as the kernel counts it (``os.wait4``). Prints the median of each
and the ratio of each ``--help`` to ``import torch``, which the command line
no longer pays before printing its help.

    PYTHONPATH=src python benchmarks/cli_startup.py --rounds 7
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "llpf --help": [sys.executable, "-m", "llpf", "--help"],
    "llpf m2m --help": [sys.executable, "-m", "llpf", "m2m", "--help"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
}


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one process running ``cmd``."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {p.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in COMMANDS}
    for name, cmd in COMMANDS.items():  # one warm-up each: the page cache, not the first run's disk reads
        timed(cmd)
    for _ in range(args.rounds):
        for name, cmd in COMMANDS.items():
            times[name].append(timed(cmd))
    torch_wall = statistics.median(w for w, _ in times["python -c 'import torch'"])
    print(f"{'':28s}{'wall s (median)':>16s}{'CPU s (median)':>16s}{'wall / import torch':>22s}")
    for name, runs in times.items():
        wall, cpu = statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)
        print(f"{name:28s}{wall:16.3f}{cpu:16.3f}{wall / torch_wall:22.2f}")
    print(f"{args.rounds} rounds; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
