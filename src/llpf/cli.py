"""The ``llpf`` command.

``llpf demo`` runs the whole method offline on scikit-learn's digits;
``train``, ``m2m``, ``m2o``, the baselines ``autoneb``, ``bezier`` and
``line``, ``resume`` and ``plot`` work on configs, weight files and run
directories; ``compare`` runs them all on the same pairs. A user mistake
prints one line and exits 2.
"""
from __future__ import annotations

import argparse
import sys
import warnings
import time
from pathlib import Path

from . import __version__
from .errors import LLPFError


def _device_arg(p):
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")


def _quiet_arg(p):
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _fast_args(p):
    """The fast path of Train_r's steps (llpf.fast): bf16 and channels_last are on with CUDA unless turned off."""
    p.add_argument("--no-bf16", action="store_true", help="train in full precision on CUDA too (no bf16 autocast)")
    p.add_argument("--no-channels-last", action="store_true", help="keep conv nets' inputs NCHW on CUDA too")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (off by default)")


def _fast_overrides(args) -> dict:
    """The path-table settings the fast-path flags ask for (only those given)."""
    out = {}
    if getattr(args, "no_bf16", False):
        out["bf16"] = "off"
    if getattr(args, "no_channels_last", False):
        out["channels_last"] = "off"
    if getattr(args, "compile", False):
        out["compile"] = True
    return out


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

    _path_parsers(sub)
    _compare_parser(sub)

    p = sub.add_parser("resume", help="continue an interrupted run from its last checkpoint")
    p.add_argument("run")
    _device_arg(p)
    _quiet_arg(p)

    p = sub.add_parser("plot", help="(re)draw a run directory's figures")
    p.add_argument("runs", nargs="+")

    p = sub.add_parser("configs", help="list the shipped configs")

    _reproduce_parser(sub)
    _analysis_parsers(sub)
    _run_analysis_parsers(sub)
    return ap


def _reproduce_parser(sub) -> None:
    """``llpf reproduce`` (the paper's experiments) and ``llpf bench`` (what llpf costs)."""
    p = sub.add_parser("reproduce", help="run one of the paper's experiments with repetitions, aggregate figure and table")
    p.add_argument("name", nargs="?", help="experiment name (see --list) or a TOML file")
    p.add_argument("--list", action="store_true", help="list the paper's experiments")
    p.add_argument("--reps", type=int, default=1, help="repetitions (default 1); under torchrun dealt to the ranks")
    p.add_argument("--method", choices=("m2m", "m2o"), default=None,
                   help="the path method, for a config that has both tables (such as demo)")
    p.add_argument("--out", default=None, help="output directory; re-running the same command continues it")
    p.add_argument("--data-dir", default=None, help="dataset folder (sets data.root)")
    p.add_argument("--start", "--start-model", dest="start", default=None,
                   help="start model weights instead of training endpoints (--start-model under torchrun)")
    p.add_argument("--dest", "--dest-model", dest="dest", default=None,
                   help="M2M: destination model weights instead of training")
    p.add_argument("--dry-run", action="store_true",
                   help="check the config on random tensors, time two iterations, print the plan; train nothing")
    p.add_argument("--dry-run-batch", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch-paths", type=int, default=None, metavar="N",
                   help="repetitions that run together as one batched computation, each in its own run directory "
                        "(default: all --reps on CUDA when the experiment allows it; 1 on CPU, where vmap runs at "
                        "0.5-0.8x the speed of the same steps one by one); 1 turns batching off")
    _device_arg(p)
    _fast_args(p)
    _quiet_arg(p)

    p = sub.add_parser("bench", help="what llpf costs beyond its training steps, as ratios measured side by side")
    p.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the figures to FILE")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    p.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)


def _force_arg(p, help="write into a non-empty --out folder (never a run directory)"):
    p.add_argument("--force", action="store_true", help=help)


