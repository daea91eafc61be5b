"""How a training process is asked to stop: SIGTERM (the dashboard's cancel, ``kill``, a service manager) becomes
:class:`Cancelled`, raised where it cannot cut a record short."""

from __future__ import annotations

import signal
from contextlib import contextmanager


class Cancelled(BaseException):
    """Raised inside a training process when it is asked to stop (SIGTERM, or the dashboard's cancel)."""


#: the process's stops (signals arrive in the main thread): whether an epoch's files are being written and the stop
#: that came meanwhile, and whether a stopped run is being recorded (more stops are dropped until it is)
_STOPS: dict = {"writing": False, "stop": None, "recording": False}


def cancel(stop: Cancelled | None = None) -> None:
    """Stop this process's training (a signal handler's call): raise ``stop`` now or, while an epoch's files are
    written (metrics row, checkpoint, summary), once they all are: no epoch is recorded without its checkpoint.
    While a stopped run is being recorded as stopped, more stops are dropped: a study's worker gets SIGTERM twice
    when its whole group is signalled (once from the signal, once from its parent), and the second must not cut
    the first's summary short."""
    if _STOPS["recording"]:
        return
    stop = stop or Cancelled()
    if _STOPS["writing"]:
        _STOPS["stop"] = stop
        return
    raise stop


@contextmanager
def epoch_files():
    """While an epoch's files are written: a stop waits until the block ends, then is raised."""
    _STOPS["writing"] = True
    try:
        yield
    finally:
        _STOPS["writing"] = False
        stop, _STOPS["stop"] = _STOPS["stop"], None
    if stop is not None:
        raise stop


@contextmanager
def recording_a_stop():
    """While a stopped run is recorded as stopped: stops that come meanwhile are dropped (it is stopping)."""
    _STOPS["recording"] = True
    try:
        yield
    finally:
        _STOPS["recording"] = False  # recorded: a later stop is a new one


def install_cancel_handler() -> None:
    """Turn SIGTERM into :class:`Cancelled` so the run is recorded as cancelled, not failed."""
    signal.signal(signal.SIGTERM, lambda signum, frame: cancel())
