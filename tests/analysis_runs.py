"""Tiny real run directories for the analysis tests (random LeNet5 endpoints, a slice of digits, seconds)."""
from __future__ import annotations

from pathlib import Path

import torch
from tiny import LENET5_ON_DIGITS

TINY = """
name = "tiny"
""" + LENET5_ON_DIGITS + """[m2m]
batch_size = 32
lr = 0.01
eval_every = 2
save_every = 2
checkpoint_every = 100
[[m2m.phases]]
iterations = 6
step_a = 0.05
step_f = 1e-3
rounds = 2
[m2o]
batch_size = 32
lr = 0.01
eval_every = 2
save_every = 2
checkpoint_every = 100
[[m2o.phases]]
iterations = 6
step_a = 0.02
step_f = 0.0
rounds = 2
"""


def make_runs(root: Path) -> dict[str, Path]:
    """config.toml, two random endpoints, and an M2M and an M2O run between/from them, under ``root``."""
    from llpf.config import load_config
    from llpf.models import build_model
    from llpf.runner import prepare_data, run_path
    from llpf.files import save_weights

    root.mkdir(parents=True, exist_ok=True)
    cfg_file = root / "tiny.toml"
    cfg_file.write_text(TINY)
    cfg = load_config(cfg_file)
    ends = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        p = root / f"end{seed}.safetensors"
        save_weights(p, build_model(cfg.model).state_dict())
        ends.append(p)
    data = prepare_data(cfg, "cpu")
    run_path("m2m", cfg, ends[0], ends[1], root / "m2m", device="cpu", data=data)
    run_path("m2o", cfg, ends[0], None, root / "m2o", device="cpu", data=data)
    return {"config": cfg_file, "a": ends[0], "b": ends[1], "m2m": root / "m2m", "m2o": root / "m2o"}


def shared_runs(tmp_path_factory) -> dict[str, Path]:
    """``make_runs`` once per test session, shared by the analysis test files."""
    root = tmp_path_factory.getbasetemp() / "analysis-runs"
    if not (root / "m2o" / "summary.json").is_file():
        return make_runs(root)
    return {"config": root / "tiny.toml", "a": root / "end0.safetensors", "b": root / "end1.safetensors",
            "m2m": root / "m2m", "m2o": root / "m2o"}
