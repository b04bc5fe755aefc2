"""One M2M and one M2O iteration on tiny hand-set models, against the paper's rules written out in plain arithmetic.

Nothing here calls llpf's geometry or training code to get the expected values: Move, VarianceCorrection,
AngleConformal and the SGD step are spelt out below, line by line from Algorithms 1 and 2, on tensors in
float64, and the library's result (through the public API, ``llpf.m2m`` / ``llpf.m2o``) must match them.
"""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

import llpf
from llpf.config import PathConfig, Phase

X = torch.tensor([[1.0, -2.0], [0.5, 1.5], [-1.0, 0.25]], dtype=torch.float64)
Y = torch.tensor([0, 1, 1])
BATCH = [(X, Y)]  # Train_r draws this one batch again and again


def two_linear(w0, b0, w1, b1) -> nn.Sequential:
    """``x -> W1 (W0 x + b0) + b1``: parameters 0.weight, 0.bias, 1.weight, 1.bias."""
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)).double()
    with torch.no_grad():
        for p, v in zip(m.parameters(), (w0, b0, w1, b1)):
            p.copy_(torch.tensor(v, dtype=torch.float64))
    return m


START = two_linear([[0.9, -0.4], [0.3, 1.2]], [0.1, -0.3], [[1.1, 0.2], [-0.7, 0.5]], [0.05, 0.4])
DEST = two_linear([[-0.6, 0.8], [1.4, -0.2]], [0.3, -0.1], [[0.4, -0.9], [0.6, 1.3]], [-0.2, 0.1])


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def pvar(t: torch.Tensor) -> torch.Tensor:
    """Population variance, Var(W) of Algorithm 1 line 21: the mean squared deviation from the mean."""
    return ((t - t.mean()) ** 2).mean()


def move(p: torch.Tensor, d: torch.Tensor, step_a: float, step_f: float) -> torch.Tensor:
    """Move (Algorithm 1 line 5; toward the origin when ``d`` is zero): never past ``d``."""
    delta = d - p
    dist = delta.norm()
    step = step_a * dist + step_f
    return p + min(step, dist) / dist * delta


