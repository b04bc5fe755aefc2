"""Data-parallel Train_r under torchrun (2 CPU ranks, Gloo) against one process at the same global batch."""
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llpf import distributed as D
from llpf.train import TrainR, evaluate, recompute_bn_stats
from tiny import torchrun

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp")
    r = torchrun(HERE / "dp_worker.py", out)
    assert r.returncode == 0, r.stderr[-3000:]
    return [(json.loads((out / f"rank-{k}.json").read_text()), torch.load(out / f"rank-{k}.pt", weights_only=True))
            for k in range(2)]


@pytest.fixture(scope="module")
def one_process():
    sys.path.insert(0, str(HERE))
    from dp_program import bn_program, bn_recalibration, endpoint_program, m2m_program, program

    record, fp, model, data = program(TrainR)
    record["test"] = evaluate(model, data.test.batches(50), F.cross_entropy)
    record["m2m_losses"], m2m_flat = m2m_program(TrainR)
    running_mean, running_var = bn_program(TrainR)
    record["endpoint_losses"], endpoint_flat = endpoint_program()
    # the two ranks' halves of the test rows (64 and 63) are the two batches of one process
    recal_mean, recal_var = bn_recalibration(lambda model, split: recompute_bn_stats(model, split.batches(64)))
    return record, {"flat": fp.flat.detach().clone(), "m2m_flat": m2m_flat, "running_mean": running_mean,
                    "running_var": running_var, "endpoint_flat": endpoint_flat, "recal_mean": recal_mean,
                    "recal_var": recal_var}


def test_two_ranks_take_the_single_process_steps_at_the_same_global_batch(two_ranks, one_process):
    ref, ref_t = one_process
    for rec, t in two_ranks:
        assert rec["world"] == 2
        assert rec["losses"] == pytest.approx(ref["losses"], rel=1e-5, abs=1e-6)
        torch.testing.assert_close(t["flat"], ref_t["flat"], rtol=1e-4, atol=1e-5)
    assert not torch.equal(ref_t["flat"], start_flat())  # the weights did move


def start_flat():
    from dp_program import setup
    from llpf.flat import FlatParams

    return FlatParams(setup()[0]).flat


def test_until_loss_stops_every_rank_at_the_single_process_round(two_ranks, one_process):
    ref, _ = one_process
    (a, _), (b, _) = two_ranks
    assert a["rounds"] == b["rounds"] == ref["rounds"]
    assert 1 < ref["rounds"][-1] < 40  # the until-loss call stopped on the loss, not at max_rounds


def test_m2m_iterations_on_two_ranks_follow_the_single_process_path(two_ranks, one_process):
    ref, ref_t = one_process
    (a, ta), (b, tb) = two_ranks
    assert torch.equal(ta["m2m_flat"], tb["m2m_flat"])  # Move and VarianceCorrection ran identically on each rank
    for rec, t in two_ranks:
        assert rec["m2m_losses"] == pytest.approx(ref["m2m_losses"], rel=1e-5, abs=1e-6)
        torch.testing.assert_close(t["m2m_flat"], ref_t["m2m_flat"], rtol=1e-4, atol=1e-5)


def test_batchnorm_running_means_are_the_whole_batch_ones_on_every_rank(two_ranks, one_process):
    _, ref_t = one_process
    (_, ta), (_, tb) = two_ranks
    assert torch.equal(ta["running_mean"], tb["running_mean"]) and torch.equal(ta["running_var"], tb["running_var"])
    torch.testing.assert_close(ta["running_mean"], ref_t["running_mean"], rtol=1e-5, atol=1e-6)
    assert not torch.equal(ta["running_mean"], torch.zeros_like(ta["running_mean"]))


def test_a_path_whose_batch_does_not_split_over_the_ranks_is_refused_in_one_line(two_ranks):
    for rec, _ in two_ranks:
        assert rec["uneven_batch"] == "batch_size 31 does not split into 2 equal shards; use a batch size divisible by 2"


