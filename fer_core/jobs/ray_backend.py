"""Trainings on a Ray cluster: the same configs as the local queue, the results in the same store.

A job whose plan names ``backend: {"kind": "ray", ...}`` is run by its queue process (``python -m fer_core
queue JOBDIR``, the *driver*) through this module instead of local child processes:

- every training is one Ray task asking for ``cpus`` CPUs and ``gpu_fraction`` of a GPU (0.25 packs four
  small runs on one GPU; fractions schedule, they do not limit memory), retried ``retries`` times if its
  worker dies;
- no shared filesystem is assumed: the data goes through Ray's object store once per job, the runs a config
  learns from (teachers, init run) travel with the task, ``fer_core`` itself travels as a ``py_modules``
  package, and the worker trains into a temporary folder of its own;
- per-epoch progress (the metrics row, the summary, and each new checkpoint) flows back through a small Ray
  actor; the driver writes it into a run folder in the local store, so progress bars, the live scatter,
  ``--resume`` (from the last checkpoint that came back) and ``runs`` work as for local runs. The folder's
  ``pid`` is the driver's: if the driver dies, the run is reported failed, not "running" forever;
- cancelling the job (dashboard, ``cancel JOB`` or ``cancel RUN``) cancels the Ray tasks.

``ray`` is imported only here, and only when a Ray job runs: the rest of ``fer_core`` never needs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from fer_core.common import FerError
from fer_core.common.memory import child_env
from fer_core.common.paths import PACKAGE_DIR
from fer_core.data.sources import load
from fer_core.jobs import ray_auth
from fer_core.jobs.items import item_config
from fer_core.store.files import atomic_write_bytes, atomic_write_json, read_json
from fer_core.store.runs import Run, find_run, runs_dir
from fer_core.training.config import RunConfig
from fer_core.training.trainer import fit

#: How often the driver collects progress and looks for finished tasks.
POLL_S = 0.5


def _ray():
    try:
        import ray
    except ImportError:
        raise FerError("the Ray backend needs the ray package: pip install -r requirements.txt") from None
    return ray


def backend_spec(address: str | None, gpu_fraction: float = 0.0, cpus: float = 1.0, retries: int = 1) -> dict:
    """A validated ``backend`` entry for a job's plan (``address`` None: a local Ray started for the job)."""
    if not 0 <= gpu_fraction <= 1:
        raise FerError(f"--gpu-fraction must be between 0 and 1, got {gpu_fraction}")
    if cpus <= 0:
        raise FerError(f"--cpus-per-run must be positive, got {cpus}")
    if retries < 0:
        raise FerError(f"--retries must be 0 or more, got {retries}")
    return {"kind": "ray", "address": address or None, "gpu_fraction": gpu_fraction, "cpus": cpus, "retries": retries}


def connect(address: str | None, num_cpus: int | None = None):
    """Connect to the cluster at ``address`` ("auto": the one this machine belongs to; None: start a local
    one), shipping ``fer_core`` to its workers. Returns the ``ray`` module."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    _check_reachable(address)
    source = ray_auth.prepare_client(address)
    pkg = str(PACKAGE_DIR)
    kw = {"address": address} if address else {"num_cpus": num_cpus}
    log: list[str] = []
    try:
        with ray_auth.captured_stderr() if address else contextlib.nullcontext() as log:
            ray.init(
                **kw,
                runtime_env={"py_modules": [pkg], "env_vars": {"OMP_NUM_THREADS": "1", **child_env()}},
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
    except Exception as e:  # a refused token, no cluster there, wrong port, version mismatch
        text = " ".join([type(e).__name__, str(e), str(e.__cause__ or ""), *(log or [])])
        where = address or "a new local instance"
        refused = ray_auth.refusal(where, source, text)
        raise FerError(refused or f"cannot connect to a Ray cluster at {where}: {e}") from None
    for note in ray_auth.secure_token_files():  # a local cluster may just have written its token file
        print(f"note: {note}", file=sys.stderr)
    return ray


def _check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """A HOST:PORT (or ray://HOST:PORT) where nothing answers is said at once: Ray itself waits over a minute."""
    host, _, port = (address or "").split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():  # None (a new local Ray), "auto", or a form Ray resolves itself
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise FerError(
            f"nothing answers at {address} ({e.strerror or type(e).__name__}): is the cluster's head running, "
            "and is that port reachable from this machine?"
        ) from None


def check_resources(ray, spec: dict) -> None:
    """Tasks asking for GPUs on a cluster without any would wait forever: say so instead."""
    total = ray.cluster_resources()
    if spec["gpu_fraction"] > 0 and total.get("GPU", 0) <= 0:
        raise FerError(
            f"the Ray cluster has no GPU (resources: {int(total.get('CPU', 0))} CPUs), so trainings asking for "
            f"{spec['gpu_fraction']:g} GPU would wait forever: use --gpu-fraction 0, or add a GPU node"
        )
    if total.get("CPU", 0) < spec["cpus"]:
        raise FerError(f"each training asks for {spec['cpus']:g} CPUs; the cluster has {total.get('CPU', 0):g}")


def check_cluster(spec: dict) -> None:
    """Connect to ``spec``'s cluster, check its resources, disconnect: a :class:`FerError` says what is wrong."""
    owned = not _ray().is_initialized()  # a connection this process already has is left as it is
    ray = connect(spec.get("address"))
    try:
        check_resources(ray, spec)
    finally:
        if owned:
            ray.shutdown()


# --------------------------------------------------------------------------------------------------- the worker side


class _Progress:
    """The job's mailbox: workers push events, the driver drains them."""

    def __init__(self):
        self.events: list[dict] = []

    def push(self, event: dict) -> None:
        self.events.append(event)

    def drain(self) -> list[dict]:
        out, self.events = self.events, []
        return out


def _pack_run(run: Run) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file() and not p.name.startswith(".")}


