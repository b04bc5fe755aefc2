"""The ``llpf`` commands, one module per group, each a thin layer over a library call.

Every module has ``add(sub)``, which adds its subparsers to ``llpf``'s and
sets each parser's ``handler`` (``p.set_defaults(handler=...)``) and, where a
command has checks that argparse's types cannot make, ``check_args`` (run
before the handler, before any model, dataset or torch is loaded). Modules import only :mod:`argparse`,
:mod:`llpf.errors` and :mod:`llpf.commands.common` at their top: the library
is imported inside the handlers, so ``llpf --help`` and every command's
``--help`` print without importing torch. ``llpf.cli`` lists the modules.
"""
