"""llpf compare at matched budgets and over several (the loss-budget frontier): scaled schedules, what each method
spent, LLPF's dense points and its own evaluations, llpf-until, the dry run of every paper config."""
import csv
import dataclasses
import json
import math

import pytest
import torch

import llpf
from llpf.cli import main
from llpf.comparison import budget as B
from llpf.comparison.options import COMPARED, Options
from llpf.comparison.run import planned_tables
from llpf.config import Phase, PathConfig, load_config
from llpf.errors import ConfigError
from llpf.files import save_weights
from llpf.models import build_model
from llpf.store import RunDir, gradient_steps
from llpf.models import MODELS
from test_compare import convex_model, logistic, pair  # noqa: F401  (fixtures)


def compare_pair(pair, out, **options):
    """``llpf.compare`` on the convex test pair, the model registered (module-scoped fixtures run before the
    autouse one), every path evaluated sparsely."""
    MODELS["logistic-test"] = logistic
    try:
        return llpf.compare(pair / "c.toml", out, start=pair / "a.safetensors", dest=pair / "b.safetensors",
                            points=11, points_per_segment=1, device="cpu", log=lambda s: None, **options)
    finally:
        del MODELS["logistic-test"]


def rows_of(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------- scaling a schedule


def test_scaled_llpf_walks_the_same_way_in_the_budget_s_iterations():
    """T scaled, r kept; Move's steps scaled so each phase leaves the same distance: (1 - a')^T' = (1 - a)^T for
    the relative step, T' f' = T f for the fixed one; the cadences follow."""
    pc = PathConfig(phases=[Phase(iterations=250, step_a=0.01, step_f=1e-3, rounds=5),
                            Phase(iterations=50, step_a=0.04, step_f=0.0, rounds=5)],
                    eval_every=10, save_every=50, checkpoint_every=50)
    assert B.path_evaluations(pc) == (1500, True)
    for budget in (500, 6000):
        s = B.scaled_path(pc, budget)
        assert B.planned_evaluations("m2m", s) == budget
        for old, new in zip(pc.phases, s.phases):
            assert new.iterations == round(old.iterations * budget / 1500) and new.rounds == old.rounds
            assert (1 - new.step_a) ** new.iterations == pytest.approx((1 - old.step_a) ** old.iterations, rel=1e-9)
            assert new.step_f * new.iterations == pytest.approx(old.step_f * old.iterations, rel=1e-9)
        assert s.eval_every == max(1, round(10 * budget / 1500))
    until = B.until(pc, 0.01, 20)  # the nominal r is what scales a phase that trains until a loss
    assert B.path_evaluations(until) == (1500, False) and B.planned_evaluations("m2m", until) is None
    assert all((p.until_loss, p.min_rounds, p.max_rounds) == (0.01, 1, 20) for p in until.phases)
    assert B.dense(pc, 100).save_every == 3 and B.dense(pc, 2).save_every == 50  # never sparser than the config


def test_a_path_at_twice_the_budget_ends_where_the_config_s_path_ends(pair):
    """The same schedule at another budget arrives as far (within 2% here, Move and VarianceCorrection being
    interleaved): twice the iterations at the same steps would go much farther."""
    cfg = load_config(pair / "c.toml")
    a, b = (llpf.runner.load_model(cfg, pair / f"{n}.safetensors") for n in "ab")
    data = llpf.data.prepare_data(cfg, "cpu")
    doubled = [dataclasses.replace(ph, iterations=2 * ph.iterations) for ph in cfg.m2m.phases]
    final = {}
    for name, pc in (("config", cfg.m2m), ("80", B.scaled_path(cfg.m2m, 80)),
                     ("unscaled", dataclasses.replace(cfg.m2m, phases=doubled))):
        s = llpf.m2m(a, b, data.train, dataclasses.replace(pc, lr=0.0), device="cpu").summary
        final[name] = s["final_distance"]
    assert B.scaled_path(cfg.m2m, 80).total_iterations == 40
    for layer in final["config"]:
        assert final["80"][layer] == pytest.approx(final["config"][layer], rel=0.02), layer
        assert final["unscaled"][layer] < 0.8 * final["config"][layer], layer


# ---------------------------------------------------------------- matched budgets


@pytest.fixture(scope="module")
def matched(pair):
    out = pair / "matched"
    result = compare_pair(pair, out, methods="llpf,autoneb,bezier,line,llpf-until", budget="matched", llpf_knots=8)
    return out, {r["method"]: r for r in result["methods"]}


def test_matched_budgets_give_every_method_llpf_s_gradient_evaluations(matched):
    out, got = matched
    llpf_steps = got["llpf"]["gradient_steps"]
    assert llpf_steps == 20 * 2  # its config: T = 20 iterations of r = 2
    for name in ("autoneb", "bezier"):
        assert abs(got[name]["gradient_steps"] - llpf_steps) <= 0.05 * llpf_steps, name
        assert got[name]["planned_gradient_steps"] == llpf_steps and got[name]["budget"] == "matched"
    assert got["line"]["gradient_steps"] == 0 and got["line"]["budget"] == "config"
    # the runs were given the budget (AutoNEB's band steps set as its cycles started)
    assert load_config(out / "autoneb" / "config.toml").autoneb.budget == llpf_steps
    assert load_config(out / "bezier" / "config.toml").bezier.steps == llpf_steps
    rows = rows_of(out / "comparison.csv")
    assert {r["method"]: (r["budget"], r["gradient_steps"]) for r in rows}["bezier"] == ("matched", str(llpf_steps))
    assert [r["method"] for r in rows] == ["line", "llpf", "autoneb", "bezier", "llpf-until"]  # llpf ran first


@pytest.mark.slow
def test_the_demo_at_a_matched_budget_gives_the_three_methods_the_same_gradient_evaluations(tmp_path, capsys):
    """The acceptance command on the demo config (LeNet5 on digits; two untrained LeNet5 as the pair, since the
    cost does not depend on where they sit): within 5% of LLPF's 1,500 gradient evaluations."""
    cfg = load_config("demo")
    for seed in (0, 1):
        torch.manual_seed(seed)
        save_weights(tmp_path / f"seed{seed}.safetensors", build_model(cfg.model).state_dict())
    out = tmp_path / "cmp"
    assert main(["compare", "demo", "--start", str(tmp_path / "seed0.safetensors"), "--dest",
                 str(tmp_path / "seed1.safetensors"), "--methods", "llpf,autoneb,bezier", "--budget", "matched",
                 "--out", str(out), "--llpf-knots", "20", "--points-per-segment", "1", "--device", "cpu",
                 "--quiet"]) == 0
    rows = {r["method"]: r for r in rows_of(out / "comparison.csv")}
    steps = {m: int(float(r["gradient_steps"])) for m, r in rows.items()}
    assert steps["llpf"] == 1500 and all(abs(v - 1500) <= 75 for v in steps.values()), steps
    assert {r["budget"] for r in rows.values()} == {"matched"}


def test_llpf_keeps_dense_points_and_reports_its_own_evaluations_apart(matched):
    """``walked_max_train_loss`` is what LLPF measured at its own points; ``max_train_loss`` the polygon through
    its saved points (at least llpf_knots segments), to the destination."""
    out, got = matched
    cfg = load_config(out / "llpf" / "config.toml").m2m
    assert cfg.save_every == math.ceil(20 / 8) == 3  # the config saves every 5
    points = RunDir(out / "llpf").points()
    assert [it for it, _ in points] == list(range(0, 19, 3)) + [20]
    profile = json.loads((out / "llpf" / "profile.json").read_text())
    assert profile["knots"] == len(points) + 1  # and the destination
    summary = RunDir(out / "llpf").summary()
    assert got["llpf"]["walked_max_train_loss"] == summary["max_train_loss"]
    assert got["autoneb"]["walked_max_train_loss"] is None and got["bezier"]["walked_max_train_loss"] is None


def test_llpf_until_runs_llpf_s_iterations_training_until_the_bound(matched):
    out, got = matched
    pc = load_config(out / "llpf-until" / "config.toml").m2m
    assert pc.total_iterations == 20
    assert all((p.until_loss, p.min_rounds, p.max_rounds) == (0.01, 1, 20) for p in pc.phases)
    rounds = [r["rounds"] for r in RunDir(out / "llpf-until").metrics() if r["iteration"] > 0]
    assert got["llpf-until"]["gradient_steps"] == sum(rounds) and got["llpf-until"]["planned_gradient_steps"] is None
    assert max(rounds) == 20  # on these poor endpoints the batch loss never falls below 0.01


# ---------------------------------------------------------------- the frontier


@pytest.fixture(scope="module")
def frontier(pair):
    out = pair / "frontier"
    result = compare_pair(pair, out, methods="line,llpf,llpf-until,autoneb,bezier", budgets="60,20", llpf_knots=5,
                          until_loss=1.0)
    return out, result


def test_the_frontier_runs_every_method_at_every_budget_and_the_line_once(frontier):
    out, result = frontier
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["budget-20", "budget-60", "line", "ranks"]
    for b in (20, 60):
        assert sorted(p.name for p in (out / f"budget-{b}").iterdir()) == ["autoneb", "bezier", "llpf", "llpf-until"]
    rows = rows_of(out / "frontier.csv")
    assert [(r["method"], r["budget"]) for r in rows] == [("line", "0"), ("llpf", "20"), ("llpf", "60"),
                                                          ("llpf-until", "20"), ("llpf-until", "60"),
                                                          ("autoneb", "20"), ("autoneb", "60"), ("bezier", "20"),
                                                          ("bezier", "60")]
    for r in rows:
        run = out / "line" if r["method"] == "line" else out / f"budget-{r['budget']}" / r["method"]
        assert float(r["gradient_steps"]) == gradient_steps(run)
        assert float(r["max_train_loss"]) == json.loads((run / "profile.json").read_text())["stats"]["max_train_loss"]
        if r["method"] in ("llpf", "bezier"):
            assert float(r["gradient_steps"]) == int(r["budget"])
        if r["method"] == "autoneb":
            assert abs(float(r["gradient_steps"]) - int(r["budget"])) <= 0.05 * int(r["budget"]) + 3
    iters = {b: load_config(out / f"budget-{b}" / "llpf-until" / "config.toml").m2m.total_iterations for b in (20, 60)}
    assert iters == {b: load_config(out / f"budget-{b}" / "llpf" / "config.toml").m2m.total_iterations
                     for b in (20, 60)} == {20: 10, 60: 30}
    assert (out / "frontier.png").stat().st_size > 10_000
    assert [(r["method"], r["budget"]) for r in result["methods"]][:3] == [("line", "config"), ("llpf", 20),
                                                                          ("llpf-until", 20)]
    assert len(result["frontier"]) == 9


def test_report_shows_the_frontier(frontier, tmp_path):
    from llpf.analysis.report import build_report

    out, _ = frontier
    page = build_report([out], tmp_path / "report").read_text()
    assert 'alt="loss-budget frontier"' in page and "<td>llpf-until</td>" in page


def test_rerunning_the_frontier_continues_and_another_budget_is_refused(frontier, pair, monkeypatch):
    out, result = frontier
    for again in ("run_path", "resume"):  # every run is finished: none runs again
        monkeypatch.setattr(llpf.runner, again, lambda *a, **k: pytest.fail("a finished run ran again"))
    again = compare_pair(pair, out, methods="line,llpf,llpf-until,autoneb,bezier", budgets=[20, 60], llpf_knots=5,
                         until_loss=1.0)
    assert again["frontier"] == result["frontier"]
    with pytest.raises(Exception, match="differs in budgets"):
        compare_pair(pair, out, methods="line,llpf,llpf-until,autoneb,bezier", budgets=[20, 80], llpf_knots=5,
                     until_loss=1.0)


def test_given_endpoints_are_used_for_the_pairs(pair, tmp_path):
    cfg = load_config(pair / "c.toml")
    ends = tmp_path / "ends"
    ends.mkdir()
    for s in range(2):
        torch.manual_seed(s)
        save_weights(ends / f"seed{s}.safetensors", build_model(cfg.model).state_dict())
    out = tmp_path / "cmp"
    llpf.compare(pair / "c.toml", out, pairs=1, endpoints=ends, methods="line", points=3, device="cpu",
                 log=lambda s: None)
    assert not (out / "endpoints").exists()
    assert RunDir(out / "pair-00" / "line").info()["inputs"]["dest"].endswith("ends/seed1.safetensors")
    with pytest.raises(ConfigError, match="lacks seed2.safetensors, seed3.safetensors"):
        llpf.compare(pair / "c.toml", tmp_path / "two", pairs=2, endpoints=ends, methods="line")


def test_budget_mistakes_are_one_line_errors_before_anything_runs(pair, tmp_path, capsys):
    args = ["compare", str(pair / "c.toml"), "--start", str(pair / "a.safetensors"), "--dest",
            str(pair / "b.safetensors"), "--out", str(tmp_path / "x")]
    for extra in (["--budget", "0"], ["--budget", "lots"], ["--budgets", "100,matched"], ["--budget", "50",
                  "--budgets", "50,100"], ["--budget", "matched", "--methods", "line,bezier"], ["--budget", "10"],
                  ["--until-loss", "0"], ["--endpoints", str(tmp_path)], ["--llpf-knots", "0"]):
        assert main(args + extra) == 2, extra
        err = capsys.readouterr().err  # "llpf: error: ..." or, for an argparse type, "llpf compare: error: ..."
        assert err.startswith("llpf") and ": error: " in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()
    assert main(args + ["--budget", "10"]) == 2
    assert "autoneb at budget 10: autoneb.budget (10) is below one band step per cycle" in capsys.readouterr().err
    assert Options(budgets="300, 100,300").budgets == [100, 300]


# ---------------------------------------------------------------- the paper's configs

M2M_CONFIGS = ["lenet5-mnist-m2m", "lenet5-fashion-mnist-m2m", "resnet18-cifar10-m2m", "cct7-cifar10-m2m"]
SLOW = {"resnet18-cifar10-m2m", "cct7-cifar10-m2m"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in M2M_CONFIGS])
def test_every_paper_config_carries_the_published_baselines_and_passes_a_dry_run(name, monkeypatch):
    """Draxler et al.'s published AutoNEB (16,000 band steps in 14 cycles from lr 0.1, batch 512, weight decay
    1e-4) and Garipov et al.'s curve for that kind of network; the dry run checks every method on random tensors
    at the config's budgets and at a matched one."""
    monkeypatch.setattr("llpf.data.vision.DEBIAN_FASHION_MNIST", __import__("pathlib").Path("/nonexistent"))
    cfg = load_config(name)
    neb, curve = cfg.autoneb, cfg.bezier
    assert (sum(c.steps for c in neb.cycles), len(neb.cycles), neb.cycles[0].lr, neb.cycles[-1].lr) == \
        (16000, 14, 0.1, 0.001)
    assert (neb.batch_size, neb.weight_decay, neb.initial_pivots, neb.insert_per_cycle, neb.insert_threshold,
            neb.max_pivots, neb.points_per_segment, neb.insertion_samples) == (512, 1e-4, 3, 2, 0.1, 31, 9, 0)
    vgg = name.startswith("lenet5")  # no BatchNorm: Garipov et al.'s VGG16 curve; else their PreResNet's
    assert (curve.kind, curve.batch_size, curve.momentum) == ("bezier", 128, 0.9)
    assert (curve.lr, curve.weight_decay) == ((0.015, 5e-4) if vgg else (0.03, 3e-4))
    epochs, per_epoch = (600, math.ceil(60000 / 128)) if vgg else (200, math.ceil(50000 / 128))
    assert curve.steps == epochs * per_epoch
    lines = []
    plan = llpf.compare(name, None, dry_run=True, batch_size=2, device="cpu",
                        methods="line,llpf,llpf-until,autoneb,bezier", log=lines.append)
    got = {r["method"]: r for r in plan["methods"]}
    assert all(len(r["iteration_s"]) == 2 and all(t > 0 for t in r["iteration_s"]) for r in got.values())
    assert (got["autoneb"]["planned_gradient_steps"], got["bezier"]["planned_gradient_steps"]) == \
        (neb_cost(neb), curve.steps)
    assert any("autoneb" in line and "weight decay 0.0001" in line for line in lines)
    # at a matched budget, the tables (checked as the comparison builds them) plan LLPF's gradient evaluations
    opts = Options(methods=["llpf", "autoneb", "bezier"], budget="matched")
    llpf_cost = B.path_evaluations(cfg.m2m)[0]
    planned = {name: B.planned_evaluations(COMPARED[name], table) for _, name, _, table in planned_tables(cfg, opts)}
    assert planned == {"llpf": llpf_cost if cfg.m2m.phases[0].until_loss <= 0 else None, "autoneb": llpf_cost,
                       "bezier": llpf_cost}


def neb_cost(neb):
    """Band steps times interior pivots, if every cycle inserts two (3, 5, ... 29)."""
    return sum(c.steps * min(3 + 2 * j, 29) for j, c in enumerate(neb.cycles))
