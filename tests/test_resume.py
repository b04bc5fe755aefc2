"""Runs that survive: SIGKILL at random moments (one inside a checkpoint write) and SIGTERM,
then resume; the result equals an uninterrupted run, bit for bit on CPU."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from llpf.cli import main
from tiny import LENET5_ON_DIGITS

CONFIG = """
name = "resume-check"
""" + LENET5_ON_DIGITS + """[train]
epochs = 3
batch_size = 32
lr = 0.05
[m2m]
lr = 0.01
eval_every = 10
save_every = 20
checkpoint_every = 5
[[m2m.phases]]
iterations = 60
step_a = 0.03
rounds = 2
[[m2m.phases]]
iterations = 60
step_a = 0.03
layers = ["fc*"]
until_loss = 0.5
max_rounds = 3
"""
HERE = Path(__file__).parent


def command(d: Path, run: Path) -> list[str]:
    return [sys.executable, str(HERE / "killable.py"), "m2m", str(d / "c.toml"), "--start", str(d / "a.safetensors"),
            "--dest", str(d / "b.safetensors"), "--out", str(run), "--device", "cpu", "--quiet", "--resume"]


def rows_written(run: Path) -> int:
    f = run / "metrics.csv"
    return f.read_text().count("\n") if f.is_file() else 0


def wait_for(cond, timeout=90.0):
    t = time.time()
    while not cond():
        if time.time() - t > timeout:
            raise TimeoutError
        time.sleep(0.02)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    (d / "c.toml").write_text(CONFIG)
    for seed, name in ((0, "a"), (1, "b")):
        assert main(["train", str(d / "c.toml"), "--seed", str(seed), "--out", str(d / f"{name}.safetensors"),
                     "--quiet", "--device", "cpu"]) == 0
    ref = d / "reference"
    assert subprocess.run(command(d, ref), env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode == 0
    return d, ref


def assert_same_run(run: Path, ref: Path):
    a, b = load_file(run / "final.safetensors"), load_file(ref / "final.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].equal(b[k]), k
    assert (run / "metrics.csv").read_bytes() == (ref / "metrics.csv").read_bytes()
    assert json.loads((run / "summary.json").read_text()) == json.loads((ref / "summary.json").read_text())
    assert sorted(p.name for p in (run / "points").iterdir()) == sorted(p.name for p in (ref / "points").iterdir())
    for p in (ref / "points").iterdir():
        for k, v in load_file(p).items():
            assert load_file(run / "points" / p.name)[k].equal(v), (p.name, k)


def test_sigkill_at_random_moments_then_resume_is_bit_identical(setup):
    d, ref = setup
    run = d / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(1234)
    kills = 0
    # First kill: in the middle of writing the third checkpoint.
    marker = d / "in-checkpoint"
    p = subprocess.Popen(command(d, run), env={**env, "LLPF_TEST_PAUSE_IN_CHECKPOINT": str(marker)})
    wait_for(marker.exists)
    p.send_signal(signal.SIGKILL)
    p.wait()
    kills += 1
    assert any(n.name.startswith(".checkpoint.pt.tmp") for n in run.iterdir())  # the write really was torn
    # Then at random moments while the path runs.
    while kills < 6:
        seen = rows_written(run)
        p = subprocess.Popen(command(d, run), env=env)
        try:
            wait_for(lambda: rows_written(run) > seen + 2 or p.poll() is not None)
        except TimeoutError:
            p.kill()
            raise
        time.sleep(rng.uniform(0.0, 0.6))
        if p.poll() is not None:
            break
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
    assert kills >= 5
    while json.loads((run / "run.json").read_text())["status"] != "complete":
        assert subprocess.run(command(d, run), env=env).returncode == 0
    assert_same_run(run, ref)


def test_sigterm_checkpoints_and_resume_continues(setup):
    d, ref = setup
    run = d / "terminated"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(command(d, run), env=env, stdout=subprocess.PIPE, text=True)
    wait_for(lambda: rows_written(run) > 30)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 130 and "llpf resume" in out
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and (run / "checkpoint.pt").is_file()
    assert subprocess.run([sys.executable, "-m", "llpf.cli", "resume", str(run), "--quiet"], env=env).returncode == 0
    assert_same_run(run, ref)