def _path_parsers(sub) -> None:
    """One command per path method: M2M, M2O and the baselines."""
    for kind, helptext in (("m2m", "low-loss path between two models (Algorithm 1)"),
                           ("m2o", "low-loss path toward the origin (Algorithm 2)"),
                           ("autoneb", "baseline: AutoNEB between two models (Draxler et al. 2018; [autoneb] table)"),
                           ("bezier", "baseline: a one-bend curve between two models (Garipov et al. 2018; [bezier])"),
                           ("line", "baseline: the straight line between two models, as a run ([line] table)")):
        p = sub.add_parser(kind, help=helptext)
        p.add_argument("config", help="TOML file or shipped config name")
        p.add_argument("--start", "--start-model", dest="start", required=True,
                       help="start model weights (--start-model under torchrun, whose own --start-method takes --start)")
        if kind != "m2o":
            p.add_argument("--dest", "--dest-model", dest="dest", required=True, help="destination model weights")
        if kind == "m2m":
            p.add_argument("--segments", action="store_true",
                           help="afterwards, certify the straight segments between saved points (llpf segments)")
            p.add_argument("--segment-points", type=int, default=5, help="interior points per segment (default 5)")
        p.add_argument("--out", required=True, help="run directory to create")
        p.add_argument("--force", action="store_true", help="replace an unfinished run in --out")
        p.add_argument("--resume", action="store_true",
                       help="continue the unfinished run in --out (start it when there is none)")
        _device_arg(p)
        if kind in ("m2m", "m2o"):
            _fast_args(p)
        _quiet_arg(p)


def _compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="LLPF beside the straight line, AutoNEB and Bezier curves on the same pairs; "
                                       "under torchrun the pairs are dealt to the ranks")
    p.add_argument("config", help="TOML file or shipped config name (model, data, [m2m] and the baselines' tables)")
    p.add_argument("--start", "--start-model", default=None,
                   help="start model weights (with --dest; --start-model under torchrun)")
    p.add_argument("--dest", "--dest-model", default=None, help="destination model weights")
    p.add_argument("--pairs", type=int, default=None, help="instead: train N pairs of endpoints from seeds 0..2N-1")
    p.add_argument("--methods", default="line,llpf,autoneb,bezier",
                   help="comma-separated: line, llpf, autoneb, bezier, polychain (default line,llpf,autoneb,bezier)")
    p.add_argument("--out", required=True, help="output directory; re-running the same command continues it")
    p.add_argument("--points", type=int, default=41, help="points evaluated along every path, at least (default 41)")
    p.add_argument("--points-per-segment", type=int, default=4,
                   help="interior points on each straight segment of a polygonal path, at least (default 4)")
    p.add_argument("--train-samples", type=int, default=0,
                   help="evaluate the training loss on this many fixed random training samples (default 0: all)")
    p.add_argument("--recompute-bn", choices=("auto", "yes", "no"), default="auto",
                   help="recompute BatchNorm statistics at every evaluated point (auto: when the model has BatchNorm)")
    p.add_argument("--data-dir", default=None, help="dataset folder (sets data.root)")
    _device_arg(p)
    _quiet_arg(p)


def _analysis_parsers(sub) -> None:
    """The analysis commands (llpf.analysis); each refuses a non-empty --out folder unless --force."""
    p = sub.add_parser("pca", help="per-layer 2-D PCA of the saved points of paths (paper Figure 4)")
    p.add_argument("runs", nargs="+", help="run directories, or folders holding them")
    p.add_argument("--out", required=True, help="folder for pca.png, pca.csv, pca.json")
    p.add_argument("--layers", nargs="+", default=None, help="layer patterns (default: all)")
    p.add_argument("--power-iterations", type=int, default=2, help="randomized-SVD power iterations (default 2)")
    p.add_argument("--seed", type=int, default=0)
    _force_arg(p)

    p = sub.add_parser("dim", help="dimensionality of the low-loss space around a model (SVD of one-iteration moves)")
    p.add_argument("model", help="model weights")
    p.add_argument("config", help="TOML file or shipped config name (model and data)")
    p.add_argument("--moves", type=int, default=200, help="number of one-iteration moves N (default 200)")
    p.add_argument("--rounds", type=int, default=10, help="SGD steps per move (default 10)")
    p.add_argument("--batch-size", type=int, default=256, help="batch size of the moves (default 256)")
    p.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate of the moves (default 1e-3, paper Table 1)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                   help="precision of forward/backward (default float64; displacements always sum in float64)")
    p.add_argument("--layers", nargs="+", default=["*"], help="layer patterns to analyse (default: all)")
    p.add_argument("--seed", type=int, default=0, help="move i draws batches with seed SEED+i")
    p.add_argument("--out", required=True, help="folder for dimension.json and spectrum.png")
    _force_arg(p)
    _device_arg(p)
    _quiet_arg(p)

    p = sub.add_parser("variance", help="layer variances of several models (paper Figure 6)")
    p.add_argument("config", help="TOML file or shipped config name (the model)")
    p.add_argument("models", nargs="+", help="model weights (at least one)")
    p.add_argument("--out", required=True, help="folder for variance.json and variance.png")
    p.add_argument("--include-norm", action="store_true", help="include normalisation layers (Figure 6 leaves them out)")
    p.add_argument("--tolerance", type=float, default=0.25,
                   help="flag layers whose variance differs from the first model's by more than this (relative)")
    _force_arg(p)

    p = sub.add_parser("barrier", help="loss and accuracy on the straight line between two models")
    p.add_argument("config", help="TOML file or shipped config name (model and data)")
    p.add_argument("a", help="weights at t=0")
    p.add_argument("b", help="weights at t=1")
    p.add_argument("--out", required=True, help="folder for barrier.json and barrier.png")
    p.add_argument("--points", type=int, default=21, help="grid points including both ends (default 21)")
    p.add_argument("--recompute-bn", choices=("auto", "yes", "no"), default="auto",
                   help="recompute BatchNorm statistics at each point (auto: when the model has BatchNorm)")
    _force_arg(p)
    _device_arg(p)


