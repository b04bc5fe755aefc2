"""``python -m llpf``: the ``llpf`` command, also the entry point ``torchrun -m llpf`` needs."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
