"""Permutation alignment with known answers: exact permutations recovered, functions kept, residual groups joined."""
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from llpf.alignment import align, permutation_spec
from llpf.alignment.layout import permute_state
from llpf.alignment.matching import weight_matching
from llpf.errors import AlignmentError, ModelMismatchError
from llpf.models.cct import CCT
from llpf.models.lenet5 import LeNet5
from tiny import ConvBN


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(20, 32), nn.Linear(32, 24), nn.Linear(24, 5)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def narrow_resnet18(width: int = 8) -> nn.Module:
    """torchvision's ResNet18 (CIFAR stem) with 1/8 of its channels: residual additions, downsample shortcuts, BN."""
    m = torchvision.models.resnet18(num_classes=10)
    m.inplanes = width
    m.conv1, m.bn1, m.maxpool = nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.Identity()
    m.layer1 = m._make_layer(BasicBlock, width, 2)
    m.layer2 = m._make_layer(BasicBlock, 2 * width, 2, stride=2)
    m.layer3 = m._make_layer(BasicBlock, 4 * width, 2, stride=2)
    m.layer4 = m._make_layer(BasicBlock, 8 * width, 2, stride=2)
    m.fc = nn.Linear(8 * width, 10)
    return m


class Dense(nn.Module):
    """DenseNet-like: two convolutions' channels concatenated, normalised together, read by a third."""

    def __init__(self):
        super().__init__()
        self.conv0, self.conv1 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 3, padding=1)
        self.norm, self.conv2 = nn.BatchNorm2d(10), nn.Conv2d(10, 5, 1)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        a = F.relu(self.conv0(x))
        c = self.norm(torch.cat([a, F.relu(self.conv1(a))], 1))
        return self.head(F.adaptive_avg_pool2d(F.relu(self.conv2(c)), 1).flatten(1))


