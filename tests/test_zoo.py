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
