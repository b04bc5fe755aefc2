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

``batch_paths`` repetitions run together as one batched method
(``m2m-batched``, ``m2o-batched``), each still in its own run directory that
reads as if it had run alone; by default all of them on CUDA where the
experiment allows it, and one at a time on the CPU (where vmap is slower than
the same steps one by one).
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
from ..models import STOCHASTIC_MODELS, build_model
from ..runtime import pick_device
from ..store import RunDir
from .aggregate import aggregate
from .estimate import dry_run, format_plan, random_bundle
from .experiment import experiments, kind_of, load_experiment

__all__ = ["Ledger", "aggregate", "check_batch_paths", "default_batch_paths", "dry_run", "experiments",
           "format_plan", "kind_of", "load_experiment", "random_bundle", "reproduce", "unbatchable"]


def reproduce(name: str, reps: int, out: str | Path, data_dir: str | None = None, device=None,
              start: str | Path | None = None, dest: str | Path | None = None, progress: bool = True,
              log=print, batch_paths: int | None = None, fast: dict | None = None) -> dict:
    """Run (or continue) ``reps`` repetitions of experiment ``name`` into ``out``; return the aggregate.

    ``batch_paths`` repetitions run together as one batched method (default:
    :func:`default_batch_paths`); ``fast`` overrides the path table's fast-path
    settings (``{"bf16": "off"}``).
    """
    if reps < 1:
        raise ConfigError(f"--reps must be at least 1, got {reps}")
    cfg = load_experiment(name, data_dir)
    kind = kind_of(cfg)
    if dest is not None and kind == "m2o":
        raise ConfigError("--dest is for M2M experiments; M2O walks toward the origin")
    for key, value in (fast or {}).items():
        setattr(getattr(cfg, kind), key, value)
    device = pick_device(device)
    n = check_batch_paths(cfg, kind, device, reps, batch_paths)
    out = Path(out)
    (out / "endpoints").mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out, cfg.name, kind)
    ledger.data["device"] = str(device)
    exp = Experiment(cfg, kind, out, ledger, device, progress, log)
    todo = []
    for k in range(reps):
        if (out / f"rep-{k:02d}" / "summary.json").is_file():
            log(f"rep {k}: finished, skipped")
        else:
            todo.append(k)
    for group in exp.groups(todo, n):
        t0 = time.perf_counter()
        summaries = exp.repetitions(group, start, dest)
        wall = (time.perf_counter() - t0) / len(group)  # the paths alone, not their endpoints
        for k, summary in zip(group, summaries):
            together = {"batched_with": [f"rep-{j:02d}" for j in group]} if len(group) > 1 else {}
            ledger.record("reps", f"rep-{k:02d}", wall_s=wall, **together)
        if not all(summaries):
            raise KeyboardInterrupt
        for k, summary in zip(group, summaries):
            log(f"rep {k}: {summary.get('status')}" + (f", valid {summary.get('valid')}, valid_relative "
                                                        f"{summary.get('valid_relative')}" if kind == "m2m" else ""))
        if group[-1] < reps - 1:
            aggregate(out)  # partial results are readable while the next repetitions run
    return aggregate(out)


def unbatchable(cfg: C.Config, kind: str) -> str | None:
    """Why the repetitions of ``cfg`` cannot run as one batched method (None: they can)."""
    if cfg.data.name == "imagenet":
        return "ImageNet is read by a loader, and batched paths draw from a dataset held as tensors"
    if getattr(cfg, kind).augment:
        return "its Train_r augments batches, and batched paths draw plain ones"
    if cfg.model.name in STOCHASTIC_MODELS:
        return f"{cfg.model.name} draws random numbers in training (dropout), which a batch draws differently"
    return None


def default_batch_paths(cfg: C.Config, kind: str, device: torch.device, reps: int) -> int:
    """All repetitions together on CUDA when the experiment allows it; one at a time elsewhere.

    On the 2-core CPU this was measured on, vmap over 4-64 LeNet5 steps ran at
    0.5-0.8x the speed of the same steps one by one.
    """
    return reps if device.type == "cuda" and unbatchable(cfg, kind) is None else 1


def check_batch_paths(cfg: C.Config, kind: str, device: torch.device, reps: int, batch_paths: int | None) -> int:
    """How many repetitions run together: ``batch_paths``, checked, or the default."""
    if batch_paths is None:
        return default_batch_paths(cfg, kind, device, reps)
    if batch_paths < 1:
        raise ConfigError(f"--batch-paths must be at least 1, got {batch_paths}")
    why = unbatchable(cfg, kind)
    if batch_paths > 1 and why:
        raise ConfigError(f"--batch-paths {batch_paths}: {cfg.name} cannot batch its paths ({why}); use 1")
    return batch_paths


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

        path = self.out / "endpoints" / f"seed{seed}.safetensors"
        if path.is_file():
            return path
        if self.cfg.data.name == "imagenet":
            return self.torchvision_endpoint()
        self.log(f"training endpoint seed {seed} ({self.cfg.train.epochs} epochs)")
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

    def rep(self, k: int) -> Path:
        return self.out / f"rep-{k:02d}"

    def prepare(self, k: int) -> bool:
        """Whether repetition k has a run to resume.

        A run marked complete whose summary was lost is redone from its last
        checkpoint; a directory left without a run by a kill before the run
        began is emptied.
        """
        rd = RunDir(self.rep(k))
        if rd.exists:
            if rd.info().get("status") == "complete":
                rd.set_status("interrupted")
            return True
        if rd.path.exists():
            for p in sorted(rd.path.rglob("*"), reverse=True):
                p.rmdir() if p.is_dir() else p.unlink()
        return False

    def groups(self, todo: list[int], n: int) -> list[list[int]]:
        """Repetitions in runs of up to ``n`` that can go together: new ones, or ones at one checkpoint."""
        out: list[list[int]] = []
        last = None
        for k in todo:
            resuming = self.prepare(k)
            if n == 1:
                out.append([k])
                continue
            state = RunDir(self.rep(k)).load_checkpoint() if resuming else None
            key = (resuming, None if state is None else int(state["iteration"]))
            if out and key == last and len(out[-1]) < n:
                out[-1].append(k)
            else:
                out.append([k])
            last = key
        return out

    def repetitions(self, group: list[int], start, dest) -> list[dict]:
        """Run the repetitions of ``group`` (new, or resumed after a kill) together; their summaries."""
        from ..runner import resume, resume_paths, run_path, run_paths

        reps = [self.rep(k) for k in group]
        resuming = RunDir(reps[0]).exists
        if resuming and self.cfg.data.name != "imagenet":
            for k in group:
                self.log(f"rep {k}: resuming the interrupted run")
            ends = []
        else:
            ends = [self.endpoints(k, start, dest) for k in group]
            for k, (a, b) in zip(group, ends):
                self.log(f"rep {k}: {'resuming ' if resuming else ''}{self.kind.upper()} from {a.name}"
                         + (f" to {b.name}" if b else ""))
        if len(group) > 1:
            self.log(f"reps {', '.join(map(str, group))}: {len(group)} paths batched together")
        common = dict(device=self.device, progress=self.progress, data=self.data())
        cfgs = [_rep_config(self.cfg, k) for k in group]
        if len(group) == 1 and resuming:
            return [resume(reps[0], **common)]
        if len(group) == 1:
            return [run_path(self.kind, cfgs[0], *ends[0], reps[0], **common)]
        if resuming:
            return resume_paths(reps, **common)
        return run_paths(self.kind, cfgs, [a for a, _ in ends], [b for _, b in ends], reps, **common)


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
