"""Files written whole or not at all, and weights read without unpickling code.

Every llpf file except ``metrics.csv`` is written through ``atomic_write``: to
a temporary name in the same folder, flushed, fsynced and renamed, so a kill
leaves the old file or the new one, never half. Weights are safetensors;
``load_weights`` also reads ``torch.save`` files, with ``weights_only=True``.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from .errors import CheckpointError, RunDirError

WRAPPERS = ("state_dict", "model")  # training scripts often save the weights one level down, under these keys


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RunDirError(f"cannot write {path}: {e.strerror or e}") from None
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def check_creatable(path: str | Path) -> None:
    """Refuse a path that could not be written: its nearest existing ancestor (or itself) must be a writable folder."""
    path = Path(path)
    parent = next((p for p in [path, *path.parents] if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise RunDirError(f"cannot create {path}: {parent} is not a writable directory")


def check_output_folder(path: str | Path, force: bool = False) -> Path:
    """Refuse an output folder that is a file, holds an llpf run, or is not empty (unless ``force``).

    The analyses (``pca``, ``dim``, ``variance``, ...) call this before any work,
    so earlier results are never overwritten by accident; ``force`` writes over
    an earlier output, never over a run directory. Nothing is created here.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"output path {path} exists and is not a directory")
    if (path / "run.json").is_file():
        raise RunDirError(f"{path} holds an llpf run; choose another --out")
    if not force and path.is_dir() and any(path.iterdir()):
        raise RunDirError(f"output folder {path} is not empty; choose another --out or pass --force")
    check_creatable(path)
    return path


def write_json(path: str | Path, obj: Any) -> None:
    """``obj`` as indented JSON with a trailing newline, atomically."""
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_csv(path: str | Path, rows: list[dict], columns: Sequence[str]) -> Path:
    """``rows`` as CSV with ``columns`` (other keys left out; floats written exactly, by ``repr``), atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write(path, buf.getvalue().encode())
    return Path(path)


def save_weights(path: str | Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save a state dict as safetensors, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(path, save(tensors, metadata=metadata))


def weights_metadata(path: str | Path) -> dict[str, str]:
    """The metadata a safetensors file carries (``{}`` for other files or none); what wrote it: config, seed, recipe."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - load_weights names an unreadable file; its metadata is only a note
        return {}


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load model weights from safetensors, or a torch file with ``weights_only=True`` (never unpickle code).

    A state dict wrapped one level down (``{"state_dict": ...}`` or
    ``{"model": ...}``) is unwrapped. Every failure is one CheckpointError line.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"weights file is empty: {path}")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt file, a truncated one, or one whose unpickling was refused
        why = " ".join(str(e).split())[:200] or type(e).__name__
        raise CheckpointError(f"cannot read weights from {path}: not a readable weights file "
                              f"(corrupt, truncated or holding code: {why})") from None
    for key in WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state
