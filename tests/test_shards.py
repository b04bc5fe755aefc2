"""Sharded repetitions: the round-robin plan and the rank status files rank 0 aggregates from."""
import json
import multiprocessing
import os
import signal

import pytest

from llpf.shards import RankStatus, assign, collect, owner, rank_file, run_shard, wait_for_ranks


def test_assign_deals_repetitions_round_robin():
    assert assign(5, 2, 0) == [0, 2, 4]
    assert assign(5, 2, 1) == [1, 3]
    assert assign(2, 4, 3) == []  # more ranks than repetitions: the last ranks idle
    assert assign(0, 1, 0) == []
    for reps, world in ((7, 3), (40, 8), (1, 1)):
        shares = [assign(reps, world, r) for r in range(world)]
        assert sorted(k for s in shares for k in s) == list(range(reps))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        assert all(owner(k, world) == r for r, s in enumerate(shares) for k in s)
    for bad in ((3, 0, 0), (3, 2, 2), (3, 2, -1), (-1, 2, 0)):
        with pytest.raises(ValueError):
            assign(*bad)


def fake_experiment(out):
    """run_one writes OUT/rep-K/summary.json (as a finished path does); finished(k) looks for it."""
    calls = []

    def run_one(k):
        calls.append(k)
        (out / f"rep-{k:02d}").mkdir(parents=True, exist_ok=True)
        (out / f"rep-{k:02d}" / "summary.json").write_text("{}")
        return {"endpoints_s": 0.5}

    def finished(k):
        return (out / f"rep-{k:02d}" / "summary.json").is_file()
    return calls, run_one, finished


def test_a_rank_runs_its_share_and_records_each_repetition(tmp_path):
    calls, run_one, finished = fake_experiment(tmp_path)
    entries = run_shard(tmp_path, 5, 2, 1, "launch-1", run_one, finished, log=lambda s: None)
    assert calls == [1, 3]
    data = json.loads(rank_file(tmp_path, 1).read_text())
    assert data["done"] and data["run_id"] == "launch-1" and data["rank"] == 1 and data["world"] == 2
    assert data["reps"] == entries
    assert {k: e["status"] for k, e in entries.items()} == {"1": "complete", "3": "complete"}
    assert entries["3"]["endpoints_s"] == 0.5 and entries["3"]["wall_s"] >= 0


def test_a_failing_repetition_is_marked_failed_and_the_rank_goes_on(tmp_path):
    calls, run_one, finished = fake_experiment(tmp_path)
    lines = []

    def flaky(k):
        if k == 2:
            raise RuntimeError("CUDA out of memory\nmore detail")
        return run_one(k)
    entries = run_shard(tmp_path, 6, 2, 0, "L", flaky, finished, log=lines.append)
    assert calls == [0, 4]
    assert entries["2"]["status"] == "failed" and entries["2"]["reason"] == "RuntimeError: CUDA out of memory"
    assert lines == ["rank 0: repetition 2 failed: RuntimeError: CUDA out of memory"]
    tally = collect(tmp_path, 6, 2, "L")
    assert tally.of("complete") == [0, 4] and tally.failed == [2] and tally.reasons == {2: entries["2"]["reason"]}
    assert tally.missing == [1, 3, 5]  # rank 1 has not written a file for this launch


def test_an_interrupted_rank_marks_the_repetition_and_stops(tmp_path):
    calls, run_one, finished = fake_experiment(tmp_path)

    def stop_at_2(k):
        if k == 2:
            raise KeyboardInterrupt
        return run_one(k)
    with pytest.raises(KeyboardInterrupt):
        run_shard(tmp_path, 6, 2, 0, "L", stop_at_2, finished, log=lambda s: None)
    data = json.loads(rank_file(tmp_path, 0).read_text())
    assert not data["done"]
    assert {k: e["status"] for k, e in data["reps"].items()} == {"0": "complete", "2": "interrupted", "4": "pending"}
    assert collect(tmp_path, 6, 2, "L").statuses == {0: "complete", 1: "missing", 2: "interrupted", 3: "missing",
                                                     4: "missing", 5: "missing"}



