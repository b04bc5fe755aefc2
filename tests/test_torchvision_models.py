"""torchvision's architectures by name (``torchvision:<builder>``): width, input channels, the CIFAR stem, M2M on
them, ``llpf layers``, the shipped config, and bad input as one line."""
import pytest
import torch
from torch import nn

import llpf
from llpf.cli import main
from llpf.config import ModelConfig, PathConfig, Phase
from llpf.data import Split
from llpf.errors import ConfigError
from llpf.models import build_model, draws_random_numbers
from llpf.schedule import layer_groups, normalisation_parameters, select

torch.set_num_threads(1)

# The four families the acceptance names, one builder each.
FAMILIES = ["mobilenet_v2", "shufflenet_v2_x0_5", "efficientnet_b0", "regnet_y_400mf"]


def tv(name: str, **kw) -> ModelConfig:
    return ModelConfig(f"torchvision:{name}", **{"num_classes": 10, "in_channels": 3, "image_size": 32, **kw})


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def stem_resolution(model: nn.Module, x: torch.Tensor) -> int:
    """The spatial size after the stem: the input of the second convolution."""
    seen = []
    second = [m for m in model.modules() if isinstance(m, nn.Conv2d)][1]
    handle = second.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[-1]))
    model.eval()(x)
    handle.remove()
    return seen[0]


@pytest.fixture(scope="module")
def random_split():
    g = torch.Generator().manual_seed(0)
    return Split(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g))


@pytest.mark.parametrize("name", FAMILIES)
def test_cifar_stem_builds_and_runs_two_m2m_iterations(name, random_split):
    torch.manual_seed(0)
    cifar, default = build_model(tv(name, stem="cifar")), build_model(tv(name))
    conv = first_conv(cifar)
    assert (conv.kernel_size, conv.stride, conv.padding, conv.in_channels) == ((3, 3), (1, 1), (1, 1), 3)
    assert [n for n, _ in cifar.named_parameters()] == [n for n, _ in default.named_parameters()]
    x = random_split.x[:2]
    assert stem_resolution(cifar, x) == 32  # no early downsampling
    assert stem_resolution(default, x) < 32
    assert cifar(x).shape == (2, 10)
    torch.manual_seed(1)
    dest = build_model(tv(name, stem="cifar"))
    cfg = PathConfig(phases=[Phase(iterations=2, step_a=0.1, rounds=1)], batch_size=4, lr=1e-3, eval_every=2,
                     save_every=2, checkpoint_every=2, loss_threshold=100.0)
    res = llpf.m2m(cifar, dest, random_split, cfg, eval_sets={"train": random_split}, device="cpu")
    s = res.summary
    assert s["status"] == "complete" and s["iterations"] == 2 and s["max_train_loss"] < 100
    apart = [n for n, d in s["initial_distance"].items() if d > 0]  # fresh BatchNorm weights are all ones in both
    assert apart and all(s["final_distance"][n] < s["initial_distance"][n] for n in apart)


def test_torchvision_resnet18_with_the_cifar_stem_is_llpfs_resnet18():
    ours, theirs = build_model(ModelConfig("resnet18", 10, 3, 32)), build_model(tv("resnet18", stem="cifar"))
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in theirs.named_parameters()]
    assert isinstance(theirs.maxpool, nn.Identity)


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_models_with_auxiliary_classifiers_train_on_one_output(name):
    """Built with aux_logits on, their training forward pass returns a tuple and cross-entropy fails on it."""
    model = build_model(tv(name, num_classes=3)).train()
    out = model(torch.randn(2, 3, 80, 80))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 2])).backward()


