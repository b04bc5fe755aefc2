"""The analysis commands (``llpf.analysis``): pca, dim, variance, barrier, segments, generalisation, report.

Those that write a folder refuse a non-empty ``--out`` unless ``--force``.
"""
from __future__ import annotations

from .common import at_least, config_arg, device_arg, force_arg, number, quiet_arg, recompute, recompute_bn_arg


def add(sub) -> None:
    _model_analyses(sub)
    _run_analyses(sub)


def _model_analyses(sub) -> None:
    """pca (of saved points), dim, variance and barrier (of models)."""
    p = sub.add_parser("pca", help="per-layer 2-D PCA of the saved points of paths (paper Figure 4)")
    p.add_argument("runs", nargs="+", help="run directories, or folders holding them")
    p.add_argument("--out", required=True, help="folder for pca.png, pca.csv, pca.json")
    p.add_argument("--layers", nargs="+", default=None, help="layer patterns (default: all)")
    p.add_argument("--power-iterations", type=at_least(0), default=2,
                   help="randomized-SVD power iterations (default 2)")
    p.add_argument("--seed", type=int, default=0)
    force_arg(p)
    p.set_defaults(handler=pca)

    p = sub.add_parser("dim", help="dimensionality of the low-loss space around a model (SVD of one-iteration moves)")
    p.add_argument("model", help="model weights")
    config_arg(p, "TOML file or shipped config name (model and data)")
    p.add_argument("--moves", type=at_least(1), default=200, help="number of one-iteration moves N (default 200)")
    p.add_argument("--rounds", type=at_least(1), default=10, help="SGD steps per move (default 10)")
    p.add_argument("--batch-size", type=at_least(1), default=256, help="batch size of the moves (default 256)")
    p.add_argument("--lr", type=number(0, open_low=True), default=1e-3,
                   help="SGD learning rate of the moves (default 1e-3, paper Table 1)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                   help="precision of forward/backward (default float64; displacements always sum in float64)")
    p.add_argument("--layers", nargs="+", default=["*"], help="layer patterns to analyse (default: all)")
    p.add_argument("--seed", type=int, default=0, help="move i draws batches with seed SEED+i")
    p.add_argument("--out", required=True, help="folder for dimension.json and spectrum.png")
    force_arg(p)
    device_arg(p)
    quiet_arg(p)
    p.set_defaults(handler=dim)

    p = sub.add_parser("variance", help="layer variances of several models (paper Figure 6)")
    config_arg(p, "TOML file or shipped config name (the model)")
    p.add_argument("models", nargs="+", help="model weights (at least one)")
    p.add_argument("--out", required=True, help="folder for variance.json and variance.png")
    p.add_argument("--include-norm", action="store_true", help="include normalisation layers (Figure 6 leaves them out)")
    p.add_argument("--tolerance", type=number(0), default=0.25,
                   help="flag layers whose variance differs from the first model's by more than this (relative)")
    force_arg(p)
    p.set_defaults(handler=variance)

    p = sub.add_parser("barrier", help="loss and accuracy on the straight line between two models")
    config_arg(p, "TOML file or shipped config name (model and data)")
    p.add_argument("a", help="weights at t=0")
    p.add_argument("b", help="weights at t=1")
    p.add_argument("--out", required=True, help="folder for barrier.json and barrier.png")
    p.add_argument("--points", type=at_least(2), default=21, help="grid points including both ends (default 21)")
    recompute_bn_arg(p, "recompute BatchNorm statistics at each point (auto: when the model has BatchNorm)")
    p.add_argument("--align", action="store_true",
                   help="reorder B's hidden units to match A's first (weight matching, llpf align): barrier.json is "
                        "the line to the aligned B, barrier-unaligned.json the line to B")
    force_arg(p)
    device_arg(p)
    p.set_defaults(handler=barrier)


def _run_analyses(sub) -> None:
    """The analyses that read run directories: segments, generalisation, report."""
    p = sub.add_parser("segments", help="certify a path: training loss on the straight segments between saved points")
    p.add_argument("run")
    p.add_argument("--points-per-segment", type=at_least(1), default=5,
                   help="interior points per segment (default 5)")
    recompute_bn_arg(p)
    device_arg(p)
    quiet_arg(p)
    p.set_defaults(handler=segments)

    p = sub.add_parser("generalisation", help="M2O: test metrics against the variance ratio (paper Figure 5)")
    p.add_argument("runs", nargs="+", help="M2O run directories, or folders holding them")
    p.add_argument("--out", required=True)
    force_arg(p)
    p.set_defaults(handler=generalisation)

    p = sub.add_parser("report", help="an offline HTML report of runs and analysis outputs")
    p.add_argument("inputs", nargs="+",
                   help="run directories, folders of runs, outputs of dim/variance/barrier/pca/m2o-baselines/"
                        "compare/layerwise")
    p.add_argument("--out", required=True, help="folder for index.html")
    p.add_argument("--no-pca", action="store_true", help="skip the PCA of the given paths")
    force_arg(p)
    p.set_defaults(handler=report)


def pca(args) -> int:
    from ..analysis.pca import run_pca

    files = run_pca(args.runs, args.out, layers=args.layers, power_iterations=args.power_iterations, seed=args.seed,
                    force=args.force)
    print(f"wrote {files['figure']}, {files['csv']}, {files['json']}")
    return 0


def dim(args) -> int:
    from ..analysis.dimension import MoveSettings, analyse_dimension, format_dimension, write_dimension
    from ..config import load_config
    from ..data import prepare_data
    from ..files import check_output_folder
    from ..flat import layout_of
    from ..runner import load_model
    from ..runtime import pick_device
    from ..schedule import select

    check_output_folder(args.out, args.force)
    settings = MoveSettings(moves=args.moves, rounds=args.rounds, batch_size=args.batch_size, lr=args.lr,
                            dtype=args.dtype, seed=args.seed, layers=args.layers)
    cfg = load_config(args.config)
    device = pick_device(args.device)
    model = load_model(cfg, args.model).to(device)
    select(args.layers, layout_of(model).names)  # a pattern matching nothing: one line before the data loads
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


def variance(args) -> int:
    from ..analysis.variance import analyse_variances, check_variance_pair, write_variance
    from ..config import load_config
    from ..files import check_output_folder
    from ..runner import load_model

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


def barrier(args) -> int:
    from ..analysis.barriers import straight_line, write_barrier
    from ..config import load_config
    from ..data import prepare_data
    from ..files import check_output_folder
    from ..runner import load_model
    from ..runtime import pick_device

    check_output_folder(args.out, args.force)
    cfg = load_config(args.config)
    device = pick_device(args.device)
    a, b = load_model(cfg, args.a, "model A").to(device), load_model(cfg, args.b, "model B").to(device)
    data = prepare_data(cfg, device)
    inputs = {"a": str(args.a), "b": str(args.b), "config": cfg.name}
    if args.align:
        return _aligned_barrier(args, cfg, a, b, data, device, inputs)
    rows = straight_line(a, b, data, points=args.points, recompute_bn=recompute(args.recompute_bn),
                         batch_size=cfg.data.eval_batch_size, device=device)
    files = write_barrier(rows, args.out, inputs)
    top = max(rows, key=lambda r: r["train_loss"])
    print(f"straight line: max training loss {top['train_loss']:.4f} at t={top['t']:.2f} "
          f"(ends {rows[0]['train_loss']:.4f}, {rows[-1]['train_loss']:.4f})")
    print(f"wrote {files['json']}, {files['figure']}")
    return 0


def _aligned_barrier(args, cfg, a, b, data, device, inputs: dict) -> int:
    """``llpf barrier --align``: the line to B's alignment to A (barrier.json) and to B itself (barrier-unaligned)."""
    from ..alignment.pair import align_endpoints, line_change
    from ..analysis.barriers import write_barrier
    from .summaries import print_alignment

    bs = cfg.data.eval_batch_size
    aligned, record = align_endpoints(a, b, data, bs)
    before, after, record["straight_line"] = line_change(a, b, aligned, data, bs, args.points,
                                                         recompute(args.recompute_bn), device)
    files = write_barrier(after, args.out, {**inputs, "aligned": True, "alignment": record})
    unaligned = write_barrier(before, args.out, inputs, name="barrier-unaligned")
    print_alignment(record)
    print(f"wrote {files['json']}, {files['figure']} (A -> aligned B), {unaligned['json']} (A -> B)")
    return 0


def segments(args) -> int:
    from ..analysis.barriers import path_segments, write_segments

    res = path_segments(args.run, points_per_segment=args.points_per_segment,
                        recompute_bn=recompute(args.recompute_bn), device=args.device, progress=not args.quiet)
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


def generalisation(args) -> int:
    from ..analysis.generalisation import analyse_generalisation, write_generalisation
    from ..files import check_output_folder

    check_output_folder(args.out, args.force)
    files = write_generalisation(analyse_generalisation(args.runs), args.out)
    print(f"wrote {files['json']}, {files['figure']}")
    return 0


def report(args) -> int:
    from ..analysis.report import build_report

    print(f"wrote {build_report(args.inputs, args.out, pca=not args.no_pca, force=args.force)}")
    return 0