def variance_correction(w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """VarianceCorrection (Algorithm 1 lines 19-24): back onto the sphere Var = v, keeping the mean."""
    mean = w.mean()
    return mean + torch.sqrt(v / pvar(w)) * (w - mean)


def cross_entropy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of -log softmax(z)[y], written out."""
    log_softmax = z - torch.log(torch.exp(z).sum(1, keepdim=True))
    return -log_softmax[torch.arange(len(y)), y].mean()


def two_linear_loss_and_grads(p: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    """Cross-entropy of the two-layer linear model on BATCH and its gradient, by the chain rule by hand."""
    h = X @ p["0.weight"].T + p["0.bias"]
    z = h @ p["1.weight"].T + p["1.bias"]
    loss = cross_entropy(z, Y)
    probs = torch.exp(z) / torch.exp(z).sum(1, keepdim=True)
    dz = (probs - torch.eye(2, dtype=torch.float64)[Y]) / len(Y)  # d loss / d logits
    dh = dz @ p["1.weight"]
    return float(loss), {"0.weight": dh.T @ X, "0.bias": dh.sum(0), "1.weight": dz.T @ h, "1.bias": dz.sum(0)}


def one_phase(lr: float, **phase) -> PathConfig:
    """One iteration (T = 1) of plain SGD at ``lr``, evaluated and saved at every iteration."""
    return PathConfig(phases=[Phase(iterations=1, **phase)], lr=lr, eval_every=1, save_every=1, checkpoint_every=1)


def assert_params(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = params(model)
    assert list(got) == list(expected)
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-12, atol=1e-12, msg=n)


def hand_m2m(moved: list[str], step_a: float, step_f: float, lr: float, until_loss: float = 0.0,
             min_rounds: int = 1, max_rounds: int = 1) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Algorithm 1 lines 5-8, once: the new point and the batch loss of each step Train_r took."""
    s, d = params(START), params(DEST)
    v = {n: pvar(s[n]) for n in s}  # S_var: the start's layer variances, taken once
    p = {n: move(s[n], d[n], step_a, step_f) if n in moved else s[n] for n in s}  # M1 = Move(P_0, D)
    p = {n: variance_correction(p[n], v[n]) for n in p}  # M2 = VarianceCorrection(M1): every layer
    losses = []
    while True:  # M3 = Train_r(M2): plain SGD on the one batch, r = 1 or "until loss < L"
        loss, g = two_linear_loss_and_grads(p)
        p = {n: p[n] - lr * g[n] for n in p}
        losses.append(loss)
        r = len(losses)
        if until_loss <= 0 or r == max_rounds or (r >= min_rounds and loss < until_loss):
            break
    p = {n: variance_correction(p[n], v[n]) for n in p}  # P_1 = VarianceCorrection(M3): every layer
    return p, losses


def test_one_m2m_iteration_by_hand():
    """Move only layer 0 (its bias clamps at D), correct every layer, one SGD step, correct every layer."""
    step_a, step_f, lr = 0.3, 0.5, 0.1
    s, d = params(START), params(DEST)
    # The setting exercises the clamp: 0.weight is far (step < dist), 0.bias is near (step > dist, lands on D).
    for n, far in (("0.weight", True), ("0.bias", False)):
        dist = (d[n] - s[n]).norm()
        assert (step_a * dist + step_f < dist) == far
    expected, (loss,) = hand_m2m(["0.weight", "0.bias"], step_a, step_f, lr)
    assert not torch.allclose(expected["1.weight"], s["1.weight"])  # layer 1 was trained although not moved

    result = llpf.m2m(START, DEST, BATCH, one_phase(lr, layers=["0.*"], step_a=step_a, step_f=step_f, rounds=1),
                      device="cpu")
    assert_params(result.model, expected)
    row = [r for r in result.rows if r.get("batch_loss") is not None][-1]
    assert row["iteration"] == 1 and row["rounds"] == 1 and row["batch_loss"] == pytest.approx(loss, rel=1e-12)
    for n, w in params(result.model).items():  # every layer back on the start's sphere, moved or not
        assert float(pvar(w)) == pytest.approx(float(pvar(s[n])), rel=1e-12), n
    assert all(torch.equal(a, b) for a, b in zip(params(START).values(), s.values()))  # start not modified


@pytest.mark.parametrize("min_rounds, stop", [(1, 3), (5, 5)])
def test_train_r_stops_at_its_loss_threshold(min_rounds, stop):
    """Train_r "until loss < L" (Table 1): stops after the first step whose batch loss is below L, not before
    ``min_rounds``, well short of the fixed r (7) and of ``max_rounds``."""
    lr, moved = 0.5, ["0.weight", "0.bias"]
    _, losses = hand_m2m(moved, 0.3, 0.5, lr, until_loss=1e-300, max_rounds=12)  # a probe: 12 steps' losses
    assert len(losses) == 12 and all(a > b for a, b in zip(losses, losses[1:]))  # the loss falls step by step
    threshold = (losses[1] + losses[2]) / 2  # below it from the third step on
    expected, taken = hand_m2m(moved, 0.3, 0.5, lr, until_loss=threshold, min_rounds=min_rounds, max_rounds=12)
    assert len(taken) == stop

    cfg = one_phase(lr, layers=["0.*"], step_a=0.3, step_f=0.5, rounds=7, until_loss=threshold,
                    min_rounds=min_rounds, max_rounds=12)
    result = llpf.m2m(START, DEST, BATCH, cfg, device="cpu")
    row = [r for r in result.rows if r.get("batch_loss") is not None][-1]
    assert row["rounds"] == stop and row["batch_loss"] == pytest.approx(losses[stop - 1], rel=1e-12)
    assert_params(result.model, expected)


# ---------------------------------------------------------------- M2O (Algorithm 2)


def with_layer_norm() -> nn.Sequential:
    """Linear, LayerNorm, Linear: parameters 0.*, 1.* (normalisation: never moved by M2O), 2.*."""
    m = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3), nn.Linear(3, 2)).double()
    values = [[[0.9, -0.4], [0.3, 1.2], [-0.5, 0.7]], [0.1, -0.3, 0.2], [1.5, 0.5, 1.1], [0.2, -0.1, 0.05],
              [[1.1, 0.2, -0.6], [-0.7, 0.5, 0.9]], [0.05, 0.4]]
    with torch.no_grad():
        for p, v in zip(m.parameters(), values):
            p.copy_(torch.tensor(v, dtype=torch.float64))
    return m


