"""The llpf command end to end on a tiny config (seconds), and the demo's promises."""
import csv
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from llpf.cli import main
from tiny import LENET5_ON_DIGITS

TINY = """
name = "tiny"
description = "a few seconds of everything"
""" + LENET5_ON_DIGITS + """[train]
epochs = 3
batch_size = 32
lr = 0.05
[m2m]
lr = 0.01
eval_every = 4
save_every = 5
checkpoint_every = 5
[[m2m.phases]]
iterations = 6
step_a = 0.05
layers = ["conv1", "conv2"]
[[m2m.phases]]
iterations = 4
step_a = 0.05
layers = ["fc*"]
keep_previous = true
[m2o]
lr = 0.01
eval_every = 2
save_every = 5
[[m2o.phases]]
iterations = 6
step_a = 0.02
step_f = 0.0
until_loss = 0.5
max_rounds = 4
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    (d / "tiny.toml").write_text(TINY)
    for seed in (0, 1):
        assert main(["train", str(d / "tiny.toml"), "--seed", str(seed), "--out", str(d / f"e{seed}.safetensors"),
                     "--quiet"]) == 0
    return d


@pytest.mark.filterwarnings("default::llpf.errors.PrerequisiteWarning")
def test_m2m_run_directory(tiny, capsys):
    run = tiny / "m2m"
    code = main(["m2m", str(tiny / "tiny.toml"), "--start", str(tiny / "e0.safetensors"), "--dest",
                 str(tiny / "e1.safetensors"), "--out", str(run), "--quiet"])
    assert code == 0
    out, err = capsys.readouterr()
    assert "M2M path" in out
    # The tiny endpoints break the paper's premise (near-zero training loss): said, not fatal.
    assert "llpf: warning: the start model's training loss" in err and "section 3.2" in err
    for f in ("config.toml", "run.json", "metrics.csv", "summary.json", "final.safetensors", "figures/path.png",
              "points/0000000.safetensors", "points/0000005.safetensors", "points/0000010.safetensors"):
        assert (run / f).is_file(), f
    assert not (run / "checkpoint.pt").exists()
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["iteration"]) for r in rows] == list(range(11))
    assert [r["phase"] for r in rows[1:]] == ["1"] * 6 + ["2"] * 4
    assert all(r["batch_loss"] for r in rows[1:]) and all(r["rounds"] == "5" for r in rows[1:])
    evaluated = [int(r["iteration"]) for r in rows if r["train_loss"]]
    assert evaluated == [0, 4, 8, 10]
    assert rows[0]["dist/fc3.bias"] and rows[0]["test_accuracy"] and rows[0]["distance_to_origin"]
    s = json.loads((run / "summary.json").read_text())
    for key in ("status", "iterations", "valid", "loss_threshold", "max_train_loss", "max_batch_loss",
                "initial_distance", "final_distance", "distance_floor", "final_relative_distance_max",
                "floor_reached"):
        assert key in s, key
    assert s["status"] == "complete" and s["iterations"] == 10
    assert s["max_train_loss"] == pytest.approx(max(float(r["train_loss"]) for r in rows if r["train_loss"]))
    assert set(s["final_distance"]) == set(load_file(run / "final.safetensors"))
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["kind"] == "m2m" and "torch" in info["environment"]
    assert "[[m2m.phases]]" in (run / "config.toml").read_text()


def test_m2o_run_directory(tiny):
    run = tiny / "m2o"
    assert main(["m2o", str(tiny / "tiny.toml"), "--start", str(tiny / "e0.safetensors"), "--out", str(run),
                 "--quiet"]) == 0
    s = json.loads((run / "summary.json").read_text())
    for key in ("start_test_loss", "best_test_loss", "start_test_accuracy", "best_test_accuracy",
                "best_iteration", "best_variance_ratio", "final_variance_ratio"):
        assert key in s, key
    assert s["final_variance_ratio"] < 1.0
    assert (run / "best.safetensors").is_file() and (run / "figures/path.png").is_file()
    assert s["best_test_loss"] < s["start_test_loss"]  # the walk toward O found a better point


def test_refuses_to_overwrite_a_finished_run(tiny, capsys):
    run = tiny / "m2o-twice"
    args = ["m2o", str(tiny / "tiny.toml"), "--start", str(tiny / "e0.safetensors"), "--out", str(run), "--quiet"]
    assert main(args) == 0
    before = (run / "metrics.csv").read_bytes()
    capsys.readouterr()
    assert main(args + ["--force"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llpf: error:") and "complete" in err and err.count("\n") == 1
    assert (run / "metrics.csv").read_bytes() == before


def test_bad_config_key_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.toml").write_text(TINY.replace("lr = 0.05", "learning_rate = 0.05"))
    assert main(["train", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "train.learning_rate" in err and "Traceback" not in err


def test_configs_lists_the_demo(capsys):
    assert main(["configs"]) == 0
    assert "demo" in capsys.readouterr().out


def llpf_to_log(args: list[str], log) -> int:
    """``llpf ARGS > log 2>&1``, one thread; the exit code."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "w") as f:
        return subprocess.run([sys.executable, "-m", "llpf", *args], stdout=f, stderr=subprocess.STDOUT,
                              env=env, timeout=600).returncode


def test_in_a_log_file_progress_is_a_few_plain_lines(tiny, tmp_path):
    log = tmp_path / "log"
    assert llpf_to_log(["m2m", str(tiny / "tiny.toml"), "--start", str(tiny / "e0.safetensors"), "--dest",
                        str(tiny / "e1.safetensors"), "--out", str(tmp_path / "run"), "--device", "cpu"], log) == 0
    text = log.read_text()
    assert text.count("\r") == 0
    assert [ln.split(",")[0] for ln in text.splitlines() if ln.startswith("M2M: ")] == \
        ["M2M: 3/10 (30%)", "M2M: 5/10 (50%)", "M2M: 8/10 (80%)", "M2M: 10/10 (100%)"]


@pytest.mark.slow
def test_demo_keeps_its_promises_in_a_log_of_plain_lines(tmp_path):
    """The README's main job: a valid M2M path and an M2O path that generalises better (about a minute),
    with ``llpf demo > log 2>&1`` leaving whole lines (no carriage-return redraws)."""
    log = tmp_path / "log"
    assert llpf_to_log(["demo", "--out", str(tmp_path / "demo")], log) == 0
    out = log.read_text()
    assert out.count("\r") == 0 and "M2M: 300/300 (100%)" in out and "train seed 1: 20/20 (100%)" in out
    assert "M2M path: VALID" in out
    m2m = json.loads((tmp_path / "demo/m2m/summary.json").read_text())
    m2o = json.loads((tmp_path / "demo/m2o/summary.json").read_text())
    assert m2m["valid"] and m2m["max_train_loss"] <= 0.1 and m2m["floor_reached"]
    from llpf.plots import moving_average
    from llpf.store import read_metrics

    losses = [r["batch_loss"] for r in read_metrics(tmp_path / "demo/m2m/metrics.csv") if r["iteration"] > 0]
    pc = m2m["paper_criteria"]  # paper Figure 2's loss, smoothed over 10 iterations, is part of the paper's verdict
    assert pc["smoothed_batch_loss_max"] == pytest.approx(max(moving_average(losses)))
    assert m2m["valid_paper"] == (pc["loss_ok"] and pc["smoothed_batch_loss_ok"] and pc["distance_ok"])
    assert m2o["final_variance_ratio"] <= 0.8
    assert m2o["best_test_loss"] < m2o["start_test_loss"]
