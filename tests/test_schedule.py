import pytest
from torch import nn

from llpf.config import Phase
from llpf.errors import ConfigError
from llpf.models import build_model
from llpf.config import ModelConfig
from llpf.schedule import normalisation_parameters, phase_at, resolve, select


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3)
        self.bn1 = nn.BatchNorm2d(2)
        self.layer1 = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 4))
        self.fc = nn.Linear(4, 2)


NAMES = tuple(n for n, _ in Net().named_parameters())


def test_patterns_select_the_right_parameters():
    assert select(["layer1.*"], NAMES) == ["layer1.0.weight", "layer1.0.bias", "layer1.1.weight",
                                           "layer1.1.bias", "layer1.2.weight", "layer1.2.bias"]
    assert select(["conv1", "fc.bias"], NAMES) == ["conv1.weight", "conv1.bias", "fc.bias"]
    assert select(["*"], NAMES) == list(NAMES)
    assert select(["bn1.*", "fc.*"], NAMES) == ["bn1.weight", "bn1.bias", "fc.weight", "fc.bias"]


def test_unknown_pattern_raises_with_valid_names():
    with pytest.raises(ConfigError) as e:
        select(["layer9.*"], NAMES)
    msg = str(e.value)
    assert "layer9.*" in msg and "conv1.weight" in msg and "fc.bias" in msg


def test_phases_are_cumulative_with_keep_previous():
    phases = [Phase(iterations=3, layers=["conv1", "fc"]), Phase(iterations=2, layers=["layer1.0.*"], keep_previous=True),
              Phase(iterations=1, layers=["*"])]
    sched = resolve(phases, NAMES)
    assert sched[1].moved == ("conv1.weight", "conv1.bias", "layer1.0.weight", "layer1.0.bias", "fc.weight", "fc.bias")
    assert [(s.first, s.last) for s in sched] == [(1, 3), (4, 5), (6, 6)]
    assert phase_at(sched, 3).index == 0 and phase_at(sched, 4).index == 1 and phase_at(sched, 6).index == 2


def test_normalisation_layers_found_by_type_not_name():
    norm = normalisation_parameters(Net())
    assert norm == {"bn1.weight", "bn1.bias", "layer1.1.weight", "layer1.1.bias"}
    sched = resolve([Phase(layers=["*"])], NAMES, exclude=norm)
    assert not set(sched[0].moved) & norm


def test_lenet5_has_no_normalisation_and_all_layers():
    names = tuple(n for n, _ in build_model(ModelConfig()).named_parameters())
    assert names == ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias",
                     "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias")
