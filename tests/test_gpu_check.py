"""benchmarks/gpu_check.sh runs end to end on the CPU at tiny sizes: every step, one folder, a summary that says
whether batched paths agree with the same paths one at a time (and says so when they do not)."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

import llpf

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def env() -> dict:
    return dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(Path(llpf.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))


def summary(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check_summary.py"), str(out)],
                          capture_output=True, text=True, env=env())


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    out = tmp_path / "check"
    r = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, env=env(), timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    text = (out / "summary.txt").read_text()
    assert text == r.stdout
    assert "every step ran" in text and "2 LeNet5 paths batched against one by one: agree" in text
    assert "python:" in (out / "env.txt").read_text() and (out / "bench.json").is_file()
    assert 'bf16 = "on"' in (out / "m2m-fast" / "config.toml").read_text()
    assert 'bf16 = "off"' in (out / "m2m-fp32" / "config.toml").read_text()
    for run in ("m2m-fp32", "m2m-fast", "batched/rep-00", "batched/rep-01", "one-by-one/rep-01"):
        assert (out / run / "summary.json").is_file(), run

    # A batched path that drifted from its twin is named, and the summary fails.
    metrics = out / "batched" / "rep-01" / "metrics.csv"
    rows = list(csv.DictReader(metrics.open()))
    rows[2]["batch_loss"] = str(2 * float(rows[2]["batch_loss"]) + 1)
    with metrics.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    again = summary(out)
    assert again.returncode == 1 and "DISAGREE" in again.stdout


def test_gpu_check_refuses_a_folder_that_holds_something(tmp_path):
    (tmp_path / "old.txt").write_text("a finished check")
    r = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, env=env())
    assert r.returncode == 2 and "not empty" in r.stderr and (tmp_path / "old.txt").read_text() == "a finished check"
