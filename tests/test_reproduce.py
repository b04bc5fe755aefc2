"""The paper's experiments: shipped configs, endpoint recipes, relative threshold, ``llpf reproduce``."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import llpf
from llpf import config as C
from llpf.cli import main
from llpf.data import Split
from llpf.errors import ConfigError, RunDirError
from llpf.models import build_model
from llpf.plots import moving_average
from llpf.store import read_metrics
from llpf.reproduce import dry_run, experiments
from llpf.schedule import normalisation_parameters, resolve
from llpf.train import endpoint_epochs, endpoint_optimizer, evaluate, lr_factor, train_endpoint
from tiny import LENET5_ON_DIGITS

torch.set_num_threads(1)

TEN = ["cct7-cifar10-m2m", "cct7-cifar10-m2o", "lenet5-fashion-mnist-m2m", "lenet5-fashion-mnist-m2o",
       "lenet5-mnist-m2m", "lenet5-mnist-m2o", "resnet18-cifar10-m2m", "resnet18-cifar10-m2o",
       "resnet18-cifar100-m2o", "resnet18-imagenet-m2o"]
BEYOND = ["mobilenetv2-cifar10-m2m"]  # shipped experiments beyond the paper's ten (tests/test_torchvision_models.py)

TINY = """
name = "tiny"
description = "LeNet5 on a slice of digits: reproduce end to end in seconds"
""" + LENET5_ON_DIGITS + """[train]
epochs = 1
batch_size = 64
lr = 0.01
[m2m]
batch_size = 32
lr = 0.01
eval_every = 4
save_every = 4
checkpoint_every = 4
loss_threshold_relative = 1.5
[[m2m.phases]]
iterations = 12
layers = ["*"]
step_a = 0.05
step_f = 1e-3
rounds = 1
"""


# ---------------------------------------------------------------- shipped configs


def test_list_shows_the_ten_experiments(capsys):
    assert main(["reproduce", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == sorted(TEN + BEYOND)
    assert all(len(ln.split(maxsplit=1)) == 2 for ln in lines)  # each has a description
    assert experiments() == sorted(TEN + BEYOND)


def test_tables_1_and_2_are_encoded():
    r18 = C.load_config("resnet18-cifar10-m2m").m2m
    assert [p.iterations for p in r18.phases] == [10000, 5000, 5000, 5000, 5000, 5000]
    assert [p.keep_previous for p in r18.phases] == [False, False, True, True, True, False]
    assert (r18.phases[0].step_a, r18.phases[1].step_a, r18.batch_size) == (5e-4, 1e-3, 256)
    assert all(p.until_loss == 0.04 and p.max_rounds == 200 for p in r18.phases)
    cct = C.load_config("cct7-cifar10-m2m").m2m
    assert len(cct.phases) == 8 and cct.total_iterations == 40000
    assert all(p.step_a == 1e-3 and p.step_f == 1e-3 and p.max_rounds == 10000 for p in cct.phases)
    lenet = C.load_config("lenet5-mnist-m2m").m2m
    (ph,) = lenet.phases
    assert (ph.iterations, ph.rounds, ph.step_a, ph.step_f, lenet.batch_size, lenet.lr) == (30000, 5, 0, 1e-3, 64, 1e-3)
    im = C.load_config("resnet18-imagenet-m2o").m2o
    assert (im.total_iterations, im.phases[0].until_loss, im.phases[0].max_rounds, im.batch_size) == (1000, 1.25, 50000, 128)
    t3 = C.load_config("cct7-cifar10-m2o").train
    assert (t3.optimizer, t3.lr, t3.warmup_lr, t3.min_lr, t3.weight_decay, t3.epochs) == ("adamw", 55e-5, 1e-5, 1e-5, 6e-2, 300)
    r3 = C.load_config("resnet18-cifar100-m2o").train
    assert (r3.schedule, r3.lr, r3.weight_decay, r3.epochs, r3.augmentation) == ("onecycle", 0.1, 5e-4, 50, "crop-flip")


@pytest.mark.parametrize("name", TEN + BEYOND)
def test_every_phase_pattern_resolves_against_its_model(name):
    cfg = C.load_config(name)
    kind = "m2m" if cfg.m2m is not None else "m2o"
    model = build_model(cfg.model)
    names = tuple(n for n, _ in model.named_parameters())
    exclude = normalisation_parameters(model) if kind == "m2o" else set()
    schedule = resolve(getattr(cfg, kind).phases, names, exclude)
    assert schedule[-1].last == getattr(cfg, kind).total_iterations
    if kind == "m2m" and len(schedule) > 1:  # cumulative phases grow, the last moves everything
        sizes = [len(rp.moved) for rp in schedule[1:-1]]
        assert sizes == sorted(sizes) and len(schedule[-1].moved) == len(names)


# Dry runs: each config on random tensors (batch 2). LeNet5, the ResNet18 and CCT7 M2M runs stay in
# the fast set; the M2O ResNet18/CCT7 dry runs add little beyond them and cost seconds each on a CPU.
SLOW = {"resnet18-cifar10-m2o", "resnet18-cifar100-m2o", "resnet18-imagenet-m2o", "cct7-cifar10-m2o"}


# What each plan must say, worked out by hand from the paper's tables and the architectures:
# (parameters, parameter tensors, batch size, [(iterations, tensors moved) per phase], steps_min, steps_max).
# LeNet5: 10 tensors, 61,706 parameters. ResNet18: 62 tensors, of which 40 BatchNorm (bn1, two per block, one per
# downsample), so M2O moves 22; layer1 holds 12, layer2-4 15 each; the 10- and 100-class heads give 11,173,962 and
# 11,220,132 parameters, torchvision's 1000-class one 11,689,512. CCT-7/3x1: 85 tensors, 30 of them LayerNorm
# (two per block, one before the pool), so M2O moves 55; Table 1's phase 1 moves 8 and each block adds 11.
# Steps: T x r for a fixed r = 5; T x 1 to T x max_rounds for "until loss < L or r > max_rounds".
R18_M2M = [(10000, 62), (5000, 5), (5000, 17), (5000, 32), (5000, 47), (5000, 62)]
CCT_M2M = [(5000, 8)] + [(5000, 8 + 11 * k) for k in range(1, 7)] + [(5000, 85)]
PLANS = {
    "cct7-cifar10-m2m": (3_760_139, 85, 128, CCT_M2M, 40_000, 40_000 * 10_000),
    "cct7-cifar10-m2o": (3_760_139, 85, 128, [(1000, 55)], 1000, 1000 * 5000),
    "lenet5-fashion-mnist-m2m": (61_706, 10, 64, [(30000, 10)], 150_000, 150_000),
    "lenet5-fashion-mnist-m2o": (61_706, 10, 64, [(1400, 10)], 1400, 1400 * 100),
    "lenet5-mnist-m2m": (61_706, 10, 64, [(30000, 10)], 150_000, 150_000),
    "lenet5-mnist-m2o": (61_706, 10, 64, [(1400, 10)], 1400, 1400 * 100),
    "resnet18-cifar10-m2m": (11_173_962, 62, 256, R18_M2M, 35_000, 35_000 * 200),
    "resnet18-cifar10-m2o": (11_173_962, 62, 256, [(1400, 22)], 1400, 1400 * 5000),
    "resnet18-cifar100-m2o": (11_220_132, 62, 256, [(1400, 22)], 1400, 1400 * 5000),
    "resnet18-imagenet-m2o": (11_689_512, 62, 128, [(1000, 22)], 1000, 1000 * 50000),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in TEN])
def test_dry_run(name, monkeypatch):
    monkeypatch.setattr("llpf.data.vision.DEBIAN_FASHION_MNIST", __import__("pathlib").Path("/nonexistent"))
    lines = []
    plan = dry_run(name, device="cpu", batch_size=2, log=lines.append)
    params, tensors, batch, phases, steps_min, steps_max = PLANS[name]
    assert (plan["name"], plan["kind"]) == (name, name.rsplit("-", 1)[1])
    assert (plan["parameters"], plan["layers"], plan["batch_size"], plan["timed_batch_size"]) == \
        (params, tensors, batch, 2)
    assert [(ph["iterations"], ph["layers"]) for ph in plan["phases"]] == phases
    ends = [sum(t for t, _ in phases[:k + 1]) for k in range(len(phases))]
    assert [(ph["phase"], ph["first"], ph["last"]) for ph in plan["phases"]] == \
        [(k + 1, 1 + (ends[k - 1] if k else 0), ends[k]) for k in range(len(phases))]
    assert plan["iterations"] == ends[-1]
    assert (plan["steps_min"], plan["steps_max"]) == (steps_min, steps_max)
    assert len(plan["iteration_s"]) == 2 and all(t > 0 for t in plan["iteration_s"])
    assert plan["estimate_s"]["path_min"] == pytest.approx(steps_min * plan["iteration_s"][1])
    assert plan["estimate_s"]["path_max"] == pytest.approx(steps_max * plan["iteration_s"][1])
    assert "random tensors" in plan["data"]
    # endpoints train for Table 3's epochs; CCT7's cosine adds its 10 cooldown epochs after the 300
    epochs = {"cct7-cifar10": 310, "lenet5-fashion-mnist": 20, "lenet5-mnist": 20, "resnet18-cifar10": 30,
              "resnet18-cifar100": 50, "resnet18-imagenet": None}[name.rsplit("-", 1)[0]]
    n_train = 50000 if "cifar" in name else 60000
    per_rep = 0 if "imagenet" in name else (2 if name.endswith("m2m") else 1)
    assert plan["endpoints_per_rep"] == per_rep
    if per_rep:
        assert plan["endpoint_epochs"] == epochs
    assert plan["estimate_s"]["endpoints"] == pytest.approx(
        per_rep * (epochs or 0) * (n_train // C.load_config(name).train.batch_size) * plan["iteration_s"][1])
    text = lines[-1]
    for k, ((_, moved), ph) in enumerate(zip(phases, plan["phases"])):
        assert f"phase {k + 1}: iterations {ph['first']}-{ph['last']}, {moved} layers moved" in text


def test_endpoint_message_counts_the_cooldown_epochs(tmp_path, monkeypatch):
    from llpf.reproduce import Experiment

    monkeypatch.setattr("llpf.runner.train", lambda *a, **k: {"train": {"loss": 0.1}, "test": {"accuracy": 0.5}})
    lines = []
    (tmp_path / "endpoints").mkdir()
    exp = Experiment(C.load_config("cct7-cifar10-m2o"), "m2o", tmp_path, torch.device("cpu"), False, lines.append)
    exp.cache["data"] = None
    exp.endpoint(0)
    assert lines[0] == "training endpoint seed 0 (310 epochs)"


@pytest.mark.parametrize("mistake", [dict(reps=0), dict(batch_paths=0), dict(start="missing.safetensors"),
                                     dict(method="m2o", dest="missing.safetensors"), dict(method="nope")])
def test_a_dry_run_refuses_what_the_real_run_refuses(mistake, tmp_path, monkeypatch):
    from llpf.errors import LLPFError
    from llpf.reproduce import reproduce

    monkeypatch.setattr("llpf.runner.train", lambda *a, **k: pytest.fail("the real run trained before its checks"))
    kw = {"reps": 2, "method": "m2m", "device": "cpu", "log": lambda line: None, **mistake}
    with pytest.raises(LLPFError) as real:
        reproduce("demo", out=tmp_path / "real", progress=False, **kw)
    with pytest.raises(LLPFError) as dry:
        dry_run("demo", batch_size=2, **kw)
    assert str(dry.value) == str(real.value) and "\n" not in str(dry.value)
    assert not (tmp_path / "real").exists()


def test_dry_run_cli(capsys, monkeypatch):
    monkeypatch.setattr("llpf.data.vision.DEBIAN_FASHION_MNIST", __import__("pathlib").Path("/nonexistent"))
    assert main(["reproduce", "lenet5-mnist-m2o", "--dry-run", "--device", "cpu", "--dry-run-batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "1,400 iterations" in out and "phase 1: iterations 1-1400" in out


# ---------------------------------------------------------------- endpoint recipes (Table 3)


def test_cosine_schedule_is_timms_with_the_cooldown_after_the_epochs():
    """CCT7's recipe (Table 3) in timm's CosineLRScheduler: 300 cosine epochs, then 10 at min_lr (310 in all)."""
    r = C.load_config("cct7-cifar10-m2m").train
    assert endpoint_epochs(r) == 310
    f = lr_factor(r, steps_per_epoch=4)
    lr = [r.lr * f(s) for s in range(310 * 4)]
    assert all(len(set(lr[4 * k:4 * k + 4])) == 1 for k in range(310))  # set once per epoch (timm's default)

    def e(epoch):
        return lr[4 * epoch]
    assert e(0) == pytest.approx(1e-5)  # warmup starts at warmup_lr
    assert e(9) == pytest.approx(1e-5 + 9 * 54e-5 / 10)  # last warmup epoch: 49.6e-5, below the peak
    assert e(10) == pytest.approx(54.8520912e-5)  # cosine over 300 epochs at epoch 10: 1e-5 + 27e-5 (1 + cos(pi/30))
    assert e(150) == pytest.approx(28e-5)  # half way through the 300: (peak + min) / 2
    assert e(299) == pytest.approx(1.0014804e-5, rel=1e-7)  # 1e-5 + 27e-5 (1 - cos(pi/300)): ends at 300, not 290
    assert e(300) == e(309) == pytest.approx(1e-5)  # ten cooldown epochs at min_lr after the 300
    assert max(lr) < 55e-5  # the peak is never reached exactly (timm: warmup overrides the cosine's start)


def test_cosine_cooldown_epochs_are_trained_after_the_epochs():
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 3, (32,), generator=g))
    recipe = C.TrainConfig(epochs=3, batch_size=16, lr=0.1, schedule="cosine", warmup_epochs=1, warmup_lr=0.01,
                           min_lr=0.001, cooldown_epochs=2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    assert len(train_endpoint(model, split, recipe, seed=0)) == 5
    assert len(train_endpoint(model, split, dataclasses.replace(recipe, schedule="constant"), seed=0)) == 3
    with pytest.raises(ConfigError, match="warmup_epochs"):
        C.config_from_dict({"train": {"epochs": 3, "warmup_epochs": 4}})
    C.config_from_dict({"train": {"epochs": 3, "warmup_epochs": 3, "cooldown_epochs": 10}})  # cooldown is extra


def test_optimizer_and_augmentation_choices():
    m = torch.nn.Linear(3, 2)
    opt = endpoint_optimizer(m, C.TrainConfig(optimizer="adamw", lr=1e-3, betas=[0.8, 0.9], weight_decay=0.06))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.8, 0.9)
    assert isinstance(endpoint_optimizer(m, C.TrainConfig()), torch.optim.SGD)
    with pytest.raises(ConfigError, match="optimizer"):
        C.config_from_dict({"train": {"optimizer": "adam"}})
    with pytest.raises(ConfigError, match="augmentation"):
        C.config_from_dict({"train": {"augmentation": "mixup"}})
    with pytest.raises(ConfigError, match="betas"):
        C.config_from_dict({"train": {"betas": [0.9]}})


def test_train_endpoint_with_crop_flip_and_adamw_is_reproducible():
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g))
    recipe = C.TrainConfig(epochs=2, batch_size=32, optimizer="adamw", lr=1e-3, schedule="cosine", warmup_epochs=1,
                           warmup_lr=1e-4, min_lr=1e-5, augmentation="default")
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model(C.ModelConfig("lenet5", 10, 3, 32))
        losses = train_endpoint(model, split, recipe, seed=3, dataset="cifar10")
        outs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert torch.equal(outs[0], outs[1])


# ---------------------------------------------------------------- relative threshold


@pytest.fixture(scope="module")
def digits_pair():
    from llpf.data import load_data

    data = load_data(C.DataConfig(name="digits", limit_train=256, limit_test=128))
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = build_model(C.ModelConfig())
        train_endpoint(m, data.train, C.TrainConfig(epochs=3, batch_size=32), seed)
        models.append(m)
    return data, models


@pytest.mark.parametrize("relative", [0.0, 1.5, 50.0])
def test_relative_threshold(digits_pair, relative):
    data, (a, b) = digits_pair
    cfg = C.PathConfig(phases=[C.Phase(iterations=4, step_a=0.05, rounds=1)], batch_size=32, lr=0.01,
                       eval_every=2, save_every=4, checkpoint_every=4, loss_threshold=0.1,
                       loss_threshold_relative=relative)
    s = llpf.m2m(a, b, data.train, cfg, test_data=data.test, device="cpu", keep_points=False).summary
    la = evaluate(a, data.train.batches(1024))["loss"]
    lb = evaluate(b, data.train.batches(1024))["loss"]
    assert s["endpoint_train_loss"]["start"] == pytest.approx(la, rel=1e-5)
    assert s["endpoint_train_loss"]["dest"] == pytest.approx(lb, rel=1e-5)
    if relative == 0:
        assert s["relative_threshold"] is None and s["valid_relative"] is None
        return
    thres = max(0.1, relative * max(la, lb))
    assert s["relative_threshold"] == pytest.approx(thres, rel=1e-5)
    assert s["loss_ok_relative"] == (s["max_train_loss"] <= s["relative_threshold"])
    assert s["valid_relative"] == (s["loss_ok_relative"] and s["floor_reached"])
    assert s["loss_ok"] == (s["max_train_loss"] <= 0.1)
    if relative == 50.0:
        assert s["loss_ok_relative"]  # a very loose threshold holds on any short path


# ---------------------------------------------------------------- llpf reproduce end to end


def test_moving_average():
    y = moving_average([1.0, 3.0, float("nan"), 5.0], w=2)
    assert list(y) == [1.0, 2.0, 3.0, 5.0]


@pytest.fixture(scope="module")
def tiny_reproduction(tmp_path_factory):
    base = tmp_path_factory.mktemp("repro")
    cfg = base / "tiny.toml"
    cfg.write_text(TINY)
    out = base / "out"
    assert main(["reproduce", str(cfg), "--reps", "2", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    return cfg, out


def test_reproduce_writes_the_aggregate(tiny_reproduction):
    _, out = tiny_reproduction
    assert sorted(p.name for p in (out / "endpoints").glob("*.safetensors")) == [f"seed{i}.safetensors" for i in range(4)]
    for k in (0, 1):
        assert json.loads((out / f"rep-0{k}" / "run.json").read_text())["status"] == "complete"
        inputs = json.loads((out / f"rep-0{k}" / "run.json").read_text())["inputs"]
        assert inputs["start"].endswith(f"seed{2 * k}.safetensors") and inputs["dest"].endswith(f"seed{2 * k + 1}.safetensors")
    s = json.loads((out / "summary.json").read_text())
    assert s["kind"] == "m2m" and s["aggregate"]["repetitions"] == 2
    assert set(s["reps"]) == {"rep-00", "rep-01"}
    for name, r in s["reps"].items():
        assert {"valid", "valid_relative", "valid_paper", "max_train_loss", "final_distance_max", "test_accuracy_min",
                "test_accuracy_max", "relative_threshold", "smoothed_batch_loss_max"} <= set(r)
        rep = json.loads((out / name / "summary.json").read_text())
        assert r["valid_paper"] == rep["valid_paper"]
        assert r["smoothed_batch_loss_max"] == rep["paper_criteria"]["smoothed_batch_loss_max"]
    assert s["aggregate"]["max_train_loss"]["mean"] == pytest.approx(
        sum(r["max_train_loss"] for r in s["reps"].values()) / 2)
    assert "valid_count" in s["aggregate"]
    assert s["aggregate"]["valid_paper_count"] == f"{sum(r['valid_paper'] for r in s['reps'].values())}/2"
    md = (out / "summary.md").read_text()
    assert "| rep-00 |" in md and "| rep-01 |" in md and "| **all** |" in md
    header = next(line for line in md.splitlines() if line.startswith("| rep |")).split(" | ")
    total = next(line for line in md.splitlines() if line.startswith("| **all** |")).split(" | ")
    assert total[header.index("valid_paper")] == s["aggregate"]["valid_paper_count"]
    assert (out / "figure.png").stat().st_size > 10_000


def test_reproduce_resumes_only_what_is_missing(tiny_reproduction, monkeypatch):
    cfg, out = tiny_reproduction
    import llpf.runner as runner

    def no_training(*a, **k):
        raise AssertionError("an endpoint was retrained")

    calls = []
    real_run, real_resume = runner.run_path, runner.resume
    monkeypatch.setattr(runner, "train", no_training)
    monkeypatch.setattr(runner, "run_path", lambda kind, c, a, b, rep, **k: calls.append(("run", rep.name)) or
                        real_run(kind, c, a, b, rep, **k))
    monkeypatch.setattr(runner, "resume", lambda rep, **k: calls.append(("resume", rep.name)) or real_resume(rep, **k))
    before = (out / "rep-00" / "summary.json").stat().st_mtime_ns
    reference = json.loads((out / "rep-01" / "summary.json").read_text())

    # a repetition interrupted mid-run (no summary, status running): resumed
    (out / "rep-01" / "summary.json").unlink()
    info = json.loads((out / "rep-01" / "run.json").read_text())
    info["status"] = "running"
    (out / "rep-01" / "run.json").write_text(json.dumps(info))
    assert main(["reproduce", str(cfg), "--reps", "2", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    assert calls == [("resume", "rep-01")]
    assert (out / "rep-00" / "summary.json").stat().st_mtime_ns == before
    again = json.loads((out / "rep-01" / "summary.json").read_text())
    assert again["max_train_loss"] == reference["max_train_loss"]  # same batches, same path

    # a repetition lost entirely: run again from its endpoints, which are not retrained
    import shutil
    shutil.rmtree(out / "rep-01")
    calls.clear()
    assert main(["reproduce", str(cfg), "--reps", "2", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    assert calls == [("run", "rep-01")]
    assert json.loads((out / "rep-01" / "summary.json").read_text())["max_train_loss"] == reference["max_train_loss"]

    # everything finished: nothing runs, the aggregate is redrawn
    calls.clear()
    assert main(["reproduce", str(cfg), "--reps", "2", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    assert calls == []


def test_reproduce_refuses_another_experiments_directory(tiny_reproduction, capsys):
    _, out = tiny_reproduction
    assert main(["reproduce", "lenet5-mnist-m2o", "--out", str(out), "--device", "cpu"]) == 2
    assert "reproduction of 'tiny'" in capsys.readouterr().err


def test_reproduce_with_given_weights(tiny_reproduction, tmp_path):
    cfg, out = tiny_reproduction
    a, b = out / "endpoints" / "seed0.safetensors", out / "endpoints" / "seed1.safetensors"
    o2 = tmp_path / "given"
    assert main(["reproduce", str(cfg), "--reps", "1", "--out", str(o2), "--start", str(a), "--dest", str(b),
                 "--device", "cpu", "--quiet"]) == 0
    assert not list((o2 / "endpoints").glob("*.safetensors"))
    assert json.loads((o2 / "summary.json").read_text())["reps"]["rep-00"]["status"] == "complete"


def test_method_picks_one_table_of_a_config_that_has_both(capsys):
    assert main(["reproduce", "demo", "--dry-run"]) == 2
    assert "must have exactly one of [m2m] and [m2o] to be reproduced (pick one with --method)" in capsys.readouterr().err
    assert main(["reproduce", "demo", "--method", "m2o", "--dry-run", "--dry-run-batch", "8", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("demo (M2O)")
    assert main(["reproduce", "lenet5-mnist-m2m", "--method", "m2o", "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == "llpf: error: config 'lenet5-mnist-m2m' has no [m2o] table"


def test_the_ledger_counts_a_launch_once_however_often_it_is_merged(tmp_path):
    from llpf.reproduce import Ledger

    (tmp_path / "endpoints").mkdir()
    (tmp_path / "endpoints" / "seed3.json").write_text('{"wall_s": 2.5, "metrics": {}}')
    Ledger(tmp_path, "x", "m2m").save()
    old = json.loads((tmp_path / "reproduce.json").read_text())
    old["reps"]["rep-00"] = {"wall_s": 10.0}  # written before launches were kept apart
    (tmp_path / "reproduce.json").write_text(json.dumps(old))
    for _ in range(2):
        Ledger(tmp_path, "x", "m2m").merge("A", {0: {"path_s": 1.0}, 1: {"path_s": 4.0}, 2: {"status": "failed"}},
                                          tmp_path / "endpoints")
    Ledger(tmp_path, "x", "m2m").merge("B", {1: {"path_s": 0.5}}, tmp_path / "endpoints")
    data = json.loads((tmp_path / "reproduce.json").read_text())
    assert {k: v["wall_s"] for k, v in data["reps"].items()} == {"rep-00": 11.0, "rep-01": 4.5}
    assert data["endpoints"] == {"seed3": {"wall_s": 2.5, "metrics": {}}}
    with pytest.raises(RunDirError, match=r"reproduction of 'x' \(m2m\), not 'x' \(m2o\)"):
        Ledger(tmp_path, "x", "m2o")


def test_a_repetition_that_raises_is_reported_failed_and_the_others_complete(tmp_path, monkeypatch, capsys):
    import llpf.runner as runner

    cfg, out = tmp_path / "tiny.toml", tmp_path / "out"
    cfg.write_text(TINY)
    real_run = runner.run_path

    def broken(kind, c, a, b, rep, **k):
        if rep.name == "rep-00":
            raise RuntimeError("device lost\nmore")
        return real_run(kind, c, a, b, rep, **k)
    monkeypatch.setattr(runner, "run_path", broken)
    args = ["reproduce", str(cfg), "--reps", "2", "--out", str(out), "--device", "cpu", "--quiet"]
    assert main(args) == 1
    s = json.loads((out / "summary.json").read_text())
    assert list(s["reps"]) == ["rep-01"] and s["reps"]["rep-01"]["status"] == "complete"
    assert s["unfinished"] == {"rep-00": "failed on rank 0: RuntimeError: device lost"}
    assert "- rep-00: failed on rank 0: RuntimeError: device lost" in capsys.readouterr().out

    monkeypatch.setattr(runner, "run_path", real_run)
    assert main(args) == 0
    s = json.loads((out / "summary.json").read_text())
    assert sorted(s["reps"]) == ["rep-00", "rep-01"] and s["unfinished"] == {}


# ---------------------------------------------------------------- repetitions batched together


def _with_endpoints_of(tiny_reproduction, out):
    """A new output directory holding the fixture's endpoints (so they are not trained again)."""
    import shutil

    shutil.copytree(tiny_reproduction[1] / "endpoints", out / "endpoints")
    return out


