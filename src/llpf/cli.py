"""The ``llpf`` command: a table of command modules (``llpf.commands``) and ``main``.

``llpf demo`` runs the whole method offline on scikit-learn's digits;
``train``, ``m2m``, ``m2o``, the baselines ``autoneb``, ``bezier`` and
``line``, ``resume`` and ``plot`` work on configs, weight files and run
directories; ``compare`` runs them all on the same pairs. A user mistake
prints one line and exits 2. Building the parser imports no torch, so
``llpf --help`` is quick.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from . import __version__
from .errors import LLPFError

# In the order ``llpf --help`` lists their commands.
COMMAND_MODULES = ("endpoints", "layers", "align", "paths", "compare", "experiments", "analyses", "connectivity")

# The commands that run under torchrun (several ranks); every other command runs in one process.
SEVERAL_RANKS = {"train", "m2m", "m2o", "resume", "reproduce", "m2o-baselines", "compare"}


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake on the command line printed as one line (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="llpf", description="Explore the low-loss space of neural networks.")
    ap.add_argument("--version", action="version", version=f"llpf {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.commands.{name}").add(sub)
    return ap


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"llpf: warning: {message}", file=sys.stderr)


def _join_ranks(args) -> None:
    """Under torchrun: join the process group and take this rank's device; only rank 0 shows progress and warnings."""
    from . import distributed as D

    if D.world_size() <= 1:
        return
    if args.command not in SEVERAL_RANKS or getattr(args, "dry_run", False):
        what = "reproduce --dry-run" if args.command == "reproduce" else args.command
        raise D.DistributedError(f"llpf {what} runs in one process; launch it without torchrun "
                                 f"(several ranks run: {', '.join(sorted(SEVERAL_RANKS))})")
    args.device = str(D.init(args.device))
    if not D.is_main():
        args.quiet = True
        warnings.showwarning = lambda *a, **k: None


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a mistake argparse found (one line, exit 2)
        return e.code
    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        if hasattr(args, "check_args"):
            args.check_args(args)
        _join_ranks(args)
        return args.handler(args)
    except LLPFError as e:
        print(f"llpf: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llpf: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left early (llpf configs | head -3): stop quietly, as SIGPIPE would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 128 + 13
    finally:
        warnings.showwarning = shown
        _leave_ranks()


def _leave_ranks() -> None:
    """Leave the process group, if one was joined: only a process that imported llpf.distributed can have."""
    if f"{__package__}.distributed" in sys.modules:
        sys.modules[f"{__package__}.distributed"].cleanup()


if __name__ == "__main__":
    sys.exit(main())
