"""Run directories as the analysis sees them: find them, read their config, list their layers."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..config import Config, load_config
from ..errors import RunDirError
from ..models import build_model
from ..store import RunDir

BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def is_run(path: str | Path) -> bool:
    return (Path(path) / "run.json").is_file()


def expand_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories named directly, or found one level below a named folder (e.g. a demo's output).

    Raises RunDirError for a path that is neither.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if is_run(p):
            out.append(p)
            continue
        children = sorted(c for c in p.iterdir() if is_run(c)) if p.is_dir() else []
        if not children:
            raise RunDirError(f"{p} is not an llpf run directory and holds none")
        out.extend(children)
    return out


def run_config(run: str | Path) -> Config:
    """The resolved config a run directory was made with."""
    f = Path(run) / "config.toml"
    if not f.is_file():
        raise RunDirError(f"{run} has no config.toml")
    return load_config(f)


def parameter_names(run: str | Path) -> list[str]:
    """The trainable parameter names of a run's model (buffers excluded), in model order."""
    model = build_model(run_config(run).model)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def run_kind(run: str | Path) -> str:
    return RunDir(run).info().get("kind", "m2m")