def _train_task(cfg_dict: dict, data, item: int, shipped: dict, progress) -> dict:
    """Runs on a worker: train one config into a temporary store, pushing progress; return the run's files."""
    with tempfile.TemporaryDirectory(prefix="fer-ray-") as tmp:
        store = Path(tmp) / "runs"
        store.mkdir()
        for rid, files in shipped.items():  # teachers and init runs, found by id in this store
            (store / rid).mkdir()
            for name, blob in files.items():
                (store / rid / name).write_bytes(blob)
        os.environ["FER_RUNS"] = str(store)
        cfg = RunConfig.from_dict(cfg_dict)
        run = Run.create(cfg.model.family, cfg.model.width, cfg.train.seed, root=store)
        sent = {"checkpoint": 0.0}

        def on_event(ev: dict) -> None:
            out = {"item": item, "type": ev["type"], "pid": os.getpid(), "summary": read_json(run.summary_file) or {}}
            if ev["type"] == "epoch":
                out["row"] = {k: v for k, v in ev.items() if k not in ("type", "run_id", "epochs", "best_public_acc")}
                ck = run.checkpoint_file
                if ck.is_file() and ck.stat().st_mtime > sent["checkpoint"]:
                    sent["checkpoint"] = ck.stat().st_mtime
                    out["checkpoint"] = ck.read_bytes()
            progress.push.remote(out)

        fit(cfg, on_event=on_event, run=run, data=data)
        return _pack_run(run)


# --------------------------------------------------------------------------------------------------- the driver side


def _ship(cfg: RunConfig) -> dict[str, dict[str, bytes]]:
    """The run folders a config learns from (teachers, init run), as files to recreate on the worker."""
    out = {}
    for ref in [*cfg.distill.teachers, *([cfg.init] if cfg.init else [])]:
        run = find_run(ref)
        if not run.path.is_dir():
            raise FerError(f"{ref}: a weights file outside a run folder cannot be sent to a cluster; give a run id")
        out[run.run_id] = {n: b for n, b in _pack_run(run).items() if n != "checkpoint.pt"}
    return out


def _rewrite_refs(cfg: RunConfig) -> RunConfig:
    """Teachers and init named by run id (what the worker's store has)."""
    cfg.distill.teachers = [find_run(r).run_id for r in cfg.distill.teachers]
    if cfg.init:
        cfg.init = find_run(cfg.init).run_id
    return cfg


