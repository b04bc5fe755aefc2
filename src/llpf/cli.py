"""The ``llpf`` command.

``llpf demo`` runs the whole method offline on scikit-learn's digits;
``train``, ``m2m``, ``m2o``, ``resume`` and ``plot`` work on configs, weight
files and run directories. A user mistake prints one line and exits 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import __version__
from .errors import LLPFError


def _device_arg(p):
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")


def _quiet_arg(p):
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="llpf", description="Explore the low-loss space of neural networks.")
    ap.add_argument("--version", action="version", version=f"llpf {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="train two LeNet5 on digits, run M2M and M2O, print a summary")
    p.add_argument("--out", default=None, help="output directory (default: runs/demo-TIMESTAMP)")
    _device_arg(p)
    _quiet_arg(p)

    p = sub.add_parser("train", help="train an endpoint model (paper Table 3)")
    p.add_argument("config", help="TOML file or shipped config name")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    _device_arg(p)
    _quiet_arg(p)

    for kind, helptext in (("m2m", "low-loss path between two models (Algorithm 1)"),
                           ("m2o", "low-loss path toward the origin (Algorithm 2)")):
        p = sub.add_parser(kind, help=helptext)
        p.add_argument("config", help="TOML file or shipped config name")
        p.add_argument("--start", required=True, help="start model weights")
        if kind == "m2m":
            p.add_argument("--dest", required=True, help="destination model weights")
        p.add_argument("--out", required=True, help="run directory to create")
        p.add_argument("--force", action="store_true", help="replace an unfinished run in --out")
        p.add_argument("--resume", action="store_true", help="continue the unfinished run in --out")
        _device_arg(p)
        _quiet_arg(p)

    p = sub.add_parser("resume", help="continue an interrupted run from its last checkpoint")
    p.add_argument("run")
    _device_arg(p)
    _quiet_arg(p)

    p = sub.add_parser("plot", help="(re)draw a run directory's figures")
    p.add_argument("runs", nargs="+")

    p = sub.add_parser("configs", help="list the shipped configs")

    p = sub.add_parser("reproduce", help="run one of the paper's experiments with repetitions, aggregate figure and table")
    p.add_argument("name", nargs="?", help="experiment name (see --list) or a TOML file")
    p.add_argument("--list", action="store_true", help="list the paper's experiments")
    p.add_argument("--reps", type=int, default=1, help="repetitions (default 1)")
    p.add_argument("--out", default=None, help="output directory; re-running the same command continues it")
    p.add_argument("--data-dir", default=None, help="dataset folder (sets data.root)")
    p.add_argument("--start", default=None, help="start model weights instead of training endpoints")
    p.add_argument("--dest", default=None, help="M2M: destination model weights instead of training")
    p.add_argument("--dry-run", action="store_true",
                   help="check the config on random tensors, time two iterations, print the plan; train nothing")
    p.add_argument("--dry-run-batch", type=int, default=None, help=argparse.SUPPRESS)
    _device_arg(p)
    _quiet_arg(p)
    return ap


def _print_summary(kind: str, s: dict, out=sys.stdout) -> None:
    if kind == "m2m":
        worst = max(s["final_distance"], key=lambda k: s["final_distance"][k] / max(s["initial_distance"][k], 1e-12))
        print(f"M2M path: {'VALID' if s['valid'] else 'NOT valid'} ({s['status']}, {s['iterations']} iterations)\n"
              f"  max training-set loss {s['max_train_loss']:.4f} (threshold {s['loss_threshold']}), "
              f"max batch loss {s['max_batch_loss']:.4f}\n"
              f"  final/initial distance: at most {s['final_relative_distance_max']:.3f} ({worst}); "
              f"every layer at its variance-sphere floor: {'yes' if s['floor_reached'] else 'no'}", file=out)
        if "straight_line_max_train_loss" in s:
            print(f"  straight line between the same endpoints peaks at training loss "
                  f"{s['straight_line_max_train_loss']:.4f}", file=out)
    else:
        sel = s["selected_on"]
        print(f"M2O path: {s['status']}, {s['iterations']} iterations, final variance ratio "
              f"{s['final_variance_ratio']:.3f}\n"
              f"  start {sel} loss {s[f'start_{sel}_loss']:.4f}, accuracy {s.get(f'start_{sel}_accuracy', float('nan')):.4f}\n"
              f"  best  {sel} loss {s[f'best_{sel}_loss']:.4f}, accuracy {s.get(f'best_{sel}_accuracy', float('nan')):.4f}"
              f" at iteration {s['best_iteration']} (variance ratio {s['best_variance_ratio']:.3f})", file=out)


def cmd_demo(args) -> int:
    from .demo import run_demo

    out = Path(args.out) if args.out else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    result = run_demo(out, device=args.device, progress=not args.quiet)
    _print_summary("m2m", result["m2m"])
    _print_summary("m2o", result["m2o"])
    print(f"Runs and figures under {out}/ (m2m/figures/path.png, m2o/figures/path.png)")
    return 0


def cmd_train(args) -> int:
    from .config import load_config
    from .runner import train

    cfg = load_config(args.config)
    m = train(cfg, args.seed, args.out, device=args.device, progress=not args.quiet)
    print(f"wrote {args.out}: train loss {m['train']['loss']:.4f} accuracy {m['train']['accuracy']:.4f}; "
          f"test loss {m['test']['loss']:.4f} accuracy {m['test']['accuracy']:.4f}")
    return 0


def cmd_path(args) -> int:
    from .config import load_config
    from .runner import resume, run_path

    if args.resume:
        s = resume(args.out, device=args.device, progress=not args.quiet)
    else:
        cfg = load_config(args.config)
        s = run_path(args.command, cfg, args.start, getattr(args, "dest", None), args.out, device=args.device,
                     force=args.force, progress=not args.quiet)
    return _report(args.command, s, args.out)


def _report(kind: str, s: dict, out) -> int:
    if not s:
        print(f"interrupted; continue with: llpf resume {out}")
        return 130
    _print_summary(kind, s)
    print(f"run directory: {out}")
    if s["status"] != "complete":
        print(f"llpf: run failed: {s.get('reason')}", file=sys.stderr)
        return 1
    return 0


def cmd_resume(args) -> int:
    from .runner import resume
    from .store import RunDir

    kind = RunDir(args.run).info().get("kind", "m2m")
    return _report(kind, resume(args.run, device=args.device, progress=not args.quiet), args.run)


def cmd_plot(args) -> int:
    from .plots import path_figure

    for r in args.runs:
        print(path_figure(r))
    return 0


def cmd_configs(args) -> int:
    from .config import load_config, shipped_configs

    for name in shipped_configs():
        print(f"{name:28s} {load_config(name).description}")
    return 0


def cmd_reproduce(args) -> int:
    from .config import load_config
    from .errors import ConfigError
    from .reproduce import dry_run, experiments, reproduce

    if args.list:
        for name in experiments():
            print(f"{name:28s} {load_config(name).description}")
        return 0
    if not args.name:
        raise ConfigError("name an experiment (llpf reproduce --list shows them)")
    if args.dry_run:
        dry_run(args.name, data_dir=args.data_dir, device=args.device, batch_size=args.dry_run_batch)
        return 0
    if not args.out:
        raise ConfigError("--out is required (the directory that holds the endpoints, repetitions and aggregate)")
    result = reproduce(args.name, args.reps, args.out, data_dir=args.data_dir, device=args.device,
                       start=args.start, dest=args.dest, progress=not args.quiet)
    print(Path(args.out, "summary.md").read_text(), end="")
    print(f"figure: {Path(args.out, 'figure.png')}")
    return 0 if result["aggregate"]["repetitions"] else 1


COMMANDS = {"demo": cmd_demo, "train": cmd_train, "m2m": cmd_path, "m2o": cmd_path, "resume": cmd_resume,
            "plot": cmd_plot, "configs": cmd_configs, "reproduce": cmd_reproduce}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except LLPFError as e:
        print(f"llpf: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llpf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
