"""``llpf bench`` runs end to end and writes every figure (tiny sizes; it measures, nothing asserts a speed)."""
import json
import math

from llpf.cli import main
from llpf.evaluation import CANDIDATE_BATCHES


def test_bench_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--device", "cpu", "--json", str(out), "--quick"]) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["device"] == "cpu" and r["threads"] == 1 and r["torch"] and r["device_name"] and r["date"]
    for case in ("lenet5", "resnet18"):
        c = r[case]
        for key in ("tick_ratio", "tick_s", "sgd_steps_s", "eval_s", "eval_share", "geometry_overhead"):
            assert c[key] > 0, (case, key)
        assert c["eval_share"] < 1 and c["eval_every"] == 500 and c["eval_batch"] in CANDIDATE_BATCHES
        assert math.isfinite(c["data_overhead"]) and c["data_overhead"] > -1  # a ratio minus one
        assert c["fast_path"] == {"bf16": False, "channels_last": False, "compile": False}  # off on the CPU
        assert f"tick_ratio {c['tick_ratio']:.3f}" in printed
    assert "on the CPU" in r["resnet18"]["note"]
    recal = r["resnet18"]  # BatchNorm: its recalibration pass is its own figure, and part of each evaluation
    assert 0 < recal["recalibration_s"] < recal["eval_s"] and recal["recalibration_examples"] == 8192
    assert f"recalibration_s {recal['recalibration_s']:.1f}" in printed and "recalibration_s" not in r["lenet5"]
    assert set(r["batched_speedup"]) == {"1", "2"} and all(v > 0 for v in r["batched_speedup"].values())
    assert r["device_name"] in printed


def test_bench_refuses_no_threads(capsys):
    assert main(["bench", "--threads", "0"]) == 2
    assert "argument --threads: must be at least 1, got 0" in capsys.readouterr().err