def _run_analysis_parsers(sub) -> None:
    """The commands that read run directories or run methods beside M2O (llpf.analysis, llpf.baselines.m2o_baselines)."""
    p = sub.add_parser("segments", help="certify a path: training loss on the straight segments between saved points")
    p.add_argument("run")
    p.add_argument("--points-per-segment", type=int, default=5, help="interior points per segment (default 5)")
    p.add_argument("--recompute-bn", choices=("auto", "yes", "no"), default="auto")
    _device_arg(p)
    _quiet_arg(p)

    p = sub.add_parser("generalisation", help="M2O: test metrics against the variance ratio (paper Figure 5)")
    p.add_argument("runs", nargs="+", help="M2O run directories, or folders holding them")
    p.add_argument("--out", required=True)
    _force_arg(p)

    p = sub.add_parser("m2o-baselines", help="M2O beside move-only and fine-tuning with weight decay, "
                                             "same start and gradient steps, best point on validation; "
                                             "under torchrun the runs are dealt to the ranks")
    p.add_argument("config", help="TOML file or shipped config name (with an [m2o] table)")
    p.add_argument("--start", "--start-model", required=True, help="start model weights (--start-model under torchrun)")
    p.add_argument("--out", required=True, help="folder for the runs, m2o-baselines.csv/.json/.png")
    p.add_argument("--decays", type=float, nargs="+", default=None,
                   help="fine-tuning weight decays (default: 0 and 1, 1/4, 4 x the decay that shrinks as Move does)")
    p.add_argument("--validation-fraction", type=float, default=0.1,
                   help="share of the training set held out for choosing points, when the config sets none "
                        "(default 0.1; the start model should not have trained on it)")
    _force_arg(p, "use a non-empty --out: its finished runs of the same settings are kept, an interrupted one resumed")
    _device_arg(p)
    _quiet_arg(p)

    p = sub.add_parser("report", help="an offline HTML report of runs and analysis outputs")
    p.add_argument("inputs", nargs="+",
                   help="run directories, folders of runs, outputs of dim/variance/barrier/pca/m2o-baselines")
    p.add_argument("--out", required=True, help="folder for index.html")
    p.add_argument("--no-pca", action="store_true", help="skip the PCA of the given paths")
    _force_arg(p)


