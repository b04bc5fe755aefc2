"""Sharded repetitions: which rank runs which repetition, and how rank 0 learns they are done.

Under ``torchrun --nproc-per-node N -m llpf reproduce ...`` the K independent
repetitions are dealt round robin (:func:`assign`): rank r runs r, r+N, r+2N...
The ranks do not talk while they work (a repetition may take hours, longer
than any collective's timeout); each keeps a status file that only it writes::

    OUT/ranks/rank-R.json   {"run_id", "rank", "world", "host", "pid", "done",
                             "reps": {"K": {"status": ..., "reason"?, "wall_s"?, ...}}}

A repetition's status goes ``pending`` -> ``running`` -> ``complete``, or
``skipped`` (an earlier run finished it), ``failed`` (it raised; the rank goes
on with its next one) or ``interrupted`` (a signal stopped the rank). A rank
sets ``done`` when its share is over. Rank 0 waits until every rank of this
launch (same ``run_id``) is done, or its process is gone, then aggregates.
The repetitions' own run directories stay the truth about what is finished:
running the same command again, with any number of ranks, runs only what is
not (``finished``), and a rank that was killed leaves its unfinished
repetitions ``missing`` in :func:`collect`.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .files import write_json

UNFINISHED = ("pending", "running")


def assign(reps: int, world: int, rank: int) -> list[int]:
    """The repetitions rank ``rank`` of ``world`` runs: ``rank, rank + world, ...`` below ``reps``."""
    if reps < 0 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"cannot assign {reps} repetitions to rank {rank} of {world}")
    return list(range(rank, reps, world))


def owner(rep: int, world: int) -> int:
    """The rank that runs repetition ``rep``."""
    return rep % world


class Interrupted(KeyboardInterrupt):
    """A repetition stopped by a signal, carrying facts to keep with its status (the time its path ran)."""

    def __init__(self, **info):
        super().__init__()
        self.info = info


def rank_file(out: str | Path, rank: int) -> Path:
    return Path(out) / "ranks" / f"rank-{rank}.json"


class RankStatus:
    """This rank's status file: its repetitions and how each went, rewritten atomically on every change."""

    def __init__(self, out: str | Path, rank: int, world: int, run_id: str, reps: list[int]):
        self.file = rank_file(out, rank)
        self.file.parent.mkdir(parents=True, exist_ok=True)
        self.data = {"run_id": run_id, "rank": rank, "world": world, "host": socket.gethostname(),
                     "pid": os.getpid(), "done": False, "reps": {str(k): {"status": "pending"} for k in reps}}
        self._write()

    def mark(self, rep: int, status: str, **info) -> None:
        self.data["reps"][str(rep)] = {"status": status, **info}
        self._write()

    def finish(self) -> None:
        self.data["done"] = True
        self._write()

    def _write(self) -> None:
        write_json(self.file, self.data)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