def test_sigterm_marks_the_repetition_under_way_interrupted_and_the_handler_is_restored(tmp_path):
    calls, run_one, finished = fake_experiment(tmp_path)
    before = signal.getsignal(signal.SIGTERM)

    def sigterm_at_2(k):  # torchrun stopping the ranks
        if k == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return run_one(k)
    with pytest.raises(KeyboardInterrupt):
        run_shard(tmp_path, 6, 2, 0, "L", sigterm_at_2, finished, log=lambda s: None)
    data = json.loads(rank_file(tmp_path, 0).read_text())
    assert {k: e["status"] for k, e in data["reps"].items()} == {"0": "complete", "2": "interrupted", "4": "pending"}
    assert signal.getsignal(signal.SIGTERM) is before

def test_groups_of_repetitions_run_together_and_share_one_fate(tmp_path):
    """With ``together`` a rank runs its unfinished repetitions in the groups it gives (paths batched together):
    a group completes, fails or is interrupted as one."""
    calls, run_one, finished = fake_experiment(tmp_path)
    run_one(4)  # finished earlier: skipped, and not offered to the grouping
    offered, lines = [], []

    def together(todo):
        offered.append(todo)
        return [todo[i:i + 3] for i in range(0, len(todo), 3)]

    def run_group(ks):
        if 8 in ks:
            raise RuntimeError("out of memory")
        if 10 in ks:
            raise KeyboardInterrupt
        return {k: {"batched_with": ks, **run_one(k)} for k in ks}
    with pytest.raises(KeyboardInterrupt):
        run_shard(tmp_path, 12, 1, 0, "G", run_group, finished, log=lines.append, together=together)
    assert offered == [[0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11]]
    data = json.loads(rank_file(tmp_path, 0).read_text())
    status = {int(k): e["status"] for k, e in data["reps"].items()}
    assert status == {0: "complete", 1: "complete", 2: "complete", 3: "complete", 4: "skipped", 5: "complete",
                      6: "complete", 7: "failed", 8: "failed", 9: "failed", 10: "interrupted", 11: "interrupted"}
    assert data["reps"]["1"]["batched_with"] == [0, 1, 2] and data["reps"]["5"]["batched_with"] == [3, 5, 6]
    assert lines == [f"rank 0: repetition {k} failed: RuntimeError: out of memory" for k in (7, 8, 9)]
    assert not data["done"] and calls == [4, 0, 1, 2, 3, 5, 6]


def test_rank_files_of_an_earlier_launch_are_not_read_as_this_ones(tmp_path):
    st = RankStatus(tmp_path, 1, 2, "old-launch", [1])
    st.mark(1, "complete")
    st.finish()
    tally = collect(tmp_path, 2, 2, "new-launch")
    assert tally.statuses == {0: "missing", 1: "missing"} and not tally.done


def test_waiting_gives_up_after_the_timeout_on_a_live_unfinished_rank(tmp_path):
    RankStatus(tmp_path, 0, 1, "L", [0])  # this process: alive, never done
    now, slept = [0.0], []

    def sleep(s):
        slept.append(s)
        now[0] += s
    tally = wait_for_ranks(tmp_path, 1, 1, "L", timeout_s=10, poll_s=4, sleep=sleep, clock=lambda: now[0])
    assert slept == [4, 4, 4] and tally.done == set() and tally.gone == set() and tally.missing == [0]


def _rank_process(out, rank, kill_at):
    _, run_one, finished = fake_experiment(out)

    def run(k):
        if k == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no chance to write anything
        return run_one(k)
    run_shard(out, 6, 2, rank, "first", run, finished, log=lambda s: None)


def test_a_killed_rank_loses_only_its_unfinished_repetitions_and_a_rerun_completes_them(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ranks = [ctx.Process(target=_rank_process, args=(tmp_path, r, 3 if r == 1 else None)) for r in range(2)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(60)
    assert [p.exitcode for p in ranks] == [0, -signal.SIGKILL]

    tally = wait_for_ranks(tmp_path, 6, 2, "first", timeout_s=30, poll_s=0.05)
    assert tally.done == {0} and tally.gone == {1}
    assert tally.of("complete") == [0, 1, 2, 4] and tally.missing == [3, 5]

    calls, run_one, finished = fake_experiment(tmp_path)  # the same command again, both ranks
    for r in range(2):
        run_shard(tmp_path, 6, 2, r, "second", run_one, finished, log=lambda s: None)
    assert calls == [3, 5]
    tally = wait_for_ranks(tmp_path, 6, 2, "second", timeout_s=0)
    assert tally.done == {0, 1} and tally.missing == [] and tally.failed == []
    assert tally.of("complete") == [3, 5] and tally.of("skipped") == [0, 1, 2, 4]
