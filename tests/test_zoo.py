"""The model zoo: parameter names against the paper's Table 1, shapes, counts, weights loading."""
from __future__ import annotations

import math
import urllib.error

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from llpf.config import ModelConfig
from llpf.errors import CheckpointError, ConfigError, ModelMismatchError
from llpf.models import MODELS, build_model
from llpf.models.cct import Attention, cct7_3x1
from llpf.models.resnet18 import load_torchvision_resnet18_weights, resnet18_cifar, resnet18_imagenet
from llpf.schedule import select

# The "Applied layers" of the paper's Table 1 (Appendix A.4), one pattern per part of the model.
RESNET18_PARTS = ["conv1.weight", "bn1.weight", "bn1.bias", "fc.weight", "fc.bias",
                  "layer1.*", "layer2.*", "layer3.*", "layer4.*"]
CCT7_PARTS = ["tokenizer.conv_layers*", "classifier.positional_emb", "classifier.attention_pool*",
              "classifier.norm*", "classifier.fc*"] + [f"classifier.blocks.{i}.*" for i in range(7)]


def names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


def assert_partition(model: nn.Module, patterns: list[str]) -> None:
    """Every pattern selects parameters, and each parameter is selected by exactly one pattern."""
    all_names = names(model)
    seen: list[str] = []
    for pat in patterns:
        seen += select([pat], all_names)
    assert sorted(seen) == sorted(all_names)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- registry


# Parameter counts at 10 classes, worked out from the layer shapes: LeNet5 156 + 2416 + 48120 + 10164 + 850;
# ResNet18-CIFAR and CCT-7/3x1 as the paper gives them (11.17M, 3.76M); torchvision's ResNet18 with its
# 1000-class head (513,000 parameters) replaced by a 10-class one (5,130).
COUNTS = {"lenet5": 61_706, "resnet18": 11_173_962, "resnet18-imagenet": 11_689_512 - 513_000 + 5_130,
          "cct7-3x1": 3_760_139}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_registered_models_have_known_sizes_and_train(name):
    """Each zoo model: its parameter count, a head of the configured width, finite gradients on every parameter."""
    in_channels = 1 if name == "lenet5" else 3
    assert n_params(build_model(ModelConfig(name, num_classes=10, in_channels=in_channels, image_size=32))) == \
        COUNTS[name]
    size = 16 if name == "cct7-3x1" else 32  # 64 tokens instead of 256: the same layers, faster
    torch.manual_seed(0)
    model = build_model(ModelConfig(name, num_classes=7, in_channels=in_channels, image_size=size)).train()
    out = model(torch.randn(4, in_channels, size, size))
    assert out.shape == (4, 7) and torch.isfinite(out).all()
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 3, 5, 6])).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


def test_lenet5_layers_are_the_classic_ones():
    model = build_model(ModelConfig("lenet5", num_classes=10, in_channels=1, image_size=32))
    assert [(n, tuple(p.shape)) for n, p in model.named_parameters()] == [
        ("conv1.weight", (6, 1, 5, 5)), ("conv1.bias", (6,)), ("conv2.weight", (16, 6, 5, 5)), ("conv2.bias", (16,)),
        ("fc1.weight", (120, 400)), ("fc1.bias", (120,)), ("fc2.weight", (84, 120)), ("fc2.bias", (84,)),
        ("fc3.weight", (10, 84)), ("fc3.bias", (10,))]
    assert list(MODELS) == ["lenet5", "resnet18", "resnet18-imagenet", "cct7-3x1"]
    with pytest.raises(ConfigError, match="unknown model 'lenet'"):
        build_model(ModelConfig("lenet"))


def test_lenet5_takes_mnist_sized_images():
    m28 = build_model(ModelConfig("lenet5", 10, 1, 28))
    m32 = build_model(ModelConfig("lenet5", 10, 1, 32))
    assert m28(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert [p.shape for p in m28.parameters()] == [p.shape for p in m32.parameters()]


# ---------------------------------------------------------------- ResNet18


def test_resnet18_cifar_has_torchvision_names_and_a_cifar_stem():
    model = resnet18_cifar(10)
    reference = torchvision.models.resnet18(num_classes=10)
    assert list(model.state_dict()) == list(reference.state_dict())
    for (name, p), q in zip(model.state_dict().items(), reference.state_dict().values()):
        assert p.shape == (q.shape if name != "conv1.weight" else (64, 3, 3, 3)), name
    assert model.conv1.stride == (1, 1) and isinstance(model.maxpool, nn.Identity)
    assert n_params(model) == 11_173_962
    assert_partition(model, RESNET18_PARTS)


def test_resnet18_cifar_forward_keeps_32x32_resolution_in_layer1():
    model = resnet18_cifar(100, in_channels=1).eval()
    seen = {}
    model.layer1.register_forward_hook(lambda m, i, o: seen.update(shape=o.shape))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 100)
    assert seen["shape"] == (2, 64, 32, 32)


