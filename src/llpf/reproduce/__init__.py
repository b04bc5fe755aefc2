"""``llpf reproduce``: the paper's experiments (Appendix A.4, Tables 1-3) with repetitions.

::

    OUT/endpoints/seedS.safetensors   endpoint models (Table 3 recipe), seedS.json their metrics
    OUT/rep-XX/                       one run directory per repetition (M2M or M2O)
    OUT/reproduce.json                the experiment, its inputs and the wall time of each piece
    OUT/figure.png                    paper Figure 2 (M2M) or 3 (M2O): mean and std over repetitions
    OUT/summary.md, summary.json      per repetition and aggregated verdicts

Repetition k of an M2M experiment runs from the endpoint of seed 2k to that of
seed 2k+1; of an M2O experiment, from the endpoint of seed k. The aggregate is
redrawn after every repetition (``aggregate``). Running the same command again
skips the endpoints and repetitions already finished, resumes an interrupted
repetition from its checkpoint, and redraws the aggregate.
``dry_run`` (``estimate``) checks a config end to end on random tensors and estimates its cost.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .. import config as C
from ..data import Bundle, prepare_data
from ..errors import ConfigError, RunDirError
from ..files import save_weights, write_json
from ..models import build_model
from ..runtime import pick_device
from ..store import RunDir
from .aggregate import aggregate
from .estimate import dry_run, format_plan, random_bundle
from .experiment import experiments, kind_of, load_experiment

__all__ = ["Ledger", "aggregate", "dry_run", "experiments", "format_plan", "kind_of", "load_experiment",
           "random_bundle", "reproduce"]


def reproduce(name: str, reps: int, out: str | Path, data_dir: str | None = None, device=None,
              start: str | Path | None = None, dest: str | Path | None = None, progress: bool = True,
              log=print) -> dict:
    """Run (or continue) ``reps`` repetitions of experiment ``name`` into ``out``; return the aggregate."""
    if reps < 1:
        raise ConfigError(f"--reps must be at least 1, got {reps}")
    cfg = load_experiment(name, data_dir)
    kind = kind_of(cfg)
    if dest is not None and kind == "m2o":
        raise ConfigError("--dest is for M2M experiments; M2O walks toward the origin")
    device = pick_device(device)
    out = Path(out)
    (out / "endpoints").mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out, cfg.name, kind)
    ledger.data["device"] = str(device)
    exp = Experiment(cfg, kind, out, ledger, device, progress, log)
    for k in range(reps):
        rep = out / f"rep-{k:02d}"
        if (rep / "summary.json").is_file():
            log(f"rep {k}: finished, skipped")
            continue
        resuming = RunDir(rep).exists
        if resuming and cfg.data.name != "imagenet":
            a = b = None
            log(f"rep {k}: resuming the interrupted run")
        else:
            a, b = exp.endpoints(k, start, dest)
            log(f"rep {k}: {'resuming ' if resuming else ''}{kind.upper()} from {a.name}"
                + (f" to {b.name}" if b else ""))
        t0 = time.perf_counter()
        summary = exp.repetition(k, rep, a, b)
        ledger.record("reps", f"rep-{k:02d}", wall_s=time.perf_counter() - t0)  # the path alone, not its endpoints
        if not summary:
            raise KeyboardInterrupt
        log(f"rep {k}: {summary.get('status')}" + (f", valid {summary.get('valid')}, valid_relative "
                                                    f"{summary.get('valid_relative')}" if kind == "m2m" else ""))
        if k < reps - 1:
            aggregate(out)  # partial results are readable while the next repetition runs
    return aggregate(out)


class Ledger:
    """OUT/reproduce.json: what this output directory reproduces, and what it took."""

    def __init__(self, out: Path, name: str, kind: str):
        self.file = out / "reproduce.json"
        self.data: dict[str, Any] = {"name": name, "kind": kind, "endpoints": {}, "reps": {}}
        if self.file.is_file():
            old = json.loads(self.file.read_text())
            if old.get("name") != name:
                raise RunDirError(f"{out} holds a reproduction of {old.get('name')!r}, not {name!r}; "
                                  f"choose another --out")
            self.data.update(old)

    def record(self, section: str, key: str, **values) -> None:
        entry = self.data[section].setdefault(key, {})
        if "wall_s" in values:
            values["wall_s"] = entry.get("wall_s", 0.0) + values["wall_s"]
        entry.update(values)
        write_json(self.file, self.data)


@dataclass
class Experiment:
    """One output directory's experiment: its endpoints and repetitions, with the data loaded once."""

    cfg: C.Config
    kind: str
    out: Path
    ledger: Ledger
    device: torch.device
    progress: bool
    log: Callable[[str], Any]
    cache: dict[str, Bundle] = field(default_factory=dict)

    def data(self) -> Bundle:
        if "data" not in self.cache:
            pc = getattr(self.cfg, self.kind)
            self.cache["data"] = (_imagenet_bundle(self.cfg, pc, pc.seed) if self.cfg.data.name == "imagenet"
                                  else prepare_data(self.cfg, self.device))
        return self.cache["data"]

    def endpoints(self, k: int, start: str | Path | None, dest: str | Path | None) -> tuple[Path, Path | None]:
        """Repetition k's start and destination (M2O: None), given or trained."""
        if self.kind == "m2m" and self.cfg.data.name != "imagenet":
            return (Path(start) if start else self.endpoint(2 * k),
                    Path(dest) if dest else self.endpoint(2 * k + 1))
        return Path(start) if start else self.endpoint(k), None

    def endpoint(self, seed: int) -> Path:
        """The endpoint of ``seed``: trained with the Table 3 recipe unless OUT/endpoints already holds it."""
        from ..runner import train
        from ..train import endpoint_epochs

        path = self.out / "endpoints" / f"seed{seed}.safetensors"
        if path.is_file():
            return path
        if self.cfg.data.name == "imagenet":
            return self.torchvision_endpoint()
        self.log(f"training endpoint seed {seed} ({endpoint_epochs(self.cfg.train)} epochs)")
        t0 = time.perf_counter()
        metrics = train(self.cfg, seed, path, device=self.device, progress=self.progress, data=self.data())
        self.ledger.record("endpoints", f"seed{seed}", wall_s=time.perf_counter() - t0, metrics=metrics)
        self.log(f"  seed {seed}: train loss {metrics['train']['loss']:.4f}, "
                 f"test accuracy {metrics['test']['accuracy']:.4f}")
        return path

    def torchvision_endpoint(self) -> Path:
        """ImageNet M2O starts from torchvision's ResNet18 weights (fetched once, kept in OUT/endpoints)."""
        from ..models.resnet18 import load_torchvision_resnet18_weights

        path = self.out / "endpoints" / "torchvision-resnet18.safetensors"
        if not path.is_file():
            self.log("fetching torchvision's ResNet18 IMAGENET1K_V1 weights (pass --start FILE when offline)")
            model = load_torchvision_resnet18_weights(build_model(self.cfg.model))
            path.parent.mkdir(parents=True, exist_ok=True)
            save_weights(path, model.state_dict(), {"source": "torchvision ResNet18_Weights.IMAGENET1K_V1"})
        return path

    def repetition(self, k: int, rep: Path, a: Path | None, b: Path | None) -> dict:
        """Run repetition k into ``rep`` (new, or resumed after a kill); its summary, ``{}`` if interrupted."""
        from ..runner import resume, run_path

        rd = RunDir(rep)
        if rd.exists:
            if rd.info().get("status") == "complete":  # summary lost after completion: redo from the last checkpoint
                rd.set_status("interrupted")
            return resume(rep, device=self.device, progress=self.progress, data=self.data())
        if rep.exists():  # a directory left without a run by a kill before the run began
            for p in sorted(rep.rglob("*"), reverse=True):
                p.rmdir() if p.is_dir() else p.unlink()
        return run_path(self.kind, _rep_config(self.cfg, k), a, b, rep, device=self.device, progress=self.progress,
                        data=self.data())


def _rep_config(cfg: C.Config, k: int) -> C.Config:
    """Repetition k's config: its own batch-stream seed (path seed + k)."""
    rcfg = copy.deepcopy(cfg)
    pc = getattr(rcfg, kind_of(rcfg))
    pc.seed = pc.seed + k
    return rcfg


# ---------------------------------------------------------------- ImageNet: data as loaders


def _imagenet_bundle(cfg: C.Config, pc: C.PathConfig, seed: int) -> Bundle:
    """ImageNet as loaders (iterables of batches) in a Bundle; the runner takes them where Splits go.

    Train_r draws from the training loader; only the validation set is
    evaluated (no pass over 1.28M training images), so M2O's verdicts rest on it.
    """
    from ..data.imagenet import imagenet_loaders

    train, val = imagenet_loaders(cfg.data.root, batch_size=pc.batch_size, eval_batch_size=cfg.data.eval_batch_size,
                                  seed=seed)
    return Bundle(train, val, cfg.model.num_classes)