def test_one_m2o_iteration_by_hand():
    """Move every non-normalisation layer toward O, AngleConformal rates lr Var(N_l)/v_l, one SGD step."""
    step_a, step_f, lr = 0.1, 0.05, 0.2
    start = with_layer_norm()
    s = params(start)
    norm = {"1.weight", "1.bias"}
    v = {n: pvar(s[n]) for n in s}  # v: the start's layer variances
    N = {k: s[k] if k in norm else move(s[k], torch.zeros_like(s[k]), step_a, step_f) for k in s}  # N = Move(P_0, O)
    rates = {k: lr if k in norm else lr * pvar(N[k]) / v[k] for k in s}  # x = AngleConformal(N, v)
    for k in s:
        if k not in norm:  # the rates are really below lr: Var(N_l) < v_l
            assert float(rates[k]) < 0.95 * lr
    # Train_r(N, x), one step: the gradient at N taken by autograd on a fresh copy of the model
    fresh = copy.deepcopy(start)
    with torch.no_grad():
        for k, p in fresh.named_parameters():
            p.copy_(N[k])
    loss = cross_entropy(fresh(X), Y)
    loss.backward()
    loss = float(loss.detach())
    grads = {k: p.grad for k, p in fresh.named_parameters()}
    expected = {k: N[k] - rates[k] * grads[k] for k in s}  # P_1

    cfg = one_phase(lr, layers=["*"], step_a=step_a, step_f=step_f, rounds=1)
    result = llpf.m2o(start, BATCH, cfg, test_data=BATCH, device="cpu")
    assert_params(result.model, expected)
    row = [r for r in result.rows if r.get("batch_loss") is not None][-1]
    assert row["rounds"] == 1 and row["batch_loss"] == pytest.approx(loss, rel=1e-12)


X2 = torch.tensor([[0.3, 0.8], [-1.2, -0.4], [2.0, 1.0]], dtype=torch.float64)
Y2 = torch.tensor([1, 0, 0])


def with_batch_norm() -> nn.Sequential:
    """Linear, BatchNorm1d, Linear: parameters 0.*, 1.* (normalisation: never moved by M2O), 2.*."""
    m = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).double()
    values = [[[0.9, -0.4], [0.3, 1.2], [-0.5, 0.7]], [0.1, -0.3, 0.2], [1.5, 0.5, 1.1], [0.2, -0.1, 0.05],
              [[1.1, 0.2, -0.6], [-0.7, 0.5, 0.9]], [0.05, 0.4]]
    with torch.no_grad():
        for p, v in zip(m.parameters(), values):
            p.copy_(torch.tensor(v, dtype=torch.float64))
    return m


def test_three_m2o_iterations_on_two_batches_with_batch_norm_by_hand():
    """Algorithm 2 for three iterations: AngleConformal divides by the START's variances v (line 4, taken once),
    not by the variances the path has reached; Train_r draws from one stream of two batches that continues
    across iterations (B1, B2, B1); the BatchNorm layer is neither moved nor rescaled, trains at lr, and its
    running statistics follow the batches drawn."""
    step_a, step_f, lr, T = 0.1, 0.05, 0.2, 3
    start = with_batch_norm()
    s = params(start)
    norm = {"1.weight", "1.bias"}
    v = {n: pvar(s[n]) for n in s}  # v: the start's layer variances, once
    batches = [(X, Y), (X2, Y2), (X, Y)]  # what one continuing stream over [B1, B2] gives three 1-step iterations
    p, losses, ratio = dict(s), [], []  # ratio: min over moved layers of Var(P_i) / v
    mean, var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)  # BatchNorm's buffers
    for x, y in batches:
        N = {k: p[k] if k in norm else move(p[k], torch.zeros_like(p[k]), step_a, step_f) for k in p}  # Move(P_i, O)
        rates = {k: lr if k in norm else lr * pvar(N[k]) / v[k] for k in p}  # AngleConformal(N, v)
        ratio.append(min(float(pvar(p[k]) / v[k]) for k in p if k not in norm))
        loss, g = loss_and_grads_at(start, N, x, y)  # Train_r(N, x), one step on the stream's next batch
        p = {k: N[k] - rates[k] * g[k] for k in p}
        losses.append(loss)
        h = x @ N["0.weight"].T + N["0.bias"]  # BatchNorm's input; running stats: momentum 0.1, unbiased variance
        mean, var = 0.9 * mean + 0.1 * h.mean(0), 0.9 * var + 0.1 * h.var(0, unbiased=True)
    # the rule is visible: from the second iteration on, Var(P_i) is no longer v, so the current variance would
    # give rates more than 5% off for some layer
    assert ratio[0] == 1 and max(ratio[1:]) < 0.95

    cfg = PathConfig(phases=[Phase(iterations=T, layers=["*"], step_a=step_a, step_f=step_f, rounds=1)], lr=lr,
                     eval_every=1, save_every=1, checkpoint_every=1)
    result = llpf.m2o(start, [(X, Y), (X2, Y2)], cfg, test_data=[(X, Y)], device="cpu")
    assert_params(result.model, p)
    rows = [r for r in result.rows if r["iteration"] > 0]
    assert [r["rounds"] for r in rows] == [1] * T
    assert [r["batch_loss"] for r in rows] == pytest.approx(losses, rel=1e-12)
    bn = result.model[1]
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-12, atol=1e-12)
    assert int(bn.num_batches_tracked) == T


