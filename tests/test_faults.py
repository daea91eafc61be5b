"""Faults say what happened: a full disk during training, the dashboard restarting under a running job, and a
training process killed by the system. Each is produced for real (a file-size limit, SIGKILL), not mocked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import ROOT, run_cli, tiny_config, wait_until
from fer_core.jobs.queue import active_jobs, cancel_job, job_runs, list_jobs, submit
from fer_core.store.files import read_json
from fer_core.store.runs import Run, runs_dir
from fer_core.training.trainer import fit


def _folder_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_a_full_disk_fails_the_run_naming_the_file_and_leaves_it_resumable(monkeypatch):
    monkeypatch.setenv("FER_DATA", "synthetic")
    summary = fit(tiny_config(epochs=1))
    other = Run(runs_dir() / summary["run_id"])
    before = _folder_bytes(other.path)

    limit = 64 * 1024  # the summary and metrics fit; a checkpoint of this CNN (~1 MB) does not
    args = ["train", "--model", "cnn", "--width", "0.1", "--data", "synthetic", "--limit", "256", "--epochs", "2"]
    cut = run_cli(*args, file_size_limit=limit)
    assert cut.returncode != 0
    last = cut.stderr.strip().splitlines()[-1]
    assert last.startswith("error: disk full writing ") and "checkpoint.pt (a file-size limit)" in last, cut.stderr
    assert "Traceback" not in cut.stderr and "Errno" not in cut.stderr
    run = next(Run(p) for p in runs_dir().iterdir() if p.is_dir() and p != other.path)
    s = run.summary()
    assert s["status"] == "failed" and s["error"].startswith(f"disk full writing {run.checkpoint_file}")
    assert f"train --resume {run.run_id}" in s["error"] and f"--resume {run.run_id}" in last
    assert not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]  # no half-written file left behind
    assert [r["epoch"] for r in run.metrics()] == [1]

    resumed = run_cli("train", "--resume", run.run_id)  # space again: the same run goes on to the end
    assert resumed.returncode == 0, resumed.stderr
    assert run.summary()["status"] == "completed" and [r["epoch"] for r in run.metrics()] == [1, 2]
    assert _folder_bytes(other.path) == before  # the other run was not touched


def _tiny(seed: int, epochs: int):
    cfg = tiny_config(epochs=epochs, seed=seed, device="cpu")
    cfg.data.limit = 128
    return cfg


def test_a_training_killed_by_the_system_is_reported_and_the_queue_moves_on():
    jid = submit([_tiny(0, epochs=200), _tiny(1, epochs=1)], title="one gets killed")

    def first_training():
        job = next(j for j in list_jobs() if j["id"] == jid)
        it = job["items"][0]
        summary = job_runs(job)[0]["summary"] or {}
        return it["pid"] if it["status"] == "running" and summary.get("epochs_done") else None

    wait_until(first_training, "the first training's first epoch")
    os.kill(first_training(), signal.SIGKILL)  # what the kernel's out-of-memory killer sends
    wait_until(lambda: not active_jobs(), "the job to end")
    job = next(j for j in list_jobs() if j["id"] == jid)
    assert job["status"] == "finished"
    assert [it["status"] for it in job["items"]] == ["failed", "done"]
    assert "killed by the system (SIGKILL)" in job["items"][0]["error"], job["items"][0]
    killed = job_runs(job)[0]["summary"]
    assert killed["status"] == "failed" and "SIGKILL" in killed["error"] and "pid" not in killed


DASHBOARD = textwrap.dedent(
    """
    import os, signal, sys
    from streamlit.testing.v1 import AppTest
    from fer_core.jobs.queue import list_jobs

    at = AppTest.from_file(sys.argv[1], default_timeout=120).run()
    at.multiselect[0].set_value(["cnn"]).run()
    at.radio[0].set_value("widths").run()
    next(t for t in at.text_input if t.label.startswith("widths")).set_value("0.1").run()
    next(n for n in at.number_input if n.label == "epochs").set_value(300).run()
    next(n for n in at.number_input if n.label.startswith("limit")).set_value(128).run()
    next(b for b in at.button if b.label == "Start").click().run()
    assert any("started" in s.value for s in at.success), [e.value for e in at.error]
    print(list_jobs()[0]["id"], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # the dashboard dies without a chance to clean up
    """
)


def test_a_job_keeps_training_through_a_dashboard_restart_and_the_train_page_shows_it(monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FER_DATA", "synthetic")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    dash = subprocess.run(
        [sys.executable, "-c", DASHBOARD, str(ROOT / "pages/1_Train.py")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert dash.returncode == -signal.SIGKILL, dash.stderr
    jid = dash.stdout.split()[0]

    def epochs_done() -> int:
        job = next(j for j in list_jobs() if j["id"] == jid)
        return (job_runs(job)[0]["summary"] or {}).get("epochs_done") or 0

    wait_until(lambda: epochs_done() >= 1, "an epoch")
    seen = epochs_done()
    wait_until(lambda: epochs_done() > seen, "another epoch after the dashboard died")
    job = next(j for j in list_jobs() if j["id"] == jid)
    assert job["status"] == "running" and job["items"][0]["status"] == "running"

    at = AppTest.from_file(str(ROOT / "pages/1_Train.py"), default_timeout=120).run()  # the restarted dashboard
    assert not at.exception
    heads = [m.value for m in at.markdown if m.value.startswith("**Job ")]
    assert any(jid in h and h.endswith("· running") for h in heads), heads
    assert any(b.label == "Cancel job" for b in at.button)
    progress = [p.proto.text for p in at.get("progress")]
    assert any("cnn w0.1 seed 0" in t and "/300" in t for t in progress), progress
    cancel_job(jid)
    wait_until(lambda: not active_jobs(), "the cancel", timeout=60)
    assert read_json(Path(next(j for j in list_jobs() if j["id"] == jid)["path"]) / "state.json")["status"] == (
        "cancelled"
    )