@pytest.fixture(scope="module")
def tiny_batched(tiny_reproduction, tmp_path_factory):
    cfg, _ = tiny_reproduction
    out = _with_endpoints_of(tiny_reproduction, tmp_path_factory.mktemp("batched"))
    assert main(["reproduce", str(cfg), "--reps", "2", "--out", str(out), "--device", "cpu", "--quiet",
                 "--batch-paths", "2"]) == 0
    return out


def _close_summaries(a: dict, b: dict, rel: float) -> None:
    assert a.keys() == b.keys()
    for key in b:
        if isinstance(b[key], dict):
            _close_summaries(a[key], b[key], rel)
        elif isinstance(b[key], float):
            assert a[key] == pytest.approx(b[key], rel=rel, abs=rel), key
        else:
            assert a[key] == b[key], key


def test_batched_repetitions_equal_repetitions_run_one_at_a_time(tiny_reproduction, tiny_batched):
    """Each repetition's run directory reads as if it ran alone; its numbers equal those of the run alone
    up to float32 rounding (the batched steps sum in another order)."""
    one = tiny_reproduction[1]
    ranks = json.loads((tiny_batched / "ranks" / "rank-0.json").read_text())["reps"]
    assert ranks["1"]["batched_with"] == ["rep-00", "rep-01"] and ranks["1"]["status"] == "complete"
    assert "batched_with" not in json.loads((one / "ranks" / "rank-0.json").read_text())["reps"]["1"]
    for rep in ("rep-00", "rep-01"):
        a, b = tiny_batched / rep, one / rep
        assert sorted(p.relative_to(a) for p in a.rglob("*")) == sorted(p.relative_to(b) for p in b.rglob("*"))
        assert (a / "config.toml").read_text() == (b / "config.toml").read_text()
        info = json.loads((a / "run.json").read_text())
        assert (info["kind"], info["status"]) == ("m2m", "complete")
        _close_summaries(json.loads((a / "summary.json").read_text()), json.loads((b / "summary.json").read_text()),
                         1e-4)
        rows_a, rows_b = read_metrics(a / "metrics.csv"), read_metrics(b / "metrics.csv")
        assert len(rows_a) == len(rows_b) == 13
        for ra, rb in zip(rows_a, rows_b):
            assert ra.keys() == rb.keys()
            assert all(ra[c] == pytest.approx(rb[c], rel=1e-4, abs=1e-5) for c in rb if rb[c] is not None)