def _print_summary(kind: str, s: dict, out=None) -> None:
    out = out or sys.stdout
    if kind == "m2m":
        worst = max(s["final_distance"], key=lambda k: s["final_distance"][k] / max(s["initial_distance"][k], 1e-12))
        pc = s["paper_criteria"]
        judged = ("the training-set loss every {} iterations".format(s["judged_every"])
                  if s["judged_on"] == "train_loss" else "batch losses")
        loss = s["max_train_loss"] if s["judged_on"] == "train_loss" else s["max_batch_loss"]
        print(f"M2M path: {'VALID' if s['valid'] else 'NOT valid'} by llpf's test, "
              f"{'VALID' if s['valid_paper'] else 'NOT valid'} by the paper's ({s['status']}, "
              f"{s['iterations']} iterations)\n"
              f"  judged on {judged}: max {loss:.4f} (llpf threshold {s['loss_threshold']}, paper's "
              f"{pc['loss_below']}); batch losses above the threshold in {s['batch_loss_exceedance']:.1%} of "
              f"iterations\n"
              f"  final/initial distance: at most {s['final_relative_distance_max']:.3f} ({worst}); every layer "
              f"within {s['arrival_tolerance']:g} x its initial distance of its variance-sphere floor: "
              f"{'yes' if s['floor_reached'] else 'no'}; every final distance below {pc['distance_below']} "
              f"(paper): {'yes' if pc['distance_ok'] else 'no'}{_farthest(s, pc['distance_below'])}", file=out)
        if "straight_line_max_train_loss" in s:
            print(f"  straight line between the same endpoints peaks at training loss "
                  f"{s['straight_line_max_train_loss']:.4f}", file=out)
    elif kind != "m2o":
        _print_baseline_summary(kind, s, out)
    else:
        sel = s["selected_on"]
        print(f"{kind.upper()} path: {s['status']}, {s['iterations']} iterations, final variance ratio "
              f"{s['final_variance_ratio']:.3f}, norm ratio {s['norm_ratio']:.3f} "
              f"({s['fraction_to_origin']:.1%} of the way to the origin)\n"
              f"  start {sel} loss {s[f'start_{sel}_loss']:.4f}, accuracy {s.get(f'start_{sel}_accuracy', float('nan')):.4f}\n"
              f"  best  {sel} loss {s[f'best_{sel}_loss']:.4f}, accuracy {s.get(f'best_{sel}_accuracy', float('nan')):.4f}"
              f" at iteration {s['best_iteration']} (variance ratio {s['best_variance_ratio']:.3f}, "
              f"{s['best_fraction_to_origin']:.1%} of the way to the origin)", file=out)


def _print_baseline_summary(kind: str, s: dict, out) -> None:
    """A baseline's run: its cost, and its loss where the driver evaluated it."""
    where = s.get("evaluated_point") or f"its {s.get('points')} evaluated points"
    print(f"{kind.upper()} path: {s['status']}, {s['iterations']} iterations, {s.get('gradient_evals', 0)} gradient "
          f"evaluations; max training loss at {where}: {s['max_train_loss']:.4f}", file=out)
    if "band_max_loss" in s:
        print(f"  {s['pivots']} pivots; the band's max loss on its insertion grid "
              f"({s['band_max_loss_samples']} training samples): {s['band_max_loss']:.4f}", file=out)
    if "batchnorm" in s:
        print(f"  {s['batchnorm']}", file=out)
    if kind != "line":
        print("  the whole path is evaluated by llpf compare", file=out)


def _farthest(s: dict, below: float) -> str:
    """The layer farthest from the destination, with its floor, when the paper's distance test fails."""
    fd = s["final_distance"]
    worst = max(fd, key=fd.get)
    if fd[worst] < below:
        return ""
    return f" ({worst} ends at {fd[worst]:.3g}; the variance spheres alone keep it {s['distance_floor'][worst]:.3g} away)"


def cmd_demo(args) -> int:
    from .demo import run_demo

    out = Path(args.out) if args.out else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    result = run_demo(out, device=args.device, progress=not args.quiet)
    _print_summary("m2m", result["m2m"])
    _print_summary("m2o", result["m2o"])
    print(f"Runs and figures under {out}/ (m2m/figures/path.png, m2o/figures/path.png)")
    return 0


def cmd_train(args) -> int:
    from . import distributed as D
    from .config import load_config
    from .runner import train

    cfg = load_config(args.config)
    m = train(cfg, args.seed, args.out, device=args.device, progress=not args.quiet)
    if not D.is_main():
        return 0
    print(f"wrote {args.out}: train loss {m['train']['loss']:.4f} accuracy {m['train']['accuracy']:.4f}; "
          f"test loss {m['test']['loss']:.4f} accuracy {m['test']['accuracy']:.4f}")
    return 0


