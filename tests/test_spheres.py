"""Paths across variance spheres: VarianceCorrection onto the start's sphere (the paper), the destination's, or one
that moves between them, with the floor, the verdicts, the start-of-path warning and the figure following it."""
import io
import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import llpf
from llpf.cli import main
from llpf.config import PathConfig, Phase, config_from_dict
from llpf.data import Split
from llpf.driver import Driver
from llpf.errors import ConfigError, PrerequisiteWarning
from llpf.geometry import Layout, Segments, distance_floor, sphere_variance
from llpf.methods import M2M
from llpf.observer import Observer
from llpf.runner import load_model, warn_if_variances_differ
from llpf.schedule import resolve
from llpf.store import RunDir
from tiny import LENET5_ON_DIGITS

torch.set_num_threads(1)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(6, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(F.relu(self.hidden(x)))


@pytest.fixture(scope="module")
def problem():
    """Two float64 MLPs on different variance spheres: the second trained at a 5x larger rate with weight decay."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(192, 6, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    models = []
    for seed, lr, wd in ((0, 0.05, 0.0), (1, 0.25, 1e-3)):
        torch.manual_seed(seed)
        m = MLP().double()
        opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
        for _ in range(80):
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
        models.append(m)
    return Split(x, y), models


def variances(model) -> dict[str, float]:
    return {n: float(p.detach().var(unbiased=False)) for n, p in model.named_parameters()}


def test_sphere_variance_moves_the_radius_linearly():
    v0, vd = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([4.0, 1.0, 0.25])
    assert sphere_variance(v0, vd, 0.0) is v0 and sphere_variance(v0, vd, 1.0) is vd
    torch.testing.assert_close(sphere_variance(v0, vd, 0.5), torch.tensor([2.25, 2.25, 0.25]))  # std 1.5 = (1+2)/2
    torch.testing.assert_close(sphere_variance(v0, vd, 0.25).sqrt(), 0.75 * v0.sqrt() + 0.25 * vd.sqrt())


def test_distance_floor_shrinks_with_the_sphere_a_path_ends_on():
    seg = Segments(Layout(("a", "b"), ((4,), (3,))))
    start = torch.tensor([1.0, -1.0, 2.0, 0.0, 3.0, 1.0, 2.0])
    dest = torch.tensor([0.0, 2.0, -2.0, 1.0, 1.0, 1.5, 1.0])
    full = distance_floor(start, dest, seg)
    want = seg.n.sqrt() * (seg.variance(start).sqrt() - seg.variance(dest).sqrt()).abs()
    torch.testing.assert_close(full, want)
    torch.testing.assert_close(distance_floor(start, dest, seg, 0.25), 0.75 * want)
    assert distance_floor(start, dest, seg, 1.0).abs().max() == 0


def test_each_phase_resolves_its_sphere_and_moving_continues_from_the_previous_phase():
    names = ("w",)
    phases = [Phase(iterations=4, sphere="start"), Phase(iterations=4, sphere="moving"),
              Phase(iterations=2, sphere="dest"), Phase(iterations=2, sphere="moving"), Phase(iterations=2)]
    schedule = resolve(phases, names, sphere="start")
    fractions = [rp.sphere_fraction(i) for rp in schedule for i in range(rp.first, rp.last + 1)]
    assert fractions == [0, 0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1, 1, 1, 0, 0]
    # a phase that names no sphere takes the table's; "moving" as the first phase starts at the start's sphere
    schedule = resolve([Phase(iterations=5), Phase(iterations=1, sphere="start")], names, sphere="moving")
    assert [rp.sphere for rp in schedule] == ["moving", "start"]
    assert [schedule[0].sphere_fraction(i) for i in range(1, 6)] == [0.2, 0.4, 0.6, 0.8, 1.0]


def on_sphere(model, v0: dict, vd: dict, f: float) -> None:
    """Every layer of ``model`` lies on the sphere ``f`` of the way from ``v0``'s to ``vd``'s."""
    for n, v in variances(model).items():
        want = ((1 - f) * math.sqrt(v0[n]) + f * math.sqrt(vd[n])) ** 2
        assert v == pytest.approx(want, rel=1e-9), (n, f)


@pytest.mark.parametrize("sphere", ["start", "dest", "moving"])
def test_variance_correction_projects_onto_the_chosen_sphere_every_iteration(problem, sphere):
    """With lr 0, each point is VarianceCorrection(Move(previous)): its layers sit exactly on S_var of the setting."""
    split, (a, b) = problem
    cfg = PathConfig(phases=[Phase(iterations=4, step_a=0.1, step_f=0.0, rounds=1)], lr=0.0, sphere=sphere,
                     batch_size=32, eval_every=1, save_every=1, checkpoint_every=100, loss_threshold=10.0)
    res = llpf.m2m(a, b, split, cfg, device="cpu", keep_points=True)
    v0, vd = variances(a), variances(b)
    model = MLP().double()
    for it, state in res.points:
        model.load_state_dict(state)
        f = {"start": 0.0, "dest": 1.0 if it else 0.0, "moving": it / 4}[sphere]
        on_sphere(model, v0, vd, f)
    assert res.points.iterations == [0, 1, 2, 3, 4]


def test_a_path_on_the_destinations_sphere_arrives_where_the_start_sphere_stops_at_its_floor(problem):
    """The floor follows the sphere the path ends on: 0 on the destination's, and the path gets there."""
    split, (a, b) = problem
    base = dict(phases=[Phase(iterations=12, step_a=0.5, step_f=0.0, rounds=2)], lr=0.003, batch_size=32,
                eval_every=4, save_every=12, checkpoint_every=100, loss_threshold=10.0)
    dest = llpf.m2m(a, b, split, PathConfig(**base, sphere="dest"), device="cpu").summary
    start = llpf.m2m(a, b, split, PathConfig(**base), device="cpu").summary
    moving = llpf.m2m(a, b, split, PathConfig(**base, sphere="moving"), device="cpu").summary
    assert dest["sphere"] == {"phases": ["dest"], "ends_on": "dest"}
    assert moving["sphere"] == {"phases": ["moving"], "ends_on": "dest"}
    assert start["sphere"] == {"phases": ["start"], "ends_on": "start"}
    for s in (dest, moving):
        assert set(s["distance_floor"].values()) == {0.0}
        assert s["final_relative_distance_max"] <= 0.01 and s["floor_reached"] and s["valid"]
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    for n, floor in start["distance_floor"].items():  # the floor of paper Eq. 4, from the weights
        sa, sb = pa[n].detach().var(unbiased=False).sqrt(), pb[n].detach().var(unbiased=False).sqrt()
        assert floor == pytest.approx(math.sqrt(pa[n].numel()) * float(abs(sa - sb)), rel=1e-9)
        assert start["final_distance"][n] >= floor * (1 - 1e-9)
    assert start["final_relative_distance_max"] > 10 * dest["final_relative_distance_max"]


class StopAt(Observer):
    """Keeps the checkpoint of ``iteration`` as a run directory would (through torch.save) and stops there."""

    def __init__(self, iteration, box):
        self.iteration, self.state, self.box = iteration, None, box

    def on_checkpoint(self, iteration, state):
        if iteration == self.iteration:
            buf = io.BytesIO()
            torch.save(state, buf)
            buf.seek(0)
            self.state = torch.load(buf, weights_only=True)
            self.box[0].stop_requested = True


def test_a_path_whose_sphere_moves_resumes_to_the_same_end(problem):
    """The sphere is a function of the iteration: a run stopped inside a moving phase continues on it."""
    split, (a, b) = problem
    cfg = PathConfig(phases=[Phase(iterations=6, step_a=0.1, rounds=2), Phase(iterations=4, step_a=0.2, rounds=1)],
                     sphere="moving", batch_size=32, lr=0.01, eval_every=2, save_every=10, checkpoint_every=3)
    sets = {"train": split}
    (whole,) = Driver(M2M(a, cfg, split, dest=b, device="cpu"), eval_sets=sets).run()
    box = [None]
    stop = StopAt(3, box)
    box[0] = Driver(M2M(a, cfg, split, dest=b, device="cpu"), eval_sets=sets, observers=[stop])
    box[0].run()
    driver = Driver(M2M(a, cfg, split, dest=b, device="cpu"), eval_sets=sets)
    driver.load_state_dict(stop.state)
    (resumed,) = driver.run()
    assert resumed.rows == [r for r in whole.rows if r["iteration"] > 3]
    assert resumed.summary == whole.summary
    assert [r["sphere_fraction"] for r in resumed.rows if "sphere_fraction" in r] == [4 / 6, 1.0, 1.0, 1.0]


def test_m2o_has_no_destination_sphere(problem):
    split, (a, _) = problem
    with pytest.raises(ConfigError, match="sphere is an \\[m2m\\] setting"):
        config_from_dict({"m2o": {"phases": [{"iterations": 2, "sphere": "dest"}]}})
    with pytest.raises(ConfigError, match="has no destination"):
        llpf.m2o(a, split, {"sphere": "moving", "phases": [{"iterations": 2, "step_a": 0.1}]}, device="cpu")


@pytest.mark.parametrize("sphere, says", [("start", "cannot get closer"), ("dest", "at once"), ("moving", None)])
def test_the_start_of_path_warning_follows_the_sphere(problem, sphere, says):
    split, (a, b) = problem
    cfg = PathConfig(phases=[Phase(iterations=1)], sphere=sphere)
    driver = Driver(M2M(a, cfg, split, dest=b, device="cpu"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_variances_differ(driver)
    shown = [str(w.message) for w in caught if issubclass(w.category, PrerequisiteWarning)]
    if says is None:
        assert shown == []
    else:
        assert len(shown) == 1 and says in shown[0] and "differ in variance" in shown[0]


MOVING = "name = \"moving\"\n" + LENET5_ON_DIGITS + """[train]
epochs = 1
[train.dest]
lr = 0.05
weight_decay = 5e-4
[m2m]
lr = 0.01
batch_size = 32
eval_every = 2
save_every = 4
checkpoint_every = 4
loss_threshold = 10.0
[[m2m.phases]]
iterations = 4
step_a = 0.1
rounds = 1
sphere = "moving"
"""


def test_a_moving_sphere_is_recorded_and_drawn_per_layer(tmp_path, capsys, monkeypatch):
    """metrics.csv holds each layer's S_var over its start variance; the path figure draws it, one curve per layer."""
    from llpf import plots

    (tmp_path / "c.toml").write_text(MOVING)
    for seed, recipe in ((0, "start"), (1, "dest")):
        assert main(["train", str(tmp_path / "c.toml"), "--seed", str(seed), "--recipe", recipe, "--out",
                     str(tmp_path / f"e{seed}.safetensors"), "--quiet"]) == 0
    run = tmp_path / "run"
    assert main(["m2m", str(tmp_path / "c.toml"), "--start", str(tmp_path / "e0.safetensors"), "--dest",
                 str(tmp_path / "e1.safetensors"), "--out", str(run), "--quiet"]) == 0
    assert "ends on the destination's sphere" in capsys.readouterr().out
    rows = [r for r in RunDir(run).metrics() if r.get("sphere_fraction") is not None]
    assert [(r["iteration"], r["sphere_fraction"]) for r in rows] == [(0, 0.0), (2, 0.5), (4, 1.0)]
    a, b = (load_model(llpf.load_config(tmp_path / "c.toml"), tmp_path / f"e{s}.safetensors")
            for s in (0, 1))
    va, vb = variances(a), variances(b)
    for r in rows:
        f = r["sphere_fraction"]
        for n in va:
            want = ((1 - f) * math.sqrt(va[n]) + f * math.sqrt(vb[n])) ** 2 / va[n]
            assert r[f"target_var_ratio/{n}"] == pytest.approx(want, rel=1e-5)
    assert (run / "figures" / "path.png").is_file()
    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, out: drawn.append(fig))
    plots.path_figure(run)
    panel = drawn[0].axes[3]
    assert panel.get_ylabel() == "target variance / start variance"
    curves = {line.get_label(): list(line.get_ydata()) for line in panel.get_lines()}
    assert curves == {n: [r[f"target_var_ratio/{n}"] for r in rows] for n in va}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["endpoint_recipes"]["dest"]["lr"] == 0.05 and summary["endpoint_recipes"]["start"]["lr"] == 0.01


ACCEPTANCE = """name = "two-recipes"
[model]
name = "lenet5"
[data]
name = "digits"
[train]
epochs = 20
batch_size = 64
lr = 0.01
momentum = 0.9
[train.dest]
lr = 0.05
weight_decay = 5e-4
[m2m]
lr = 0.01
batch_size = 64
eval_every = 20
save_every = 60
checkpoint_every = 60
sphere = "SPHERE"
[[m2m.phases]]
iterations = 100
step_a = 0.03
rounds = 5
[[m2m.phases]]
iterations = 20
step_a = 0.3
rounds = 1
"""


@pytest.mark.slow
def test_demo_size_endpoints_from_two_recipes_meet_on_the_destinations_sphere_and_not_on_the_start(tmp_path):
    """The demo's LeNet5 and digits, endpoints from [train] and [train.dest]: sphere = "dest" ends at the destination
    (every final distance <= 0.01 x its initial one); the default stops at its floor, farther away."""
    summaries = {}
    for sphere in ("dest", "start"):
        (tmp_path / f"{sphere}.toml").write_text(ACCEPTANCE.replace("SPHERE", sphere))
    for seed, recipe in ((0, "start"), (1, "dest")):
        assert main(["train", str(tmp_path / "dest.toml"), "--seed", str(seed), "--recipe", recipe, "--out",
                     str(tmp_path / f"{recipe}.safetensors"), "--quiet"]) == 0
    for sphere in ("dest", "start"):
        run = tmp_path / f"run-{sphere}"
        main(["m2m", str(tmp_path / f"{sphere}.toml"), "--start", str(tmp_path / "start.safetensors"), "--dest",
              str(tmp_path / "dest.safetensors"), "--out", str(run), "--quiet"])
        summaries[sphere] = json.loads((run / "summary.json").read_text())
    dest, start = summaries["dest"], summaries["start"]
    assert dest["status"] == start["status"] == "complete"
    assert dest["final_relative_distance_max"] <= 0.01 and dest["floor_reached"]
    assert set(dest["distance_floor"].values()) == {0.0}
    assert start["floor_reached"] and min(start["distance_floor"].values()) > 0  # at its floor, which is not 0
    assert start["final_relative_distance_max"] > 10 * dest["final_relative_distance_max"]
    assert dest["endpoint_recipes"]["dest"]["weight_decay"] == 5e-4
