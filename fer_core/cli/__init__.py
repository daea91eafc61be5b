"""The ``python -m fer_core`` command line: the contract the dashboard and the checks rely on.

Owns argument parsing and printing only; every command calls one function of the packages below (it is the
top layer and may import any of them). One module per command group, each with a ``register(sub)`` that adds
its commands; :func:`build_parser` assembles them. A command imports only its own group (``COMMANDS``), so
``train`` (which every queued training runs) does not load what ``predict`` or ``compare`` need; ``--help``
imports them all.

Every command that takes ``--json`` prints one JSON document on stdout (anything else written while it runs,
a library's progress included, goes to stderr). Errors caused by input go to stderr as one line and exit
with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from fer_core.cli.common import json_stdout
from fer_core.common import FerError

#: Each command and the module (``fer_core.cli.<group>``) that registers it, in the order ``--help`` lists them.
COMMANDS = {
    **dict.fromkeys(["models", "describe"], "models"),
    **dict.fromkeys(["status", "data"], "data"),
    **dict.fromkeys(["train", "prune", "sweep", "recipes"], "training"),
    **dict.fromkeys(["export", "compare", "figures", "eval", "runs"], "runs"),
    **dict.fromkeys(["export-onnx", "int8-sensitivity", "format-cost", "predict"], "serving"),
    **dict.fromkeys(["face-template", "eval-faces"], "faces"),
    **dict.fromkeys(["jobs", "cancel", "ray-token", "queue"], "jobs"),
    **dict.fromkeys(["reference", "study", "bench"], "studies"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for every command, or only for ``command``'s group (what running that command needs)."""
    p = argparse.ArgumentParser(
        prog="python -m fer_core", description="FER Lab: how small can an expression model get?"
    )
    sub = p.add_subparsers(dest="command", required=True)
    groups = [COMMANDS[command]] if command in COMMANDS else dict.fromkeys(COMMANDS.values())
    for group in groups:
        importlib.import_module(f"fer_core.cli.{group}").register(sub)
    return p


#: commands that read the results store: each says its duplicate and damaged run folders on stderr
STORE_COMMANDS = {
    "runs", "compare", "figures", "eval", "predict", "export", "export-onnx", "int8-sensitivity", "format-cost",
    "study", "jobs",
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    if args.command in STORE_COMMANDS:
        store = importlib.import_module("fer_core.store.runs")  # it loads pandas: only for the commands that use it
        for note in store.store_notes():
            print(f"note: {note}", file=sys.stderr)
    try:
        with json_stdout(getattr(args, "json", False)):
            return args.func(args)
    except FerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or a machine problem (out of memory, disk full): one line, details on request
        if os.environ.get("FER_DEBUG"):
            raise
        print(f"error: {type(e).__name__}: {e} (set FER_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