def _interrupt_at(monkeypatch, iteration):
    """A kill (SIGINT) arriving while the run directories write their checkpoints of ``iteration``."""
    import os
    import signal

    from llpf.store import RunDir

    real = RunDir.on_checkpoint

    def on_checkpoint(self, it, state):
        real(self, it, state)
        if it == iteration:
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(RunDir, "on_checkpoint", on_checkpoint)


def test_an_interrupted_batch_resumes_together_or_alone(tiny_reproduction, tiny_batched, tmp_path, monkeypatch):
    import llpf.runner as runner

    cfg, _ = tiny_reproduction
    out = _with_endpoints_of(tiny_reproduction, tmp_path / "first")
    command = ["reproduce", str(cfg), "--reps", "2", "--out", str(out), "--device", "cpu", "--quiet",
               "--batch-paths", "2"]
    with monkeypatch.context() as m:
        _interrupt_at(m, 4)
        assert main(command) == 130
    for rep in ("rep-00", "rep-01"):
        info = json.loads((out / rep / "run.json").read_text())
        assert (info["status"], info["iteration"]) == ("interrupted", 4)

    # re-running the command resumes both paths together from their checkpoints, to the uninterrupted end
    calls = []
    real = runner.resume_paths
    with monkeypatch.context() as m:
        m.setattr(runner, "resume_paths", lambda reps, **k: calls.append([r.name for r in reps]) or real(reps, **k))
        assert main(command) == 0
    assert calls == [["rep-00", "rep-01"]]
    for rep in ("rep-00", "rep-01"):
        assert (json.loads((out / rep / "summary.json").read_text())
                == json.loads((tiny_batched / rep / "summary.json").read_text()))
        assert (out / rep / "metrics.csv").read_text() == (tiny_batched / rep / "metrics.csv").read_text()

    # a path interrupted in a batch also resumes alone (llpf resume), as a one-path run
    alone = _with_endpoints_of(tiny_reproduction, tmp_path / "again")
    with monkeypatch.context() as m:
        _interrupt_at(m, 8)
        assert main([*command[:5], str(alone), *command[6:]]) == 130
    assert main(["resume", str(alone / "rep-01"), "--device", "cpu", "--quiet"]) == 0
    _close_summaries(json.loads((alone / "rep-01" / "summary.json").read_text()),
                     json.loads((tiny_batched / "rep-01" / "summary.json").read_text()), 1e-4)


