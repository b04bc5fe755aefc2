"""The driver runs any method: a method defined here, in one class and one registry entry, goes through
the driver, the run-directory store and ``llpf plot``; and configs built in Python are checked as TOML ones are."""
import dataclasses

import pytest
import torch
from torch import nn

import llpf
from llpf.cli import main
from llpf.config import PathConfig, Phase, dumps
from llpf.data import Split
from llpf.driver import Driver
from llpf.errors import ConfigError
from llpf.geometry import layer_distances, move_
from llpf.methods import METHODS, SinglePath, register
from llpf.store import RunDir


class MoveToDest(SinglePath):
    """Move toward the destination with no training and no VarianceCorrection (not a low-loss method)."""

    name = "move-to-dest"
    needs_dest = True

    def iterate(self, iteration, phase):
        with torch.no_grad():
            move_(self.fp.flat, self.dest_flat, self.fp.seg, phase.phase.step_a, phase.phase.step_f,
                  self.masks[phase.index])
        return torch.zeros(()), 0

    def measure(self, k):
        d = layer_distances(self.fp.flat, self.dest_flat, self.fp.seg).tolist()
        return {f"dist/{n}": x for n, x in zip(self.names, d)}

    def summary(self, k, record):
        return {"final_distance": dict(zip(self.names, layer_distances(self.fp.flat, self.dest_flat,
                                                                       self.fp.seg).tolist()))}


@pytest.fixture()
def registered():
    register(MoveToDest)
    yield MoveToDest
    METHODS.pop(MoveToDest.name)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    a, b = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)), nn.Sequential(nn.Linear(5, 4), nn.Tanh(),
                                                                                    nn.Linear(4, 3))
    return Split(x, y), a, b


def test_a_method_defined_in_a_test_runs_through_driver_store_and_plot(tmp_path, registered, tiny, monkeypatch):
    data, a, b = tiny
    cfg = PathConfig(phases=[Phase(iterations=20, step_a=0.2, step_f=0.0)], eval_every=5, save_every=10,
                     checkpoint_every=10)
    rd = RunDir(tmp_path / "run")
    rd.create("move-to-dest", dumps(cfg), {"start": "a", "dest": "b"}, "cpu")
    method = llpf.METHODS["move-to-dest"](a, cfg, data, dest=b, device="cpu")
    (result,) = Driver(method, eval_sets={"train": data}, observers=[rd]).run()

    # Move alone with step_a = 0.2 leaves 0.8^20 of every layer's distance.
    init = result.rows[0]
    for n in method.names:
        assert result.rows[-1][f"dist/{n}"] == pytest.approx(0.8 ** 20 * init[f"dist/{n}"], rel=1e-4)
    assert [r["iteration"] for r in rd.metrics()] == list(range(21))
    assert [it for it, _ in rd.points()] == [0, 10, 20]
    summary = rd.summary()
    assert summary["kind"] == "move-to-dest" and summary["status"] == "complete" and summary["iterations"] == 20
    assert set(summary["final_distance"]) == set(method.names)
    rd.set_status("complete")
    drawn = []
    monkeypatch.setattr("llpf.plots.save_figure", lambda fig, out: drawn.append(fig) or out)
    assert main(["plot", str(rd.path)]) == 0
    layers_panel = drawn[0].axes[1]
    assert sorted(line.get_label() for line in layers_panel.get_lines()) == sorted(method.names)
    assert layers_panel.get_yscale() == "log"  # distances to the destination, drawn as M2M's are


def test_find_path_runs_a_registered_method_by_name(registered, tiny):
    data, a, b = tiny
    result = llpf.find_path("move-to-dest", a, data, {"phases": [{"iterations": 3, "step_a": 1.0, "step_f": 0.0}]},
                            dest=b, device="cpu")
    assert result.method == "move-to-dest"
    for (n, p), q in zip(result.model.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6), n  # step_a = 1 arrives in one Move
    with pytest.raises(ConfigError, match="no path method named 'bezier-x'"):
        llpf.find_path("bezier-x", a, data)


@pytest.mark.parametrize("cfg, message", [
    (PathConfig(lr=-1.0), "lr must not be negative, got -1.0"),
    (PathConfig(phases=[]), "phases must hold at least one phase"),
    (PathConfig(phases=[Phase(step_a=0.0, step_f=0.0)]), r"phases\[0\]: step_a and step_f are both zero"),
    (PathConfig(phases=[Phase(until_loss=0.1, min_rounds=5, max_rounds=2)]), r"min_rounds \(5\) exceeds max_rounds"),
    (PathConfig(phases=[Phase(keep_previous=True)]), "keep_previous needs a previous phase"),
    (PathConfig(step_rule="mean"), "step_rule must be one of sum, max, got 'mean'"),
    (PathConfig(batch_size=0), "batch_size must be positive, got 0"),
    (PathConfig(phases=[Phase(layers="conv1")]), r"phases\[0\].layers must be a list"),
    (PathConfig(eval_every=2.5), "eval_every must be an integer, got 2.5"),
    ({"lr": "fast"}, "lr must be a number, got 'fast'"),
    ({"phases": []}, "phases must hold at least one phase"),
    ({"phases": [{"iterations": -3}]}, r"phases\[0\].iterations must be positive, got -3"),
    ({"learning_rate": 0.1}, "unknown key 'learning_rate'"),
    ({"phases": [Phase(step_a=0.0, step_f=0.0)]}, r"phases\[0\]: step_a and step_f are both zero"),
    ([1, 2], "config must be a PathConfig or a dict, got list"),
])
def test_configs_built_in_python_get_the_one_line_errors_of_toml_ones(tiny, cfg, message):
    data, a, b = tiny
    for call in (lambda: llpf.m2m(a, b, data, cfg, device="cpu"), lambda: llpf.m2o(a, data, cfg, device="cpu")):
        with pytest.raises(ConfigError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


def test_a_valid_python_config_is_copied_not_shared(tiny):
    data, a, b = tiny
    cfg = PathConfig(phases=[Phase(iterations=2, step_a=0.1)], eval_every=1)
    result = llpf.m2m(a, b, data, cfg, device="cpu")
    assert result.summary["iterations"] == 2
    assert dataclasses.asdict(cfg) == dataclasses.asdict(PathConfig(phases=[Phase(iterations=2, step_a=0.1)],
                                                                     eval_every=1))