@contextmanager
def sigterm_interrupts():
    """SIGTERM (torchrun stopping the ranks) interrupts like SIGINT, so the unit of work under way is marked."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_shard(out: str | Path, reps: int, world: int, rank: int, run_id: str,
              run_one: Callable, finished: Callable[[int], bool],
              log: Callable[[str], None] = print,
              together: Callable[[list[int]], list[list[int]]] | None = None,
              noun: str = "repetition") -> dict[str, dict]:
    """Run this rank's share of ``reps`` repetitions, keeping OUT/ranks/rank-R.json; return its entries.

    ``finished(k)`` says repetition k is already done (skipped); ``run_one(k)``
    runs it and may return JSON-able facts to keep with its status (wall times).
    A repetition that raises is marked failed and the rank goes on; a signal
    (KeyboardInterrupt, or :class:`Interrupted` with facts) marks it interrupted and ends the share.
    With ``together``, which splits the unfinished repetitions into groups that
    run at once (paths batched on one device), ``run_one(ks)`` runs a group and
    returns ``{k: facts}``; the group's repetitions share one fate.
    ``noun`` names a unit of work in the log ("pair" for ``compare``).
    """
    mine = assign(reps, world, rank)
    status = RankStatus(out, rank, world, run_id, mine)

    def unfinished(k: int) -> bool:
        if finished(k):
            status.mark(k, "skipped")
            return False
        return True

    if together is None:
        groups = ([k] for k in mine if unfinished(k))  # lazily: each checked just before it would run
        run = lambda ks: {ks[0]: run_one(ks[0]) or {}}  # noqa: E731
    else:
        groups, run = together([k for k in mine if unfinished(k)]), run_one
    with sigterm_interrupts():
        for ks in groups:
            _run_group(status, ks, run, rank, log, noun)
    status.finish()
    return status.data["reps"]


def _run_group(status: RankStatus, ks: list[int], run: Callable[[list[int]], dict], rank: int, log,
               noun: str) -> None:
    for k in ks:
        status.mark(k, "running")
    t0 = time.perf_counter()
    try:
        infos = run(ks)
    except KeyboardInterrupt as e:
        for k in ks:
            status.mark(k, "interrupted", wall_s=time.perf_counter() - t0, **getattr(e, "info", {}))
        raise
    except Exception as e:  # one repetition's failure must not cost the others
        for k in ks:
            status.mark(k, "failed", reason=_one_line(e), wall_s=time.perf_counter() - t0)
            log(f"rank {rank}: {noun} {k} failed: {_one_line(e)}")
        return
    for k in ks:
        status.mark(k, "complete", wall_s=time.perf_counter() - t0, **(infos.get(k) or {}))


@dataclass
class Tally:
    """What the rank files of one launch say about every repetition."""

    statuses: dict[int, str] = field(default_factory=dict)  # rep -> complete/skipped/failed/.../missing
    reasons: dict[int, str] = field(default_factory=dict)  # failed rep -> one line
    entries: dict[int, dict] = field(default_factory=dict)  # rep -> its whole entry (wall_s, facts)
    done: set[int] = field(default_factory=set)  # ranks whose share is over
    gone: set[int] = field(default_factory=set)  # ranks whose process ended before their share did

    def of(self, *statuses: str) -> list[int]:
        return sorted(k for k, s in self.statuses.items() if s in statuses)

    @property
    def missing(self) -> list[int]:
        return self.of("missing")

    @property
    def failed(self) -> list[int]:
        return self.of("failed", "interrupted")


def _read(out: Path, rank: int, run_id: str) -> dict | None:
    try:
        data = json.loads(rank_file(out, rank).read_text())
    except (OSError, ValueError):
        return None  # not written yet, or by an earlier launch being replaced
    return data if data.get("run_id") == run_id else None


def _alive(data: dict) -> bool:
    """False only when the rank ran on this host and its process no longer exists."""
    if data.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(data["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError):
        return True
    return True


def collect(out: str | Path, reps: int, world: int, run_id: str) -> Tally:
    """Snapshot of this launch's rank files: each repetition's status (``missing`` when not finished)."""
    out, tally = Path(out), Tally()
    files = {r: _read(out, r, run_id) for r in range(world)}
    for r, data in files.items():
        if data is not None and data.get("done"):
            tally.done.add(r)
        elif data is not None and not _alive(data):
            tally.gone.add(r)
    for k in range(reps):
        entry = ((files[owner(k, world)] or {}).get("reps") or {}).get(str(k))
        status = entry["status"] if entry else "missing"
        tally.statuses[k] = "missing" if status in UNFINISHED else status
        if entry:
            tally.entries[k] = entry
            if "reason" in entry:
                tally.reasons[k] = entry["reason"]
    return tally


def wait_for_ranks(out: str | Path, reps: int, world: int, run_id: str, timeout_s: float | None = None,
                   poll_s: float = 2.0, sleep: Callable[[float], None] = time.sleep,
                   clock: Callable[[], float] = time.monotonic) -> Tally:
    """Rank 0: poll until every rank is done or gone (or ``timeout_s`` passes); return the final tally."""
    start = clock()
    while True:
        tally = collect(out, reps, world, run_id)
        if len(tally.done | tally.gone) == world:
            return tally
        if timeout_s is not None and clock() - start >= timeout_s:
            return tally
        sleep(poll_s)
