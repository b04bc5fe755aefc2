"""The llpf command under torchrun (2 CPU ranks, Gloo): a data-parallel M2M path and its resume, sharded reproduce.

Each launch starts three Python processes (torchrun and two ranks); the tests
share their launches through module fixtures.
"""
import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from llpf.cli import main
from llpf.config import ModelConfig
from llpf.files import load_weights, save_weights
from llpf.models import build_model
from llpf.store import read_metrics
from test_reproduce import TINY
from tiny import LENET5_ON_DIGITS, torchrun

HERE = Path(__file__).parent

CONFIG = """
name = "dp-path"
""" + LENET5_ON_DIGITS + """[m2m]
batch_size = 32
lr = 0.02
eval_every = 5
save_every = 10
checkpoint_every = 5
[[m2m.phases]]
iterations = 12
step_a = 0.03
rounds = 2
[[m2m.phases]]
iterations = 6
step_a = 0.03
until_loss = 2.28
max_rounds = 4
"""


def main_in(folder: Path, args: list[str]) -> int:
    """The llpf command in one process, run from ``folder`` (as torchrun runs it there)."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        return main(args)
    finally:
        os.chdir(cwd)


def writers(log: Path) -> list[tuple[int, Path]]:
    """(rank, path) of every write the hooked ranks logged (paths relative to the folder of ``log``)."""
    return [(int(r), log.parent / p) for r, p in (line.split(" ", 1) for line in log.read_text().splitlines())]


# ---------------------------------------------------------------- one path on two ranks


@pytest.fixture(scope="module")
def path_runs(tmp_path_factory):
    """The same M2M path by one process and by two ranks, through the command line."""
    d = tmp_path_factory.mktemp("dp")
    (d / "c.toml").write_text(CONFIG)
    for seed in (0, 1):
        torch.manual_seed(seed)
        save_weights(d / f"w{seed}.safetensors", build_model(ModelConfig()).state_dict())
    args = ["m2m", "c.toml", "--dest", "w1.safetensors", "--device", "cpu", "--quiet"]
    assert main_in(d, [*args, "--start", "w0.safetensors", "--out", "one"]) == 0
    r = torchrun("-m", "llpf", *args, "--start-model", "w0.safetensors", "--out", "two", cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    return d, r


def test_two_ranks_take_the_single_process_path_at_the_same_global_batch(path_runs):
    d, r = path_runs
    one, two = read_metrics(d / "one" / "metrics.csv"), read_metrics(d / "two" / "metrics.csv")
    assert [row["iteration"] for row in two] == list(range(19))  # every row once: rank 1 wrote none
    assert [row["rounds"] for row in two] == [row["rounds"] for row in one]
    assert min(row["rounds"] for row in one[13:]) < 4  # the until-loss phase stopped on the (reduced) loss
    assert [row["batch_loss"] for row in two[1:]] == pytest.approx([row["batch_loss"] for row in one[1:]], rel=1e-5)
    evals = [(a["train_loss"], b["train_loss"]) for a, b in zip(one, two) if a["train_loss"] is not None]
    assert len(evals) == 5 and all(b == pytest.approx(a, rel=1e-5) for a, b in evals)  # sharded evaluation
    wa, wb = load_weights(d / "one" / "final.safetensors"), load_weights(d / "two" / "final.safetensors")
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-4, atol=1e-5)
    assert not torch.equal(wb["fc3.weight"], load_weights(d / "w0.safetensors")["fc3.weight"])
    assert json.loads((d / "two" / "run.json").read_text())["status"] == "complete"
    assert r.stdout.count("M2M path:") == 1  # rank 0 alone reports


def test_a_signal_to_one_rank_stops_both_and_resume_under_torchrun_ends_as_the_uninterrupted_run(path_runs):
    d, _ = path_runs
    log = d / "writes.log"
    args = ["m2m", "c.toml", "--start-model", "w0.safetensors", "--dest", "w1.safetensors", "--out", "three",
            "--device", "cpu", "--quiet"]
    r = torchrun(HERE / "ranked.py", *args, cwd=d, hooks={"LLPF_TEST_TERM_AT": "7", "LLPF_TEST_WRITES": str(log)})
    assert r.returncode != 0
    info = json.loads((d / "three" / "run.json").read_text())
    assert (info["status"], info["iteration"]) == ("interrupted", 7)  # rank 0 stopped where rank 1 did
    assert [row["iteration"] for row in read_metrics(d / "three" / "metrics.csv")] == list(range(8))
    assert {rank for rank, _ in writers(log)} == {0}

    r = torchrun("-m", "llpf", "resume", "three", "--quiet", cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    two, three = read_metrics(d / "two" / "metrics.csv"), read_metrics(d / "three" / "metrics.csv")
    assert [row["iteration"] for row in three] == list(range(19))
    assert [row["batch_loss"] for row in three] == [row["batch_loss"] for row in two]
    wa, wb = load_weights(d / "two" / "final.safetensors"), load_weights(d / "three" / "final.safetensors")
    assert all(torch.equal(wa[n], wb[n]) for n in wa)  # bit for bit


# ---------------------------------------------------------------- repetitions dealt to two ranks


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    d = tmp_path_factory.mktemp("sharded")
    (d / "tiny.toml").write_text(TINY)
    return d


def test_reproduce_deals_four_repetitions_to_two_ranks_and_aggregates_once(tiny_config):
    d = tiny_config
    log = d / "writes.log"
    r = torchrun(HERE / "ranked.py", "reproduce", "tiny.toml", "--reps", "4", "--out", "out", "--device", "cpu",
                 "--quiet", cwd=d, hooks={"LLPF_TEST_WRITES": str(log)})
    assert r.returncode == 0, r.stderr[-3000:]
    out = d / "out"
    s = json.loads((out / "summary.json").read_text())
    assert s["aggregate"]["repetitions"] == 4 and s["unfinished"] == {}
    assert all(s["reps"][f"rep-0{k}"]["status"] == "complete" for k in range(4))
    for rank, share in ((0, ["0", "2"]), (1, ["1", "3"])):
        status = json.loads((out / "ranks" / f"rank-{rank}.json").read_text())
        assert status["done"] and {k: e["status"] for k, e in status["reps"].items()} == dict.fromkeys(share, "complete")
    writes = writers(log)
    top = Counter((rank, p.name) for rank, p in writes if p.parent == out)
    assert top[(0, "summary.json")] == 1 and top[(0, "summary.md")] == 1  # aggregated once, by rank 0
    assert top[(0, "reproduce.json")] >= 1 and {rank for rank, _ in top} == {0}  # rank 1 writes none of them
    assert {rank for rank, p in writes if p.parent.name == "ranks"} == {0, 1}
    runs = {(rank, p.relative_to(out).parts[0]) for rank, p in writes if "rep-" in str(p)}
    assert runs == {(0, "rep-00"), (0, "rep-02"), (1, "rep-01"), (1, "rep-03")}
    trained = Counter(p.name for _, p in writes if p.suffix == ".safetensors" and p.parent.name == "endpoints")
    assert trained == Counter(f"seed{i}.safetensors" for i in range(8))  # each endpoint trained once
    ledger = json.loads((out / "reproduce.json").read_text())
    assert ledger["ranks"] == 2 and sorted(ledger["reps"]) == [f"rep-0{k}" for k in range(4)]
    assert sorted(ledger["endpoints"]) == [f"seed{i}" for i in range(8)]
    assert r.stdout.count("| **all** |") == 1

    # rank 1's repetition 1 is the one a single process runs as repetition 1
    assert main(["reproduce", str(d / "tiny.toml"), "--reps", "2", "--out", str(d / "single"), "--device", "cpu",
                 "--quiet"]) == 0
    single = json.loads((d / "single" / "rep-01" / "summary.json").read_text())
    assert json.loads((out / "rep-01" / "summary.json").read_text())["final_distance"] == single["final_distance"]


def test_a_rank_killed_in_its_second_repetition_costs_only_that_one_and_a_rerun_completes_it(tiny_config,
                                                                                              monkeypatch):
    import llpf.files

    d = tiny_config
    out = d / "killed"
    r = torchrun(HERE / "ranked.py", "reproduce", "tiny.toml", "--reps", "4", "--out", "killed", "--device", "cpu",
                 "--quiet", cwd=d, hooks={"LLPF_TEST_DIE_IN": "3"})
    assert r.returncode != 0
    s = json.loads((out / "summary.json").read_text())
    assert sorted(s["reps"]) == ["rep-00", "rep-01", "rep-02"] and s["aggregate"]["repetitions"] == 3
    assert list(s["unfinished"]) == ["rep-03"] and "rank 1 ended" in s["unfinished"]["rep-03"]
    assert "rep-03: rank 1 ended" in (out / "summary.md").read_text()
    assert (out / "rep-03" / "checkpoint.pt").is_file()
    finished = {k: (out / f"rep-0{k}" / "summary.json").stat().st_mtime_ns for k in range(3)}

    # the same command, here in one process (any number of ranks continues the launch's work)
    written, write = [], llpf.files.atomic_write
    monkeypatch.setattr(llpf.files, "atomic_write", lambda path, data: written.append(Path(path)) or write(path, data))
    assert main(["reproduce", str(d / "tiny.toml"), "--reps", "4", "--out", str(out), "--device", "cpu",
                 "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["aggregate"]["repetitions"] == 4 and s["unfinished"] == {}
    assert {k: (out / f"rep-0{k}" / "summary.json").stat().st_mtime_ns for k in range(3)} == finished
    rerun = [p.relative_to(out) for p in written]
    assert not [p for p in rerun if p.parts[0] in ("endpoints", "rep-00", "rep-01", "rep-02")]
    points = {p.name for p in rerun if p.parts[:2] == ("rep-03", "points")}
    assert points == {"0000008.safetensors", "0000012.safetensors"}  # rep 3 resumed from its checkpoint at 4
    assert s["reps"]["rep-03"]["status"] == "complete"


# ---------------------------------------------------------------- m2o-baselines' runs dealt to two ranks


def test_m2o_baselines_deals_its_runs_to_two_ranks_and_rank_0_writes_the_table_once(tmp_path):
    from test_m2o_baselines import TINY as BASELINES

    (tmp_path / "b.toml").write_text(BASELINES)
    torch.manual_seed(0)
    save_weights(tmp_path / "start.safetensors", build_model(ModelConfig()).state_dict())
    args = ["m2o-baselines", "b.toml", "--start-model", "start.safetensors", "--decays", "0", "0.5", "--device", "cpu",
            "--validation-fraction", "0.25", "--quiet"]
    log = tmp_path / "writes.log"
    r = torchrun(HERE / "ranked.py", *args, "--out", "two", cwd=tmp_path, hooks={"LLPF_TEST_WRITES": str(log)})
    assert r.returncode == 0, r.stderr[-3000:]
    runs = ["m2o", "move-only", "finetune-wd0", "finetune-wd0.5"]
    shares = {rank: json.loads((tmp_path / "two" / "ranks" / f"rank-{rank}.json").read_text()) for rank in (0, 1)}
    assert {rank: [e["run"] for e in s["reps"].values()] for rank, s in shares.items()} == {
        0: ["m2o", "finetune-wd0"], 1: ["move-only", "finetune-wd0.5"]}  # fine-tuning waited for M2O's budget
    writes = writers(log)
    assert {(rank, p.parts[-2]) for rank, p in writes if p.name == "checkpoint.pt"} == {
        (0, "m2o"), (0, "finetune-wd0"), (1, "move-only"), (1, "finetune-wd0.5")}
    tables = [rank for rank, p in writes if p.name.startswith("m2o-baselines.")]
    assert sorted(tables) == [0, 0, 0]  # csv, json, png: by rank 0, once
    assert r.stdout.count("best on validation") == 1

    assert main_in(tmp_path, [*args, "--out", "one"]) == 0  # the same comparison in one process
    one, two = (json.loads((tmp_path / d / "m2o-baselines.json").read_text()) for d in ("one", "two"))
    assert [r["run"] for r in two["rows"]] == ["m2o", *runs]  # the start row reads M2O's run
    assert two["budget_gradient_steps"] == one["budget_gradient_steps"] > 6
    for a, b in zip(one["rows"], two["rows"]):
        assert (a["run"], a["gradient_steps"], a["best_iteration"]) == (b["run"], b["gradient_steps"],
                                                                       b["best_iteration"])
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4)
    for run in runs:
        wa, wb = (load_weights(tmp_path / d / run / "final.safetensors") for d in ("one", "two"))
        for name in wa:
            torch.testing.assert_close(wb[name], wa[name], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- compare's pairs dealt to two ranks

COMPARE = """
name = "tiny-compare"
""" + LENET5_ON_DIGITS + """[train]
epochs = 1
batch_size = 32
lr = 0.05
[m2m]
lr = 0.02
eval_every = 4
save_every = 4
checkpoint_every = 4
[[m2m.phases]]
iterations = 8
step_a = 0.05
rounds = 1
[bezier]
steps = 8
lr = 0.02
eval_every = 4
save_every = 4
checkpoint_every = 4
[line]
points = 5
"""


def test_compare_deals_its_pairs_to_two_ranks_and_rank_0_writes_the_tables_once(tmp_path):
    (tmp_path / "c.toml").write_text(COMPARE)
    args = ["compare", "c.toml", "--pairs", "2", "--methods", "line,llpf,bezier", "--points", "9", "--device", "cpu",
            "--quiet"]
    log = tmp_path / "writes.log"
    r = torchrun(HERE / "ranked.py", *args, "--out", "two", cwd=tmp_path, hooks={"LLPF_TEST_WRITES": str(log)})
    assert r.returncode == 0, r.stderr[-3000:]
    writes = writers(log)
    ran = {(rank, p.relative_to(tmp_path / "two").parts[0]) for rank, p in writes if p.name == "profile.json"}
    assert ran == {(0, "pair-00"), (1, "pair-01")}
    trained = {(rank, p.name) for rank, p in writes if p.parent.name == "endpoints" and p.suffix == ".safetensors"}
    assert trained == {(0, "seed0.safetensors"), (0, "seed1.safetensors"), (1, "seed2.safetensors"),
                       (1, "seed3.safetensors")}
    tables = Counter((rank, p.name) for rank, p in writes if p.name.startswith("comparison"))
    assert tables == Counter({(0, "comparison.csv"): 1, (0, "comparison_pairs.csv"): 1, (0, "comparison.json"): 1,
                              (0, "comparison.png"): 1})  # once, by rank 0
    assert r.stdout.count("wrote ") == 1
    ledger = json.loads((tmp_path / "two" / "compare.json").read_text())
    assert sorted(ledger["runs"]) == [f"pair-0{k}/{m}" for k in (0, 1) for m in ("bezier", "line", "llpf")]

    assert main_in(tmp_path, [*args, "--out", "one"]) == 0  # the same comparison in one process
    one, two = (json.loads((tmp_path / d / "comparison.json").read_text()) for d in ("one", "two"))
    assert [(p["pair"], p["method"]) for p in two["pairs"]] == [(p["pair"], p["method"]) for p in one["pairs"]]
    assert len(two["pairs"]) == 6 and all(p["status"] == "complete" for p in two["pairs"])
    for a, b in zip(one["pairs"], two["pairs"]):
        assert b["max_train_loss"] == pytest.approx(a["max_train_loss"], rel=1e-4)
        assert b["gradient_steps"] == a["gradient_steps"]
