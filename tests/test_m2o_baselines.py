"""``llpf m2o-baselines``: M2O, move-only and fine-tuning from one start, at one budget, chosen on validation."""
from __future__ import annotations

import csv
import json
import signal

import pytest
import torch

from llpf.baselines.m2o_baselines import finetune_config, m2o_baselines, matched_decay
from llpf.cli import main
from llpf.config import TrainConfig, load_config
from llpf.data import Bundle, Split, prepare_data
from llpf.errors import ConfigError
from llpf.files import load_weights, save_weights
from llpf.models import build_model
from llpf.store import RunDir
from llpf.train import train_endpoint
from tiny import LENET5_ON_DIGITS

TINY = "name = \"tiny\"\n" + LENET5_ON_DIGITS + """[m2o]
batch_size = 32
lr = 0.1
select_by = "loss"
eval_every = 2
save_every = 2
checkpoint_every = 4
[[m2o.phases]]
iterations = 6
step_a = 0.02
step_f = 0.0
until_loss = 1.0
min_rounds = 1
max_rounds = 4
"""
STEP_A, T = 0.02, 6


def read_rows(run) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return [{k: float(v) if v else None for k, v in r.items()} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny config, a LeNet5 start trained briefly, and digits whose validation split has labels shifted by one.

    The shifted labels make validation and test choose different points along the runs.
    """
    root = tmp_path_factory.mktemp("baselines")
    (root / "tiny.toml").write_text(TINY)
    cfg = load_config(root / "tiny.toml")
    d = prepare_data(cfg, "cpu")
    train = Split(d.train.x[64:], d.train.y[64:])
    torch.manual_seed(0)
    start = build_model(cfg.model)
    train_endpoint(start, train, TrainConfig(epochs=4, batch_size=32, lr=0.05), seed=0)
    save_weights(root / "start.safetensors", start.state_dict())
    data = Bundle(train, d.test, d.num_classes, Split(d.train.x[:64], (d.train.y[:64] + 1) % 10))
    result = m2o_baselines(cfg, root / "start.safetensors", root / "out", decays=[0.0, 0.5], device="cpu",
                           data=data, log=lambda line: None)
    return root, cfg, result, data


def test_every_method_gets_the_same_gradient_steps(setup):
    root, _, result, _ = setup
    out = root / "out"
    steps = {run: int(sum(r["rounds"] for r in read_rows(out / run)))
             for run in ("m2o", "move-only", "finetune-wd0", "finetune-wd0.5")}
    rounds = [r["rounds"] for r in read_rows(out / "m2o")[1:]]
    assert len(rounds) == T and len(set(rounds)) > 1  # Train_r "until loss" took a varying number of steps
    assert steps["m2o"] == steps["finetune-wd0"] == steps["finetune-wd0.5"] == sum(rounds) > T
    assert steps["move-only"] == 0
    by_run = {r["run"]: r for r in result["rows"]}
    assert [r["method"] for r in result["rows"]] == ["start", "m2o", "move-only", "finetune", "finetune"]
    assert {k: by_run[k]["gradient_steps"] for k in steps} == steps
    assert result["budget_gradient_steps"] == steps["m2o"]
    assert all(r["wall_s"] > 0 for r in result["rows"][1:])
    with open(out / "m2o-baselines.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == [r["run"] for r in result["rows"]]
    assert [int(r["gradient_steps"]) for r in table] == [0, steps["m2o"], 0, steps["m2o"], steps["m2o"]]
    assert json.loads((out / "m2o-baselines.json").read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    assert (out / "m2o-baselines.png").stat().st_size > 10_000


def test_move_only_is_the_move_schedule_alone(setup):
    root, _, _, _ = setup
    start = load_weights(root / "start.safetensors")
    final = load_weights(root / "out" / "move-only" / "final.safetensors")
    for name, w in start.items():  # LeNet5: every layer moved, none trained
        torch.testing.assert_close(final[name], (1 - STEP_A) ** T * w, rtol=1e-5, atol=1e-7)


def test_weight_decay_shrinks_the_fine_tuned_weights(setup):
    root, _, _, _ = setup
    norm = {}
    for run in ("finetune-wd0", "finetune-wd0.5"):
        w = load_weights(root / "out" / run / "final.safetensors")
        norm[run] = float(torch.cat([v.flatten() for v in w.values()]).norm())
    assert norm["finetune-wd0.5"] < norm["finetune-wd0"]


def test_fine_tuning_decays_the_layers_m2o_moves_by_default_and_every_parameter_on_request(setup, monkeypatch):
    """The matched comparison decays what M2O shrinks: with BatchNorm, the normalisation layers are spared."""
    from llpf.methods.finetune import FineTune
    from llpf.models import MODELS
    from llpf.schedule import normalisation_parameters
    from tiny import ConvBN

    root, cfg, result, data = setup
    assert result["decay_on"] == "moved"
    assert load_config(root / "out" / "finetune-wd0.5" / "config.toml").m2o.weight_decay_on == "moved"
    monkeypatch.setitem(MODELS, "convbn-test", lambda c: ConvBN())
    torch.manual_seed(0)
    model = ConvBN()
    norm = normalisation_parameters(model)
    for decay_on in ("moved", "all"):
        ft = finetune_config(cfg, steps=6, iterations=T, decay=0.5, decay_on=decay_on).m2o
        assert ft.weight_decay_on == decay_on
        method = FineTune(model, ft, data.train, device="cpu")
        wd = method.train_r.weight_decay  # per element when some parameters are spared, else one number
        per_layer = wd.split(method.seg.numels) if torch.is_tensor(wd) else [torch.tensor([wd])] * len(method.names)
        for name, d in zip(method.names, per_layer):
            assert torch.all(d == (0.0 if name in norm and decay_on == "moved" else 0.5)), (decay_on, name)
    # LeNet5 has no normalisation layer and M2O moves all its layers: its fine-tuning is the same either way
    lenet = FineTune(build_model(cfg.model), finetune_config(cfg, 6, T, 0.5, "moved").m2o, data.train, device="cpu")
    assert lenet.train_r.weight_decay == 0.5
    with pytest.raises(ConfigError, match="decay_on"):
        m2o_baselines(cfg, root / "start.safetensors", root / "unused", decay_on="norms", device="cpu", data=data)


def test_the_best_point_is_chosen_on_validation_then_read_on_test(setup):
    root, _, result, _ = setup
    for row in result["rows"][1:]:
        evaluated = [r for r in read_rows(root / "out" / row["run"]) if r.get("validation_loss") is not None]
        on_val = min(evaluated, key=lambda r: r["validation_loss"])
        on_test = min(evaluated, key=lambda r: r["test_loss"])
        assert row["best_iteration"] == on_val["iteration"], row["run"]
        assert (row["validation_loss"], row["test_loss"]) == (on_val["validation_loss"], on_val["test_loss"])
        if row["method"] != "move-only":  # the runs that train: validation and test disagree
            assert on_test["iteration"] != on_val["iteration"] and on_test["test_loss"] < row["test_loss"], row["run"]


def test_matched_decay_shrinks_as_the_move_schedule_does(setup):
    _, cfg, result, _ = setup
    steps = result["budget_gradient_steps"]
    wd = matched_decay(cfg.m2o, steps)
    assert (1 - cfg.m2o.lr * wd) ** steps == pytest.approx((1 - STEP_A) ** T, rel=1e-9)
    ft = finetune_config(cfg, steps, T, wd).m2o
    assert (ft.total_iterations, ft.phases[0].rounds, ft.phases[0].until_loss, ft.weight_decay) == (steps, 1, 0.0, wd)
    assert (ft.batch_size, ft.lr, ft.momentum, ft.seed) == (cfg.m2o.batch_size, cfg.m2o.lr, cfg.m2o.momentum, cfg.m2o.seed)


def test_cli_runs_refuses_a_used_folder_and_continues_with_force(setup, tmp_path, capsys):
    root, _, _, _ = setup
    args = ["m2o-baselines", str(root / "tiny.toml"), "--start", str(root / "start.safetensors"),
            "--out", str(tmp_path / "b"), "--decays", "0", "--validation-fraction", "0.25", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "best on validation (loss):" in out and "finetune-wd0" in out
    before = (tmp_path / "b" / "m2o" / "final.safetensors").stat().st_mtime_ns
    assert main(args) == 2
    assert capsys.readouterr().err.strip().endswith("is not empty; choose another --out or pass --force")
    assert main(args + ["--force"]) == 0  # finished runs of the same settings are kept, not rerun
    assert (tmp_path / "b" / "m2o" / "final.safetensors").stat().st_mtime_ns == before
    recorded = tmp_path / "b" / "m2o" / "config.toml"  # as an llpf from before the key existed wrote it
    recorded.write_text(recorded.read_text().replace("compile = false\n", ""))
    assert main(args + ["--force"]) == 0
    assert (tmp_path / "b" / "m2o" / "final.safetensors").stat().st_mtime_ns == before
    assert main(args + ["--force", "--decay-all"]) == 0  # beside the default's run, in a folder of its own
    assert load_config(tmp_path / "b" / "finetune-wd0-all" / "config.toml").m2o.weight_decay_on == "all"
    assert load_config(tmp_path / "b" / "finetune-wd0" / "config.toml").m2o.weight_decay_on == "moved"
    assert (tmp_path / "b" / "m2o" / "final.safetensors").stat().st_mtime_ns == before
    other = root / "other.toml"
    other.write_text(TINY.replace("lr = 0.1", "lr = 0.01"))
    capsys.readouterr()
    assert main(args[:1] + [str(other)] + args[2:] + ["--force"]) == 2
    assert "holds a run of other settings" in capsys.readouterr().err


@pytest.mark.parametrize("decays, start, message", [([0.0, -1.0], "start.safetensors", "weight_decay must not be negative"),
                                                   ([float("nan")], "start.safetensors", "got nan"),
                                                   (None, "missing.safetensors", "not found")])
def test_decays_and_the_start_model_are_checked_before_any_run(setup, tmp_path, monkeypatch, decays, start, message):
    from llpf.errors import LLPFError

    root, cfg, _, data = setup
    monkeypatch.setattr("llpf.baselines.m2o_baselines.run_path", lambda *a, **k: pytest.fail("a run started"))
    with pytest.raises(LLPFError, match=message):
        m2o_baselines(cfg, root / start, tmp_path / "out", decays=decays, device="cpu", data=data,
                      log=lambda line: None)
    assert not (tmp_path / "out").exists()


def test_report_shows_the_baselines_folder(setup, tmp_path):
    from llpf.analysis.report import build_report

    root, _, result, _ = setup
    page = build_report([root / "out"], tmp_path / "report").read_text()
    assert "M2O against its baselines" in page and "finetune-wd0.5" in page
    assert f"budget {result['budget_gradient_steps']} gradient steps" in page
    assert page.count("data:image/png;base64,") == 1


def test_an_interrupted_baseline_resumes_with_force_and_ends_as_an_uninterrupted_one(setup, tmp_path, monkeypatch):
    root, cfg, _, data = setup
    original, stopped = RunDir.on_checkpoint, []

    def stop_once(self, iteration, state):  # a SIGTERM after the fine-tuning's first checkpoint
        original(self, iteration, state)
        if self.path.name == "finetune-wd0.5" and not stopped:
            stopped.append(iteration)
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(RunDir, "on_checkpoint", stop_once)
    go = lambda force: m2o_baselines(cfg, root / "start.safetensors", tmp_path / "out", decays=[0.5],  # noqa: E731
                                     device="cpu", data=data, force=force, log=lambda line: None)
    with pytest.raises(KeyboardInterrupt):
        go(False)
    run = RunDir(tmp_path / "out" / "finetune-wd0.5")
    assert stopped and run.info()["status"] == "interrupted"
    m2o_done = (tmp_path / "out" / "m2o" / "final.safetensors").stat().st_mtime_ns
    result = go(True)
    assert run.info()["status"] == "complete"
    assert (tmp_path / "out" / "m2o" / "final.safetensors").stat().st_mtime_ns == m2o_done  # kept, not rerun
    resumed = load_weights(run.path / "final.safetensors")
    whole = load_weights(root / "out" / "finetune-wd0.5" / "final.safetensors")
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert result["rows"][-1]["gradient_steps"] == result["budget_gradient_steps"]


def test_a_failed_m2o_costs_fine_tuning_not_move_only_and_a_rerun_completes_the_table(setup, tmp_path, monkeypatch):
    import llpf.baselines.m2o_baselines as B

    root, cfg, whole, data = setup
    original = B.run_once

    def m2o_fails(kind, *args):
        if kind == "m2o":
            raise RuntimeError("out of memory")
        return original(kind, *args)

    monkeypatch.setattr(B, "run_once", m2o_fails)
    go = lambda force: m2o_baselines(cfg, root / "start.safetensors", tmp_path / "out", decays=[0.0, 0.5],  # noqa: E731
                                     device="cpu", data=data, force=force, log=lambda line: None)
    with pytest.raises(B.RunDirError, match=r"^3 of 4 runs did not finish: m2o \(RuntimeError: out of memory\); "
                                            r"fine-tuning run 1 \(RunDirError: M2O did not finish"):
        go(False)
    with open(tmp_path / "out" / "m2o-baselines.csv") as f:
        assert [r["run"] for r in csv.DictReader(f)] == ["move-only"]  # what finished is written
    move_only = (tmp_path / "out" / "move-only" / "final.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(B, "run_once", original)
    result = go(True)
    assert (tmp_path / "out" / "move-only" / "final.safetensors").stat().st_mtime_ns == move_only  # kept
    assert [r["run"] for r in result["rows"]] == [r["run"] for r in whole["rows"]]
    assert [r["test_loss"] for r in result["rows"]] == [r["test_loss"] for r in whole["rows"]]


def test_an_m2o_that_ends_failed_stops_fine_tuning_instead_of_leaving_it_waiting(setup, tmp_path, monkeypatch):
    import llpf.baselines.m2o_baselines as B

    root, cfg, _, data = setup
    original = B.run_once

    def m2o_ends_failed(kind, cfg, start, out, *args):  # as a run whose loss became NaN ends: failed, with a summary
        summary = original(kind, cfg, start, out, *args)
        if kind == "m2o":
            RunDir(out).set_status("failed", reason="NonFiniteError: loss is nan")
        return summary

    monkeypatch.setattr(B, "run_once", m2o_ends_failed)
    with pytest.raises(B.RunDirError, match=r"fine-tuning run 1 \(RunDirError: M2O failed \(NonFiniteError"):
        m2o_baselines(cfg, root / "start.safetensors", tmp_path / "out", decays=[0.0], device="cpu", data=data,
                      log=lambda line: None)