# ---------------------------------------------------------------- the baselines of M2O (llpf m2o-baselines)


def test_fine_tune_is_sgd_with_weight_decay_and_no_move():
    """``finetune``: Train_r alone, r steps of p <- p - lr (grad + wd p) at one rate for every layer."""
    lr, wd = 0.1, 0.3
    p = params(START)
    for _ in range(2):
        _, g = two_linear_loss_and_grads(p)
        p = {n: p[n] - lr * (g[n] + wd * p[n]) for n in p}
    plain = params(START)
    for _ in range(2):
        _, g = two_linear_loss_and_grads(plain)
        plain = {n: plain[n] - lr * g[n] for n in plain}
    assert not torch.allclose(p["0.weight"], plain["0.weight"])  # the decay matters at this setting

    cfg = dataclasses.replace(one_phase(lr, layers=["*"], step_a=0.5, step_f=0.5, rounds=2),  # Move's steps: not used
                              weight_decay=wd)
    result = llpf.find_path("finetune", START, BATCH, cfg, test_data=BATCH, device="cpu")
    assert_params(result.model, p)
    assert [r["rounds"] for r in result.rows] == [0, 2]


def loss_and_grads_at(template: nn.Module, p: dict[str, torch.Tensor], x=X, y=Y):
    """The hand-written cross-entropy of ``template``'s architecture at parameters ``p`` on one batch, and its
    gradient by autograd (in training mode, as Train_r takes it: BatchNorm normalises with the batch's statistics)."""
    fresh = copy.deepcopy(template).train()
    with torch.no_grad():
        for k, q in fresh.named_parameters():
            q.copy_(p[k])
    loss = cross_entropy(fresh(x), y)
    loss.backward()
    return float(loss.detach()), {k: q.grad for k, q in fresh.named_parameters()}


@pytest.mark.parametrize("decay_on", ["moved", "all"])
def test_fine_tune_decays_only_the_layers_m2o_moves_unless_asked_for_all(decay_on):
    """m2o-baselines' fine-tuning: ``weight_decay_on = "moved"`` decays the layers M2O moves and not the
    normalisation layers, which M2O never moves (and which the matched decay was not sized for)."""
    lr, wd = 0.1, 0.3
    start = with_layer_norm()
    spared = {"1.weight", "1.bias"} if decay_on == "moved" else set()
    p = params(start)
    for _ in range(2):
        _, g = loss_and_grads_at(start, p)
        p = {n: p[n] - lr * (g[n] + (0.0 if n in spared else wd) * p[n]) for n in p}
    cfg = dataclasses.replace(one_phase(lr, layers=["*"], step_a=0.5, step_f=0.5, rounds=2), weight_decay=wd,
                              weight_decay_on=decay_on)
    result = llpf.find_path("finetune", start, BATCH, cfg, test_data=BATCH, device="cpu")
    assert_params(result.model, p)


def test_move_only_scales_moved_layers_by_one_minus_step_a_per_iteration():
    """``move-only``: T Moves toward O and no gradient step; with step_f = 0 a moved layer is (1 - step_a)^T P0."""
    step_a, T = 0.1, 3
    start = with_layer_norm()
    s = params(start)
    cfg = PathConfig(phases=[Phase(iterations=T, layers=["*"], step_a=step_a, step_f=0.0, rounds=5)], lr=0.2,
                     eval_every=1, save_every=1, checkpoint_every=1)
    result = llpf.find_path("move-only", start, BATCH, cfg, test_data=BATCH, device="cpu")
    norm = {"1.weight", "1.bias"}  # LayerNorm: never moved, never trained
    assert_params(result.model, {n: s[n] if n in norm else (1 - step_a) ** T * s[n] for n in s})
    assert [r["rounds"] for r in result.rows] == [0] * (T + 1)
    with torch.no_grad():
        loss = float(cross_entropy(result.model(X), Y))  # the batch loss at the last point, by the hand-written loss
    assert result.rows[-1]["batch_loss"] == pytest.approx(loss, rel=1e-12)
