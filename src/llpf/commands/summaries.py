"""A run's summary as the commands print it: both verdicts for M2M, the best point for M2O, a baseline's cost."""
from __future__ import annotations

import sys

from .common import exit_code


def print_summary(kind: str, s: dict, out=None) -> None:
    out = out or sys.stdout
    if kind == "m2m":
        _print_m2m(s, out)
    elif kind == "m2o":
        _print_m2o(s, out)
    else:
        _print_baseline(kind, s, out)
    if s.get("zero_length"):
        print("  the destination is the start model itself: a path of length 0, ended at iteration 0", file=out)
    if "alignment" in s:
        print_alignment(s["alignment"], out, indent="  ")


def _print_m2m(s: dict, out) -> None:
    worst = max(s["final_distance"], key=lambda k: s["final_distance"][k] / max(s["initial_distance"][k], 1e-12))
    pc = s["paper_criteria"]
    judged = ("the training-set loss every {} iterations".format(s["judged_every"])
              if s["judged_on"] == "train_loss" else "batch losses")
    loss = s["max_train_loss"] if s["judged_on"] == "train_loss" else s["max_batch_loss"]
    print(f"M2M path: {'VALID' if s['valid'] else 'NOT valid'} by llpf's test, "
          f"{'VALID' if s['valid_paper'] else 'NOT valid'} by the paper's ({s['status']}, "
          f"{s['iterations']} iterations)\n"
          f"  judged on {judged}: max {loss:.4f} (llpf threshold {s['loss_threshold']}, paper's "
          f"{pc['loss_below']}){_exceedance(s)}; smoothed over {pc['smoothed_over']} iterations (paper "
          f"Figure 2) at most {_fmt(pc['smoothed_batch_loss_max'])}\n"
          f"  final/initial distance: at most {s['final_relative_distance_max']:.3f} ({worst}); every layer "
          f"within {s['arrival_tolerance']:g} x its initial distance of its variance-sphere floor: "
          f"{'yes' if s['floor_reached'] else 'no'}; every final distance below {pc['distance_below']} "
          f"(paper): {'yes' if pc['distance_ok'] else 'no'}{_farthest(s, pc['distance_below'])}", file=out)
    sphere = s.get("sphere", {})
    if sphere.get("ends_on") == "dest":
        print(f"  variance spheres by phase: {', '.join(sphere['phases'])}; the path ends on the destination's "
              f"sphere, so every floor is 0", file=out)
    if "straight_line_max_train_loss" in s:
        print(f"  straight line between the same endpoints peaks at training loss "
              f"{s['straight_line_max_train_loss']:.4f}", file=out)


def print_alignment(r: dict, out=None, indent: str = "") -> None:
    """What alignment did: groups reordered and those left in place (why), the function check, the straight line
    before and after."""
    out = out or sys.stdout
    print(f"{indent}aligned by weight matching: {r['groups_reordered']} of {r['groups']} permutation groups reordered "
          f"({r['units']} units, {r['sweeps']} sweeps); distance to A {r['distance_before']:.4g} -> "
          f"{r['distance_after']:.4g}", file=out)
    for name, why in r["left_in_place"].items():
        print(f"{indent}  left in place: {name} ({why})", file=out)
    if "max_output_difference" in r:
        acc = r["test_accuracy"]
        print(f"{indent}  same function: largest output difference {r['max_output_difference']:.3g} on "
              f"{r['checked_on']} (outputs up to {r['output_scale']:.3g}); test accuracy {acc['dest']:.4f} (B), "
              f"{acc['aligned']:.4f} (aligned B)", file=out)
    if "straight_line" in r:
        line = r["straight_line"]
        b, a = line["before"], line["after"]
        print(f"{indent}  straight line ({line['points']} points): A -> B max training loss {b['max_train_loss']:.4f}, "
              f"barrier {b['barrier']:.4f}; A -> aligned B max {a['max_train_loss']:.4f}, barrier "
              f"{a['barrier']:.4f}", file=out)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _exceedance(s: dict) -> str:
    """How often the batch loss rose above the threshold (a zero-length path took no batch)."""
    share = s["batch_loss_exceedance"]
    return "" if share is None else f"; batch losses above the threshold in {share:.1%} of iterations"


def _print_m2o(s: dict, out) -> None:
    sel = s["selected_on"]
    print(f"M2O path: {s['status']}, {s['iterations']} iterations, final variance ratio "
          f"{s['final_variance_ratio']:.3f}, norm ratio {s['norm_ratio']:.3f} "
          f"({s['fraction_to_origin']:.1%} of the way to the origin)\n"
          f"  start {sel} loss {s[f'start_{sel}_loss']:.4f}, accuracy {s.get(f'start_{sel}_accuracy', float('nan')):.4f}\n"
          f"  best  {sel} loss {s[f'best_{sel}_loss']:.4f}, accuracy {s.get(f'best_{sel}_accuracy', float('nan')):.4f}"
          f" at iteration {s['best_iteration']} (variance ratio {s['best_variance_ratio']:.3f}, "
          f"{s['best_fraction_to_origin']:.1%} of the way to the origin)", file=out)


def _print_baseline(kind: str, s: dict, out) -> None:
    """A baseline's run: its cost, and its loss where the driver evaluated it."""
    n = s.get("points")
    where = s.get("evaluated_point") or (f"its {n} evaluated points" if n != 1 else "its one evaluated point")
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
    floor = s["distance_floor"][worst]
    if not floor:
        return f" ({worst} ends at {fd[worst]:.3g})"
    return f" ({worst} ends at {fd[worst]:.3g}; the variance spheres alone keep it {floor:.3g} away)"


def report(kind: str, s: dict, out) -> int:
    """Print a finished (or interrupted, or failed) run's outcome; its exit code."""
    if not s:
        print(f"interrupted; continue with: llpf resume {out}")
    else:
        print_summary(kind, s)
        print(f"run directory: {out}")
        if s["status"] != "complete":
            print(f"llpf: run failed: {s.get('reason')}", file=sys.stderr)
    return exit_code(s)
