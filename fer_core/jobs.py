"""Training processes: every training runs as its own ``python -m fer_core train`` process.

A page reload, a closed terminal or a crash in one run never takes another run (or the dashboard) with
it, and the results store on disk is the only channel between a trainer and whoever watches it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Job:
    argv: list[str]  # the arguments after ``python -m fer_core``
    tag: dict = field(default_factory=dict)  # anything the caller wants back with the result
    proc: subprocess.Popen | None = None
    returncode: int | None = None
    run_path: str | None = None  # the run folder the trainer printed last
    stderr_tail: str = ""


def command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "fer_core", *argv]


def start(job: Job, quiet: bool = True) -> Job:
    """Start ``job`` as a child process (stdout captured for the run folder; stderr shown unless quiet)."""
    job.proc = subprocess.Popen(
        command(job.argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if quiet else None,
        text=True,
        env=os.environ.copy(),
    )
    return job


def run_all(jobs: list[Job], parallel: int = 1, quiet: bool = True, on_done: Callable[[Job], None] | None = None):
    """Run ``jobs``, at most ``parallel`` at a time, in order; returns them with their exit codes."""
    pending, active = list(jobs), []
    while pending or active:
        while pending and len(active) < max(1, parallel):
            active.append(start(pending.pop(0), quiet=quiet))
        time.sleep(0.2)
        for job in list(active):
            if job.proc.poll() is None:
                continue
            active.remove(job)
            out, err = job.proc.communicate()
            job.returncode = job.proc.returncode
            lines = (out or "").strip().splitlines()
            job.run_path = lines[-1] if lines else None
            job.stderr_tail = "\n".join((err or "").strip().splitlines()[-5:])
            if on_done:
                on_done(job)
    return jobs
