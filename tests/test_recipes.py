"""Endpoints from different recipes: ``[train.dest]`` over ``[train]``, ``llpf train --recipe dest``, the
destinations ``llpf reproduce`` and ``llpf compare --pairs`` train with it, and the recipes a summary records."""
import json

import pytest
import torch

from llpf import config as C
from llpf.cli import main
from llpf.errors import ConfigError
from llpf.files import load_weights, weights_metadata
from llpf.models import build_model
from llpf.store import RunDir
from tiny import LENET5_ON_DIGITS

torch.set_num_threads(1)

# [train.dest] at learning rate 0: a destination trained with it is its seed's initialisation, to the bit.
FROZEN_DEST = "name = \"recipes\"\n" + LENET5_ON_DIGITS + """[train]
epochs = 1
batch_size = 64
lr = 0.05
[train.dest]
lr = 0.0
batch_size = 32
[m2m]
lr = 0.01
batch_size = 32
eval_every = 2
save_every = 2
checkpoint_every = 2
[[m2m.phases]]
iterations = 2
step_a = 0.1
rounds = 1
"""


def initialisation(cfg: C.Config, seed: int) -> dict:
    torch.manual_seed(seed)
    return build_model(cfg.model).state_dict()


def test_dest_keys_override_train_and_nothing_else():
    cfg = C.config_from_dict({"train": {"lr": 0.01, "epochs": 7, "dest": {"lr": 0.05, "weight_decay": 5e-4}}})
    start, dest = cfg.train.recipe("start"), cfg.train.recipe("dest")
    assert (start.lr, start.weight_decay, start.epochs, start.dest) == (0.01, 0.0, 7, None)
    assert (dest.lr, dest.weight_decay, dest.epochs, dest.dest) == (0.05, 5e-4, 7, None)
    plain = C.config_from_dict({"train": {"lr": 0.01}})
    assert plain.train.recipe("dest") == plain.train.recipe("start")
    # the resolved config a run records keeps [train.dest] as the overrides, and reads back the same
    assert C.config_from_dict(C.to_dict(cfg)) == cfg and "[train.dest]" in C.dumps(cfg)


@pytest.mark.parametrize("table, says", [
    ({"foo": 1}, "unknown key 'train.dest.foo'"),
    ({"lr": "fast"}, "train.dest.lr must be a number"),
    ({"optimizer": "lbfgs"}, "train.dest.optimizer must be one of sgd, adamw"),
    ({"epochs": 0}, "train.dest.epochs must be positive"),
    ({"warmup_epochs": 9}, "train.dest.warmup_epochs (9) exceeds train.dest.epochs"),
    ({"dest": {"lr": 1.0}}, "train.dest cannot hold a dest table of its own"),
])
def test_a_bad_dest_recipe_is_refused_when_the_config_is_read(table, says):
    with pytest.raises(ConfigError) as e:
        C.config_from_dict({"train": {"epochs": 3, "dest": table}})
    assert says in str(e.value)


def test_train_with_the_dest_recipe_uses_it_and_records_it(tmp_path, capsys):
    (tmp_path / "c.toml").write_text(FROZEN_DEST)
    cfg = C.load_config(tmp_path / "c.toml")
    assert main(["train", str(tmp_path / "c.toml"), "--seed", "3", "--recipe", "dest", "--out",
                 str(tmp_path / "d.safetensors"), "--quiet"]) == 0
    assert main(["train", str(tmp_path / "c.toml"), "--seed", "3", "--out", str(tmp_path / "s.safetensors"),
                 "--quiet"]) == 0
    init = initialisation(cfg, 3)
    dest, start = load_weights(tmp_path / "d.safetensors"), load_weights(tmp_path / "s.safetensors")
    assert all(torch.equal(dest[k], init[k]) for k in init)  # lr 0: [train.dest] trained it
    assert not torch.equal(start["fc3.weight"], init["fc3.weight"])  # [train]'s lr 0.05 trained this one
    meta = weights_metadata(tmp_path / "d.safetensors")
    assert meta["recipe"] == "dest" and json.loads(meta["recipe_settings"])["batch_size"] == 32
    assert weights_metadata(tmp_path / "s.safetensors")["recipe"] == "start"


