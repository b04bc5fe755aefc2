"""One command per path method (``m2m``, ``m2o`` and the baselines ``autoneb``, ``bezier``, ``line``), ``resume`` and ``plot``."""
from __future__ import annotations

from .common import at_least, config_arg, device_arg, exit_code, fast_args, fast_overrides, quiet_arg, require

METHODS = (("m2m", "low-loss path between two models (Algorithm 1)"),
           ("m2o", "low-loss path toward the origin (Algorithm 2)"),
           ("autoneb", "baseline: AutoNEB between two models (Draxler et al. 2018; [autoneb] table)"),
           ("bezier", "baseline: a one-bend curve between two models (Garipov et al. 2018; [bezier])"),
           ("line", "baseline: the straight line between two models, as a run ([line] table)"))


def add(sub) -> None:
    for kind, helptext in METHODS:
        p = sub.add_parser(kind, help=helptext)
        config_arg(p)
        p.add_argument("--start", "--start-model", dest="start", required=True,
                       help="start model weights (--start-model under torchrun, whose own --start-method takes --start)")
        if kind != "m2o":
            p.add_argument("--dest", "--dest-model", dest="dest", required=True, help="destination model weights")
            p.add_argument("--align", action="store_true",
                           help="first reorder the destination's hidden units to match the start's (weight matching; "
                                "its function is kept, llpf align); the summary records the straight line's barrier "
                                "before and after")
        if kind == "m2m":
            p.add_argument("--segments", action="store_true",
                           help="afterwards, certify the straight segments between saved points (llpf segments)")
            p.add_argument("--segment-points", type=at_least(1), default=5,
                           help="interior points per segment (default 5)")
        p.add_argument("--out", required=True, help="run directory to create")
        p.add_argument("--force", action="store_true", help="replace an unfinished run in --out")
        p.add_argument("--resume", action="store_true",
                       help="continue the unfinished run in --out (start it when there is none)")
        device_arg(p)
        if kind in ("m2m", "m2o"):
            fast_args(p)
        quiet_arg(p)
        p.set_defaults(handler=path)

    p = sub.add_parser("resume", help="continue an interrupted run from its last checkpoint")
    p.add_argument("run")
    device_arg(p)
    quiet_arg(p)
    p.set_defaults(handler=resume)

    p = sub.add_parser("plot", help="(re)draw a run directory's figures")
    p.add_argument("runs", nargs="+")
    p.set_defaults(handler=plot)


def path(args) -> int:
    from .. import distributed as D
    from ..config import load_config
    from ..runner import resume, run_path
    from ..store import RunDir
    from .summaries import report

    if args.resume and D.on_main(lambda: RunDir(args.out).exists):
        aligned = D.on_main(lambda: RunDir(args.out).info().get("inputs", {}).get("aligned", False))
        require(aligned == getattr(args, "align", False), f"{args.out} holds a run {'with' if aligned else 'without'} "
                f"--align; continue it with the same command, or start another with --force")
        s = resume(args.out, device=args.device, progress=not args.quiet)
    else:
        cfg = load_config(args.config)
        pc = getattr(cfg, args.command)
        for key, value in fast_overrides(args).items():
            if pc is not None:
                setattr(pc, key, value)
        s = run_path(args.command, cfg, args.start, getattr(args, "dest", None), args.out, device=args.device,
                     force=args.force, progress=not args.quiet, align=getattr(args, "align", False))
    if not D.is_main():
        return exit_code(s)
    if getattr(args, "segments", False) and s and s["status"] == "complete":
        from ..analysis.barriers import path_segments, write_segments

        res = path_segments(args.out, points_per_segment=args.segment_points, device=args.device,
                            progress=not args.quiet)
        write_segments(args.out, res)
        s["segment_max_train_loss"] = res["segment_max_train_loss"]
        print(f"  straight segments between saved points peak at training loss {res['segment_max_train_loss']:.4f} "
              f"(saved points: {res['point_max_train_loss']:.4f}, {args.segment_points} points per segment)")
    return report(args.command, s, args.out)


def resume(args) -> int:
    from .. import distributed as D
    from ..runner import resume
    from ..store import RunDir
    from .summaries import report

    s = resume(args.run, device=args.device, progress=not args.quiet)
    if not D.is_main():
        return exit_code(s)
    return report(RunDir(args.run).info().get("kind", "m2m"), s, args.run)


def plot(args) -> int:
    from ..plots import path_figure

    for r in args.runs:
        print(path_figure(r))
    return 0
