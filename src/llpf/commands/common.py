"""What the command modules share: argument types and flags, and how a run's outcome becomes an exit code."""
from __future__ import annotations

import argparse
import math

from ..errors import ConfigError


def at_least(low: int):
    """An argparse type: an integer >= ``low``, named in the error when it is not."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def number(low: float, high: float | None = None, *, open_low: bool = False):
    """An argparse type: a finite number, at least ``low`` (above it with ``open_low``) and below ``high``."""
    where = f"{'above' if open_low else 'at least'} {low:g}" + (f" and below {high:g}" if high is not None else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        inside = value > low if open_low else value >= low
        if not (math.isfinite(value) and inside and (high is None or value < high)):
            raise argparse.ArgumentTypeError(f"must be a finite number {where}, got {text}")
        return value
    parse.__name__ = "number"
    return parse


def device_arg(p) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")


def quiet_arg(p) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def force_arg(p, help="write into a non-empty --out folder (never a run directory)") -> None:
    p.add_argument("--force", action="store_true", help=help)


def config_arg(p, help="TOML file or shipped config name") -> None:
    p.add_argument("config", help=help)


def recompute_bn_arg(p, help="recompute BatchNorm statistics at every evaluated point "
                             "(auto: when the model has BatchNorm)") -> None:
    p.add_argument("--recompute-bn", choices=("auto", "yes", "no"), default="auto", help=help)


def recompute(choice: str):
    """``--recompute-bn``'s value as the library takes it: None (auto), True or False."""
    return {"auto": None, "yes": True, "no": False}[choice]


def fast_args(p) -> None:
    """The fast path of Train_r's steps (llpf.fast): bf16 when asked for, channels_last on with CUDA unless turned off."""
    p.add_argument("--bf16", action="store_true",
                   help="Train_r's steps in bf16 autocast: faster on GPUs, but not the paper's fp32 numerics "
                        "(recorded in summary.json)")
    p.add_argument("--no-channels-last", action="store_true", help="keep conv nets' inputs NCHW on CUDA too")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (off by default)")


def fast_overrides(args) -> dict:
    """The path-table settings the fast-path flags ask for (only those given)."""
    out = {}
    if getattr(args, "bf16", False):
        out["bf16"] = "on"
    if getattr(args, "no_channels_last", False):
        out["channels_last"] = "off"
    if getattr(args, "compile", False):
        out["compile"] = True
    return out


def exit_code(s: dict) -> int:
    """130 for an interrupted run, 1 for a failed one, 0 for a complete one."""
    return 130 if not s else 0 if s["status"] == "complete" else 1


def require(condition: bool, message: str) -> None:
    """A check beside a parser: a false condition is the user's mistake, one line and exit 2."""
    if not condition:
        raise ConfigError(message)
