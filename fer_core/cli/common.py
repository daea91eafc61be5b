"""What every command group shares: one JSON document on stdout for ``--json``, number arguments, Ray flags."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from fer_core.jobs.ray_backend import backend_spec
from fer_core.training.config import RunConfig

#: Where ``print_json`` writes while a ``--json`` command runs (the real stdout); None otherwise.
_json_out = None


def print_json(obj) -> None:
    """Print ``obj`` as the command's one JSON document on stdout."""
    out = _json_out or sys.stdout
    json.dump(obj, out, indent=2, default=str)
    out.write("\n")
    out.flush()


@contextlib.contextmanager
def json_stdout(enabled: bool):
    """While a ``--json`` command runs, only :func:`print_json` reaches stdout; everything else written there goes
    to stderr: our own prints, a library's progress (ONNX Runtime's calibration prints to stdout), C code writing
    to file descriptor 1, and child processes (they inherit it)."""
    global _json_out
    if not enabled:
        yield
        return
    sys.stdout.flush()
    try:
        real_fd = sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):  # stdout is a Python object (a test's capture): no fd to move
        real_fd = False
    saved, stdout = None, sys.stdout
    if real_fd:
        saved = os.dup(1)
        os.dup2(2, 1)
        _json_out = os.fdopen(os.dup(saved), "w")
    else:
        _json_out = stdout
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = stdout
        if saved is not None:
            _json_out.close()
            os.dup2(saved, 1)
            os.close(saved)
        _json_out = None


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def number_list(text: str) -> list[float]:
    return [number(t) for t in text.split(",") if t.strip()]


def add_ray_arguments(s) -> None:
    g = s.add_argument_group("Ray cluster (instead of this machine)")
    g.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="train on the Ray cluster at ADDRESS (ray://HOST:10001, HOST:6379, auto, or local for a new one here)",
    )
    g.add_argument("--gpu-fraction", type=float, default=0.0, help="GPU share per training (0.25: four per GPU)")
    g.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs per training (default: 1)")
    g.add_argument("--retries", type=int, default=1, help="retries when a worker dies (default: 1)")


def backend_from(args) -> dict | None:
    if not getattr(args, "ray", None):
        return None

    address = None if args.ray == "local" else args.ray
    return backend_spec(address, args.gpu_fraction, args.cpus_per_run, args.retries)


def base_config(args) -> RunConfig:
    """The config a command starts from: ``--config FILE`` if given, else the defaults."""
    return RunConfig.from_file(args.config) if getattr(args, "config", None) else RunConfig()