def cmd_path(args) -> int:
    from . import distributed as D
    from .config import load_config
    from .runner import resume, run_path
    from .store import RunDir

    if args.resume and D.on_main(lambda: RunDir(args.out).exists):
        s = resume(args.out, device=args.device, progress=not args.quiet)
    else:
        cfg = load_config(args.config)
        pc = getattr(cfg, args.command)
        for key, value in _fast_overrides(args).items():
            if pc is not None:
                setattr(pc, key, value)
        s = run_path(args.command, cfg, args.start, getattr(args, "dest", None), args.out, device=args.device,
                     force=args.force, progress=not args.quiet)
    if not D.is_main():
        return _exit_code(s)
    if getattr(args, "segments", False) and s and s["status"] == "complete":
        from .analysis.barriers import path_segments, write_segments

        res = path_segments(args.out, points_per_segment=args.segment_points, device=args.device,
                            progress=not args.quiet)
        write_segments(args.out, res)
        s["segment_max_train_loss"] = res["segment_max_train_loss"]
        print(f"  straight segments between saved points peak at training loss {res['segment_max_train_loss']:.4f} "
              f"(saved points: {res['point_max_train_loss']:.4f}, {args.segment_points} points per segment)")
    return _report(args.command, s, args.out)


def _exit_code(s: dict) -> int:
    """130 for an interrupted run, 1 for a failed one, 0 for a complete one."""
    return 130 if not s else 0 if s["status"] == "complete" else 1


def _report(kind: str, s: dict, out) -> int:
    if not s:
        print(f"interrupted; continue with: llpf resume {out}")
    else:
        _print_summary(kind, s)
        print(f"run directory: {out}")
        if s["status"] != "complete":
            print(f"llpf: run failed: {s.get('reason')}", file=sys.stderr)
    return _exit_code(s)


def cmd_resume(args) -> int:
    from . import distributed as D
    from .runner import resume
    from .store import RunDir

    s = resume(args.run, device=args.device, progress=not args.quiet)
    if not D.is_main():
        return _exit_code(s)
    return _report(RunDir(args.run).info().get("kind", "m2m"), s, args.run)


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


def _recompute(choice: str):
    return {"auto": None, "yes": True, "no": False}[choice]


def cmd_pca(args) -> int:
    from .analysis.pca import run_pca

    files = run_pca(args.runs, args.out, layers=args.layers, power_iterations=args.power_iterations, seed=args.seed,
                    force=args.force)
    print(f"wrote {files['figure']}, {files['csv']}, {files['json']}")
    return 0


def cmd_dim(args) -> int:
    from .analysis.dimension import MoveSettings, analyse_dimension, format_dimension, write_dimension
    from .config import load_config
    from .data import prepare_data
    from .files import check_output_folder
    from .runner import load_model
    from .runtime import pick_device

    check_output_folder(args.out, args.force)

    settings = MoveSettings(moves=args.moves, rounds=args.rounds, batch_size=args.batch_size, lr=args.lr,
                            dtype=args.dtype, seed=args.seed, layers=args.layers)
    cfg = load_config(args.config)
    device = pick_device(args.device)
    model = load_model(cfg, args.model).to(device)
    data = prepare_data(cfg, device)
    result = analyse_dimension(model, data.train, settings, device=device, progress=not args.quiet,
                               eval_batch_size=cfg.data.eval_batch_size)
    result["inputs"] = {"model": str(args.model), "config": cfg.name}
    files = write_dimension(result, args.out)
    print(format_dimension(result))
    print(f"dead units: {', '.join(result['dead_units']) or 'none'}")
    if result["rarely_active_units"]:
        print(f"units active on <= 1% of the samples: "
              f"{', '.join(f'{k} ({v})' for k, v in result['rarely_active_units'].items())}")
    print(f"rank tolerance: {result['precision']}")
    print(f"wrote {files['json']}, {files['figure']}")
    return 0


def cmd_variance(args) -> int:
    from .analysis.variance import analyse_variances, check_variance_pair, write_variance
    from .config import load_config
    from .files import check_output_folder
    from .runner import load_model

    check_output_folder(args.out, args.force)

    cfg = load_config(args.config)
    models = [load_model(cfg, m) for m in args.models]
    result = analyse_variances(models, [str(m) for m in args.models], include_norm=args.include_norm)
    files = write_variance(result, args.out)
    for n, sp in result["spread"].items():
        print(f"{n:28s} mean {sp['mean']:.4g}  cv {sp['cv']:.3f}  max/min {sp['max_over_min']:.3f}")
    for m, path in zip(models[1:], args.models[1:]):
        for row in check_variance_pair(models[0], m, args.tolerance, names=list(result["variances"])):
            print(f"warning: {path}: {row['layer']} variance differs from {args.models[0]}'s by "
                  f"{100 * row['relative_difference']:.0f}% (distance floor {row['distance_floor']:.4g})")
    print(f"wrote {files['json']}, {files['figure']}")
    return 0


