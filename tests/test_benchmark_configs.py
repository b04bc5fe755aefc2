"""The experiment configs under benchmarks/: each loads and resolves against its model, and the layer-order pair
compares what it says it compares (one phase against Table 1's six, everything else equal)."""
import dataclasses
import math
from pathlib import Path

import pytest

from llpf.config import load_config
from llpf.models import build_model
from llpf.schedule import normalisation_parameters, resolve

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
ONE, SIX = (BENCHMARKS / f"resnet18-quarter-cifar10-{n}.toml" for n in ("one-phase", "six-phases"))
M2O = BENCHMARKS / "resnet18-quarter-cifar10-m2o-validation.toml"


@pytest.mark.parametrize("path", sorted(BENCHMARKS.glob("*.toml")), ids=lambda p: p.name)
def test_every_benchmark_config_loads_and_its_phases_resolve(path):
    cfg = load_config(path)
    model = build_model(cfg.model)
    names = tuple(n for n, _ in model.named_parameters())
    for kind in ("m2m", "m2o"):
        pc = getattr(cfg, kind)
        if pc is not None:
            exclude = normalisation_parameters(model) if kind == "m2o" else set()
            assert resolve(pc.phases, names, exclude)


def moved_by_phase(cfg) -> list[set[str]]:
    names = tuple(n for n, _ in build_model(cfg.model).named_parameters())
    return [set(rp.moved) for rp in resolve(cfg.m2m.phases, names)]


def test_the_layer_order_pair_differs_only_in_its_phases():
    one, six = load_config(ONE), load_config(SIX)
    assert (one.model, one.data, one.train) == (six.model, six.data, six.train)
    assert one.model.width == 0.25 and one.data.limit_train == 10000
    assert dataclasses.replace(one.m2m, phases=[]) == dataclasses.replace(six.m2m, phases=[])
    assert one.m2m.total_iterations == six.m2m.total_iterations
    rules = {(p.until_loss, p.min_rounds, p.max_rounds) for p in one.m2m.phases + six.m2m.phases}
    assert rules == {(0.04, 1, 10)}  # Table 1's Train_r rule, r_max capped, in both


def test_six_phases_follow_table_1_and_one_phase_moves_everything():
    """Table 1, ResNet18@CIFAR10: all; conv1, bn1, fc; + layer1; + layer2; + layer3; all. Each phase moves its
    layers as far as Table 1's (a twentieth of the iterations at twenty times step_a); the single phase as far as the
    six phases move their least-moved layers (layer4: phases 1 and 6)."""
    six, one = load_config(SIX), load_config(ONE)
    phases = moved_by_phase(six)
    every = set.union(*phases)
    stem = {"conv1.weight", "bn1.weight", "bn1.bias", "fc.weight", "fc.bias"}
    assert phases[0] == phases[5] == every and phases[1] == stem
    for i, block in enumerate(("layer1.", "layer2.", "layer3."), start=2):
        assert phases[i] == phases[i - 1] | {n for n in every if n.startswith(block)}
    assert [p.iterations * p.step_a for p in six.m2m.phases] == pytest.approx([5.0] * 6)
    assert moved_by_phase(one) == [every]
    (single,) = one.m2m.phases
    layer4_shrink = sum(p.iterations * math.log1p(-p.step_a) for p, m in zip(six.m2m.phases, phases)
                        if "layer4.0.conv1.weight" in m)
    assert single.iterations * math.log1p(-single.step_a) == pytest.approx(layer4_shrink, rel=0.01)


def test_the_m2o_config_chooses_on_validation_the_start_never_saw():
    cfg = load_config(M2O)
    assert cfg.m2o.select_on == "validation" and cfg.data.validation_fraction > 0
    assert cfg.model == load_config(SIX).model and cfg.train == load_config(SIX).train
    (phase,) = cfg.m2o.phases
    assert (1 - phase.step_a) ** phase.iterations == pytest.approx(0.999 ** 1400, rel=0.01)  # Table 2's Move
