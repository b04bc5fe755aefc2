"""M2M and M2O through the Python API, on a model these tests define themselves."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import llpf
from llpf.config import PathConfig, Phase
from llpf.data import Split
from llpf.geometry import Segments
from llpf.driver import Driver
from llpf.flat import layout_of
from llpf.methods import M2O


class MLP(nn.Module):
    """Not a zoo model: a user's own network, with a normalisation layer."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(64, 48)
        self.norm = nn.BatchNorm1d(48)
        self.out = nn.Linear(48, 10)

    def forward(self, x):
        return self.out(F.relu(self.norm(self.hidden(x.flatten(1)))))


@pytest.fixture(scope="module")
def flat_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    return Split(x[:1400], y[:1400]), Split(x[1400:], y[1400:])


def train_mlp(split, seed):
    torch.manual_seed(seed)
    m = MLP()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    loader = DataLoader(TensorDataset(split.x, split.y), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    for _ in range(25):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
    return m.eval()


@pytest.fixture(scope="module")
def endpoints(flat_digits):
    train, _ = flat_digits
    return train_mlp(train, 0), train_mlp(train, 1)


def variances(model):
    lay = layout_of(model)
    seg = Segments(lay)
    flat = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])
    return seg.variance(flat)


def test_m2m_on_a_user_model_with_a_dataloader(flat_digits, endpoints):
    train, test = flat_digits
    a, b = endpoints
    loader = DataLoader(TensorDataset(train.x, train.y), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    # 0.98^300 = 0.2% of each layer's distance is left: arrived within arrival_tolerance (1%).
    cfg = PathConfig(phases=[Phase(iterations=300, step_a=0.02, step_f=1e-3, rounds=5)], lr=0.01,
                     eval_every=20, save_every=20, checkpoint_every=1000, loss_threshold=0.1)
    path = llpf.m2m(a, b, loader, cfg, test_data=test, eval_sets={"train": train}, device="cpu", keep_points=True)
    s = path.summary
    assert s["status"] == "complete" and s["iterations"] == 300
    train_losses = [v for _, v in path.column("train_loss")]
    assert len(train_losses) == 16  # iteration 0 and every 20
    assert max(train_losses) <= 0.1, train_losses  # the path stays below its loss threshold
    assert s["floor_reached"] and s["valid"]
    assert s["final_relative_distance_max"] < 0.5
    # Every saved point lies on the start's variance spheres (VarianceCorrection after Train_r).
    v0 = variances(a)
    for it, state in path.points:
        m = MLP()
        m.load_state_dict(state)
        assert torch.allclose(variances(m), v0, rtol=1e-4), it
    # The inputs are not modified.
    assert torch.allclose(variances(a), v0)
    # Final distances can't beat the floor between the two variance spheres.
    for k in s["final_distance"]:
        assert s["final_distance"][k] >= s["distance_floor"][k] - 1e-4


def test_m2m_rejects_different_architectures(endpoints, flat_digits):
    a, _ = endpoints
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(llpf.errors.ModelMismatchError):
        llpf.m2m(a, other, flat_digits[0], {"phases": [{"iterations": 1}]})


def test_m2o_moves_toward_origin_and_leaves_normalisation_alone(flat_digits, endpoints):
    """With lr = 0 Train_r changes nothing, so each moved layer shrinks by exactly (1 - step_a) per iteration."""
    train, test = flat_digits
    a, _ = endpoints
    cfg = PathConfig(phases=[Phase(iterations=10, step_a=0.05, step_f=0.0, rounds=1)], lr=0.0,
                     eval_every=5, save_every=5, checkpoint_every=1000)
    path = llpf.m2o(a, train, cfg, test_data=test, device="cpu")
    start, end = dict(a.named_parameters()), dict(path.model.named_parameters())
    for n in ("norm.weight", "norm.bias"):
        assert torch.equal(start[n], end[n])
    for n in ("hidden.weight", "hidden.bias", "out.weight", "out.bias"):
        assert torch.allclose(end[n], start[n] * 0.95 ** 10, atol=1e-6)
    assert path.summary["final_variance_ratio"] == pytest.approx(0.95 ** 20, rel=1e-4)
    assert set(k for k in path.rows[0] if k.startswith("var_ratio/")) == {
        "var_ratio/hidden.weight", "var_ratio/hidden.bias", "var_ratio/out.weight", "var_ratio/out.bias"}


def test_angle_conformal_rates_in_the_engine(flat_digits, endpoints):
    train, test = flat_digits
    a, _ = endpoints
    cfg = PathConfig(phases=[Phase(iterations=1, step_a=0.1, step_f=0.0, rounds=1)], lr=1e-3)
    method = M2O(a, cfg, train, device="cpu")
    Driver(method, eval_sets={"test": test}).run()
    expected = [1e-3 if n.startswith("norm.") else 1e-3 * 0.9 ** 2 for n in method.names]  # Var(N) = 0.81 v
    assert torch.allclose(method.last_lr, torch.tensor(expected), rtol=1e-5)


def test_m2o_stops_at_target_variance_ratio_and_keeps_best(flat_digits, endpoints):
    train, test = flat_digits
    a, _ = endpoints
    cfg = PathConfig(phases=[Phase(iterations=200, step_a=0.02, step_f=0.0, until_loss=0.05, max_rounds=10)],
                     lr=0.01, eval_every=5, save_every=50, target_variance_ratio=0.8)
    path = llpf.m2o(a, train, cfg, test_data=test, device="cpu")
    s = path.summary
    assert s["stopped_at_target"] and s["iterations"] < 200
    assert s["final_variance_ratio"] <= 0.8
    assert s["best_test_loss"] < s["start_test_loss"]  # the walk toward O found a better point
    best_rows = [r for r in path.rows if r["iteration"] == s["best_iteration"]]
    assert best_rows[0]["test_loss"] == pytest.approx(s["best_test_loss"])
    assert llpf.train.evaluate(path.best_model, [(test.x, test.y)])["loss"] == pytest.approx(s["best_test_loss"], rel=1e-5)


def test_nan_loss_stops_the_run_and_keeps_rows(flat_digits, endpoints):
    train, test = flat_digits
    a, b = endpoints
    calls = {"n": 0}

    def flaky(out, y):  # NaN from the 29th training step on (evaluations run without grad)
        calls["n"] += torch.is_grad_enabled()
        loss = F.cross_entropy(out, y)
        return loss * math.nan if calls["n"] > 28 else loss

    cfg = PathConfig(phases=[Phase(iterations=50, step_a=0.01, rounds=2)], eval_every=100, save_every=5)
    path = llpf.m2m(a, b, train, cfg, loss_fn=flaky, device="cpu")
    s = path.summary
    # The 29th training step is the first of iteration 15 (r = 2).
    assert s["status"] == "failed" and "iteration 15" in s["reason"] and not s["valid"]
    assert [r["iteration"] for r in path.rows if "batch_loss" in r] == list(range(1, 15))
    assert all(math.isfinite(r["batch_loss"]) for r in path.rows if "batch_loss" in r)


def test_same_seed_same_path(flat_digits, endpoints):
    train, _ = flat_digits
    a, b = endpoints
    cfg = PathConfig(phases=[Phase(iterations=15, step_a=0.02, rounds=3)], seed=7)
    p1 = llpf.m2m(a, b, train, cfg, device="cpu", keep_points=False)
    p2 = llpf.m2m(a, b, train, cfg, device="cpu", keep_points=False)
    for (n, x), (_, y) in zip(p1.model.state_dict().items(), p2.model.state_dict().items()):
        assert torch.equal(x, y), n
    assert [r.get("batch_loss") for r in p1.rows] == [r.get("batch_loss") for r in p2.rows]
