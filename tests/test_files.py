"""llpf.files (atomic JSON, the one weights loader) and RunDir.update_summary."""
import json
import os

import pytest
import torch

import llpf.files
from llpf.errors import CheckpointError, RunDirError
from llpf.files import load_weights, save_weights, write_json
from llpf.store import RunDir


def test_write_json_format(tmp_path):
    f = tmp_path / "x.json"
    write_json(f, {"a": 1, "b": [1.5, None], "c": "é"})
    assert f.read_text() == '{\n  "a": 1,\n  "b": [\n    1.5,\n    null\n  ],\n  "c": "\\u00e9"\n}\n'


def test_write_json_failure_leaves_the_old_file(tmp_path, monkeypatch):
    f = tmp_path / "x.json"
    write_json(f, {"version": 1})

    def full(src, dst):
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(llpf.files.os, "replace", full)
    with pytest.raises(RunDirError, match="cannot write .*x.json: No space left on device"):
        write_json(f, {"version": 2})
    assert json.loads(f.read_text()) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]  # no temporary file left behind


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_load_weights_unwraps_training_script_files(tmp_path, wrapper):
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2])}
    f = tmp_path / "w.pt"
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 3}, f)
    got = load_weights(f)
    assert set(got) == {"w", "b"} and all(torch.equal(got[k], state[k]) for k in state)
    save_weights(tmp_path / "w.safetensors", got)
    assert torch.equal(load_weights(tmp_path / "w.safetensors")["w"], state["w"])


def test_load_weights_refuses_what_is_not_a_state_dict(tmp_path):
    f = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], f)
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        load_weights(f)


def test_update_summary_merges_into_a_finished_run(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.update_summary({"segment_max_train_loss": 0.1}) == {}
    assert not (tmp_path / "summary.json").exists()  # nothing to update: an unfinished run is left alone
    rd.on_summary({"status": "complete", "max_train_loss": 0.05, "segment_max_train_loss": 9.0})
    merged = rd.update_summary({"segment_max_train_loss": 0.1, "segments_below_threshold": True})
    expected = {"status": "complete", "max_train_loss": 0.05, "segment_max_train_loss": 0.1,
                "segments_below_threshold": True}
    assert merged == expected
    assert json.loads((tmp_path / "summary.json").read_text()) == expected
    assert (tmp_path / "summary.json").read_text().endswith("}\n")
