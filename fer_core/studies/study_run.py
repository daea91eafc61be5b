"""Training a study (:mod:`fer_core.studies.families` says what the plan is and where each run stands): the plan
printed with estimates and what fits the budget, then its runs trained in order, one at a time in this process or
``workers`` at once, each worker a process of its own that takes the plan's next run nobody trains.

Workers share the study folder through a lock (``.study-lock``) held while one picks its next run, and a claims
file (``.study-claims.json``: plan key -> pid) that says who trains what from the moment it is picked, before the
run's own summary says so; a claim of a process no longer alive lapses, so a killed worker's run is picked up
again (from its last checkpoint) by the next start. Both files are machine state, git-ignored.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from fer_core.common import FerError
from fer_core.data.sources import load
from fer_core.store.files import atomic_write_json, read_json
from fer_core.studies.families import (
    DEFAULT_DIR,
    Item,
    epoch_seconds,
    fmt_seconds,
    lane_finish,
    match_runs,
    plan_digest,
    progress,
    read_plan,
    run_config,
    run_state,
)
from fer_core.training.device import cpu_cores, device_name, resolve_device
from fer_core.training.stops import Cancelled, cancel
from fer_core.training.trainer import fit

try:
    import fcntl
except ImportError:  # Windows: one worker only
    fcntl = None

LOCK_FILE, CLAIMS_FILE = ".study-lock", ".study-claims.json"


class Paused(Cancelled):
    """The study's time budget ran out: the run stops after its epoch, resumable."""