def test_batch_paths_is_checked(tiny_reproduction, tmp_path, capsys):
    cfg, _ = tiny_reproduction
    assert main(["reproduce", str(cfg), "--out", str(tmp_path / "x"), "--batch-paths", "0", "--device", "cpu"]) == 2
    assert "argument --batch-paths: must be at least 1, got 0" in capsys.readouterr().err
    from llpf.reproduce import default_batch_paths, unbatchable

    cct = C.load_config("cct7-cifar10-m2o")
    assert "dropout" in unbatchable(cct, "m2o")
    assert "loader" in unbatchable(C.load_config("resnet18-imagenet-m2o"), "m2o")
    r18 = C.load_config("resnet18-cifar10-m2m")
    assert unbatchable(r18, "m2m") is None
    assert default_batch_paths(r18, "m2m", torch.device("cuda"), 40) == 40
    assert default_batch_paths(r18, "m2m", torch.device("cpu"), 40) == 1
    assert default_batch_paths(cct, "m2o", torch.device("cuda"), 10) == 1
    assert main(["reproduce", "cct7-cifar10-m2o", "--out", str(tmp_path / "y"), "--reps", "2", "--batch-paths", "2",
                 "--device", "cpu"]) == 2
    assert "cannot batch its paths" in capsys.readouterr().err
