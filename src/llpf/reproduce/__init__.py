"""``llpf reproduce``: the paper's experiments (Appendix A.4, Tables 1-3) with repetitions.

::

    OUT/endpoints/seedS.safetensors   endpoint models (Table 3 recipe), seedS.json their metrics, time and recipe
                                      (seedS-dest: a destination trained with the config's [train.dest])
    OUT/rep-XX/                       one run directory per repetition (M2M or M2O)
    OUT/ranks/rank-R.json             how each repetition went on the rank that ran it (``llpf.shards``)
    OUT/reproduce.json                the experiment, its inputs and the wall time of each piece
    OUT/figure.png                    paper Figure 2 (M2M) or 3 (M2O): mean and std over repetitions
    OUT/summary.md, summary.json      per repetition and aggregated verdicts, and the repetitions not finished

Repetition k of an M2M experiment runs from the endpoint of seed 2k to that of
seed 2k+1 (trained with ``[train.dest]`` when the config has it); of an M2O
experiment, from the endpoint of seed k. Running the same
command again skips the endpoints and repetitions already finished, resumes an
interrupted repetition from its checkpoint, and redraws the aggregate. A
repetition that raises is reported failed and the others go on.

Under ``torchrun`` the repetitions are dealt to the ranks (``llpf.shards``):
each rank runs its share, endpoints included, on its own device, and the
ranks do not talk while they work. Rank 0 alone writes ``reproduce.json`` and
the aggregate, once, when every rank is done (in one process the aggregate is
also redrawn after every repetition, so partial results are readable).

``batch_paths`` repetitions run together as one batched method
(``m2m-batched``, ``m2o-batched``; ``batching``), each still in its own run
directory that reads as if it had run alone: by default all of a process's
repetitions on CUDA where the experiment allows it, and one at a time on the
CPU (where vmap is slower than the same steps one by one).
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
from .. import distributed as D
from .. import shards
from ..data import Bundle, prepare_data
from ..errors import RunDirError
from ..files import check_creatable, save_weights, write_json
from ..models import build_model
from ..runtime import pick_device
from ..store import RunDir
from .aggregate import aggregate
from .batching import check_batch_paths, default_batch_paths, unbatchable
from .estimate import dry_run, format_plan, random_bundle
from .experiment import check_request, experiments, kind_of, load_experiment

__all__ = ["Ledger", "aggregate", "check_batch_paths", "default_batch_paths", "dry_run", "experiments",
           "format_plan", "kind_of", "load_experiment", "random_bundle", "reproduce", "unbatchable"]


def reproduce(name: str, reps: int, out: str | Path, data_dir: str | None = None, device=None,
              start: str | Path | None = None, dest: str | Path | None = None, progress: bool = True,
              log=print, method: str | None = None, batch_paths: int | None = None, fast: dict | None = None) -> dict:
    """Run (or continue) ``reps`` repetitions of experiment ``name`` into ``out``; return the aggregate.

    ``method`` picks the path table of a config holding both (``demo``).
    ``batch_paths`` repetitions run together (default: ``default_batch_paths``);
    ``fast`` overrides the path table's fast-path settings (``{"bf16": "on"}``).
    Under torchrun each rank runs its share and rank 0 returns the aggregate;
    the other ranks return ``{}``.
    """
    cfg, kind = check_request(name, reps, data_dir, method, start, dest, fast)
    world, rank = D.world_size(), D.rank()
    device = D.init(device) if world > 1 else pick_device(device)
    n = check_batch_paths(cfg, kind, device, len(shards.assign(reps, world, rank)) or 1, batch_paths)
    out = Path(out)
    say = log if world == 1 else (lambda line: log(f"rank {rank}: {line}"))
    exp = Experiment(cfg, kind, out, device, progress, say)
    D.on_main(lambda: exp.open(world, start))
    run_id = D.shared_run_id()
    D.cleanup()  # the ranks work apart from here: a repetition may outlast any collective's timeout

    def run_group(ks: list[int]) -> dict[int, dict]:
        infos = exp.run_group(ks, start, dest)
        if world == 1 and ks[-1] < reps - 1:  # one process: partial results readable while the next ones run
            entries = {**shards.collect(out, reps, 1, run_id).entries, **infos}
            exp.report(reps, world, run_id, shards.Tally(entries=entries), partial=True)
        return infos

    with shards.sigterm_interrupts():  # also while rank 0 waits for the others
        try:
            if n == 1:
                shards.run_shard(out, reps, world, rank, run_id, lambda k: run_group([k])[k], exp.finished, say)
            else:
                shards.run_shard(out, reps, world, rank, run_id, run_group, exp.finished, say,
                                 together=lambda todo: exp.groups(todo, n))
            if rank != 0:
                return {}
            tally = shards.wait_for_ranks(out, reps, world, run_id)
        except KeyboardInterrupt:  # rank 0 reports what is finished on its way out
            if rank == 0:
                exp.report(reps, world, run_id, shards.collect(out, reps, world, run_id))
            raise
    return exp.report(reps, world, run_id, tally)


class Ledger:
    """OUT/reproduce.json: what this output directory reproduces, and what it took (written by rank 0 alone)."""

    def __init__(self, out: Path, name: str, kind: str):
        self.file = out / "reproduce.json"
        self.data: dict[str, Any] = {"name": name, "kind": kind, "endpoints": {}, "reps": {}}
        if self.file.is_file():
            old = json.loads(self.file.read_text())
            if (old.get("name"), old.get("kind", kind)) != (name, kind):
                raise RunDirError(f"{out} holds a reproduction of {old.get('name')!r} ({old.get('kind')}), "
                                  f"not {name!r} ({kind}); choose another --out")
            self.data.update(old)

    def merge(self, run_id: str, entries: dict[int, dict], endpoints: Path) -> None:
        """Take in one launch's facts: each repetition's path time and the endpoints' records.

        Path times are kept per launch (a resumed repetition adds the launches
        it took), so merging the same launch twice counts it once.
        """
        for k, entry in entries.items():
            if "path_s" in entry:
                rep = self.data["reps"].setdefault(f"rep-{k:02d}", {})
                launches = rep.setdefault("launches", {"earlier": rep["wall_s"]} if "wall_s" in rep else {})
                launches[run_id] = entry["path_s"]
                rep["wall_s"] = sum(launches.values())
        for f in sorted(endpoints.glob("seed*.json")):
            self.data["endpoints"][f.stem] = json.loads(f.read_text())
        self.save()

    def save(self) -> None:
        write_json(self.file, self.data)


@dataclass
class Experiment:
    """One output directory's experiment: its endpoints and repetitions, with the data loaded once."""

    cfg: C.Config
    kind: str
    out: Path
    device: torch.device
    progress: bool
    log: Callable[[str], Any]
    cache: dict[str, Bundle] = field(default_factory=dict)

    def open(self, world: int, start) -> None:
        """Rank 0, before the ranks start: the folders, the ledger (refusing another experiment's), shared inputs."""
        check_creatable(self.out)
        (self.out / "endpoints").mkdir(parents=True, exist_ok=True)
        ledger = Ledger(self.out, self.cfg.name, self.kind)
        ledger.data.update(device=str(self.device), ranks=world)
        ledger.save()
        if self.cfg.data.name == "imagenet" and start is None:
            self.torchvision_endpoint()  # fetched once, before any rank needs it

    def rep_dir(self, k: int) -> Path:
        return self.out / f"rep-{k:02d}"

    def finished(self, k: int) -> bool:
        done = (self.rep_dir(k) / "summary.json").is_file()
        if done:
            self.log(f"rep {k}: finished, skipped")
        return done

    def run(self, k: int, start, dest) -> dict:
        """Repetition k, its endpoints included; the facts its rank keeps (the time the path alone took)."""
        rep = self.rep_dir(k)
        resuming = RunDir(rep).exists
        if resuming and self.cfg.data.name != "imagenet":
            a = b = None
            self.log(f"rep {k}: resuming the interrupted run")
        else:
            a, b = self.endpoints(k, start, dest)
            self.log(f"rep {k}: {'resuming ' if resuming else ''}{self.kind.upper()} from {a.name}"
                     + (f" to {b.name}" if b else ""))
        t0 = time.perf_counter()
        summary = self.repetition(k, rep, a, b)
        path_s = time.perf_counter() - t0
        if not summary:
            raise shards.Interrupted(path_s=path_s)
        self.log_done(k, summary)
        return {"path_s": path_s, "path_status": summary.get("status")}

    def run_group(self, ks: list[int], start, dest) -> dict[int, dict]:
        """Repetitions ``ks`` together as one batched run (new ones, or ones resumed at one checkpoint); the
        facts each one's rank keeps (its share of the time the paths took)."""
        from ..runner import resume_paths, run_paths

        if len(ks) == 1:
            return {ks[0]: self.run(ks[0], start, dest)}
        reps = [self.rep_dir(k) for k in ks]
        resuming = RunDir(reps[0]).exists
        ends = [] if resuming else [self.endpoints(k, start, dest) for k in ks]
        for i, k in enumerate(ks):
            self.log(f"rep {k}: resuming the interrupted run" if resuming else
                     f"rep {k}: {self.kind.upper()} from {ends[i][0].name}" + (f" to {ends[i][1].name}"
                                                                               if ends[i][1] else ""))
        self.log(f"reps {', '.join(map(str, ks))}: {len(ks)} paths batched together")
        common = dict(device=self.device, progress=self.progress, data=self.data())
        t0 = time.perf_counter()
        if resuming:
            summaries = resume_paths(reps, **common)
        else:
            summaries = run_paths(self.kind, [_rep_config(self.cfg, k) for k in ks], [a for a, _ in ends],
                                  [b for _, b in ends], reps, **common)
        share = (time.perf_counter() - t0) / len(ks)
        if not all(summaries):
            raise shards.Interrupted(path_s=share)
        for k, summary in zip(ks, summaries):
            self.log_done(k, summary)
        return {k: {"path_s": share, "path_status": s.get("status"), "batched_with": [r.name for r in reps]}
                for k, s in zip(ks, summaries)}

    def groups(self, todo: list[int], n: int) -> list[list[int]]:
        """Repetitions in runs of up to ``n`` that can go together: new ones, or ones at one checkpoint."""
        out: list[list[int]] = []
        last = None
        for k in todo:
            resuming = self.prepare(self.rep_dir(k))
            state = RunDir(self.rep_dir(k)).load_checkpoint() if resuming else None
            key = (resuming, None if state is None else int(state["iteration"]))
            if out and key == last and len(out[-1]) < n:
                out[-1].append(k)
            else:
                out.append([k])
            last = key
        return out

    def log_done(self, k: int, summary: dict) -> None:
        self.log(f"rep {k}: {summary.get('status')}" + (f", valid {summary.get('valid')}, valid_relative "
                                                         f"{summary.get('valid_relative')}, valid_paper "
                                                         f"{summary.get('valid_paper')}" if self.kind == "m2m" else ""))

    def report(self, reps: int, world: int, run_id: str, tally: shards.Tally, partial: bool = False) -> dict:
        """Rank 0: merge what the ranks recorded into the ledger, aggregate, and name the repetitions not finished."""
        Ledger(self.out, self.cfg.name, self.kind).merge(run_id, tally.entries, self.out / "endpoints")
        if partial:
            return aggregate(self.out)
        unfinished = {self.rep_dir(k).name: _why_unfinished(k, world, tally) for k in range(reps)
                      if not (self.rep_dir(k) / "summary.json").is_file()}
        for rep, why in unfinished.items():
            self.log(f"{rep}: not finished ({why})")
        return aggregate(self.out, unfinished)

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
                    Path(dest) if dest else self.endpoint(2 * k + 1, "dest"))
        return Path(start) if start else self.endpoint(k), None

    def endpoint(self, seed: int, end: str = "start") -> Path:
        """The endpoint of ``seed``: trained with the Table 3 recipe unless OUT/endpoints already holds it.

        A destination (``end`` "dest") of a config with ``[train.dest]`` is
        trained with that recipe and named ``seedS-dest``.
        """
        from ..runner import recipe_metadata, train
        from ..train import endpoint_epochs

        recipe = self.cfg.train.recipe_of(end)
        path = self.out / "endpoints" / self.cfg.train.endpoint_file(seed, end)
        if path.is_file():
            return path
        if self.cfg.data.name == "imagenet":
            return self.torchvision_endpoint()
        self.log(f"training endpoint seed {seed} ({endpoint_epochs(self.cfg.train.recipe(recipe))} epochs"
                 + (", the [train.dest] recipe)" if recipe == "dest" else ")"))
        t0 = time.perf_counter()
        metrics = train(self.cfg, seed, path, device=self.device, progress=self.progress, data=self.data(),
                        recipe=recipe)
        write_json(path.with_suffix(".json"), {"wall_s": time.perf_counter() - t0, "metrics": metrics,
                                               **recipe_metadata(self.cfg, recipe)})
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

        if self.prepare(rep):
            return resume(rep, device=self.device, progress=self.progress, data=self.data())
        return run_path(self.kind, _rep_config(self.cfg, k), a, b, rep, device=self.device, progress=self.progress,
                        data=self.data())


    @staticmethod
    def prepare(rep: Path) -> bool:
        """Whether ``rep`` holds a run to resume.

        A run marked complete whose summary was lost is redone from its last
        checkpoint; a directory left without a run by a kill before the run
        began is emptied.
        """
        rd = RunDir(rep)
        if rd.exists:
            if rd.info().get("status") == "complete":
                rd.set_status("interrupted")
            return True
        if rep.exists():
            for p in sorted(rep.rglob("*"), reverse=True):
                p.rmdir() if p.is_dir() else p.unlink()
        return False


def _why_unfinished(k: int, world: int, tally: shards.Tally) -> str:
    status, rank = tally.statuses.get(k, "missing"), shards.owner(k, world)
    if status == "failed":
        return f"failed on rank {rank}: {tally.reasons.get(k)}"
    if status == "interrupted":
        return f"interrupted on rank {rank}; the same command continues it"
    if rank in tally.gone:
        return f"rank {rank} ended before finishing it; the same command runs it again"
    return f"not run by rank {rank}; the same command runs it"


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

    eval_batch = cfg.data.eval_batch_size or 256  # a loader's batch is set before there is a model to measure
    train, val = imagenet_loaders(cfg.data.root, batch_size=pc.batch_size, eval_batch_size=eval_batch, seed=seed)
    return Bundle(train, val, cfg.model.num_classes)
