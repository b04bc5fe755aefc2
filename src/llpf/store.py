"""The run directory: the unit of work on disk.

::

    RUN/config.toml          the fully resolved config (plus the run's inputs)
    RUN/run.json             kind, status, inputs, library versions, device
    RUN/metrics.csv          one row per iteration; evaluation columns every k iterations
    RUN/points/NNNNNNN.safetensors   saved path points (model state) every k iterations
    RUN/final.safetensors    the last point
    RUN/best.safetensors     M2O: the best-generalising point
    RUN/path.json, RUN/path/NNN.safetensors   the path a method built when it is not its saved
                             points (AutoNEB's pivots, a curve's control points), written at its end
    RUN/checkpoint.pt        everything needed to resume (weights_only-loadable)
    RUN/summary.json         status and the path's verdicts
    RUN/alignment.json       when the destination was aligned to the start (``--align``): what alignment did
    RUN/figures/*.png

Every file except metrics.csv is written to a temporary name, flushed, fsynced
and renamed (``llpf.files``), so a kill leaves either the old or the new file. metrics.csv is
appended whole lines at a time and fsynced; readers ignore a torn last line.
The store knows nothing about training.
"""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from . import files
from .errors import CheckpointError, RunDirError
from .files import check_creatable, load_weights, save_weights
from .observer import Observer

BASE_COLUMNS = ["iteration", "phase", "batch_loss", "rounds"]


def environment() -> dict[str, Any]:
    """Library versions and platform, recorded in every run's run.json."""
    import numpy

    from . import __version__

    return {"llpf": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "platform": platform.platform()}


def read_metrics(path: str | Path) -> list[dict[str, float | None]]:
    """metrics.csv as dicts of floats (None for empty cells); a torn last line is ignored."""
    text = Path(path).read_text()
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return []
    header, body = rows[0], rows[1:]
    if body and not text.endswith("\n"):
        body = body[:-1]
    out = []
    for r in body:
        if len(r) != len(header):
            continue
        out.append({h: (float(v) if v != "" else None) for h, v in zip(header, r)})
    return out