def cmd_barrier(args) -> int:
    from .analysis.barriers import straight_line, write_barrier
    from .config import load_config
    from .data import prepare_data
    from .files import check_output_folder
    from .runner import load_model
    from .runtime import pick_device

    check_output_folder(args.out, args.force)

    cfg = load_config(args.config)
    device = pick_device(args.device)
    a, b = load_model(cfg, args.a, "model A").to(device), load_model(cfg, args.b, "model B").to(device)
    data = prepare_data(cfg, device)
    rows = straight_line(a, b, data, points=args.points, recompute_bn=_recompute(args.recompute_bn),
                         batch_size=cfg.data.eval_batch_size, device=device)
    files = write_barrier(rows, args.out, {"a": str(args.a), "b": str(args.b), "config": cfg.name})
    top = max(rows, key=lambda r: r["train_loss"])
    print(f"straight line: max training loss {top['train_loss']:.4f} at t={top['t']:.2f} "
          f"(ends {rows[0]['train_loss']:.4f}, {rows[-1]['train_loss']:.4f})")
    print(f"wrote {files['json']}, {files['figure']}")
    return 0


def cmd_segments(args) -> int:
    from .analysis.barriers import path_segments, write_segments

    res = path_segments(args.run, points_per_segment=args.points_per_segment,
                        recompute_bn=_recompute(args.recompute_bn), device=args.device, progress=not args.quiet)
    f = write_segments(args.run, res)
    at = res["segment_max_at"]
    print(f"max training loss on the straight segments: {res['segment_max_train_loss']:.4f} "
          f"(between iterations {at['from']} and {at['to']}, t={at['t']:.2f}); at the saved points: "
          f"{res['point_max_train_loss']:.4f}")
    if "continuous_below_threshold" in res:
        print(f"the polygonal path stays below L_thres={res['loss_threshold']}: "
              f"{'yes' if res['continuous_below_threshold'] else 'no'}")
    print(f"wrote {f}")
    return 0


def cmd_generalisation(args) -> int:
    from .analysis.generalisation import analyse_generalisation, write_generalisation
    from .files import check_output_folder

    check_output_folder(args.out, args.force)

    files = write_generalisation(analyse_generalisation(args.runs), args.out)
    print(f"wrote {files['json']}, {files['figure']}")
    return 0


def cmd_m2o_baselines(args) -> int:
    from .baselines.m2o_baselines import COLUMNS, m2o_baselines
    from .config import load_config

    r = m2o_baselines(load_config(args.config), args.start, args.out, decays=args.decays,
                      validation_fraction=args.validation_fraction, device=args.device, force=args.force,
                      progress=not args.quiet)
    if not r:  # a rank other than 0 under torchrun: rank 0 prints the table
        return 0
    fmt = lambda v: "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    shown = [c for c in COLUMNS if c not in ("status", "iterations")]
    print("  ".join(shown))
    for row in r["rows"]:
        print("  ".join(fmt(row[c]) for c in shown))
    print(f"best on validation ({r['select_by']}): {r['chosen_on_validation']}; "
          f"wrote {Path(args.out) / 'm2o-baselines.csv'}")
    return 0


def cmd_report(args) -> int:
    from .analysis.report import build_report

    print(f"wrote {build_report(args.inputs, args.out, pca=not args.no_pca, force=args.force)}")
    return 0


def cmd_compare(args) -> int:
    from .comparison import compare

    result = compare(args.config, args.out, start=args.start, dest=args.dest, pairs=args.pairs, methods=args.methods,
                     points=args.points, points_per_segment=args.points_per_segment,
                     train_samples=args.train_samples, recompute_bn=_recompute(args.recompute_bn),
                     data_dir=args.data_dir, device=args.device, progress=not args.quiet)
    if not result:  # a rank other than 0 under torchrun: rank 0 prints the table
        return 0
    _print_comparison(result["methods"])
    st = result["settings"]
    print(f"every path evaluated at {args.points} points or more: training loss on {st['train_samples']} samples, "
          f"test on {st['test_samples']}; {st['batchnorm']}")
    print(f"wrote {result['files']['csv']}, {result['files']['figure']}")
    return 0 if all(r["failed"] == 0 for r in result["methods"]) else 1