def test_width_channels_and_random_draws():
    half, full = build_model(tv("mobilenet_v2", width=0.5)), build_model(tv("mobilenet_v2"))
    assert first_conv(half).out_channels == 16 and first_conv(full).out_channels == 32
    assert sum(p.numel() for p in half.parameters()) < sum(p.numel() for p in full.parameters()) / 2
    grey = build_model(tv("shufflenet_v2_x0_5", in_channels=1, stem="cifar"))
    assert first_conv(grey).in_channels == 1 and grey(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    grey = first_conv(build_model(tv("resnet18", in_channels=1)))  # the builder's own stem, one input channel
    assert (grey.in_channels, grey.kernel_size, grey.stride, grey.out_channels) == (1, (7, 7), (2, 2), 64)
    assert draws_random_numbers(tv("mobilenet_v2")) and not draws_random_numbers(tv("shufflenet_v2_x0_5"))


def test_no_pretrained_weights_are_ever_fetched(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    assert build_model(tv("mobilenet_v3_small", width=0.5, stem="cifar"))(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("cfg, says", [
    (tv("mobilenetv2"), "torchvision has no classification model 'mobilenetv2' (did you mean mobilenet_v2"),
    (tv("resnet18", width=0.5), "model.width: torchvision:resnet18 takes no width multiplier"),
    (tv("vit_b_16", stem="cifar"), "model.stem: torchvision:vit_b_16 embeds image patches"),
    (ModelConfig("lenet5", stem="cifar"), "model.stem applies to torchvision:<builder> models"),
])
def test_bad_models_are_named(cfg, says):
    with pytest.raises(ConfigError) as e:
        build_model(cfg)
    assert says in str(e.value)


@pytest.mark.parametrize("model, says", [
    ('name = "torchvision:mobilenetv2"', "no classification model 'mobilenetv2'"),
    ('name = "torchvision:resnet18"\nwidth = 0.5', "takes no width multiplier"),
])
def test_bad_models_are_one_line_and_exit_2_before_training(tmp_path, capsys, model, says):
    (tmp_path / "c.toml").write_text(f"[model]\n{model}\nin_channels = 3\n")
    for argv in (["layers", str(tmp_path / "c.toml")],
                 ["train", str(tmp_path / "c.toml"), "--out", str(tmp_path / "w.safetensors")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("llpf: error: ") and err.count("\n") == 1 and says in err
    assert not (tmp_path / "w.safetensors").exists()


def test_layers_lists_every_parameter_by_module_in_order_and_marks_normalisation(tmp_path, capsys):
    (tmp_path / "c.toml").write_text('[model]\nname = "torchvision:shufflenet_v2_x0_5"\nin_channels = 3\n'
                                     'stem = "cifar"\n')
    assert main(["layers", str(tmp_path / "c.toml")]) == 0
    out = capsys.readouterr().out.splitlines()
    model = build_model(tv("shufflenet_v2_x0_5", stem="cifar"))
    groups = layer_groups(model)
    assert [g.module for g in groups] == list(dict.fromkeys(n.rsplit(".", 1)[0] for n, _ in model.named_parameters()))
    assert out[0].startswith(f"torchvision:shufflenet_v2_x0_5: {sum(p.numel() for p in model.parameters()):,} "
                             f"parameters in {len(list(model.parameters()))} tensors")
    rows = out[2:2 + len(groups)]
    norm = normalisation_parameters(model)
    for g, row in zip(groups, rows):
        cells = row.split()
        assert cells[0] == g.module and cells[-1] == f"{g.size:,}"
        assert ("*" in cells) == all(f"{g.module}.{n}" in norm for n, _ in g.parameters) == g.normalisation
    assert out[1].split()[:2] == ["module", "type"] and out[-1].startswith("* normalisation layer")


def test_a_phase_pattern_that_matches_nothing_names_itself():
    names = tuple(n for n, _ in build_model(tv("mobilenet_v2", width=0.5)).named_parameters())
    assert len(select(["features.17.*"], names)) > 0
    with pytest.raises(ConfigError, match=r"'features\.19\.\*' matches no parameter.*llpf layers CONFIG"):
        select(["features.19.*"], names)


def test_the_shipped_torchvision_config_is_listed_and_passes_a_dry_run(capsys):
    assert main(["configs"]) == 0
    assert "mobilenetv2-cifar10-m2m" in capsys.readouterr().out
    assert main(["reproduce", "mobilenetv2-cifar10-m2m", "--dry-run", "--device", "cpu", "--dry-run-batch", "2"]) == 0
    out = capsys.readouterr().out
    model = build_model(llpf.load_config("mobilenetv2-cifar10-m2m").model)
    count, tensors = sum(p.numel() for p in model.parameters()), len(list(model.parameters()))
    assert count < sum(p.numel() for p in build_model(tv("mobilenet_v2")).parameters()) / 2
    assert f"torchvision:mobilenet_v2: {count:,} parameters in {tensors} layers" in out
    assert f"phase 5: iterations 25001-35000, {tensors} layers moved" in out
