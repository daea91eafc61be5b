"""Training processes: the only way the dashboard trains.

Every training runs as its own ``python -m fer_core train`` process. A *job* is a queue of such trainings
run one after another (``parallel`` at a time) by a detached ``python -m fer_core queue JOBDIR`` process,
so a page reload, a closed tab or a second browser neither stops nor duplicates it. Jobs wait for each
other (a lock file beside them): one device trains one job at a time. The job's state lives
on disk next to the runs (``<runs>/.jobs/<job id>/``), which is how any page re-attaches to it:

    configs/     one RunConfig JSON per training (what travels to the trainer: ``train --config FILE``)
    plan.json    the trainings (argument lists for ``python -m fer_core``) and ``parallel``
    state.json   the job's status (queued / waiting / running / finished / cancelled) and, per item,
                 pending / running / done / failed / cancelled, its run folder, exit code
    log.txt      the queue's own output
    cancel       present once the user asked to cancel the whole job
"""

from __future__ import annotations

import fcntl
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fer_core.common import FerError
from fer_core.common.memory import child_env
from fer_core.common.paths import PROJECT_DIR
from fer_core.jobs.items import item_config
from fer_core.jobs.ray_backend import check_cluster, run_ray_job
from fer_core.store.files import atomic_write_json, read_json
from fer_core.store.runs import Run, find_run, pid_alive, runs_dir
from fer_core.training.config import RunConfig


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