def _print_comparison(rows: list[dict], out=None) -> None:
    cols = ("max_train_loss", "mean_train_loss", "max_test_loss", "min_test_accuracy", "path_length",
            "gradient_steps", "wall_seconds")
    print(f"{'method':10s}" + "".join(f"{c:>18s}" for c in cols), file=out or sys.stdout)
    for r in rows:
        cells = []
        for c in cols:
            v, sd = r.get(c), r.get(f"{c}_std")
            cells.append("-" if v is None else f"{v:.4g}" + (f" ±{sd:.2g}" if sd is not None else ""))
        note = f"  ({r['failed']} failed)" if r.get("failed") else ""
        print(f"{r['method']:10s}" + "".join(f"{c:>18s}" for c in cells) + note, file=out or sys.stdout)


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
        dry_run(args.name, data_dir=args.data_dir, device=args.device, batch_size=args.dry_run_batch,
                method=args.method)
        return 0
    if not args.out:
        raise ConfigError("--out is required (the directory that holds the endpoints, repetitions and aggregate)")
    result = reproduce(args.name, args.reps, args.out, data_dir=args.data_dir, device=args.device,
                       start=args.start, dest=args.dest, progress=not args.quiet, method=args.method,
                       batch_paths=args.batch_paths, fast=_fast_overrides(args))
    if not result:  # a rank other than 0: its share is done, rank 0 reports
        return 0
    print(Path(args.out, "summary.md").read_text(), end="")
    if (Path(args.out) / "figure.png").is_file():
        print(f"figure: {Path(args.out, 'figure.png')}")
    return 0 if result["aggregate"]["repetitions"] and not result["unfinished"] else 1


def cmd_bench(args) -> int:
    from .bench import bench
    from .errors import ConfigError
    from .files import write_json

    if args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    result = bench(args.device, threads=args.threads, quick=args.quick)
    if args.json:
        write_json(Path(args.json), result)
        print(f"wrote {args.json}")
    return 0


COMMANDS = {"demo": cmd_demo, "train": cmd_train, "m2m": cmd_path, "m2o": cmd_path, "autoneb": cmd_path,
            "bezier": cmd_path, "line": cmd_path, "compare": cmd_compare, "resume": cmd_resume,
            "plot": cmd_plot, "configs": cmd_configs, "reproduce": cmd_reproduce, "pca": cmd_pca, "dim": cmd_dim,
            "variance": cmd_variance, "barrier": cmd_barrier, "segments": cmd_segments,
            "generalisation": cmd_generalisation, "m2o-baselines": cmd_m2o_baselines, "report": cmd_report,
            "bench": cmd_bench}


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"llpf: warning: {message}", file=sys.stderr)


SEVERAL_RANKS = {"train", "m2m", "m2o", "resume", "reproduce", "m2o-baselines", "compare"}  # the commands that run under torchrun


def _join_ranks(args) -> None:
    """Under torchrun: join the process group and take this rank's device; only rank 0 shows progress and warnings."""
    from . import distributed as D

    if D.world_size() <= 1:
        return
    if args.command not in SEVERAL_RANKS or getattr(args, "dry_run", False):
        what = "reproduce --dry-run" if args.command == "reproduce" else args.command
        raise D.DistributedError(f"llpf {what} runs in one process; launch it without torchrun "
                                 f"(several ranks run: {', '.join(sorted(SEVERAL_RANKS))})")
    args.device = str(D.init(args.device))
    if not D.is_main():
        args.quiet = True
        warnings.showwarning = lambda *a, **k: None


def main(argv: list[str] | None = None) -> int:
    from . import distributed as D

    args = build_parser().parse_args(argv)
    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        _join_ranks(args)
        return COMMANDS[args.command](args)
    except LLPFError as e:
        print(f"llpf: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llpf: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
        D.cleanup()


if __name__ == "__main__":
    sys.exit(main())
