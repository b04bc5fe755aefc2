"""The fast path of Train_r's steps (bf16 autocast, channels_last inputs, torch.compile), forced on the CPU, against
the plain steps: the same path within bf16's precision, BatchNorm statistics kept in float32."""
import copy

import pytest
import torch
from torch import nn

from llpf.config import PathConfig, Phase
from llpf.data import Split
from llpf.errors import ConfigError
from llpf.fast import FastPath, fast_path
from llpf.methods import M2M, BatchedM2O
from llpf.models.lenet5 import LeNet5
from tiny import ConvBN


@pytest.fixture(scope="module")
def split(digits):
    return Split(digits.train.x[:256], digits.train.y[:256])


def test_fp32_by_default_bf16_when_named_and_auto_is_on_with_cuda_only():
    conv, mlp = LeNet5(), nn.Sequential(nn.Linear(4, 3))
    default = PathConfig()  # the paper's fp32 steps; channels_last (layout only) on with CUDA
    assert fast_path(default, "cuda", conv) == FastPath(channels_last=True)
    assert fast_path(default, "cuda", mlp) == FastPath()  # channels_last is for conv nets
    auto = PathConfig(bf16="auto")
    assert fast_path(auto, "cuda", conv) == FastPath(bf16=True, channels_last=True)
    assert fast_path(auto, "cuda", mlp) == FastPath(bf16=True)
    assert fast_path(auto, "cpu", conv) == FastPath()
    assert fast_path(PathConfig(bf16="off", channels_last="off"), "cuda", conv) == FastPath()
    assert fast_path(PathConfig(bf16="on", channels_last="on", compile=True), "cpu", conv) == FastPath(True, True, True)
    with pytest.raises(ConfigError, match="bf16 must be one of auto, on, off"):
        from llpf.config import path_config
        path_config({"bf16": "yes"})


@pytest.fixture(scope="module")
def rgb(split):
    """Three-channel images (channels_last changes nothing for one channel)."""
    return Split(split.x.repeat(1, 3, 1, 1), split.y)


def _m2m(split, fast: dict, steps=4):
    """M2M iterations of r = 3 steps of a three-channel LeNet5, recording what conv1 saw and computed."""
    torch.manual_seed(0)
    a, b = LeNet5(in_channels=3), LeNet5(in_channels=3)
    cfg = PathConfig(phases=[Phase(iterations=steps, step_a=0.05, rounds=3)], batch_size=32, lr=0.05, **fast)
    m = M2M(a, cfg, split, dest=b, device="cpu")
    seen = []
    m.model.conv1.register_forward_hook(lambda mod, inp, out: seen.append((inp[0], out.dtype)))
    losses = torch.stack([m.iterate(i, m.schedule[0])[0] for i in range(1, steps + 1)])
    return m, losses, seen


def test_bf16_and_channels_last_steps_follow_the_plain_path(rgb):
    plain, plain_losses, seen = _m2m(rgb, {})
    assert all(dtype == torch.float32 and x.is_contiguous() for x, dtype in seen)
    fast, fast_losses, seen = _m2m(rgb, {"bf16": "on", "channels_last": "on"})
    assert fast.train_r.fast == FastPath(bf16=True, channels_last=True)
    assert all(dtype == torch.bfloat16 for _, dtype in seen)  # the convolutions ran in bf16
    assert all(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() for x, _ in seen)
    assert fast.fp.flat.dtype == torch.float32 and fast_losses.dtype == torch.float32
    assert not torch.equal(fast_losses, plain_losses)
    torch.testing.assert_close(fast_losses, plain_losses, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(fast.fp.flat, plain.fp.flat, rtol=0, atol=2e-3)
    assert plain.numerics() == {"parameters": "float32", "train_steps": "float32", "channels_last": False,
                                "compile": False}
    assert fast.numerics()["train_steps"] == "bf16 autocast (float32 parameters)"


def test_summary_json_records_the_numerics_a_path_ran_with(split):
    """The paper's fp32 by default; bf16 when named; a baseline's steps in its parameters' dtype."""
    import llpf

    torch.manual_seed(0)
    a, b = LeNet5(), LeNet5()
    cfg = dict(phases=[Phase(iterations=2, step_a=0.05, rounds=1)], batch_size=32, eval_every=2, save_every=2)
    for extra, steps in (({}, "float32"), ({"bf16": "on"}, "bf16 autocast (float32 parameters)")):
        s = llpf.m2m(a, b, split, PathConfig(**cfg, **extra), device="cpu").summary
        assert s["numerics"]["parameters"] == "float32" and s["numerics"]["train_steps"] == steps
    s = llpf.find_path("bezier", a, split, {"steps": 2, "batch_size": 32}, dest=b, device="cpu").summary
    assert s["numerics"]["train_steps"] == "float32"


def test_batched_bf16_steps_keep_batchnorm_statistics_in_float32(split):
    torch.manual_seed(0)
    starts = [ConvBN() for _ in range(2)]
    cfg = dict(phases=[Phase(iterations=3, step_a=0.05, rounds=3)], batch_size=32, lr=0.01)
    plain = BatchedM2O(copy.deepcopy(starts), PathConfig(**cfg), split, device="cpu")
    fast = BatchedM2O(copy.deepcopy(starts), PathConfig(**cfg, bf16="on"), split, device="cpu")
    for m in (plain, fast):
        for i in (1, 2, 3):
            m.iterate(i, m.schedule[0])
    for name in ("norm.running_mean", "norm.running_var"):
        b, ref = fast.bp.buffers[name], plain.bp.buffers[name]
        assert b.dtype == torch.float32 and not torch.equal(b, ref)
        torch.testing.assert_close(b, ref, rtol=1e-2, atol=1e-3)
    moved = (plain.bp.flat - plain.start_flat).norm(dim=1)
    assert ((fast.bp.flat - plain.bp.flat).norm(dim=1) < 0.02 * moved).all()  # the same path, within 2% of its way


def test_a_compiled_step_gives_the_plain_steps(rgb, monkeypatch):
    """torch.compile of the step (with a backend that needs no C++ compiler, to keep the test short)."""
    real, compiled = torch.compile, []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or real(fn, backend="aot_eager"))
    plain, plain_losses, _ = _m2m(rgb, {}, steps=2)
    fast, fast_losses, _ = _m2m(rgb, {"compile": True}, steps=2)
    assert len(compiled) == 1
    torch.testing.assert_close(fast_losses, plain_losses)
    torch.testing.assert_close(fast.fp.flat, plain.fp.flat)
