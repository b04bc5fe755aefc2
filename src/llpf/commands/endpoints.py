"""``llpf demo``, ``llpf train`` and ``llpf configs``: the offline demo, endpoint models, the shipped configs."""
from __future__ import annotations

import time
from pathlib import Path

from .common import config_arg, device_arg, quiet_arg


def add(sub) -> None:
    p = sub.add_parser("demo", help="train two LeNet5 on digits, run M2M and M2O, print a summary")
    p.add_argument("--out", default=None, help="output directory (default: runs/demo-TIMESTAMP)")
    device_arg(p)
    quiet_arg(p)
    p.set_defaults(handler=demo)

    p = sub.add_parser("train", help="train an endpoint model (paper Table 3)")
    config_arg(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    p.add_argument("--recipe", choices=("start", "dest"), default="start",
                   help="start: the [train] table (default); dest: [train] with the config's [train.dest] over it")
    device_arg(p)
    quiet_arg(p)
    p.set_defaults(handler=train)

    p = sub.add_parser("configs", help="list the shipped configs")
    p.set_defaults(handler=configs)


def demo(args) -> int:
    from ..demo import run_demo
    from .summaries import print_summary

    out = Path(args.out) if args.out else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    result = run_demo(out, device=args.device, progress=not args.quiet)
    print_summary("m2m", result["m2m"])
    print_summary("m2o", result["m2o"])
    print(f"Runs and figures under {out}/ (m2m/figures/path.png, m2o/figures/path.png)")
    return 0


def train(args) -> int:
    from .. import distributed as D
    from ..config import load_config
    from ..runner import train

    cfg = load_config(args.config)
    m = train(cfg, args.seed, args.out, device=args.device, progress=not args.quiet, recipe=args.recipe)
    if not D.is_main():
        return 0
    print(f"wrote {args.out}: train loss {m['train']['loss']:.4f} accuracy {m['train']['accuracy']:.4f}; "
          f"test loss {m['test']['loss']:.4f} accuracy {m['test']['accuracy']:.4f}")
    return 0


def configs(args) -> int:
    from ..config import load_config, shipped_configs

    for name in shipped_configs():
        print(f"{name:28s} {load_config(name).description}")
    return 0
