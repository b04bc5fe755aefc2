"""Run the llpf command; with LLPF_TEST_PAUSE_IN_CHECKPOINT=FILE, stop halfway through a checkpoint write.

At its third checkpoint (so an older, valid one is on disk) the process writes
half of the checkpoint's temporary file, creates FILE and sleeps, so a test
can SIGKILL it in the middle of the write.
"""
import os
import sys
import time
from pathlib import Path

import llpf.files as files

marker = os.environ.get("LLPF_TEST_PAUSE_IN_CHECKPOINT")
if marker:
    atomic_write = files.atomic_write
    seen = {"checkpoints": 0}

    def paused(path, data):
        path = Path(path)
        if path.name == "checkpoint.pt":
            seen["checkpoints"] += 1
        if path.name == "checkpoint.pt" and seen["checkpoints"] == 3:
            path.with_name(f".{path.name}.tmp-{os.getpid()}").write_bytes(data[: len(data) // 2])
            Path(marker).write_text("writing checkpoint")
            time.sleep(120)
        return atomic_write(path, data)

    files.atomic_write = paused

from llpf.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
