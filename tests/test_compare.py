"""llpf compare and the baselines as engine methods: known answers on a convex problem, cost, resume, errors."""
import csv
import json
import math

import pytest
import torch
from torch import nn

import llpf
from llpf.analysis.barriers import straight_line
from llpf.cli import main
from llpf.config import load_config
from llpf.data import Split, prepare_data
from llpf.errors import ConfigError, RunDirError
from llpf.files import load_weights, save_weights
from llpf.models import MODELS
from llpf.runner import load_model, resume, run_path
from llpf.store import RunDir

# Multinomial logistic regression on 4x4 average-pooled digits: convex in its parameters.
CONVEX = """
name = "convex"
[model]
name = "logistic-test"
[data]
name = "digits"
limit_train = 256
limit_test = 128
[train]
epochs = 1
batch_size = 32
lr = 0.05
[m2m]
lr = 0.05
eval_every = 5
save_every = 5
checkpoint_every = 5
[[m2m.phases]]
iterations = 20
step_a = 0.05
rounds = 2
[autoneb]
cycles = [{steps = 6, lr = 0.05}, {steps = 6, lr = 0.05}, {steps = 6, lr = 0.01}]
points_per_segment = 3
eval_every = 3
save_every = 6
checkpoint_every = 4
[bezier]
steps = 30
lr = 0.05
eval_every = 5
save_every = 10
checkpoint_every = 7
[line]
points = 6
"""
METHODS = ["line", "llpf", "autoneb", "bezier", "polychain"]