def test_ranks_hold_bit_identical_weights_and_detect_drift(two_ranks):
    (a, ta), (b, tb) = two_ranks
    assert (a["rank"], b["rank"]) == (0, 1) and a["run_id"] == b["run_id"] and len(a["run_id"]) == 32
    assert torch.equal(ta["flat"], tb["flat"])
    assert a["in_sync"] and b["in_sync"]
    assert not a["probe_in_sync"] and not b["probe_in_sync"]  # rank 1 alone was nudged: both ranks see it
    assert a["probe_repaired"] and b["probe_repaired"] and a["probe_equal_after"] and b["probe_equal_after"]


def test_sharded_evaluation_equals_the_whole_split(two_ranks, one_process):
    ref, _ = one_process
    for rec, _ in two_ranks:
        assert rec["test"] == pytest.approx(ref["test"], rel=1e-5)
        assert rec["test_batches"] == pytest.approx(ref["test"], rel=1e-5)  # a list of batches: every other one


def test_endpoint_training_on_two_ranks_takes_the_single_process_steps(two_ranks, one_process):
    ref, ref_t = one_process
    (_, ta), (_, tb) = two_ranks
    assert torch.equal(ta["endpoint_flat"], tb["endpoint_flat"])
    for rec, t in two_ranks:
        assert rec["endpoint_losses"] == pytest.approx(ref["endpoint_losses"], rel=1e-5)
        torch.testing.assert_close(t["endpoint_flat"], ref_t["endpoint_flat"], rtol=1e-4, atol=1e-5)
    assert not torch.equal(ref_t["endpoint_flat"], start_flat())


def test_sharded_batchnorm_recalibration_averages_the_ranks_batches(two_ranks, one_process):
    _, ref_t = one_process
    for _, t in two_ranks:
        torch.testing.assert_close(t["recal_mean"], ref_t["recal_mean"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(t["recal_var"], ref_t["recal_var"], rtol=1e-5, atol=1e-6)
    assert not torch.equal(ref_t["recal_var"], torch.ones_like(ref_t["recal_var"]))


# ---------------------------------------------------------------- pure pieces, one process


def test_shard_gives_contiguous_equal_parts_and_rejects_an_uneven_batch():
    x, y = torch.arange(12).view(6, 2), torch.arange(6)
    parts = [D.shard(x, y, rank_=r, world=3) for r in range(3)]
    assert [p[1].tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]
    assert torch.equal(parts[2][0], x[4:6])
    with pytest.raises(D.DistributedError, match="batch of 6 does not split into 4"):
        D.shard(x, y, rank_=0, world=4)
    with pytest.raises(D.DistributedError, match="batch_size 30 does not split into 4"):
        D.check_divisible(30, world=4)


def test_shard_range_covers_every_example_once():
    for n, w in ((127, 2), (10, 3), (2, 4), (0, 2)):
        parts = [D.shard_range(n, r, w) for r in range(w)]
        covered = [i for p in parts for i in range(n)[p]]
        assert covered == list(range(n))
        sizes = [p.stop - p.start for p in parts]
        assert max(sizes) - min(sizes) <= 1


def test_one_process_is_not_distributed_and_collectives_are_identity(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert D.init("cpu") == torch.device("cpu")
    assert not D.is_distributed() and D.world_size() == 1 and D.rank() == 0 and D.is_main()
    t = torch.tensor([1.0, 2.0])
    assert D.all_reduce_mean_(t) is t and t.tolist() == [1.0, 2.0]
    assert D.reduce_sums(t, 3) == (t, 3)
    assert D.in_sync(t)


def test_commands_that_run_in_one_process_refuse_several_ranks_in_one_line(monkeypatch, capsys):
    from llpf.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["configs"]) == 2
    assert capsys.readouterr().err.strip() == ("llpf: error: llpf configs runs in one process; launch it without "
                                               "torchrun (several ranks run: compare, m2m, m2o, m2o-baselines, reproduce, resume, train)")
    assert main(["reproduce", "demo", "--method", "m2m", "--dry-run"]) == 2
    assert "llpf reproduce --dry-run runs in one process" in capsys.readouterr().err


def test_a_torchrun_environment_without_a_rendezvous_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(D.DistributedError, match="WORLD_SIZE is 2 but RANK, MASTER_ADDR"):
        D.init("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(D.DistributedError, match="WORLD_SIZE='two' is not an integer"):
        D.world_size()