def _env() -> dict:
    env = os.environ.copy() | child_env()  # a trainer keeps freed memory from its first malloc on
    root = str(PROJECT_DIR)  # children find fer_core wherever they start
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def start(job: Job, quiet: bool = True) -> Job:
    """Start ``job`` as a child process (stdout captured for the run folder; stderr shown unless quiet)."""
    job.proc = subprocess.Popen(
        command(job.argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE if quiet else None, text=True, env=_env()
    )
    return job


def run_all(
    jobs: list[Job],
    parallel: int = 1,
    quiet: bool = True,
    on_done: Callable[[Job], None] | None = None,
    on_start: Callable[[Job], None] | None = None,
    stop: Callable[[], bool] | None = None,
):
    """Run ``jobs``, at most ``parallel`` at a time, in order; returns them with their exit codes.

    ``stop()`` is polled: once it is true, no new job starts (the running ones are left to the caller).
    """
    pending, active = list(jobs), []
    while pending or active:
        while pending and len(active) < max(1, parallel) and not (stop and stop()):
            job = start(pending.pop(0), quiet=quiet)
            active.append(job)
            if on_start:
                on_start(job)
        if stop and stop() and not active:
            break
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


def write_configs(cfgs: list[RunConfig], folder: Path) -> list[Path]:
    """Each config as ``folder/NNN.json`` (validated first: a bad plan fails before anything starts)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, cfg in enumerate(cfgs):
        cfg.validate(where=f"training {i + 1}")
        path = folder / f"{i:03d}.json"
        atomic_write_json(path, cfg.to_dict())
        paths.append(path)
    return paths


def train_command(config_file: Path, out: str | Path | None = None, quiet: bool = True) -> list[str]:
    """The ``python -m fer_core`` arguments that train one config file."""
    return [
        "train",
        "--config",
        str(config_file),
        *(["--out", str(out)] if out else []),
        *(["--quiet"] if quiet else []),
    ]


def run_configs(
    cfgs: list[RunConfig],
    parallel: int = 1,
    out: str | Path | None = None,
    quiet: bool = True,
    on_done: Callable[[Job], None] | None = None,
    backend: dict | None = None,
) -> list[Job]:
    """Train ``cfgs`` in child processes, ``parallel`` at a time, each from its own config file; returns the
    jobs (``tag["config"]`` is the config) with their exit codes and run folders.

    With ``backend`` (a Ray spec) the trainings run as Ray tasks through a queued job instead, and this waits
    for it (the runs still land in ``out`` or the usual runs folder)."""
    if backend:
        return _run_job_and_wait(cfgs, {**backend, "out": str(out) if out else None}, on_done)

    with tempfile.TemporaryDirectory(prefix="fer-configs-") as tmp:
        files = write_configs(cfgs, Path(tmp))
        jobs = [Job(train_command(f, out, quiet), tag={"config": c}) for f, c in zip(files, cfgs)]
        return run_all(jobs, parallel, quiet=quiet, on_done=on_done)


def _run_job_and_wait(cfgs: list[RunConfig], backend: dict, on_done: Callable[[Job], None] | None) -> list[Job]:
    """Submit ``cfgs`` as one job on ``backend`` and follow it to the end (Ctrl-C cancels it).

    A cluster given by address is tried first, so a refused token or a missing GPU is one error before
    anything is queued, not a failure per training."""
    if backend.get("address"):
        check_cluster(backend)
    jid = submit(cfgs, title=f"{len(cfgs)} trainings on Ray", backend=backend)
    jobs = [Job(["train", "--config", "(job " + jid + ")"], tag={"config": c}) for c in cfgs]
    reported: set[int] = set()
    try:
        while True:
            job = next((j for j in list_jobs() if j["id"] == jid), None)
            for i, it in enumerate((job or {}).get("items", [])):
                if i not in reported and it["status"] in ("done", "failed", "cancelled"):
                    reported.add(i)
                    jobs[i].returncode = 0 if it["status"] == "done" else 1
                    jobs[i].run_path = it.get("run")
                    jobs[i].stderr_tail = it.get("error") or ""
                    if on_done:
                        on_done(jobs[i])
            if job is None or job.get("status") not in ("queued", "waiting", "running"):
                break
            time.sleep(1)
    except KeyboardInterrupt:
        cancel_job(jid)
        raise
    for j in jobs:
        if j.returncode is None:
            j.returncode = 1
    return jobs


# --------------------------------------------------------------------------------------------------- queued jobs


def jobs_dir() -> Path:
    return runs_dir() / ".jobs"


def _pending(trainings: list[list[str]]) -> list[dict]:
    return [{"argv": a, "status": "pending", "run": None, "exit": None} for a in trainings]


def submit(cfgs: list[RunConfig], parallel: int = 1, title: str = "", backend: dict | None = None) -> str:
    """Queue trainings (one RunConfig each) in a detached process.

    Args:
        backend: None trains on this machine (``parallel`` at a time, one job after another); a
            :func:`fer_core.jobs.ray_backend.backend_spec` sends every training to a Ray cluster as a task.
    Returns the job id. The trainings write into the usual runs folder, so they appear in every listing.
    """
    if not cfgs:
        raise FerError("nothing to train: the plan is empty")
    for i, cfg in enumerate(cfgs):  # before the job folder exists: a bad plan leaves nothing behind
        cfg.validate(where=f"training {i + 1}")
    d = prepare_job(cfgs, parallel, title, backend)
    with open(d / "log.txt", "ab") as log:
        subprocess.Popen(
            command(["queue", str(d)]),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_env(),
            start_new_session=True,  # outlives the page (and the dashboard) that started it
        )
    return d.name


def prepare_job(cfgs: list[RunConfig], parallel: int = 1, title: str = "", backend: dict | None = None) -> Path:
    """The job's folder (configs, plan, state) without its queue process: :func:`submit` starts that."""
    jid = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    d = jobs_dir() / jid
    d.mkdir(parents=True)
    trainings = [train_command(f) for f in write_configs(cfgs, d / "configs")]
    plan = {"title": title, "parallel": parallel, "trainings": trainings, "backend": backend}
    atomic_write_json(d / "plan.json", plan)
    items = _pending(trainings)
    atomic_write_json(d / "state.json", {"status": "queued", "items": items, "submitted": time.time()})
    return d


def run_queue(job_dir: Path) -> int:
    """The detached queue process: run a job's trainings and keep its state.json true."""
    job_dir = Path(job_dir)
    plan = read_json(job_dir / "plan.json")
    if plan is None:
        raise FerError(f"{job_dir}: no plan.json")
    state = read_json(job_dir / "state.json") or {}
    items = state.get("items") or _pending(plan["trainings"])
    cancelled = lambda: (job_dir / "cancel").exists()
    if (plan.get("backend") or {}).get("kind") == "ray":  # the cluster schedules: no local queue lock
        state.update(status="running", pid=os.getpid(), items=items, started=time.time())
        save = lambda: atomic_write_json(job_dir / "state.json", state)
        save()
        try:
            run_ray_job(job_dir, plan, state, save)
        except Exception as e:  # no cluster, no GPU there, a bug: every unfinished training says why
            msg = str(e) if isinstance(e, FerError) else f"{type(e).__name__}: {e}"
            for it in items:
                if it["status"] in ("pending", "running"):
                    it.update(status="failed", error=msg, pid=None)
                    if it.get("run"):
                        Run(Path(it["run"])).update_summary(status="failed", error=msg, ended=time.time())
            print(f"error: {msg}", flush=True)
        state.update(status="cancelled" if cancelled() else "finished", pid=None, ended=time.time())
        save()
        return 0
    state.update(status="waiting", pid=os.getpid(), items=items)
    atomic_write_json(job_dir / "state.json", state)
    # one job trains at a time (one device), in the order they were submitted: wait until no older job
    # waits, then for the queue lock, polling so that a cancel is seen
    lock = open(job_dir.parent / "queue.lock", "w")
    while not cancelled():
        if not _older_waiting(job_dir, state.get("submitted", 0.0)):
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
        time.sleep(0.5)
    state.update(status="running", started=time.time())
    atomic_write_json(job_dir / "state.json", state)
    jobs = [Job(it["argv"], tag={"i": i}) for i, it in enumerate(items) if it["status"] == "pending"]

    def on_start(job: Job) -> None:
        items[job.tag["i"]].update(status="running", pid=job.proc.pid)
        atomic_write_json(job_dir / "state.json", state)

    def on_done(job: Job) -> None:
        it = items[job.tag["i"]]
        killed = None if cancelled() else killed_text(job.returncode)
        if killed:  # it could not record anything itself: its run folder and the job say what happened
            run = _running_summary(it)
            if run:
                Run(Path(run["path"])).update_summary(status="failed", error=killed, ended=time.time())
                job.run_path = job.run_path or run["path"]
        it.update(exit=job.returncode, run=job.run_path, pid=None)
        stopped = job.returncode == 1 or (job.returncode or 0) < 0  # by its cancel handler, or by the signal
        it["status"] = "done" if job.returncode == 0 else "cancelled" if stopped and cancelled() else "failed"
        if killed or (job.returncode and job.stderr_tail):
            it["error"] = killed or job.stderr_tail
        atomic_write_json(job_dir / "state.json", state)

    def on_term(signum, frame):  # cancelling the queue cancels its running trainings too
        (job_dir / "cancel").touch()
        for job in jobs:
            if job.proc is not None and job.proc.poll() is None:
                job.proc.terminate()

    signal.signal(signal.SIGTERM, on_term)
    run_all(jobs, int(plan.get("parallel", 1)), on_done=on_done, on_start=on_start, stop=cancelled)
    for it in items:
        if it["status"] == "pending":
            it["status"] = "cancelled"
    state.update(status="cancelled" if cancelled() else "finished", pid=None, ended=time.time())
    atomic_write_json(job_dir / "state.json", state)
    lock.close()  # releases the queue lock: the next waiting job starts
    return 0


def killed_text(returncode: int | None) -> str | None:
    """What a training process's negative exit code means to the user (None: it exited by itself)."""
    if returncode is None or returncode >= 0:
        return None
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    if -returncode == signal.SIGKILL:
        return (
            f"the training process was killed by the system ({name}), most often because memory ran out; "
            "the job went on with its next training"
        )
    return f"the training process was killed ({name}); the job went on with its next training"


def _older_waiting(job_dir: Path, submitted: float) -> bool:
    """Is a job submitted before this one still waiting for its turn?"""
    for j in list_jobs():
        if j["path"] == str(job_dir) or j.get("status") not in ("queued", "waiting"):
            continue
        if (j.get("submitted", 0.0), j["id"]) < (submitted, job_dir.name):
            return True
    return False


def list_jobs() -> list[dict]:
    """Every job, newest first, with a dead queue process reported as finished."""
    out = []
    d = jobs_dir()
    if not d.is_dir():
        return out
    for p in sorted(d.iterdir(), reverse=True):
        state, plan = read_json(p / "state.json"), read_json(p / "plan.json")
        if not state or not plan:
            continue
        live = state.get("status") in ("queued", "waiting", "running")
        if live and state.get("pid") and not pid_alive(int(state["pid"])):
            state["status"] = "died"
        if state.get("status") == "queued" and time.time() - state.get("submitted", 0) > 60:
            state["status"] = "died"  # the queue process never started
        out.append({"id": p.name, "title": plan.get("title", ""), "path": str(p), **state})
    return out


def active_jobs() -> list[dict]:
    return [j for j in list_jobs() if j.get("status") in ("queued", "waiting", "running")]


def cancel_job(job_id: str) -> None:
    """Stop a job: no further trainings start, and the running ones are cancelled (recorded as such)."""
    d = jobs_dir() / job_id
    if not d.is_dir():
        raise FerError(f"no job {job_id!r}")
    (d / "cancel").touch()
    state = read_json(d / "state.json") or {}
    if state.get("pid") and pid_alive(int(state["pid"])):
        os.kill(int(state["pid"]), signal.SIGTERM)


def cancel_run(run_ref: str) -> None:
    """Cancel one running training (its process records the run as cancelled)."""
    run: Run = find_run(run_ref)
    s = run.summary()
    if s.get("status") != "running" or not s.get("pid"):
        raise FerError(f"run {run.run_id} is not running (status: {s.get('status')})")
    if s.get("backend") == "ray":  # its pid is the job's driver: ask the driver to cancel this task only
        (run.path / "cancel").touch()
        return
    os.kill(int(s["pid"]), signal.SIGTERM)


def job_runs(job: dict) -> list[dict]:
    """Each training of a job with its live run summary (None until it has started)."""
    rows = []
    for it in job.get("items", []):
        summary = Run(Path(it["run"])).summary() if it.get("run") else _running_summary(it)
        rows.append({**it, "label": describe_item(it), "summary": summary})
    return rows


def _running_summary(item: dict) -> dict | None:
    """The summary of the run a running queue item is training (found by its trainer's pid)."""
    pid = item.get("pid")
    if not pid:
        return None
    d = runs_dir()
    for p in d.iterdir() if d.is_dir() else []:
        s = read_json(p / "summary.json")
        if s and s.get("pid") == pid and s.get("status") == "running":
            return {**s, "path": str(p)}
    return None


def describe_item(item: dict) -> str:
    cfg = item_config(item)
    m, t = cfg.get("model", {}), cfg.get("train", {})
    teachers = cfg.get("distill", {}).get("teachers") or []
    text = f"{m.get('family', '?')} w{m.get('width', 0):g} seed {t.get('seed', 0)} · {cfg.get('recipe', 'seed')}"
    return text + (f" · taught by {len(teachers)}" if teachers else "")