def logistic(c):
    return nn.Sequential(nn.AvgPool2d(8), nn.Flatten(), nn.Linear(c.in_channels * (c.image_size // 8) ** 2,
                                                                  c.num_classes))


@pytest.fixture(autouse=True)
def convex_model(monkeypatch):
    monkeypatch.setitem(MODELS, "logistic-test", logistic)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A config file and two poor endpoints far apart (random weights x 6), so the loss has room to fall."""
    d = tmp_path_factory.mktemp("convex")
    (d / "c.toml").write_text(CONVEX)
    cfg = load_config(d / "c.toml")
    for seed, name in ((0, "a"), (1, "b")):
        torch.manual_seed(seed)
        m = logistic(cfg.model)
        with torch.no_grad():
            m[2].weight.mul_(6)
        save_weights(d / f"{name}.safetensors", m.state_dict())
    return d


@pytest.fixture(scope="module")
def compared(pair):
    MODELS["logistic-test"] = logistic  # module scope: the autouse fixture has not run yet
    try:
        out = pair / "cmp"
        result = llpf.compare(pair / "c.toml", out, start=pair / "a.safetensors", dest=pair / "b.safetensors",
                              methods=METHODS, points=21, points_per_segment=2, device="cpu", log=lambda s: None)
    finally:
        del MODELS["logistic-test"]
    return out, result


def by_method(result):
    return {r["method"]: r for r in result["methods"]}


def test_compare_writes_its_files_and_every_path_stays_at_or_below_the_line_on_a_convex_loss(compared):
    out, result = compared
    assert (out / "comparison.png").stat().st_size > 0
    with open(out / "comparison.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == METHODS
    assert list(rows[0])[:11] == ["method", "budget", "max_train_loss", "walked_max_train_loss", "mean_train_loss",
                                  "max_test_loss", "min_test_accuracy", "path_length", "planned_gradient_steps",
                                  "gradient_steps", "wall_seconds"]
    assert {r["budget"] for r in rows} == {"config"}
    for name in METHODS:
        assert RunDir(out / name).info()["status"] == "complete"
        assert (out / name / "profile.json").is_file()
    got = by_method(result)
    line = json.loads((out / "line" / "profile.json").read_text())["rows"]
    ends = (line[0]["train_loss"], line[-1]["train_loss"])
    # convex: the straight line is highest at an end, and no path between the same ends goes above it
    assert got["line"]["max_train_loss"] == pytest.approx(max(ends))
    for name in METHODS:
        assert got[name]["max_train_loss"] <= got["line"]["max_train_loss"] + 1e-6, name
        rows = json.loads((out / name / "profile.json").read_text())["rows"]  # from A all the way to B
        assert (rows[0]["train_loss"], rows[-1]["train_loss"]) == pytest.approx(ends, rel=1e-6), name
        assert rows[0]["position"] == 0 and rows[-1]["position"] == pytest.approx(1)
    for name in ("llpf", "autoneb", "bezier", "polychain"):  # and each went down into the bowl
        assert got[name]["mean_train_loss"] < got["line"]["mean_train_loss"], name
    # the line's profile is the straight line evaluated independently
    cfg = load_config(out.parent / "c.toml")
    a, b = (llpf.runner.load_model(cfg, out.parent / f"{n}.safetensors") for n in "ab")
    ref = straight_line(a, b, llpf.data.prepare_data(cfg, "cpu"), points=21)
    assert [r["train_loss"] for r in line] == pytest.approx([r["train_loss"] for r in ref], rel=1e-5)
    dist = math.sqrt(sum(float((a.state_dict()[k] - b.state_dict()[k]).pow(2).sum()) for k in ("2.weight", "2.bias")))
    assert got["line"]["path_length"] == pytest.approx(dist, rel=1e-6)


def test_gradient_steps_are_counted_per_method(compared):
    out, result = compared
    got = by_method(result)
    assert got["line"]["gradient_steps"] == 0
    assert got["llpf"]["gradient_steps"] == 20 * 2  # T iterations x r Train_r steps
    assert got["bezier"]["gradient_steps"] == got["polychain"]["gradient_steps"] == 30  # one per curve step
    # convex: no segment's loss rises above its chord, so no pivot is inserted: 3 cycles x 6 steps x 3 pivots
    assert [c["pivots"] for c in RunDir(out / "autoneb").summary()["cycles"]] == [5, 5, 5, 5]
    assert got["autoneb"]["gradient_steps"] == 3 * 6 * 3


def test_autoneb_through_the_driver_counts_each_step_s_interior_pivots_as_pivots_are_inserted():
    from test_baselines import Valley, energy

    data = Split(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))
    cfg = {"cycles": [{"steps": 5, "lr": 0.02}] * 3, "points_per_segment": 2, "initial_pivots": 1, "max_pivots": 4,
           "batch_size": 2, "eval_every": 5}
    res = llpf.find_path("autoneb", Valley(-1.0, 0.0), data, cfg, dest=Valley(1.0, 0.0), loss_fn=energy)
    # one interior pivot in cycle 1, then one inserted per cycle within the budget of 4 pivots
    assert [c["pivots"] for c in res.summary["cycles"]] == [3, 3, 4, 4]
    assert [r["rounds"] for r in res.rows[1:]] == [1] * 5 + [2] * 10
    assert [r["phase"] for r in res.rows[1:]] == [1] * 5 + [2] * 5 + [3] * 5
    assert res.summary["gradient_evals"] == 25 and res.path.curve == "polygon" and len(res.path.states) == 4
    # with a budget of 44 evaluations, planned on 1, 2, 2 interior pivots (4 in all at most): 44 / 25 x 5 = 9
    # steps for cycle 1; cycle 2 gets round(35 / 20 x 5) = 9, the last what is left, round(17 / 2) = 8 (or 9)
    res = llpf.find_path("autoneb", Valley(-1.0, 0.0), data, {**cfg, "budget": 44}, dest=Valley(1.0, 0.0),
                         loss_fn=energy)
    steps = [c["steps"] for c in res.summary["cycles"]]
    assert [c["pivots"] for c in res.summary["cycles"]] == [3, 3, 4, 4]
    assert steps == [0, 9, 18, 26] and res.summary["gradient_evals"] == 9 * 1 + 9 * 2 + 8 * 2 == 43
    assert [r["phase"] for r in res.rows[1:]] == [1] * 9 + [2] * 9 + [3] * 8
    assert res.summary["iterations"] == 26 == len(res.rows) - 1


def test_paths_start_and_end_at_the_given_models_to_the_bit(compared, pair):
    out, _ = compared
    a, b = load_weights(pair / "a.safetensors"), load_weights(pair / "b.safetensors")
    for name in ("line", "autoneb", "bezier", "polychain"):
        curve, files = RunDir(out / name).knots()
        assert curve == ("bezier" if name == "bezier" else "polygon")
        first, last = load_weights(files[0]), load_weights(files[-1])
        assert all(torch.equal(first[k], a[k]) and torch.equal(last[k], b[k]) for k in a), name
    assert len(RunDir(out / "polychain").knots()[1]) == 3


def test_a_zero_length_pair_gives_every_method_a_path_of_length_0_at_the_endpoint_s_loss(pair, tmp_path):
    a = pair / "a.safetensors"
    result = by_method(llpf.compare(pair / "c.toml", tmp_path / "zero", start=a, dest=a, methods=METHODS, points=5,
                                    points_per_segment=2, device="cpu", log=lambda s: None))
    cfg = load_config(pair / "c.toml")
    ends = straight_line(load_model(cfg, a), load_model(cfg, a), prepare_data(cfg, "cpu").train, points=2)
    for name in METHODS:
        r = result[name]
        assert r["failed"] == 0 and r["path_length"] == 0.0 and r["gradient_steps"] == 0, name
        assert r["max_train_loss"] == pytest.approx(ends[0]["loss"], rel=1e-6), name
        assert RunDir(tmp_path / "zero" / name).summary()["iterations"] == 0, name


def test_rerunning_the_command_continues_and_another_command_is_refused(compared, pair, monkeypatch):
    out, result = compared
    monkeypatch.setattr(llpf.runner, "run_path", lambda *a, **k: pytest.fail("a finished run was run again"))
    again = llpf.compare(pair / "c.toml", out, start=pair / "a.safetensors", dest=pair / "b.safetensors",
                         methods=METHODS, points=21, points_per_segment=2, device="cpu", log=lambda s: None)
    assert again["methods"] == result["methods"]
    with pytest.raises(RunDirError, match="differs in points"):
        llpf.compare(pair / "c.toml", out, start=pair / "a.safetensors", dest=pair / "b.safetensors",
                     methods=METHODS, points=11, points_per_segment=2, device="cpu", log=lambda s: None)
    (pair / "other").mkdir()
    (pair / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not empty"):
        llpf.compare(pair / "c.toml", pair / "other", start=pair / "a.safetensors", dest=pair / "b.safetensors",
                     device="cpu", log=lambda s: None)


def test_an_interrupted_comparison_resumes_its_run_and_ends_as_an_uninterrupted_one(compared, pair, monkeypatch):
    out, result = compared
    again = pair / "cmp-interrupted"
    kwargs = dict(start=pair / "a.safetensors", dest=pair / "b.safetensors", methods=["line", "bezier"], points=21,
                  points_per_segment=2, device="cpu", log=lambda s: None)
    interrupted_at_checkpoint(monkeypatch, 2, "bezier")
    with pytest.raises(KeyboardInterrupt):
        llpf.compare(pair / "c.toml", again, **kwargs)
    assert RunDir(again / "bezier").info()["status"] == "running" and not (again / "comparison.csv").exists()
    monkeypatch.setattr(RunDir, "on_checkpoint", RUNDIR_ON_CHECKPOINT)
    said = []
    done = by_method(llpf.compare(pair / "c.toml", again, **{**kwargs, "log": said.append}))
    assert said == ["bezier: resuming the interrupted run"]  # the finished line is skipped
    for name in ("line", "bezier"):
        for key in ("max_train_loss", "mean_train_loss", "min_test_accuracy", "path_length", "gradient_steps"):
            assert done[name][key] == by_method(result)[name][key], (name, key)


def test_report_shows_a_comparison(compared, tmp_path):
    from llpf.analysis.report import build_report

    out, _ = compared
    page = build_report([out], tmp_path / "report").read_text()
    assert "Path methods compared" in page and "data:image/png;base64," in page
    assert all(f"<td>{m}</td>" in page for m in METHODS)


def test_bad_methods_and_settings_are_one_line_errors(pair, tmp_path, capsys):
    args = ["compare", str(pair / "c.toml"), "--start", str(pair / "a.safetensors"), "--dest",
            str(pair / "b.safetensors"), "--out", str(tmp_path / "x")]
    for extra in (["--methods", "line,nope"], ["--methods", "line,line"], ["--methods", ","], ["--pairs", "2"],
                  ["--points", "1"]):
        assert main(args + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("llpf") and ": error: " in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        llpf.compare(pair / "c.toml", tmp_path / "y", start=pair / "a.safetensors", dest=pair / "b.safetensors",
                     methods="llpf,nope")


def test_pairs_train_endpoints_and_report_mean_and_spread(pair, tmp_path):
    out = tmp_path / "pairs"
    result = llpf.compare(pair / "c.toml", out, pairs=2, methods="line,bezier", points=11, device="cpu",
                          log=lambda s: None)
    assert sorted(p.name for p in (out / "endpoints").glob("*.safetensors")) == [f"seed{s}.safetensors"
                                                                                  for s in range(4)]
    with open(out / "comparison_pairs.csv") as fh:
        per_pair = list(csv.DictReader(fh))
    assert [(r["pair"], r["method"]) for r in per_pair] == [("0", "line"), ("0", "bezier"), ("1", "line"),
                                                             ("1", "bezier")]
    line = [float(r["max_train_loss"]) for r in per_pair if r["method"] == "line"]
    row = by_method(result)["line"]
    assert row["pairs"] == 2 and row["max_train_loss"] == pytest.approx(sum(line) / 2)
    assert row["max_train_loss_std"] == pytest.approx(abs(line[0] - line[1]) / 2)
    assert (out / "comparison.png").is_file()
    # pair 1 ran from seed 2 to seed 3, with the line's batch stream seeded 0 + 1
    inputs = RunDir(out / "pair-01" / "line").info()["inputs"]
    assert inputs["start"].endswith("seed2.safetensors") and inputs["dest"].endswith("seed3.safetensors")
    assert load_config(out / "pair-01" / "bezier" / "config.toml").bezier.seed == 1



def test_a_failed_pair_costs_only_itself_and_the_same_command_completes_it(pair, tmp_path, monkeypatch):
    import llpf.comparison as comparison

    out, original = tmp_path / "pairs", comparison.run_method

    def pair_1_fails(name, cfg, a, b, run, *args):
        if run.parent.name == "pair-01":
            raise RuntimeError("out of memory")
        return original(name, cfg, a, b, run, *args)

    monkeypatch.setattr(comparison, "run_method", pair_1_fails)
    said = []
    go = lambda: llpf.compare(pair / "c.toml", out, pairs=2, methods="line", points=5, device="cpu",  # noqa: E731
                              log=said.append)
    with pytest.raises(RunDirError, match=r"^1 of 2 pair\(s\) did not finish: pair 1 \(RuntimeError: out of memory\)"):
        go()
    assert "rank 0: pair 1 failed: RuntimeError: out of memory" in said
    with open(out / "comparison_pairs.csv") as fh:
        assert [r["pair"] for r in csv.DictReader(fh)] == ["0"]  # what finished is written
    done = (out / "pair-00" / "line" / "profile.json").stat().st_mtime_ns
    monkeypatch.setattr(comparison, "run_method", original)
    result = go()
    assert [(p["pair"], p["status"]) for p in result["pairs"]] == [(0, "complete"), (1, "complete")]
    assert (out / "pair-00" / "line" / "profile.json").stat().st_mtime_ns == done  # kept, not rerun


# ---------------------------------------------------------------- the methods through the driver


RUNDIR_ON_CHECKPOINT = RunDir.on_checkpoint


def interrupted_at_checkpoint(monkeypatch, n, run_name=None):
    """Make the n-th checkpoint of a run (named ``run_name``, or any) its last: written, then the process 'dies'."""
    seen = {"n": 0}
    original = RunDir.on_checkpoint

    def on_checkpoint(self, iteration, state):
        original(self, iteration, state)
        seen["n"] += run_name is None or self.path.name == run_name
        if seen["n"] == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "on_checkpoint", on_checkpoint)
    return seen


@pytest.mark.parametrize("kind, kill_at, budget", [("autoneb", 2, 0), ("autoneb", 3, 60), ("bezier", 3, 0),
                                                    ("line", 2, 0)])
def test_a_resumed_baseline_run_equals_an_uninterrupted_one(pair, tmp_path, monkeypatch, kind, kill_at, budget):
    """With a budget AutoNEB sets each cycle's steps as it starts (no pivot is inserted on this convex loss, so the
    later cycles take more steps than first planned): a resumed run follows the same plan."""
    cfg = load_config(pair / "c.toml")
    cfg.autoneb.budget = budget
    a, b = pair / "a.safetensors", pair / "b.safetensors"
    run_path(kind, cfg, a, b, tmp_path / "full", device="cpu")
    interrupted_at_checkpoint(monkeypatch, kill_at)
    with pytest.raises(KeyboardInterrupt):
        run_path(kind, cfg, a, b, tmp_path / "part", device="cpu")
    monkeypatch.undo()
    monkeypatch.setitem(MODELS, "logistic-test", logistic)
    part = RunDir(tmp_path / "part")
    assert part.info()["status"] == "running" and part.load_checkpoint()["iteration"] < cfg_total(cfg, kind)
    resume(tmp_path / "part", device="cpu")
    full = RunDir(tmp_path / "full")
    assert (part.path / "metrics.csv").read_bytes() == (full.path / "metrics.csv").read_bytes()
    assert part.summary() == full.summary()
    (curve, pf), (_, ff) = part.knots(), full.knots()
    for x, y in zip(pf, ff, strict=True):
        sx, sy = load_weights(x), load_weights(y)
        assert all(torch.equal(sx[k], sy[k]) for k in sx)


def cfg_total(cfg, kind):
    return {"autoneb": 60 if cfg.autoneb.budget else sum(c.steps for c in cfg.autoneb.cycles), "bezier": cfg.bezier.steps,
            "line": cfg.line.points - 1}[kind]


def bn_pair():
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))  # noqa
    a, b = make(), make()
    for m in (a, b):
        m.train()
        m(torch.randn(64, 16) * 3 + 1)  # running statistics of their own
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 16, generator=g)
    return a, b, Split(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


@pytest.mark.parametrize("recalibrate", [True, False])
def test_the_line_method_recomputes_batchnorm_at_every_point_or_evaluates_it_raw(recalibrate):
    a, b, data = bn_pair()
    res = llpf.find_path("line", a, data, {"points": 5, "recalibrate_bn": recalibrate}, dest=b)
    ref = straight_line(a, b, {"train": data}, points=5, recompute_bn=recalibrate)
    assert [r["train_loss"] for r in res.rows] == pytest.approx([r["train_loss"] for r in ref], rel=1e-5)
    assert [r["t"] for r in res.rows] == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    raw = straight_line(a, b, {"train": data}, points=5, recompute_bn=not recalibrate)
    assert [r["train_loss"] for r in res.rows][2] != pytest.approx(raw[2]["train_loss"], rel=1e-3)
    assert ("recomputed" if recalibrate else "raw") in res.summary["batchnorm"]


# ---------------------------------------------------------------- positions and lengths, by hand


def knots(*points):
    return [(i, lambda p=p: {"w": torch.tensor(p, dtype=torch.float64)}) for i, p in enumerate(points)]


def test_polygon_positions_are_fractions_of_its_length_and_the_mean_is_weighted_by_length():
    from llpf.comparison.profile import polygon_profile, stats

    at = lambda s: {"train_loss": float(s["w"][1])}  # noqa: E731  (the height)
    rows, length = polygon_profile(knots((0.0, 0.0), (3.0, 0.0), (3.0, 4.0)), at, ["w"], points=3,
                                   points_per_segment=1)
    assert length == pytest.approx(7.0)
    assert [r["position"] for r in rows] == pytest.approx([0, 1.5 / 7, 3 / 7, 5 / 7, 1])
    assert [r["knot"] for r in rows] == [True, False, True, False, True]
    s = stats(rows, length)
    # height is 0 for the first 3/7 of the length, then rises linearly to 4: mean 2 x 4/7
    assert s["mean_train_loss"] == pytest.approx(8 / 7) and s["max_train_loss"] == 4.0
    assert s["max_train_loss_position"] == 1.0 and s["path_length"] == pytest.approx(7.0)
    many, _ = polygon_profile(knots((0.0, 0.0), (3.0, 0.0), (3.0, 4.0)), at, ["w"], points=21, points_per_segment=1)
    assert len(many) == 2 * 10 + 1  # at least 21 points: ceil(20 / 2) - 1 = 9 inside each segment


def test_bezier_positions_follow_its_arc_length():
    from llpf.baselines.bezier import curve_point
    from llpf.comparison.profile import bezier_profile

    a, bend, b = (0.0, 0.0), (1.0, 3.0), (4.0, 0.0)
    rows, length = bezier_profile(knots(a, bend, b), lambda s: {"train_loss": 0.0, "w": s["w"].clone()}, ["w"],
                                  points=5)
    ts = torch.linspace(0, 1, 200001, dtype=torch.float64)
    pts = torch.stack([curve_point("bezier", torch.tensor(a, dtype=torch.float64),
                                   torch.tensor(bend, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                                   float(t)) for t in ts[::100]])
    chord = (pts[1:] - pts[:-1]).norm(dim=1)
    assert length == pytest.approx(float(chord.sum()), rel=1e-6)
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), chord.cumsum(0)]) / chord.sum()
    for r in rows:  # the position of t is the arc length up to t, over the whole
        assert r["position"] == pytest.approx(float(cum[round(r["t"] * 2000)]), abs=1e-6)
        torch.testing.assert_close(r["w"], pts[round(r["t"] * 2000)])


def test_the_command_prints_the_table_and_writes_the_files(pair, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["compare", str(pair / "c.toml"), "--start", str(pair / "a.safetensors"), "--dest",
                 str(pair / "b.safetensors"), "--methods", "line,polychain", "--points", "5", "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("method"))
    assert lines[head].split()[:4] == ["method", "budget", "max_train_loss", "walked_max_train_loss"]
    assert [ln.split()[:2] for ln in lines[head + 1:head + 3]] == [["line", "config"], ["polychain", "config"]]
    assert lines[head + 3] == ("every path evaluated at 5 points or more: training loss on 256 samples, test on 128; "
                               "the model has no BatchNorm")
    assert (out / "comparison.csv").is_file() and (out / "comparison.png").is_file()
    assert json.loads((out / "comparison.json").read_text())["settings"]["batchnorm"] == "the model has no BatchNorm"


def test_a_baseline_without_its_table_runs_with_the_defaults(pair, tmp_path):
    cfg = load_config(pair / "c.toml")
    cfg.line = None
    run_path("line", cfg, pair / "a.safetensors", pair / "b.safetensors", tmp_path / "r", device="cpu")
    assert load_config(tmp_path / "r" / "config.toml").line.points == 21  # LineConfig's default
    with pytest.raises(ConfigError, match=r"no \[m2m\] table"):
        cfg.m2m = None
        run_path("m2m", cfg, pair / "a.safetensors", pair / "b.safetensors", tmp_path / "m", device="cpu")


def bn_net(c):
    return nn.Sequential(nn.AvgPool2d(8), nn.Flatten(), nn.Linear(c.in_channels * (c.image_size // 8) ** 2, 8),
                         nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, c.num_classes))


@pytest.mark.parametrize("recompute", [None, False])
def test_compare_evaluates_batchnorm_paths_with_statistics_recomputed_or_raw(pair, tmp_path, monkeypatch, recompute):
    monkeypatch.setitem(MODELS, "bn-test", bn_net)
    (tmp_path / "c.toml").write_text(CONVEX.replace('name = "logistic-test"', 'name = "bn-test"'))
    cfg = load_config(tmp_path / "c.toml")
    data = llpf.data.prepare_data(cfg, "cpu")
    ends = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = bn_net(cfg.model)
        m.train()
        m(data.train.x[seed * 64:(seed + 1) * 64])  # statistics of its own
        save_weights(tmp_path / f"{seed}.safetensors", m.state_dict())
        ends.append(m)
    result = llpf.compare(tmp_path / "c.toml", tmp_path / "out", start=tmp_path / "0.safetensors",
                          dest=tmp_path / "1.safetensors", methods="line", points=5, points_per_segment=0, recompute_bn=recompute,
                          device="cpu", log=lambda s: None)
    rows = json.loads((tmp_path / "out" / "line" / "profile.json").read_text())["rows"]
    ref = straight_line(*ends, data, points=5, recompute_bn=recompute)
    assert [r["train_loss"] for r in rows] == pytest.approx([r["train_loss"] for r in ref], rel=1e-5)
    assert [r["test_accuracy"] for r in rows] == pytest.approx([r["test_accuracy"] for r in ref])
    assert ("recomputed" if recompute is None else "raw") in result["settings"]["batchnorm"]
