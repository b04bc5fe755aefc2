"""Every ``llpf`` command with each kind of mistake that applies to it, as a new user makes them.

Each row is a command line and the word its one-line error must name. Every
row must exit 2 with exactly one line on stderr (``llpf...: error: ...``),
no traceback, leave no output folder behind and change none of the inputs,
and start no work: endpoint training, a path's iterations, dim's moves and
bench's measurements fail the test if they begin. A new command adds its rows
below (``test_every_command_has_rows`` holds it to that); the kinds are an
unknown device, a negative or zero count, a missing file, a file of the wrong
kind, an unknown name (method, experiment, layer) and an out-of-range value in
a config or on the command line.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from llpf.cli import build_parser, main
from tiny import LENET5_ON_DIGITS

CONFIG = "name = \"mistakes\"\n" + LENET5_ON_DIGITS + """[train]
epochs = 1
batch_size = 32
[m2m]
lr = 0.01
[[m2m.phases]]
iterations = 4
step_a = 0.05
[m2o]
lr = 0.01
[[m2o.phases]]
iterations = 4
step_a = 0.02
step_f = 0.0
[line]
points = 3
"""

ENDS = "--start {A} --dest {B}"
PATH_METHODS = {"m2m": ENDS, "m2o": "--start {A}", "autoneb": ENDS, "bezier": ENDS, "line": ENDS}

# (command line, what its error line names). {out} must not exist afterwards; {file} is a plain file, so
# {file}/x cannot be created; {text} is a text file where weights belong; {bad} a config with m2m.lr = -1;
# {missing} (weights) and {nothing} (anything else) do not exist.
ROWS = [
    ("demo --out {out} --device tpu", "tpu"),
    ("demo --out {file}/x", "cannot create"),
    ("train {cfg} --out {out}/w.safetensors --device tpu", "tpu"),
    ("train {nothing}.toml --out {out}/w.safetensors", "nothing.toml"),
    ("train {A} --out {out}/w.safetensors", "not a TOML config"),
    ("train {bad} --out {out}/w.safetensors", "m2m.lr"),
    ("train {cfg} --out {file}/w.safetensors", "cannot create"),
    ("train {cfg} --recipe dest --out {out}/w.safetensors", "[train.dest]"),
    ("train {cfg} --recipe best --out {out}/w.safetensors", "--recipe"),
    ("layers {nothing}.toml", "nothing.toml"),
    ("layers {A}", "not a TOML config"),
    ("layers {bad}", "m2m.lr"),
    *[row for m, ends in PATH_METHODS.items() for row in (
        (f"{m} {{cfg}} {ends} --out {{out}} --device tpu", "tpu"),
        (f"{m} {{cfg}} {ends} --out {{out}} --device cuda:7", "cuda:7"),
        (f"{m} {{cfg}} {ends.replace('{A}', '{missing}')} --out {{out}}", "missing.safetensors"),
        (f"{m} {{cfg}} {ends.replace('{A}', '{text}')} --out {{out}}", "text.safetensors"),
        (f"{m} {{nothing}}.toml {ends} --out {{out}}", "nothing.toml"),
        (f"{m} {{bad}} {ends} --out {{out}}", "m2m.lr"),
        (f"{m} {{cfg}} {ends} --out {{file}}/run", "cannot create"))],
    ("m2m {cfg} --start {A} --dest {B} --out {out} --segments --segment-points 0", "--segment-points"),
    ("compare {cfg} --start {A} --dest {B} --out {out} --device tpu", "tpu"),
    ("compare {cfg} --pairs 0 --out {out}", "--pairs"),
    ("compare {cfg} --pairs -3 --out {out}", "--pairs"),
    ("compare {cfg} --start {A} --dest {B} --out {out} --points 1", "--points"),
    ("compare {cfg} --start {A} --dest {B} --out {out} --points-per-segment -1", "--points-per-segment"),
    ("compare {cfg} --start {A} --dest {B} --out {out} --methods line,nope", "nope"),
    ("compare {cfg} --start {A} --dest {missing} --out {out}", "missing.safetensors"),
    ("compare {cfg} --start {A} --dest {text} --out {out}", "text.safetensors"),
    ("compare {bad} --start {A} --dest {B} --out {out}", "m2m.lr"),
    ("compare {cfg} --start {A} --dest {B} --out {file}/x", "cannot create"),
    ("resume {unfinished} --device tpu", "tpu"),
    ("resume {unfinished}", "made on cuda:7"),
    ("resume {nothing}", "nothing"),
    ("resume {file}", "notes.txt"),
    ("plot {nothing}", "nothing"),
    ("plot {file}", "notes.txt"),
    ("reproduce {cfg} --method m2m --out {out} --device tpu", "tpu"),
    ("reproduce {cfg} --method m2m --reps 0 --out {out}", "--reps"),
    ("reproduce {cfg} --method m2m --batch-paths 0 --out {out}", "--batch-paths"),
    ("reproduce nope --out {out}", "nope"),
    ("reproduce {cfg} --method nope --out {out}", "nope"),
    ("reproduce {cfg} --method m2m --start {missing} --dest {B} --out {out}", "missing.safetensors"),
    ("reproduce {cfg} --method m2m --start {A} --dest {text} --out {out}", "text.safetensors"),
    ("reproduce {cfg} --method m2o --dest {B} --out {out}", "--dest"),
    ("reproduce {bad} --method m2m --out {out}", "m2m.lr"),
    ("reproduce {cfg} --method m2m --out {file}/x", "cannot create"),
    ("reproduce {cfg} --method m2m --dry-run --device tpu", "tpu"),
    ("reproduce {cfg} --method m2m --dry-run --reps 0", "--reps"),
    ("reproduce {cfg} --method m2m --dry-run --start {missing}", "missing.safetensors"),
    ("reproduce {cfg} --method m2o --dry-run --dest {B}", "--dest"),
    ("bench --device tpu", "tpu"),
    ("bench --threads 0", "--threads"),
    ("bench --json {file}/x.json", "cannot create"),
    ("pca {run} --out {out} --power-iterations -1", "--power-iterations"),
    ("pca {run} --out {out} --layers nope", "nope"),
    ("pca {nothing} --out {out}", "nothing"),
    ("pca {file} --out {out}", "notes.txt"),
    ("dim {A} {cfg} --out {out} --device tpu", "tpu"),
    ("dim {A} {cfg} --out {out} --moves 0", "--moves"),
    ("dim {A} {cfg} --out {out} --lr 0", "--lr"),
    ("dim {A} {cfg} --out {out} --layers nope", "nope"),
    ("dim {missing} {cfg} --out {out}", "missing.safetensors"),
    ("dim {text} {cfg} --out {out}", "text.safetensors"),
    ("dim {A} {bad} --out {out}", "m2m.lr"),
    ("dim {A} {cfg} --out {file}/x", "cannot create"),
    ("variance {cfg} {A} {B} --out {out} --tolerance -1", "--tolerance"),
    ("variance {cfg} {A} {missing} --out {out}", "missing.safetensors"),
    ("variance {cfg} {A} {text} --out {out}", "text.safetensors"),
    ("barrier {cfg} {A} {B} --out {out} --device tpu", "tpu"),
    ("barrier {cfg} {A} {B} --out {out} --points 1", "--points"),
    ("barrier {cfg} {A} {missing} --out {out}", "missing.safetensors"),
    ("barrier {cfg} {text} {B} --out {out}", "text.safetensors"),
    ("segments {run} --device tpu", "tpu"),
    ("segments {run} --points-per-segment 0", "--points-per-segment"),
    ("segments {nothing}", "nothing"),
    ("generalisation {run} --out {out}", "M2O"),
    ("generalisation {nothing} --out {out}", "nothing"),
    ("m2o-baselines {cfg} --start {A} --out {out} --device tpu", "tpu"),
    ("m2o-baselines {cfg} --start {A} --out {out} --decays 0 -1", "--decays"),
    ("m2o-baselines {cfg} --start {A} --out {out} --validation-fraction 2", "--validation-fraction"),
    ("m2o-baselines {cfg} --start {missing} --out {out}", "missing.safetensors"),
    ("m2o-baselines {cfg} --start {text} --out {out}", "text.safetensors"),
    ("m2o-baselines {bad} --start {A} --out {out}", "m2m.lr"),
    ("m2o-baselines {cfg} --start {A} --out {file}/x", "cannot create"),
    ("report {nothing} --out {out}", "nothing"),
    ("layerwise {cfg} {A} {B} --out {out} --device tpu", "tpu"),
    ("layerwise {cfg} {A} {B} --out {out} --points 4", "--points"),
    ("layerwise {cfg} {A} {B} --out {out} --train-samples -1", "--train-samples"),
    ("layerwise {cfg} {A} {missing} --out {out}", "missing.safetensors"),
    ("layerwise {cfg} {text} {B} --out {out}", "text.safetensors"),
    ("layerwise {bad} {A} {B} --out {out}", "m2m.lr"),
    ("layerwise {cfg} {A} {B} --out {file}/x", "cannot create"),
    ("layerwise {nothing} --out {out}", "nothing"),
    ("layerwise {run} --out {out}", "M2M or M2O"),
    ("layerwise {run} --out {out} --align", "--align"),
    ("align {cfg} {A} {B} --out {out}/b.safetensors --device tpu", "tpu"),
    ("align {cfg} {A} {B} --out {out}/b.safetensors --points 1", "--points"),
    ("align {cfg} {A} {B} --out {out}/b.pt", ".safetensors"),
    ("align {cfg} {A} {missing} --out {out}/b.safetensors", "missing.safetensors"),
    ("align {cfg} {text} {B} --out {out}/b.safetensors", "text.safetensors"),
    ("align {bad} {A} {B} --out {out}/b.safetensors", "m2m.lr"),
    ("align {cfg} {A} {B} --out {file}/b.safetensors", "cannot create"),
    ("m2m {cfg} --start {A} --dest {B} --out {run} --resume --align", "without --align"),
]
NO_INPUT = {"configs"}  # commands that take nothing a user could get wrong


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny config and a broken copy, two LeNet5 weight files, a text file posing as weights, a finished run
    and an unfinished one made on a GPU this machine lacks."""
    from llpf.config import load_config
    from llpf.files import save_weights
    from llpf.models import build_model
    from llpf.runner import run_path

    d = tmp_path_factory.mktemp("mistakes")
    (d / "c.toml").write_text(CONFIG)
    (d / "bad.toml").write_text(CONFIG.replace("lr = 0.01\n[[m2m", "lr = -1.0\n[[m2m"))
    cfg = load_config(d / "c.toml")
    for seed, name in ((0, "a"), (1, "b")):
        torch.manual_seed(seed)
        save_weights(d / f"{name}.safetensors", build_model(cfg.model).state_dict())
    (d / "text.safetensors").write_text("not weights\n")
    (d / "notes.txt").write_text("a plain file\n")
    run_path("line", cfg, d / "a.safetensors", d / "b.safetensors", d / "run", device="cpu")
    unfinished = d / "unfinished"  # as if killed before its first checkpoint, on a machine with eight GPUs
    shutil.copytree(d / "run", unfinished)
    info = json.loads((unfinished / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps({**info, "status": "running", "device": "cuda:7"}))
    return d


def snapshot(d) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in sorted(d.rglob("*"))}


