"""Run the llpf command as one rank under torchrun, with test hooks set by environment variables.

LLPF_TEST_WRITES=FILE     every rank appends "RANK PATH" to FILE for each file it writes (whole, or metrics rows)
LLPF_TEST_TERM_AT=N       rank 1 alone sends itself SIGTERM as path iteration N begins (a signal one rank gets)
LLPF_TEST_DIE_IN=K        rank 1 writes repetition K's first checkpoint, waits until rank 0's share is over,
                          then dies by SIGKILL (no chance to write anything)
"""
import json
import os
import signal
import sys
import time
from pathlib import Path

import llpf.files as files
import llpf.store as store

RANK = int(os.environ.get("RANK", "0"))
atomic_write, append = files.atomic_write, store.RunDir._append


def logged(path: Path) -> None:
    log = os.environ.get("LLPF_TEST_WRITES")
    if log:
        with open(log, "a") as f:
            f.write(f"{RANK} {path}\n")


def hooked_write(path, data):
    path = Path(path)
    logged(path)
    atomic_write(path, data)
    die_in = os.environ.get("LLPF_TEST_DIE_IN")
    if RANK == 1 and die_in and path.name == "checkpoint.pt" and path.parent.name == f"rep-{int(die_in):02d}":
        rank0 = path.parent.parent / "ranks" / "rank-0.json"
        deadline = time.time() + 120
        while time.time() < deadline and not json.loads(rank0.read_text()).get("done"):
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGKILL)


def hooked_append(self, text):
    logged(self.path / "metrics.csv")
    append(self, text)


files.atomic_write = hooked_write
store.RunDir._append = hooked_append

term_at = os.environ.get("LLPF_TEST_TERM_AT")
if term_at and RANK == 1:
    from llpf.methods.m2m import M2M

    iterate = M2M.iterate

    def terminating(self, iteration, phase):
        if iteration == int(term_at):
            os.kill(os.getpid(), signal.SIGTERM)
        return iterate(self, iteration, phase)
    M2M.iterate = terminating

from llpf.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