def run_ray_job(job_dir: Path, plan: dict, state: dict, save) -> int:
    """The driver: run a job's pending trainings on Ray and mirror them into the local store.

    Args:
        save: writes ``state`` (the queue's state.json writer).
    """
    spec = plan["backend"]
    items = state["items"]
    cancelled = lambda: (job_dir / "cancel").exists()
    ray = connect(spec.get("address"))
    t_connected = time.time()
    check_resources(ray, spec)
    progress = ray.remote(_Progress).options(num_cpus=0).remote()
    task = ray.remote(_train_task).options(
        num_cpus=spec["cpus"], num_gpus=spec["gpu_fraction"] or 0, max_retries=int(spec["retries"])
    )
    data_refs: dict = {}
    running: dict = {}  # ObjectRef -> item index
    local: dict[int, Run] = {}
    for i, it in enumerate(items):
        if it["status"] != "pending" or cancelled():
            continue
        cfg = _rewrite_refs(RunConfig.from_dict(item_config(it)))
        key = str(cfg.data.data)
        if key not in data_refs:  # once per data source: the object store carries it to every worker
            data_refs[key] = ray.put(load(cfg.data.data))
        run = Run.create(cfg.model.family, cfg.model.width, cfg.train.seed, root=spec.get("out") or runs_dir())
        atomic_write_json(run.config_file, cfg.to_dict())
        run.mark_running(backend="ray", ray_address=spec.get("address") or "local")
        local[i] = run
        ref = task.remote(cfg.to_dict(), data_refs[key], i, _ship(cfg), progress)
        running[ref] = i
        it.update(status="running", run=str(run.path), pid=os.getpid(), ray_task=ref.hex())
    state.update(ray_connected_s=round(t_connected - state.get("started", t_connected), 3))
    save()

    def on_term(signum, frame):  # cancel: the job's Ray tasks stop; their runs are recorded as cancelled
        (job_dir / "cancel").touch()

    if threading.current_thread() is threading.main_thread():  # the queue process; tests drive it from a thread
        signal.signal(signal.SIGTERM, on_term)
    cancel_sent: set = set()
    while running:
        for ref, i in running.items():  # the whole job, or one run (cancel RUN), asked to stop
            if ref not in cancel_sent and (cancelled() or (local[i].path / "cancel").exists()):
                ray.cancel(ref, force=True)
                cancel_sent.add(ref)
        for ev in ray.get(progress.drain.remote()):
            _apply(local[ev["item"]], ev)
        done, _ = ray.wait(list(running), num_returns=len(running), timeout=POLL_S)
        for ref in done:
            i = running.pop(ref)
            for ev in ray.get(progress.drain.remote()):  # the last epochs before the result
                _apply(local[ev["item"]], ev)
            _finish_item(ray, ref, local[i], items[i], cancelled())
            save()
    return 0


def _apply(run: Run, ev: dict) -> None:
    """Mirror one worker event into the local run folder (the driver's pid marks it alive)."""
    if ev["type"] == "epoch":
        if ev["row"].get("epoch") == 1:  # a retried task starts over
            run.truncate_metrics(0)
        run.append_metrics(ev["row"])
        if ev.get("checkpoint"):
            atomic_write_bytes(run.checkpoint_file, ev["checkpoint"])
    s = {k: v for k, v in ev.get("summary", {}).items() if k not in ("run_id", "pid", "host", "status", "heartbeat")}
    if ev["type"] != "end":
        run.update_summary(
            **s,
            status="running",
            pid=os.getpid(),
            host=socket.gethostname(),
            heartbeat=time.time(),
            ray_worker_pid=ev.get("pid"),
        )


def _finish_item(ray, ref, run: Run, item: dict, job_cancelled: bool) -> None:
    """Write what came back (or why nothing did) into the run folder and the job's item."""
    try:
        files = ray.get(ref)
    except Exception as e:  # cancelled, worker died after its retries, or the training raised
        name = type(e).__name__
        asked = run.path / "cancel"
        was_cancelled = "Cancel" in name or job_cancelled or asked.exists()
        asked.unlink(missing_ok=True)
        error = "cancelled by the user" if was_cancelled else _error_text(e)
        status = "cancelled" if was_cancelled else "failed"
        done = max((r.get("epoch", 0) for r in run.metrics()), default=0)
        run.update_summary(status=status, error=error, ended=time.time(), epochs_done=done)
        item.update(status=status, error=error, pid=None, exit=1)
        return

    for name, blob in files.items():
        if name != "summary.json":
            atomic_write_bytes(run.path / name, blob)
    if not files.get("checkpoint.pt") and run.checkpoint_file.is_file():
        run.checkpoint_file.unlink()  # the run completed: its last checkpoint is no longer needed
    summary = json.loads(files["summary.json"])
    summary.pop("run_id", None)
    run.update_summary(**summary, backend="ray")
    status = summary.get("status", "failed")
    item.update(status="done" if status == "completed" else status, pid=None, exit=0 if status == "completed" else 1)


def _error_text(e: Exception) -> str:
    text = str(e).strip().splitlines()
    last = [line for line in text if line.strip()][-1:] or [type(e).__name__]
    if "WorkerCrashed" in type(e).__name__ or "died" in str(e).lower():
        return f"the Ray worker died before the training finished ({type(e).__name__})"
    return last[0][:300]
