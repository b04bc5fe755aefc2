"""One fixed sequence of Train_r calls on the tiny LeNet5-on-digits, run by one process or by every rank."""
import torch
import torch.nn.functional as F

from llpf.config import DataConfig, ModelConfig, Phase
from llpf.data import BatchStream, load_data
from llpf.models import build_model
from llpf.flat import FlatParams

BATCH = 32  # the global batch: two ranks train on 16 rows each
UNTIL = 1.6  # the last call trains until the batch loss is below this


def setup():
    """The model (seeded) and the data (256 training, 127 test rows: the test set splits 64/63 over 2 ranks)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig())
    data = load_data(DataConfig(limit_train=256, limit_test=127))
    return model, data


def program(make_train_r):
    """Train_r calls at r=1 (per-step losses), r=3, per-layer learning rates (M2O), then until loss < UNTIL."""
    model, data = setup()
    fp = FlatParams(model)
    stream = BatchStream(data.train, BATCH, seed=3)
    train_r = make_train_r(fp, stream, F.cross_entropy, 0.05, 0.9, 1e-4)
    calls = [train_r(Phase(rounds=1)) for _ in range(4)]
    calls.append(train_r(Phase(rounds=3)))
    calls.append(train_r(Phase(rounds=2), torch.linspace(0.02, 0.08, len(fp.layout))))
    calls.append(train_r(Phase(until_loss=UNTIL, min_rounds=1, max_rounds=40)))
    return {"losses": [float(loss) for loss, _ in calls], "rounds": [r for _, r in calls]}, fp, model, data


def m2m_program(make_train_r, iterations: int = 6):
    """Algorithm 1 iterations (Move, VarianceCorrection, Train_r at r=2, VarianceCorrection) between two inits."""
    from llpf.config import PathConfig
    from llpf.methods.m2m import m2m_iteration
    from llpf.schedule import ResolvedPhase

    start, data = setup()
    torch.manual_seed(1)
    dest = FlatParams(build_model(ModelConfig())).flat
    fp = FlatParams(start)
    v0 = fp.seg.variance(fp.flat)
    cfg = PathConfig(lr=0.05)
    phase = Phase(iterations=iterations, step_a=0.05, rounds=2)
    rp = ResolvedPhase(0, phase, fp.layout.names, 1, iterations)
    every = torch.ones(len(fp.layout), dtype=torch.bool)
    train_r = make_train_r(fp, BatchStream(data.train, BATCH, seed=4), F.cross_entropy, cfg.lr, 0.0, 0.0)
    losses = [float(m2m_iteration(fp, dest, v0, rp, cfg, train_r, every, every)[0]) for _ in range(iterations)]
    return losses, fp.flat


def bn_program(make_train_r):
    """One Train_r step of a small network with BatchNorm; its running statistics afterwards."""
    from torch import nn

    _, data = setup()
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    fp = FlatParams(model)
    train_r = make_train_r(fp, BatchStream(data.train, BATCH, seed=5), F.cross_entropy, 0.05, 0.0, 0.0)
    train_r(Phase(rounds=1))
    return model[2].running_mean.clone(), model[2].running_var.clone()


def endpoint_program():
    """Endpoint training (paper Table 3 style: SGD with momentum, crop-flip) for one epoch of 8 global batches."""
    from llpf.config import TrainConfig
    from llpf.train import train_endpoint

    model, data = setup()
    recipe = TrainConfig(epochs=1, batch_size=BATCH, lr=0.05, momentum=0.9, weight_decay=1e-4,
                         augmentation="crop-flip")
    losses = train_endpoint(model, data.train, recipe, seed=6)
    return losses, FlatParams(model).flat.detach().clone()


def bn_recalibration(recompute):
    """BatchNorm statistics recomputed on the 127 test rows in batches of 64 (two batches: 64 and 63 rows)."""
    from torch import nn

    _, data = setup()
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    recompute(model, data.test)
    return model[2].running_mean.clone(), model[2].running_var.clone()
