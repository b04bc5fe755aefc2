"""``llpf align`` and ``--align`` on m2m, barrier and compare, end to end on tiny LeNet5 endpoints (seconds)."""
import json

import pytest
import torch
from torch import nn

from llpf.cli import main
from llpf.config import load_config
from llpf.data import prepare_data
from llpf.errors import ConfigError
from llpf.files import load_weights, save_weights
from llpf.models import MODELS
from llpf.models.lenet5 import LeNet5
from llpf.runner import load_model, resume, run_path
from llpf.store import RunDir
from test_compare import interrupted_at_checkpoint
from tiny import LENET5_ON_DIGITS

TINY = """
name = "tiny-align"
""" + LENET5_ON_DIGITS + """[train]
epochs = 4
batch_size = 32
lr = 0.05
[m2m]
lr = 0.01
eval_every = 3
save_every = 3
checkpoint_every = 3
[[m2m.phases]]
iterations = 6
step_a = 0.1
"""


@pytest.fixture(scope="module")
def ends(tmp_path_factory):
    d = tmp_path_factory.mktemp("align")
    (d / "tiny.toml").write_text(TINY)
    for seed in (0, 1):
        assert main(["train", str(d / "tiny.toml"), "--seed", str(seed), "--out", str(d / f"e{seed}.safetensors"),
                     "--quiet"]) == 0
    assert main(["align", str(d / "tiny.toml"), str(d / "e0.safetensors"), str(d / "e1.safetensors"),
                 "--out", str(d / "e1-aligned.safetensors"), "--points", "5"]) == 0
    return d


def outputs(cfg, weights):
    model = load_model(cfg, weights).eval()
    with torch.no_grad():
        return model(prepare_data(cfg, "cpu").test.x)


def test_align_writes_b_reordered_with_b_s_function_and_a_lower_barrier(ends, capsys):
    cfg = load_config(ends / "tiny.toml")
    b, b2 = load_weights(ends / "e1.safetensors"), load_weights(ends / "e1-aligned.safetensors")
    assert not torch.equal(b["fc1.weight"], b2["fc1.weight"]) and torch.equal(b["fc3.bias"], b2["fc3.bias"])
    assert torch.allclose(outputs(cfg, ends / "e1.safetensors"), outputs(cfg, ends / "e1-aligned.safetensors"),
                          atol=1e-4)
    r = json.loads((ends / "e1-aligned.json").read_text())
    assert r["groups"] == 4 and r["groups_reordered"] >= 1 and r["left_in_place"] == {"fc3": "reaches the "
                                                                                             "network's output"}
    assert r["max_output_difference"] < 1e-4 * r["output_scale"]
    assert r["test_accuracy"]["aligned"] == r["test_accuracy"]["dest"]
    assert r["distance_after"] < r["distance_before"]
    line = r["straight_line"]
    assert line["points"] == 5 and line["after"]["end_train_loss"] == pytest.approx(line["before"]["end_train_loss"])
    assert line["after"]["barrier"] < line["before"]["barrier"]


