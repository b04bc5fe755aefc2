"""Many demo-size M2M paths for the per-layer PCA picture (paper Figure 4, in small).

Trains ``--endpoints`` LeNet5 models on scikit-learn's digits (seeds 0..K-1,
the demo recipe) and runs a demo-config M2M path for every ordered pair
(K*(K-1) paths: 5 endpoints give 20, both directions of each pair as in the
paper), then ``llpf pca`` over all of them. The paths differ from the demo's
only in evaluating every 50 iterations instead of 10, which does not change
the path (evaluation draws no batches), only the metrics' resolution.

    PYTHONPATH=src python benchmarks/many_paths.py --out /tmp/paths --endpoints 5

Measured on the 2-core development machine (one thread): see docs/results.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from pathlib import Path

import torch

from llpf.config import load_config
from llpf.runner import prepare_data, run_path, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--endpoints", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", default="demo")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    cfg = load_config(args.config)
    cfg = dataclasses.replace(cfg, m2m=dataclasses.replace(cfg.m2m, eval_every=50))
    data = prepare_data(cfg, "cpu")
    times = {}
    t0 = time.perf_counter()
    ends = []
    for seed in range(args.endpoints):
        p = out / "endpoints" / f"seed{seed}.safetensors"
        if not p.exists():
            train(cfg, seed, p, device="cpu", data=data)
        ends.append(p)
    times["train_endpoints_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    summaries = {}
    for i, j in itertools.permutations(range(args.endpoints), 2):
        run = out / "paths" / f"m2m-{i}-{j}"
        if (run / "summary.json").is_file():
            continue
        s = run_path("m2m", cfg, ends[i], ends[j], run, device="cpu", data=data, force=True)
        summaries[run.name] = {"valid": s["valid"], "max_train_loss": s["max_train_loss"]}
        print(run.name, summaries[run.name], flush=True)
    times["paths_s"] = time.perf_counter() - t0
    (out / "timing.json").write_text(json.dumps({"times": times, "paths": summaries}, indent=2))


if __name__ == "__main__":
    main()