def test_the_dest_recipe_needs_its_table_and_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "plain.toml").write_text("name = \"plain\"\n" + LENET5_ON_DIGITS)
    assert main(["train", str(tmp_path / "plain.toml"), "--recipe", "dest", "--out",
                 str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no [train.dest] table" in err
    (tmp_path / "bad.toml").write_text(LENET5_ON_DIGITS + "[train.dest]\nlearning_rate = 0.1\n")
    assert main(["train", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown key 'train.dest.learning_rate'" in err
    assert not (tmp_path / "x.safetensors").exists()


def test_reproduce_trains_destinations_with_the_dest_recipe_and_summaries_say_which(tmp_path):
    (tmp_path / "c.toml").write_text(FROZEN_DEST)
    cfg = C.load_config(tmp_path / "c.toml")
    out = tmp_path / "out"
    assert main(["reproduce", str(tmp_path / "c.toml"), "--reps", "1", "--out", str(out), "--device", "cpu",
                 "--quiet"]) == 0
    ends = out / "endpoints"
    assert sorted(p.name for p in ends.glob("*.safetensors")) == ["seed0.safetensors", "seed1-dest.safetensors"]
    dest = load_weights(ends / "seed1-dest.safetensors")
    assert all(torch.equal(dest[k], v) for k, v in initialisation(cfg, 1).items())
    assert json.loads((ends / "seed1-dest.json").read_text())["recipe"] == "dest"
    table = (out / "summary.md").read_text()
    assert "| seed1-dest | dest |" in table and "| seed0 | start |" in table
    summary = json.loads((out / "rep-00" / "summary.json").read_text())
    recipes = summary["endpoint_recipes"]
    assert (recipes["start"]["recipe"], recipes["start"]["lr"]) == ("start", 0.05)
    assert (recipes["dest"]["recipe"], recipes["dest"]["lr"], recipes["dest"]["batch_size"]) == ("dest", 0.0, 32)


def test_compare_pairs_train_destinations_with_the_dest_recipe(tmp_path):
    import llpf

    (tmp_path / "c.toml").write_text(FROZEN_DEST)
    out = tmp_path / "cmp"
    llpf.compare(tmp_path / "c.toml", out, pairs=1, methods="line", points=3, device="cpu", log=lambda s: None)
    assert sorted(p.name for p in (out / "endpoints").glob("*.safetensors")) == ["seed0.safetensors",
                                                                                   "seed1-dest.safetensors"]
    summary = json.loads((out / "pair-00" / "line" / "summary.json").read_text())
    assert summary["endpoint_recipes"]["dest"]["recipe"] == "dest"
    assert summary["endpoint_recipes"]["start"]["recipe"] == "start"
    # --endpoints FOLDER: the destinations of a config with [train.dest] are its seedS-dest files
    again = tmp_path / "again"
    llpf.compare(tmp_path / "c.toml", again, pairs=1, endpoints=out / "endpoints", methods="line", points=3,
                 device="cpu", log=lambda s: None)
    assert RunDir(again / "pair-00" / "line").info()["inputs"]["dest"].endswith("seed1-dest.safetensors")


def test_weights_from_elsewhere_have_no_recipe(tmp_path):
    from safetensors.torch import save_file

    from llpf.runner import run_path

    (tmp_path / "c.toml").write_text(FROZEN_DEST)
    cfg = C.load_config(tmp_path / "c.toml")
    for seed in (0, 1):
        save_file(initialisation(cfg, seed), str(tmp_path / f"w{seed}.safetensors"))
    s = run_path("m2m", cfg, tmp_path / "w0.safetensors", tmp_path / "w1.safetensors", tmp_path / "run", device="cpu")
    assert s["endpoint_recipes"] == {"start": None, "dest": None}


def test_the_dry_run_counts_each_end_at_its_own_recipe(tmp_path):
    from llpf.reproduce import dry_run

    (tmp_path / "c.toml").write_text(FROZEN_DEST.replace("batch_size = 32\n[m2m]", "batch_size = 32\nepochs = 3\n[m2m]"))
    lines = []
    plan = dry_run(str(tmp_path / "c.toml"), device="cpu", batch_size=2, log=lines.append)
    # 256 training images: [train] 1 epoch of batch 64, [train.dest] 3 epochs of batch 32
    assert plan["endpoint_steps"] == 1 * (256 // 64) + 3 * (256 // 32)
    assert "endpoints: 2 per repetition, 1 epochs (the destination 3, [train.dest])" in lines[-1]