def test_align_refuses_to_overwrite_and_names_another_architecture(ends, tmp_path, capsys):
    out = ends / "e1-aligned.safetensors"
    before = out.read_bytes()
    args = ["align", str(ends / "tiny.toml"), str(ends / "e0.safetensors"), str(ends / "e1.safetensors")]
    assert main([*args, "--out", str(out)]) == 2
    assert out.read_bytes() == before
    save_weights(tmp_path / "five.safetensors", LeNet5(5, 1, 32).state_dict())
    capsys.readouterr()
    assert main([*args[:3], str(tmp_path / "five.safetensors"), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("llpf: error: model B") and "fc3." in err
    assert not (tmp_path / "x.safetensors").exists()


class Branchy(nn.Module):
    """A LeNet5-sized classifier whose forward branches on its input's values: torch.fx cannot trace it."""

    def __init__(self, cfg=None):
        super().__init__()
        self.fc = nn.Linear(32 * 32, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc(x) if x.mean() > 0 else self.fc(-x)


def test_an_untraceable_model_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(MODELS, "branchy-test", Branchy)
    (tmp_path / "c.toml").write_text(TINY.replace('name = "lenet5"', 'name = "branchy-test"'))
    for name in ("a", "b"):
        save_weights(tmp_path / f"{name}.safetensors", Branchy().state_dict())
    for cmd in (["align", str(tmp_path / "c.toml"), str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                 "--out", str(tmp_path / "b2.safetensors")],
                ["barrier", str(tmp_path / "c.toml"), str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                 "--out", str(tmp_path / "line"), "--align"]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "llpf: error: cannot trace Branchy with torch.fx" in err
    assert not (tmp_path / "b2.safetensors").exists() and not (tmp_path / "line").exists()


def test_m2m_align_runs_to_the_aligned_destination_and_records_it(ends, tmp_path, capsys):
    run = tmp_path / "m2m"
    assert main(["m2m", str(ends / "tiny.toml"), "--start", str(ends / "e0.safetensors"), "--dest",
                 str(ends / "e1.safetensors"), "--align", "--out", str(run), "--quiet"]) == 0
    assert "aligned by weight matching" in capsys.readouterr().out
    dest, aligned = load_weights(run / "dest.safetensors"), load_weights(ends / "e1-aligned.safetensors")
    assert all(torch.equal(dest[k], aligned[k]) for k in aligned)
    s = RunDir(run).summary()
    assert s["alignment"]["straight_line"]["after"]["barrier"] < s["alignment"]["straight_line"]["before"]["barrier"]
    assert RunDir(run).info()["inputs"]["aligned"] is True
    # The path's last point is as close to the aligned destination as M2M gets: closer than to B itself.
    final, b = load_weights(run / "final.safetensors"), load_weights(ends / "e1.safetensors")
    dist = lambda x, y: sum(float((x[k] - y[k]).pow(2).sum()) for k in x if k.endswith("weight"))  # noqa: E731
    assert dist(final, aligned) < dist(final, b)


def test_an_interrupted_aligned_run_resumes_with_its_alignment_recorded(ends, tmp_path, monkeypatch):
    cfg = load_config(ends / "tiny.toml")
    a, b = ends / "e0.safetensors", ends / "e1.safetensors"
    full = run_path("m2m", cfg, a, b, tmp_path / "full", device="cpu", align=True)
    interrupted_at_checkpoint(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run_path("m2m", cfg, a, b, tmp_path / "part", device="cpu", align=True)
    monkeypatch.undo()
    assert main(["m2m", str(ends / "tiny.toml"), "--start", str(a), "--dest", str(b), "--out",
                 str(tmp_path / "part"), "--resume", "--quiet"]) == 2  # started with --align: continued with it
    assert resume(tmp_path / "part", device="cpu") == full
    assert (tmp_path / "part" / "metrics.csv").read_bytes() == (tmp_path / "full" / "metrics.csv").read_bytes()
    with pytest.raises(ConfigError, match="no destination"):
        run_path("m2o", cfg, a, None, tmp_path / "m2o", device="cpu", align=True)


def test_barrier_align_writes_both_lines(ends, tmp_path, capsys):
    out = tmp_path / "line"
    assert main(["barrier", str(ends / "tiny.toml"), str(ends / "e0.safetensors"), str(ends / "e1.safetensors"),
                 "--out", str(out), "--points", "5", "--align"]) == 0
    after, before = (json.loads((out / f).read_text()) for f in ("barrier.json", "barrier-unaligned.json"))
    assert after["inputs"]["aligned"] is True and "aligned" not in before["inputs"]
    assert after["summary"]["barrier"] == pytest.approx(after["inputs"]["alignment"]["straight_line"]["after"]["barrier"])
    assert before["rows"][-1]["train_loss"] == pytest.approx(after["rows"][-1]["train_loss"], rel=1e-5)
    assert before["rows"][0] == after["rows"][0]
    recorded = json.loads((ends / "e1-aligned.json").read_text())["straight_line"]
    assert before["summary"] == pytest.approx(recorded["before"]) and after["summary"] == pytest.approx(recorded["after"])


def test_compare_align_runs_every_method_to_the_aligned_destination_once(ends, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", str(ends / "tiny.toml"), "--start", str(ends / "e0.safetensors"), "--dest",
            str(ends / "e1.safetensors"), "--methods", "line", "--points", "5", "--align", "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert "pair 0 aligned" in capsys.readouterr().out
    dest, aligned = (load_weights(f) for f in (out / "line" / "dest.safetensors", ends / "e1-aligned.safetensors"))
    assert all(torch.equal(dest[k], aligned[k]) for k in aligned)
    record = json.loads((out / "comparison.json").read_text())["alignment"]["0"]
    assert record["straight_line"]["before"]["barrier"] > record["straight_line"]["after"]["barrier"]
    stamp = (out / "alignment.json").stat().st_mtime_ns
    assert main(args) == 0 and (out / "alignment.json").stat().st_mtime_ns == stamp  # continued, not redone
    assert main([a for a in args if a != "--align"]) == 2  # another command on the same folder


def test_layerwise_align_analyses_the_line_to_the_aligned_destination(ends, tmp_path, capsys):
    args = ["layerwise", str(ends / "tiny.toml"), str(ends / "e0.safetensors"), str(ends / "e1.safetensors"),
            "--points", "3", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert main([*args, "--out", str(tmp_path / "aligned"), "--align"]) == 0
    assert "aligned by weight matching" in capsys.readouterr().out
    plain, aligned = (json.loads((tmp_path / d / "layerwise.json").read_text()) for d in ("plain", "aligned"))
    record = aligned["inputs"]["alignment"]
    assert aligned["inputs"]["aligned"] is True and "alignment" not in plain["inputs"]
    assert record["straight_line"]["after"]["barrier"] < record["straight_line"]["before"]["barrier"]
    assert aligned["whole_model_barrier"] < plain["whole_model_barrier"]
    assert main(["layerwise", str(tmp_path / "plain"), "--align"]) == 2


def test_compare_pairs_align_each_trained_pair(ends, tmp_path):
    out = tmp_path / "pairs"
    assert main(["compare", str(ends / "tiny.toml"), "--pairs", "2", "--methods", "line", "--points", "5",
                 "--align", "--out", str(out), "--quiet"]) == 0
    records = json.loads((out / "comparison.json").read_text())["alignment"]
    assert sorted(records) == ["0", "1"]
    for k in (0, 1):
        assert records[str(k)]["dest"] == str(out / "endpoints" / f"seed{2 * k + 1}.safetensors")
        dest = load_weights(out / f"pair-{k:02d}" / "line" / "dest.safetensors")
        aligned = load_weights(out / f"pair-{k:02d}" / "dest-aligned.safetensors")
        assert all(torch.equal(dest[n], aligned[n]) for n in aligned)