def test_resnet18_imagenet_is_torchvisions():
    model = resnet18_imagenet()
    reference = torchvision.models.resnet18()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in reference.state_dict().items()}
    assert n_params(model) == n_params(reference) == 11_689_512
    assert_partition(model, RESNET18_PARTS)
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_weights_load_from_a_local_file(tmp_path, fmt):
    source = resnet18_imagenet()
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        save_file(source.state_dict(), str(path))
    else:
        torch.save({"state_dict": source.state_dict()}, path)  # wrapped, as training scripts save it
    model = load_torchvision_resnet18_weights(resnet18_imagenet(), path)
    for a, b in zip(source.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_weights_file_errors_are_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_torchvision_resnet18_weights(resnet18_imagenet(), tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint\n" * 10)
    with pytest.raises(CheckpointError, match="not a readable weights file") as e:
        load_torchvision_resnet18_weights(resnet18_imagenet(), garbage)
    assert "\n" not in str(e.value)
    cifar = tmp_path / "cifar.safetensors"
    save_file(resnet18_cifar(10).state_dict(), str(cifar))
    with pytest.raises(ModelMismatchError, match="conv1.weight"):
        load_torchvision_resnet18_weights(resnet18_imagenet(), cifar)


def test_torchvision_weights_offline_give_a_clear_error(monkeypatch):
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict", offline)
    with pytest.raises(CheckpointError, match="IMAGENET1K_V1") as e:
        load_torchvision_resnet18_weights(resnet18_imagenet(), None)
    assert "\n" not in str(e.value) and "download.pytorch.org" in str(e.value)


# ---------------------------------------------------------------- CCT-7/3x1


def test_cct7_names_follow_table1():
    model = cct7_3x1()
    assert_partition(model, CCT7_PARTS)
    assert not any(n.startswith("classifier.blocks.7.") for n in names(model))
    assert model.classifier.positional_emb.shape == (1, 256, 256)  # 16x16 tokens of width 256
    assert model.tokenizer.conv_layers[0][0].weight.shape == (256, 3, 3, 3)
    assert n_params(model) == 3_760_139  # the paper's "3.7M"
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_cct7_forward_backward_reaches_every_parameter():
    model = build_model(ModelConfig("cct7-3x1", num_classes=100, in_channels=3, image_size=16))  # 64 tokens: fast
    out = model.train()(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 100)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), model(x))  # no dropout or stochastic depth at evaluation


def test_cct_attention_is_multi_head_softmax_attention():
    torch.manual_seed(0)
    attn = Attention(dim=8, heads=2, attention_dropout=0.0).eval()
    x = torch.randn(3, 5, 8)
    q, k, v = attn.qkv(x).split(8, dim=-1)
    heads = []
    for h in range(2):
        s = slice(4 * h, 4 * h + 4)
        weights = (q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(4)).softmax(-1)
        heads.append(weights @ v[..., s])
    expected = attn.proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(attn(x), expected)


# ---------------------------------------------------------------- width


def resnet18_count(c: int, in_channels: int, classes: int, cifar: bool = True) -> int:
    """ResNet18's parameters from its stem width ``c`` (stages c, 2c, 4c, 8c), worked out layer by layer."""
    k = 3 if cifar else 7
    total = k * k * in_channels * c + 2 * c  # conv1, bn1
    planes_in = c
    for planes in (c, 2 * c, 4 * c, 8 * c):
        total += 9 * planes_in * planes + 9 * planes * planes + 4 * planes  # block 0: two 3x3 convs, two BNs
        if planes_in != planes:
            total += planes_in * planes + 2 * planes  # the 1x1 downsample and its BN
        total += 18 * planes * planes + 4 * planes  # block 1
        planes_in = planes
    return total + 8 * c * classes + classes  # fc


def cct7_count(d: int, in_channels: int, classes: int, tokens: int = 256) -> int:
    """CCT-7/3x1's parameters from its embedding dimension ``d`` (MLP 2d, 7 blocks)."""
    block = 2 * d + 3 * d * d + d * d + d + 2 * d + (d * 2 * d + 2 * d) + (2 * d * d + d)
    return 9 * in_channels * d + tokens * d + 7 * block + 2 * d + (d + 1) + d * classes + classes


