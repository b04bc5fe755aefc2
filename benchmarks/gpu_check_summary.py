"""The one-screen summary of ``benchmarks/gpu_check.sh``'s folder, and whether batched paths agree with one by one.

    python benchmarks/gpu_check_summary.py DIR

Prints the machine, each step's status and wall time, ``llpf bench``'s
figures, the short ResNet18 M2M in fp32 and on the fast path (wall times,
speed-up, their training losses), and K LeNet5 paths run as one batched
computation against the same paths one after another: they agree when every
path ends with the same verdict, a final training loss within 2% of its twin's
and batch losses within 5% of the largest. Exits 1 when a step failed or the
paths disagree.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from llpf.store import RunDir

AGREE_FINAL, AGREE_BATCH = 0.02, 0.05


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def steps(out: Path) -> list[tuple[str, int, float]]:
    rows = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines() if line.strip()]
    return [(name, int(rc), int(ms) / 1000) for name, rc, ms in rows]


def bench_lines(b: dict) -> list[str]:
    if not b:
        return ["bench: no results (see logs/bench.log)"]
    lines = [f"bench on {b.get('device_name')} ({b.get('device')}), torch {b.get('torch')}"]
    for case in ("lenet5", "resnet18"):
        c = b.get(case, {})
        recal = f", recalibration {c['recalibration_s']:.2f} s" if "recalibration_s" in c else ""
        lines.append(f"  {case} (batch {c.get('batch')}): tick_ratio {c.get('tick_ratio', math.nan):.3f}, eval_share "
                     f"{c.get('eval_share', math.nan):.3f} ({c.get('eval_s', math.nan):.2f} s, batch "
                     f"{c.get('eval_batch')}{recal}), geometry {c.get('geometry_overhead', math.nan):.3f}, data "
                     f"{c.get('data_overhead', math.nan):+.3f}")
    speed = b.get("batched_speedup", {})
    lines.append("  batched_speedup " + ", ".join(f"K={k}: {v:.2f}" for k, v in speed.items()))
    return lines


def final(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) not in (None, "")]
    return float(vals[-1]) if vals else None


def m2m_lines(out: Path, wall: dict[str, float]) -> list[str]:
    lines = ["ResNet18 M2M at the paper's width (Table 1's six phases at 1/100, r = 2):"]
    for mode, what in (("fp32", "fp32 (bf16 and channels_last off)"), ("fast", "fast path (bf16, channels_last)")):
        rd = RunDir(out / f"m2m-{mode}")
        s = read_json(rd.path / "summary.json")
        if not s:
            lines.append(f"  {what}: no run")
            continue
        lines.append(f"  {what}: {wall.get(f'm2m-{mode}', math.nan):.1f} s, {s.get('iterations')} iterations, "
                     f"max training loss {s.get('max_train_loss')}, final {final(rd.metrics(), 'train_loss')}, "
                     f"valid {s.get('valid')}")
    if wall.get("m2m-fast"):
        lines.append(f"  fast path speed-up (whole commands): {wall.get('m2m-fp32', math.nan) / wall['m2m-fast']:.2f}x")
    return lines


def agreement(out: Path) -> tuple[bool, list[str]]:
    """Each batched repetition against its one-by-one twin: verdicts, final training loss, batch losses."""
    reps = sorted(p.name for p in (out / "batched").glob("rep-*"))
    if not reps:
        return False, ["batched against one by one: no paths"]
    ok, worst_final, worst_batch = True, 0.0, 0.0
    for rep in reps:
        a, b = RunDir(out / "batched" / rep), RunDir(out / "one-by-one" / rep)
        sa, sb = read_json(a.path / "summary.json"), read_json(b.path / "summary.json")
        if not sa or not sb:
            return False, [f"batched against one by one: {rep} is missing a summary"]
        ok &= sa.get("valid") == sb.get("valid") and sa.get("status") == sb.get("status")
        fa, fb = final(a.metrics(), "train_loss"), final(b.metrics(), "train_loss")
        worst_final = max(worst_final, abs(fa - fb) / max(abs(fb), 1e-12))
        la = [float(r["batch_loss"]) for r in a.metrics() if r.get("batch_loss") not in (None, "")]
        lb = [float(r["batch_loss"]) for r in b.metrics() if r.get("batch_loss") not in (None, "")]
        ok &= len(la) == len(lb)
        worst_batch = max([worst_batch] + [abs(x - y) / max(map(abs, lb)) for x, y in zip(la, lb)])
    ok &= worst_final <= AGREE_FINAL and worst_batch <= AGREE_BATCH
    return ok, [f"{len(reps)} LeNet5 paths batched against one by one: {'agree' if ok else 'DISAGREE'} (final training "
                f"loss within {worst_final:.2%}, batch losses within {worst_batch:.2%} of the largest)"]


def main(out: Path) -> int:
    env = (out / "env.txt").read_text().splitlines() if (out / "env.txt").is_file() else []
    done = steps(out)
    wall = {name: s for name, _, s in done}
    failed = [name for name, rc, _ in done if rc != 0]
    agree, agree_lines = agreement(out)
    lines = [f"llpf GPU check: {out}", *[f"  {line}" for line in env],
             "steps: " + ", ".join(f"{n} {'ok' if rc == 0 else f'FAILED ({rc})'} {s:.0f} s" for n, rc, s in done),
             *bench_lines(read_json(out / "bench.json")), *m2m_lines(out, wall), *agree_lines,
             f"total {sum(wall.values()):.0f} s; " + (f"failed: {', '.join(failed)}" if failed else "every step ran")]
    print("\n".join(lines))
    return 0 if agree and not failed else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