def default_workers_threads(workers: int) -> int:
    """CPU threads per worker when ``--threads`` is not given: this process's cores shared out, at least one."""
    return max(1, cpu_cores() // workers)


@contextmanager
def _locked(folder: Path):
    """The study folder's lock: held while a worker picks its next run, so that two never pick the same."""
    with open(folder / LOCK_FILE, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def _claims(folder: Path) -> dict:
    """Plan key (as text) -> pid of the worker training it; claims of processes no longer alive are dropped."""
    doc = read_json(folder / CLAIMS_FILE)
    return {k: pid for k, pid in (doc if isinstance(doc, dict) else {}).items() if _alive(pid)}


def _claim_next(folder: Path, protocol: dict, items: list[Item], busy: set) -> tuple | None:
    """Under the folder's lock: the first run of the plan not done, not being trained and not claimed by another
    worker, claimed for this process; (item, run or None, state, epochs done), or None when nothing is left.
    ``busy`` collects the labels of runs another process trains (for one line each)."""
    me = os.getpid()
    with _locked(folder):
        claims = {k: pid for k, pid in _claims(folder).items() if pid != me}
        found = match_runs(folder, protocol, items)[0]
        for it in items:
            key = repr(it.key(protocol))
            run = found.get(it.key(protocol))
            state, done = run_state(run)
            if state == "done":
                continue
            if state == "training" or key in claims:
                pid = claims.get(key) or (read_json(run.summary_file) or {}).get("pid")
                busy.add(f"{it.label()}: being trained by another process (pid {pid}); skipped")
                continue
            _write_claims(folder, {**claims, key: me})
            return it, run, state, done
        _write_claims(folder, claims)
    return None


def _release(folder: Path, it: Item, protocol: dict) -> None:
    with _locked(folder):
        claims = _claims(folder)
        claims.pop(repr(it.key(protocol)), None)
        _write_claims(folder, claims)


def _write_claims(folder: Path, claims: dict) -> None:
    """The claims file, or none when nobody claims anything (a finished study leaves no machine state)."""
    if claims:
        atomic_write_json(folder / CLAIMS_FILE, claims)
    else:
        (folder / CLAIMS_FILE).unlink(missing_ok=True)


def _start_workers(n: int, folder: Path, deadline, data, device, threads: int) -> list[subprocess.Popen]:
    """``n`` more workers, each a ``study families --lane K`` process of its own (torch with ``threads``
    threads), started from here so they inherit the allocator's settings; on Linux each ends with this one."""
    cmd = [sys.executable, "-m", "fer_core", "study", "families", "--out", str(folder), "--device", device]
    cmd += ["--threads", str(threads)] + (["--until", repr(deadline)] if deadline else [])
    cmd += ["--data", data] if data else []
    kw: dict = {}
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        kw["preexec_fn"] = lambda: libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: a killed parent ends them
    return [subprocess.Popen([*cmd, "--lane", str(k)], **kw) for k in range(1, n + 1)]


def run_study(
    folder: Path = DEFAULT_DIR,
    hours: float | None = None,
    data: str | None = None,
    device: str = "auto",
    threads: int | None = None,
    dry_run: bool = False,
    say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
    workers: int = 1,
    lane: int = 0,
    until: float | None = None,
) -> dict:
    """Print the plan with estimates and what fits ``hours``, then train what is left, in order, until done or
    the budget ends (after the epoch in progress). Returns :func:`progress` at the end.

    ``workers`` > 1 trains that many runs at once, each in its own process (this one and ``workers - 1``
    started from it, ``threads`` torch threads each): every worker takes the plan's next run nobody trains,
    under a lock on the folder, so none is trained twice; on a CPU, one-thread workers on separate cores train
    more images per second in all than one process using every core. ``lane`` > 0: this process is such a
    worker (no plan printed; the parent prints it), ``until`` the time its parent's budget ends."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if workers < 1:
        raise FerError(f"--workers {workers}: at least 1")
    if fcntl is None and (workers > 1 or lane):
        raise FerError("--workers needs a POSIX system (Linux, macOS): the workers share the folder through a lock")
    if workers > 1 and threads is None:
        threads = default_workers_threads(workers)
    if lane:
        inner = say
        say = lambda m: inner(f"[worker {lane}] {m}")  # noqa: E731
    t_start = time.time()
    protocol, items = read_plan(folder)
    state_file = folder / "study-state.json"
    last = read_json(state_file) or {}
    digest = plan_digest(protocol, items)
    if not lane and last.get("plan") and last["plan"] != digest:
        say(f"note: {folder / 'plan.json'} changed since the last start; its runs are matched anew (nothing is lost)")
    if threads:
        torch.set_num_threads(threads)  # the estimates measure what the runs will have
    fer = load(data)
    found, notes = match_runs(folder, protocol, items)
    n_train = min(len(fer.train_y), protocol.get("data_limit") or len(fer.train_y))
    secs = epoch_seconds(items, found, protocol, n_train, len(fer.split("public")[1]), device, probe=not lane)
    if not lane:
        for n in notes:
            say(f"note: {n}")
        _print_plan(folder, items, found, protocol, secs, hours, workers, threads, fer.name, device, say)
        here = device_name(resolve_device(device))
        atomic_write_json(state_file, {"plan": digest, "started": t_start, "device": here})
    if dry_run:
        return progress(folder)
    deadline = time.time() + hours * 3600 if hours else None  # the budget is training time, from here
    if until:  # a worker: the budget ends when its parent's does
        deadline = until
    children: list[subprocess.Popen] = []
    restore = _stop_on_sigterm(children)
    try:
        if workers > 1 and not lane:
            children += _start_workers(workers - 1, folder, deadline, data, device, threads)
        _work(folder, protocol, items, secs, deadline, fer, data, device, threads, say)
    except Cancelled as e:  # the signal came between two runs: nothing was training
        say(str(e))
    finally:
        for c in children:
            c.wait()
        restore()
    final = progress(folder, workers=workers)
    if not lane:
        left = fmt_seconds(final["wall_left_s"])
        say(f"study: {final['done']}/{final['total']} runs done; about {left} left on this device with {workers} "
            f"worker{'s' if workers > 1 else ''}")  # fmt: skip
    return final


def _stop_on_sigterm(children: list[subprocess.Popen]) -> Callable[[], None]:
    """SIGTERM (``kill``, a service manager, a closing terminal) stops the study as Ctrl-C does: the run in
    progress is recorded as stopped at its last finished epoch (not as crashed), its workers are told the same,
    and the next start resumes each from there. Returns what puts the previous handler back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # only the main thread may take signals; there the default stays

    def handler(signum, frame):
        for c in children:
            if c.poll() is None:
                c.terminate()
        cancel(Cancelled("stopped (SIGTERM); `study families` resumes it from its last finished epoch"))

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _print_plan(folder, items, found, protocol, secs, hours, workers, threads, data_name, device, say) -> None:
    """The plan, run by run: state, epochs, estimate, and whether it fits the budget (with ``workers`` lanes)."""
    say(f"study {folder}: {len(items)} runs, {protocol['recipe']} x {protocol['epochs']} epochs, data {data_name}")
    lanes = f"; {workers} workers of {threads} thread{'s' if threads != 1 else ''} each" if workers > 1 else ""
    say(f"device: {device_name(resolve_device(device))}; budget: {f'{hours:g} h' if hours else 'none'}{lanes}")
    rows, waiting = [], []
    for it in items:
        state, done = run_state(found.get(it.key(protocol)))
        per = secs[(it.family, round(it.width, 6))]
        est = 0.0 if state == "done" else (per or 0.0) * (it.epochs - done)
        rows.append((it, state, done, est))
        if state != "done":
            waiting.append(est)
    finish = iter(lane_finish(waiting, workers))
    say(f"{'#':>2} {'run':<24} {'params':>9} {'phase':<9} {'state':<10} {'epochs':>7} {'estimate':>9}  fits")
    for i, (it, state, done, est) in enumerate(rows, 1):
        mark = "done"
        if state != "done":
            _, end = next(finish)
            mark = "yes" if hours is None or end <= hours * 3600 else "no"
        say(
            f"{i:>2} {it.label():<24} {it.params:>9,} {it.phase:<9} {state:<10} {done:>3}/{it.epochs:<3} "
            f"{fmt_seconds(est):>9}  {mark}"
        )


def _work(folder, protocol, items, secs, deadline, fer, data, device, threads, say) -> None:
    """One worker's loop: claim the plan's next free run, train it (resuming it if it has a checkpoint), release
    it; until nothing is left, the budget ends, or a run pauses at the budget."""
    busy: set = set()
    told: set = set()
    while not (deadline and time.time() >= deadline):
        nxt = _claim_next(folder, protocol, items, busy)
        for line in sorted(busy - told):
            say(line)
        told |= busy
        if nxt is None:
            break
        it, run, state, done = nxt
        try:
            per = secs[(it.family, round(it.width, 6))]
            if deadline and per and time.time() + per > deadline:
                say(f"{it.label()}: one epoch ({fmt_seconds(per)}) no longer fits the budget; stopping here")
                break
            if not _train(folder, it, run, done, protocol, fer, data, device, threads, deadline, say):
                break
        finally:
            _release(folder, it, protocol)


def _train(folder, it, run, done, protocol, fer, data, device, threads, deadline, say) -> bool:
    """Train one plan item to its end or to the budget; False when it paused (the budget ended)."""
    cfg = run_config(it, protocol, data, device, threads)
    start = f"resuming from epoch {done}" if done else "starting"
    if run is not None and (read_json(run.summary_file) or {}).get("status") == "running":  # not alive (above)
        start = f"its last start ended without stopping (its process was killed or crashed); {start}"
    say(f"{it.label()}: {start} ({run.run_id if run else 'new run'})")
    on_event = _epoch_events(it.label(), deadline, say)
    try:
        summary = fit(cfg, on_event=on_event, run=run, data=fer, resume=run is not None, root=folder)
    except FerError as e:
        if not str(e).startswith("disk full"):
            raise
        again = f"python -m fer_core study families --out {folder}"  # the run is kept at its last checkpoint
        raise FerError(f"{e}; or start the study again once there is space: {again}") from None
    if summary.get("status") == "cancelled":
        say(f"{it.label()}: {summary.get('error')}")
        return False
    say(f"{it.label()}: done, private {summary['private_acc']:.4f} ({fmt_seconds(summary.get('wall_s'))})")
    return True


def _epoch_events(label: str, deadline: float | None, say) -> Callable[[dict], None]:
    """fit's event callback: one line per epoch, and a pause after the epoch past which the next would not fit."""

    def on_event(e: dict) -> None:
        if e.get("type") != "epoch":
            return
        say(f"  {label} epoch {e['epoch']}/{e['epochs']}: public {e['public_acc']:.4f} ({e['epoch_s']:.0f} s)")
        if deadline and e["epoch"] < e["epochs"] and time.time() + e["epoch_s"] > deadline:
            raise Paused("paused: the study's time budget ended; `study families` resumes it from this epoch")

    return on_event
