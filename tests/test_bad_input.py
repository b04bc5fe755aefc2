"""Bad input: a one-line error naming the problem, exit code 2, no traceback, nothing overwritten."""
import errno
import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import llpf.files
from llpf.cli import main

CONFIG = """
name = "bad-input"
[model]
name = "lenet5"
[data]
name = "digits"
limit_train = 128
limit_test = 64
[train]
epochs = 1
batch_size = 32
[m2m]
eval_every = 5
checkpoint_every = 2
save_every = 2
[[m2m.phases]]
iterations = 6
step_a = 0.05
rounds = 1
"""


class Payload:
    """A pickle that runs code when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "executed"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    (d / "c.toml").write_text(CONFIG)
    for seed in (0, 1):
        assert main(["train", str(d / "c.toml"), "--seed", str(seed), "--out", str(d / f"e{seed}.safetensors"),
                     "--quiet", "--device", "cpu"]) == 0
    good = load_file(d / "e0.safetensors")
    save_file({k: v[:5] if k.startswith("fc3") else v for k, v in good.items()}, d / "five-classes.safetensors")
    save_file({"weight": torch.zeros(3, 3), "bias": torch.zeros(3)}, d / "other-arch.safetensors")
    nan = dict(good)
    nan["fc1.weight"] = nan["fc1.weight"].clone()
    nan["fc1.weight"][0, 0] = float("nan")
    save_file(nan, d / "nan.safetensors")
    raw = (d / "e0.safetensors").read_bytes()
    (d / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    (d / "corrupt.safetensors").write_bytes(b"\x07" * 64 + raw[64:200])
    torch.save({"conv1.weight": Payload(d / "PWNED")}, d / "evil.pt")
    (d / "empty.safetensors").write_bytes(b"")
    return d


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def config_with(d: Path, old: str, new: str) -> str:
    f = d / f"cfg-{hashlib.md5((old + new).encode()).hexdigest()[:8]}.toml"
    f.write_text(CONFIG.replace(old, new) if old else CONFIG + new)
    return str(f)


def m2m(d, start="e0.safetensors", dest="e1.safetensors", cfg=None, out="run"):
    return ["m2m", cfg or str(d / "c.toml"), "--start", str(d / start), "--dest", str(d / dest), "--out",
            str(d / out), "--quiet", "--device", "cpu"]


def rejected(capsys, argv, *needles, d: Path):
    before = snapshot(d)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    errors = [ln for ln in lines if ln.startswith("llpf: error:")]
    assert len(errors) == 1 and all(ln.startswith("llpf: ") for ln in lines), err  # warnings may come first
    assert "Traceback" not in err
    for n in needles:
        assert n in errors[0], (n, err)
    after = snapshot(d)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing that existed was changed
    return errors[0]


def test_different_architectures(inputs, capsys):
    rejected(capsys, m2m(inputs, dest="other-arch.safetensors"), "destination", "does not fit", d=inputs)


def test_same_names_different_shapes(inputs, capsys):
    rejected(capsys, m2m(inputs, dest="five-classes.safetensors"), "fc3.", "shape [5]", "expects [10]", d=inputs)


def test_missing_checkpoint(inputs, capsys):
    rejected(capsys, m2m(inputs, start="nowhere.safetensors"), "not found", "nowhere.safetensors", d=inputs)


def test_truncated_checkpoint(inputs, capsys):
    rejected(capsys, m2m(inputs, start="truncated.safetensors"), "truncated.safetensors", "cannot read", d=inputs)


def test_corrupt_checkpoint(inputs, capsys):
    rejected(capsys, m2m(inputs, dest="corrupt.safetensors"), "corrupt.safetensors", d=inputs)


def test_empty_checkpoint(inputs, capsys):
    rejected(capsys, m2m(inputs, dest="empty.safetensors"), "empty", d=inputs)


def test_malicious_pickle_is_refused_not_executed(inputs, capsys):
    rejected(capsys, m2m(inputs, start="evil.pt"), "evil.pt", d=inputs)
    assert not (inputs / "PWNED").exists()
    with pytest.raises(llpf.errors.CheckpointError):
        llpf.files.load_weights(inputs / "evil.pt")
    assert not (inputs / "PWNED").exists()


def test_unknown_config_key(inputs, capsys):
    cfg = config_with(inputs, "eval_every = 5", "eval_evry = 5")
    rejected(capsys, m2m(inputs, cfg=cfg), "m2m.eval_evry", d=inputs)


def test_wrong_type(inputs, capsys):
    cfg = config_with(inputs, "iterations = 6", 'iterations = "six"')
    rejected(capsys, m2m(inputs, cfg=cfg), "m2m.phases[0].iterations", "integer", d=inputs)


@pytest.mark.parametrize("old,new,needle", [
    ("step_a = 0.05", "step_a = -0.05", "step_a must not be negative"),
    ("iterations = 6", "iterations = 0", "iterations must be positive"),
    ("rounds = 1", "rounds = 0", "rounds must be positive"),
    ("step_a = 0.05", "step_a = 0.0\nstep_f = 0.0", "both zero"),
])
def test_bad_numbers(inputs, capsys, old, new, needle):
    rejected(capsys, m2m(inputs, cfg=config_with(inputs, old, new)), needle, d=inputs)


def test_phase_pattern_matching_nothing(inputs, capsys):
    cfg = config_with(inputs, "rounds = 1", 'rounds = 1\nlayers = ["layer4.*"]')
    rejected(capsys, m2m(inputs, cfg=cfg), "layer4.*", "conv1.weight", d=inputs)


def test_non_finite_weights(inputs, capsys):
    rejected(capsys, m2m(inputs, start="nan.safetensors"), "non-finite", "fc1.weight", d=inputs)


def test_empty_dataset(inputs, capsys, tmp_path):
    def idx(path, arr_shape, code=0x08):
        path.write_bytes(struct.pack(">BBBB", 0, 0, code, len(arr_shape)) + b"".join(struct.pack(">I", s) for s in arr_shape))
    for split in ("train", "t10k"):
        idx(tmp_path / f"{split}-images-idx3-ubyte", (0, 28, 28))
        idx(tmp_path / f"{split}-labels-idx1-ubyte", (0,))
    cfg = config_with(inputs, 'name = "digits"\nlimit_train = 128\nlimit_test = 64',
                      f'name = "fashion-mnist"\nroot = "{tmp_path}"')
    rejected(capsys, ["train", cfg, "--out", str(inputs / "x.safetensors"), "--quiet"], "empty", d=inputs)


def test_labels_do_not_fit_the_model(inputs, capsys):
    cfg = config_with(inputs, "", "")
    Path(cfg).write_text(CONFIG.replace('name = "lenet5"', 'name = "lenet5"\nnum_classes = 5'))
    rejected(capsys, ["train", cfg, "--out", str(inputs / "x.safetensors"), "--quiet"], "labels", "5 outputs",
             d=inputs)


def test_output_path_not_writable(inputs, capsys):
    rejected(capsys, m2m(inputs, out="e0.safetensors/run"), "cannot create", d=inputs)
    rejected(capsys, m2m(inputs, out="c.toml"), "not a directory", d=inputs)


def test_output_directory_holding_another_run(inputs, capsys):
    assert main(m2m(inputs, out="done")) == 0
    capsys.readouterr()
    rejected(capsys, m2m(inputs, out="done"), "already holds a complete run", d=inputs)
    (inputs / "stranger").mkdir()
    (inputs / "stranger" / "notes.txt").write_text("mine")
    rejected(capsys, m2m(inputs, out="stranger"), "not empty", d=inputs)


def test_disk_full_mid_run_then_resume(inputs, capsys, monkeypatch):
    """A write that fails with ENOSPC stops the run with one line; the run resumes once there is room."""
    writes = {"n": 0}
    real = llpf.files.atomic_write

    def filling(path, data):
        writes["n"] += 1
        if writes["n"] > 8:
            raise llpf.errors.RunDirError(f"cannot write {path}: {__import__('os').strerror(errno.ENOSPC)}")
        return real(path, data)

    monkeypatch.setattr(llpf.files, "atomic_write", filling)
    err = rejected(capsys, m2m(inputs, out="full"), "No space left on device", d=inputs)
    assert "cannot write" in err
    info = json.loads((inputs / "full" / "run.json").read_text())
    assert info["status"] == "running"
    monkeypatch.setattr(llpf.files, "atomic_write", real)
    assert main(["resume", str(inputs / "full"), "--quiet"]) == 0
    assert json.loads((inputs / "full" / "summary.json").read_text())["status"] == "complete"