@pytest.fixture
def no_work(monkeypatch):
    """Starting any real work (training, a path's iterations, dim's moves, bench's timings, layerwise's grid of
    evaluations, weight matching) fails the test."""
    import llpf.alignment.aligned
    import llpf.analysis.dimension
    import llpf.analysis.layerwise
    import llpf.bench
    import llpf.driver
    import llpf.runner

    def work(*args, **kwargs):
        pytest.fail("work started before every input was checked")

    monkeypatch.setattr(llpf.runner, "train_endpoint", work)
    monkeypatch.setattr(llpf.driver.Driver, "run", work)
    monkeypatch.setattr(llpf.analysis.dimension, "analyse_dimension", work)
    monkeypatch.setattr(llpf.analysis.layerwise, "evaluate_spans", work)
    monkeypatch.setattr(llpf.bench, "bench", work)
    monkeypatch.setattr(llpf.alignment.aligned, "weight_matching", work)


@pytest.mark.parametrize("line, names", ROWS, ids=[f"{i:02d} {r[0]}" for i, r in enumerate(ROWS)])
def test_a_mistake_is_one_line_and_exit_2_before_any_work(line, names, inputs, tmp_path, capsys, no_work):
    d = inputs
    places = {"cfg": d / "c.toml", "bad": d / "bad.toml", "A": d / "a.safetensors", "B": d / "b.safetensors",
              "text": d / "text.safetensors", "file": d / "notes.txt", "run": d / "run",
              "unfinished": d / "unfinished",
              "missing": tmp_path / "missing.safetensors", "nothing": tmp_path / "nothing", "out": tmp_path / "out"}
    argv = [a.format(**places) for a in line.split()]
    before = snapshot(d)
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, err)
    assert len(err.splitlines()) == 1 and err.startswith("llpf") and ": error: " in err, err
    assert names in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists(), "an output folder was left behind"
    assert snapshot(d) == before, "an input was changed"


def test_every_command_has_rows():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    covered = {line.split()[0] for line, _ in ROWS} | NO_INPUT
    assert set(sub.choices) <= covered, f"commands without rows: {sorted(set(sub.choices) - covered)}"


def test_a_reader_that_leaves_early_ends_the_command_quietly():
    """``llpf configs | head -3``: the pipe closes before llpf writes; no BrokenPipeError traceback."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "llpf", "configs"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before the first line
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 128 + 13 and err == ""  # as a command stopped by SIGPIPE, silently