def lenet5_count(c1: int, c2: int, h1: int, h2: int, classes: int = 10) -> int:
    return (25 * c1 + c1) + (25 * c1 * c2 + c2) + (25 * c2 * h1 + h1) + (h1 * h2 + h2) + (h2 * classes + classes)


@pytest.mark.parametrize("width, c", [(1.0, 64), (0.5, 32), (0.25, 16), (0.375, 24)])
def test_resnet18_channels_scale_with_width(width, c):
    for name, cifar in (("resnet18", True), ("resnet18-imagenet", False)):
        model = build_model(ModelConfig(name, num_classes=10, in_channels=3, width=width))
        assert n_params(model) == resnet18_count(c, 3, 10, cifar), name
        assert model.layer4[1].conv2.weight.shape == (8 * c, 8 * c, 3, 3)
        assert_partition(model, RESNET18_PARTS)  # Table 1's phases select the same parts at any width
    assert build_model(ModelConfig("resnet18", 10, 3, width=width))(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("width, d", [(1.0, 256), (0.5, 128), (0.25, 64), (0.3, 76)])
def test_cct7_embedding_scales_with_width(width, d):
    model = build_model(ModelConfig("cct7-3x1", num_classes=10, in_channels=3, image_size=32, width=width))
    assert n_params(model) == cct7_count(d, 3, 10)  # 0.3 x 256 = 76.8 -> 76, a multiple of the 4 heads
    assert model.classifier.positional_emb.shape == (1, 256, d)
    assert_partition(model, CCT7_PARTS)


@pytest.mark.parametrize("width, sizes", [(1.0, (6, 16, 120, 84)), (0.5, (3, 8, 60, 42)), (2.0, (12, 32, 240, 168))])
def test_lenet5_units_scale_with_width(width, sizes):
    model = build_model(ModelConfig("lenet5", 10, 1, 32, width=width))
    assert n_params(model) == lenet5_count(*sizes)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_counts_at_a_quarter_width_are_a_sixteenth_of_the_convolutions():
    """What the widths say, as ratios: the 3x3 convolutions, most of ResNet18, shrink as width squared."""
    full = build_model(ModelConfig("resnet18", 10, 3))
    quarter = build_model(ModelConfig("resnet18", 10, 3, width=0.25))
    def convs(m):
        return sum(p.numel() for n, p in m.named_parameters() if p.dim() == 4 and n != "conv1.weight")
    assert convs(full) == 16 * convs(quarter)
    assert 15 < n_params(full) / n_params(quarter) < 16


def test_every_shipped_config_builds_the_papers_model_at_the_default_width():
    """No paper config sets a width, and each builds the model it built before width existed."""
    from llpf.config import load_config, shipped_configs

    for name in shipped_configs():
        m = load_config(name).model
        if m.name.startswith("torchvision:"):
            continue  # architectures by name carry their own width (tests/test_torchvision_models.py)
        assert m.width == 1.0, name
        expected = {"lenet5": lenet5_count(6, 16, 120, 84, m.num_classes),
                    "resnet18": resnet18_count(64, m.in_channels, m.num_classes),
                    "resnet18-imagenet": resnet18_count(64, m.in_channels, m.num_classes, cifar=False),
                    "cct7-3x1": cct7_count(256, m.in_channels, m.num_classes)}[m.name]
        assert n_params(build_model(m)) == expected, name


@pytest.mark.parametrize("cifar", [True, False])
def test_resnet18_at_width_one_computes_torchvisions_function(cifar):
    """Loaded with a torchvision ResNet18's weights, llpf's gives the same outputs: the same model, not a look-alike."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10)
    if cifar:
        reference.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        reference.maxpool = nn.Identity()
    model = (resnet18_cifar if cifar else resnet18_imagenet)(10)
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), reference.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("width", [0.0, -0.5, float("nan"), float("inf")])
def test_a_width_that_is_not_a_positive_number_is_one_config_error(width):
    from llpf.config import config_from_dict

    with pytest.raises(ConfigError, match="width"):
        build_model(config_from_dict({"model": {"name": "resnet18", "in_channels": 3, "width": width}}).model)


def test_resnet18_is_initialised_as_torchvision_initialises_it():
    """Kaiming normal (fan-out, ReLU) for every convolution, BatchNorm at weight 1 and bias 0, at any width."""
    torch.manual_seed(0)
    for width in (1.0, 0.25):
        model = resnet18_cifar(10, width=width)
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                assert m.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.15), name
            elif isinstance(m, nn.BatchNorm2d):
                assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any(), name