def randomised(model: nn.Module, seed: int) -> nn.Module:
    """Every tensor random (BatchNorm statistics and affine parameters too), so any unit out of place shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                r = torch.randn(t.shape, generator=g) * (0.3 if t.dim() > 1 else 0.5)
                t.copy_(r.abs() + 0.5 if name.endswith("running_var") else r)
    return model.eval()


CASES = {
    "mlp": (MLP, (4, 20)),
    "lenet5": (lambda: LeNet5(10, 1, 32), (4, 1, 32, 32)),
    "resnet18-narrow": (narrow_resnet18, (4, 3, 32, 32)),
    "concat": (Dense, (4, 3, 8, 8)),
    # depthwise convolutions and inverted residuals
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25), (2, 3, 32, 32)),
    # a transformer: its residual stream (positional embedding, LayerNorms) and MLPs move, attention's qkv stays
    "cct": (lambda: CCT(10, 3, 16, dim=16, depth=2, heads=2), (2, 3, 16, 16)),
}


def random_permutations(spec, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randperm(n, generator=g) for k, n in spec.units.items()}


@pytest.mark.parametrize("case", CASES)
def test_a_permutation_of_the_groups_keeps_the_function(case):
    make, shape = CASES[case]
    a = randomised(make(), 0)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    spec = permutation_spec(a, x)
    b = make().eval()
    b.load_state_dict(permute_state(a.state_dict(), spec, random_permutations(spec, 2)))
    assert any(not torch.equal(b.state_dict()[k], a.state_dict()[k]) for k in spec.axes)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.abs().max() > 0.5
    assert torch.allclose(ya, yb, atol=1e-5 * float(ya.abs().max()))


@pytest.mark.parametrize("case", CASES)
def test_an_exact_permutation_of_a_is_recovered_at_distance_zero(case):
    make, shape = CASES[case]
    a = randomised(make(), 3)
    x = torch.randn(shape)
    spec = permutation_spec(a, x)
    b = make().eval()
    b.load_state_dict(permute_state(a.state_dict(), spec, random_permutations(spec, 4)))
    result = align(a, b, x)
    assert result.distance_before > 1
    assert result.distance_after == pytest.approx(0, abs=1e-9)
    for k, t in result.model.state_dict().items():
        assert torch.equal(t, a.state_dict()[k]), k


def test_weight_matching_never_lowers_the_summed_inner_product():
    a, b = randomised(narrow_resnet18(), 5), randomised(narrow_resnet18(), 6)
    spec = permutation_spec(a, torch.randn(2, 3, 32, 32))
    perms, sweeps = weight_matching(spec, a.state_dict(), b.state_dict())
    aligned = permute_state(b.state_dict(), spec, perms)
    inner = lambda s: sum(float((a.state_dict()[k].double() * s[k].double()).sum()) for k in spec.axes)  # noqa: E731
    assert inner(aligned) > inner(b.state_dict()) + 1
    assert 1 < sweeps < 100  # stopped because a sweep changed nothing, not at the cap


def group_of(spec, name: str, axis: int) -> int:
    (segment,) = spec.axes[name][axis]
    return segment.group


def test_residual_additions_join_groups_and_the_outputs_stay():
    spec = permutation_spec(narrow_resnet18(), torch.randn(2, 3, 32, 32))
    stem = group_of(spec, "conv1.weight", 0)
    # layer1's blocks add their output to the stem's: one group, read by layer2's first conv and its shortcut.
    for name, axis in (("bn1.weight", 0), ("bn1.running_mean", 0), ("layer1.0.conv2.weight", 0),
                       ("layer1.1.bn2.running_var", 0), ("layer1.0.conv1.weight", 1), ("layer2.0.conv1.weight", 1),
                       ("layer2.0.downsample.0.weight", 1)):
        assert group_of(spec, name, axis) == stem, name
    shortcut = group_of(spec, "layer2.0.downsample.0.weight", 0)
    assert shortcut != stem
    assert group_of(spec, "layer2.0.conv2.weight", 0) == group_of(spec, "layer2.1.conv2.weight", 0) == shortcut
    # A block's inner units are its own group.
    assert group_of(spec, "layer1.0.conv1.weight", 0) not in (stem, shortcut)
    assert group_of(spec, "fc.weight", 1) == group_of(spec, "layer4.1.bn2.bias", 0)
    assert 0 not in spec.axes.get("fc.weight", {}) and "fc.bias" not in spec.axes
    assert "fc" in spec.fixed and "output" in spec.fixed["fc"]
    assert len(spec.units) == 12  # 4 stages x (a stream + 2 inner groups)


def test_concatenated_channels_keep_their_groups_side_by_side():
    spec = permutation_spec(Dense(), torch.randn(2, 3, 8, 8))
    g0, g1 = group_of(spec, "conv0.weight", 0), group_of(spec, "conv1.weight", 0)
    for name, axis in (("conv2.weight", 1), ("norm.weight", 0), ("norm.running_mean", 0)):
        assert [(s.group, s.units) for s in spec.axes[name][axis]] == [(g0, 6), (g1, 4)], name


def test_depthwise_convolutions_keep_their_input_s_units_and_transformers_their_stream():
    mobile = permutation_spec(torchvision.models.mobilenet_v2(width_mult=0.25), torch.randn(2, 3, 32, 32))
    expand = group_of(mobile, "features.2.conv.0.0.weight", 0)
    for name, axis in (("features.2.conv.1.0.weight", 0), ("features.2.conv.1.1.running_var", 0),
                       ("features.2.conv.2.weight", 1)):
        assert group_of(mobile, name, axis) == expand, name
    assert group_of(mobile, "features.2.conv.2.weight", 0) == group_of(mobile, "features.3.conv.2.weight", 0)
    cct = permutation_spec(CCT(10, 3, 16, dim=16, depth=2, heads=2), torch.randn(2, 3, 16, 16))
    stream = group_of(cct, "tokenizer.conv_layers.0.0.weight", 0)
    for name, axis in (("classifier.positional_emb", 2), ("classifier.blocks.0.self_attn.proj.weight", 0),
                       ("classifier.blocks.1.linear2.bias", 0), ("classifier.norm.weight", 0),
                       ("classifier.attention_pool.weight", 1), ("classifier.fc.weight", 1)):
        assert group_of(cct, name, axis) == stream, name
    assert 0 not in cct.axes["classifier.blocks.0.self_attn.qkv.weight"]
    assert "reshape across units" in cct.fixed["classifier.blocks.0.self_attn.qkv"]


def test_lenet5_flatten_ties_each_channel_to_its_block_of_fc1_inputs():
    spec = permutation_spec(LeNet5(10, 1, 32), torch.randn(2, 1, 32, 32))
    (segment,) = spec.axes["fc1.weight"][1]
    assert (segment.group, segment.units, segment.block) == (group_of(spec, "conv2.weight", 0), 16, 25)


class Heads(nn.Module):
    """Attention-like: a projection split into heads (a reshape across units), then a grouped convolution."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 12)
        self.qkv = nn.Linear(12, 12)
        self.out = nn.Linear(12, 12)
        self.conv = nn.Conv1d(12, 12, 1, groups=3)
        self.mid = nn.Linear(12, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = F.relu(self.inp(x))  # [B, 4 tokens, 12 units]
        q = self.qkv(h).view(x.shape[0], 4, 3, 4).transpose(1, 2)  # 3 heads of 4
        mixed = (q.softmax(-1) @ q.transpose(-1, -2)).sum(1)  # [B, 4, 4]
        h = h + self.out(mixed @ h / 4)
        g = self.conv(h.transpose(1, 2)).mean(-1)  # a grouped convolution over the units
        return self.head(F.relu(self.mid(g)))


def test_units_reaching_an_operation_not_understood_stay_and_are_named():
    a, b = randomised(Heads(), 7), randomised(Heads(), 8)
    x = torch.randn(3, 4, 8)
    result = align(a, b, x)
    fixed = result.spec.fixed
    assert any(k.startswith("qkv") and "reshape across units" in why for k, why in fixed.items()), fixed
    assert fixed.get("inp (+1 joined)", "").startswith("reaches a grouped convolution conv"), fixed
    assert "qkv.weight" not in result.spec.axes and "inp.weight" not in result.spec.axes
    assert [result.spec.producers[g] for g in result.spec.units] == [["mid"]]
    assert result.moved
    with torch.no_grad():
        assert torch.allclose(b(x), result.model(x), atol=1e-5)


class Branchy(nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


def test_an_untraceable_model_or_another_architecture_is_one_clear_error():
    with pytest.raises(AlignmentError, match="cannot trace Branchy with torch.fx"):
        align(Branchy(), Branchy(), torch.randn(2, 4))
    with pytest.raises(ModelMismatchError, match="different architectures"):
        align(LeNet5(10, 1, 32), ConvBN(), torch.randn(2, 1, 32, 32))
    with pytest.raises(ModelMismatchError, match="fc3.weight"):
        align(LeNet5(10, 1, 32), LeNet5(5, 1, 32), torch.randn(2, 1, 32, 32))


def test_an_alignment_that_would_change_the_function_is_refused(monkeypatch):
    """The safety net behind every rule: were the outputs misread as movable, B's function would change."""
    from llpf.alignment import rules

    monkeypatch.setattr(rules, "output", lambda w, node: {})
    a, b = randomised(MLP(), 9), randomised(MLP(), 10)
    with pytest.raises(AlignmentError, match="outputs differ from B's by .* on the example batch"):
        align(a, b, torch.randn(8, 20))