class RunDir(Observer):
    """A run directory, and the observer that fills it while the engine runs."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.columns: list[str] | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def exists(self) -> bool:
        return (self.path / "run.json").is_file()

    def info(self) -> dict:
        try:
            return json.loads((self.path / "run.json").read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def check_writable_for_new_run(self, force: bool = False) -> None:
        """Refuse a path that holds a run (unless ``force`` and not complete), a non-run folder or a file."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"output path {self.path} exists and is not a directory")
        if self.exists:
            status = self.info().get("status", "unknown")
            if not force or status == "complete":
                hint = "" if status == "complete" else " (use --resume to continue it, or --force to start over)"
                raise RunDirError(f"{self.path} already holds a {status} run{hint}")
        elif self.path.is_dir() and any(self.path.iterdir()):
            raise RunDirError(f"output directory {self.path} is not empty and holds no llpf run")
        check_creatable(self.path)

    def create(self, kind: str, config_toml: str, inputs: dict[str, Any], device: str, force: bool = False) -> None:
        """Make a new run directory; refuse one that already holds a run (unless ``force`` and not complete)."""
        self.check_writable_for_new_run(force)
        try:
            (self.path / "points").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"cannot create {self.path}: {e.strerror or e}") from None
        if not os.access(self.path, os.W_OK):
            raise RunDirError(f"output directory {self.path} is not writable")
        for stale in ("metrics.csv", "summary.json", "checkpoint.pt", "final.safetensors", "best.safetensors",
                      "path.json", "alignment.json"):
            (self.path / stale).unlink(missing_ok=True)
        for p in (self.path / "points").glob("*.safetensors"):
            p.unlink()
        files.atomic_write(self.path / "config.toml", config_toml.encode())
        self.write_info({"kind": kind, "status": "running", "inputs": inputs, "device": device,
                         "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": environment()})

    def write_info(self, info: dict) -> None:
        files.write_json(self.path / "run.json", info)

    def set_status(self, status: str, **extra) -> None:
        info = {k: v for k, v in self.info().items() if k not in ("iteration", "reason")}
        info.update(status=status, **extra)
        self.write_info(info)

    # ------------------------------------------------------------ observer

    def on_rows(self, rows: list[dict]) -> None:
        f = self.path / "metrics.csv"
        if self.columns is None:
            if f.is_file() and f.stat().st_size > 0:
                self.columns = next(csv.reader(io.StringIO(f.read_text().split("\n", 1)[0])))
            else:
                extra = [k for k in rows[0] if k not in BASE_COLUMNS]
                self.columns = BASE_COLUMNS + extra
                self._append(",".join(self.columns) + "\n")
        buf = io.StringIO()
        w = csv.DictWriter(buf, self.columns, extrasaction="ignore", lineterminator="\n")
        for r in rows:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
        self._append(buf.getvalue())

    def _append(self, text: str) -> None:
        try:
            with open(self.path / "metrics.csv", "a") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as e:
            raise RunDirError(f"cannot write {self.path / 'metrics.csv'}: {e.strerror or e}") from None

    def remove_partial_writes(self) -> None:
        """Delete the temporary files of writes that a kill interrupted."""
        for folder in (self.path, self.path / "points"):
            for p in folder.glob(".*.tmp-*"):
                p.unlink(missing_ok=True)

    def truncate_metrics(self, last_iteration: int) -> None:
        """Drop rows after ``last_iteration`` (and a torn line), before a resume appends again."""
        f = self.path / "metrics.csv"
        if not f.is_file():
            return
        lines = f.read_text().split("\n")
        header, body = lines[0], [ln for ln in lines[1:] if ln]
        keep = [header]
        ncol = len(next(csv.reader([header])))
        for ln in body:
            cells = next(csv.reader([ln]))
            if len(cells) != ncol or int(float(cells[0])) > last_iteration:
                break
            keep.append(ln)
        files.atomic_write(f, ("\n".join(keep) + "\n").encode())

    def point_path(self, iteration: int) -> Path:
        return self.path / "points" / f"{iteration:07d}.safetensors"

    def on_point(self, iteration: int, state: dict[str, torch.Tensor]) -> None:
        save_weights(self.point_path(iteration), state, {"iteration": str(iteration)})

    def point_loader(self, iteration: int):
        path = self.point_path(iteration)
        return lambda: load_weights(path)

    def on_best(self, iteration: int, state: dict[str, torch.Tensor]) -> None:
        save_weights(self.path / "best.safetensors", state, {"iteration": str(iteration)})

    def on_checkpoint(self, iteration: int, state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        files.atomic_write(self.path / "checkpoint.pt", buf.getvalue())

    def load_checkpoint(self) -> dict[str, Any] | None:
        f = self.path / "checkpoint.pt"
        if not f.is_file():
            return None
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"checkpoint {f} is unreadable ({type(e).__name__}); start over with --force") from None

    def on_summary(self, summary: dict) -> None:
        files.write_json(self.path / "summary.json", summary)

    def on_path(self, curve: str, states: list[dict[str, torch.Tensor]]) -> None:
        folder = self.path / "path"
        folder.mkdir(exist_ok=True)
        for p in folder.glob("*.safetensors"):
            p.unlink()
        for i, state in enumerate(states):
            save_weights(folder / f"{i:03d}.safetensors", state, {"knot": str(i)})
        files.write_json(self.path / "path.json", {"curve": curve, "knots": len(states)})

    def knots(self) -> tuple[str, list[Path]] | None:
        """``(curve, files)`` of the path the method built (``path.json``), or None when its points are the path."""
        f = self.path / "path.json"
        if not f.is_file():
            return None
        info = json.loads(f.read_text())
        return info["curve"], [self.path / "path" / f"{i:03d}.safetensors" for i in range(info["knots"])]

    def update_summary(self, extra: dict) -> dict:
        """Merge ``extra`` into a finished run's summary.json (atomically) and return the result.

        Analyses that certify a run (its straight line, its segments) add their
        verdicts here. A run without a summary (still running, interrupted) is
        left as it is and ``{}`` returned: ``resume`` would discard the fields.
        """
        if not (self.path / "summary.json").is_file():
            return {}
        summary = {**self.summary(), **extra}
        files.write_json(self.path / "summary.json", summary)
        return summary

    # ------------------------------------------------------------ reading

    def summary(self) -> dict:
        return json.loads((self.path / "summary.json").read_text())

    def metrics(self) -> list[dict]:
        return read_metrics(self.path / "metrics.csv")

    def points(self) -> list[tuple[int, Path]]:
        """``(iteration, file)`` of every saved point, in order."""
        out = []
        for p in sorted((self.path / "points").glob("*.safetensors")):
            try:
                out.append((int(p.stem), p))
            except ValueError:
                continue
        return out


def gradient_steps(run: str | Path) -> int:
    """Gradient evaluations a run took: the sum of its ``rounds`` column (Train_r steps, band pivots, curve steps)."""
    return int(sum(r.get("rounds") or 0 for r in RunDir(run).metrics()))
