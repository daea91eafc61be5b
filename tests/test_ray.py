"""The Ray backend on a local Ray (2 CPUs, one cluster shared by these tests): trainings end to end into the
results store with progress flowing back, cancel, and a worker killed mid-run."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import tiny_config, wait_until
from fer_core.common import FerError
from fer_core.jobs.queue import prepare_job
from fer_core.store.files import read_json
from fer_core.store.runs import Run

pytestmark = pytest.mark.xdist_group("ray")  # one worker starts the Ray clusters: two at once share ports

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    from fer_core.jobs.ray_backend import connect

    connect(None, num_cpus=2)
    yield ray
    ray.shutdown()


def _job(cfgs, **spec):
    from fer_core.jobs.ray_backend import backend_spec

    d = prepare_job(cfgs, backend=backend_spec(None, **spec))
    plan, state = read_json(d / "plan.json"), read_json(d / "state.json")
    state["started"] = time.time()
    return d, plan, state


def _drive(d, plan, state):
    from fer_core.jobs.ray_backend import run_ray_job
    from fer_core.store.files import atomic_write_json

    run_ray_job(d, plan, state, lambda: atomic_write_json(d / "state.json", state))


def _run(state) -> Run | None:
    """The local run folder of the job's first training, once the driver has made it."""
    path = state["items"][0].get("run")
    return Run(Path(path)) if path else None


def test_two_trainings_run_on_ray_into_the_store_with_progress(cluster, monkeypatch):
    import fer_core.jobs.ray_backend as rb

    seen = []
    real = rb._apply
    monkeypatch.setattr(rb, "_apply", lambda run, ev: (seen.append((run.run_id, ev["type"])), real(run, ev)))
    cfgs = [tiny_config(epochs=3, seed=s) for s in (0, 1)]
    d, plan, state = _job(cfgs)
    _drive(d, plan, state)
    assert [it["status"] for it in state["items"]] == ["done", "done"]
    for it, cfg in zip(state["items"], cfgs):
        run = Run(Path(it["run"]))
        s = run.summary()
        assert s["status"] == "completed" and s["backend"] == "ray" and s["seed"] == cfg.train.seed
        assert [r["epoch"] for r in run.metrics()] == [1, 2, 3]
        assert (run.path / "weights.pt").is_file() and not run.checkpoint_file.exists()
        assert sum(1 for rid, t in seen if rid == run.run_id and t == "epoch") == 3  # one event per epoch
        assert "pid" not in s  # finished: no longer claimed by the driver


def test_cancel_stops_the_task_and_records_it(cluster):
    d, plan, state = _job([tiny_config(epochs=500)])
    t = threading.Thread(target=_drive, args=(d, plan, state))
    t.start()
    wait_until(lambda: _run(state) and _run(state).metrics())
    (d / "cancel").touch()
    t.join(timeout=120)
    assert not t.is_alive()
    run = Run(Path(state["items"][0]["run"]))
    s = run.summary()
    assert state["items"][0]["status"] == "cancelled" and s["status"] == "cancelled"
    assert 1 <= s["epochs_done"] < 500


def test_a_killed_worker_fails_its_run_and_leaves_the_store_resumable(cluster):

    d, plan, state = _job([tiny_config(epochs=500)], retries=0)
    t = threading.Thread(target=_drive, args=(d, plan, state))
    t.start()
    wait_until(lambda: _run(state) and _run(state).metrics() and _run(state).checkpoint_file.is_file())
    run = Run(Path(state["items"][0]["run"]))
    os.kill(int(run.summary()["ray_worker_pid"]), signal.SIGKILL)
    t.join(timeout=120)
    assert not t.is_alive()
    s = run.summary()
    assert state["items"][0]["status"] == "failed" and s["status"] == "failed"
    assert "worker died" in s["error"]
    assert run.metrics() and run.checkpoint_file.is_file()  # what came back is kept: --resume continues it
    assert s["epochs_done"] == max(r["epoch"] for r in run.metrics())


def test_gpu_tasks_on_a_cluster_without_gpus_are_refused_not_left_waiting(cluster):
    from fer_core.jobs.ray_backend import backend_spec, check_resources

    with pytest.raises(FerError, match="no GPU .* would wait forever"):
        check_resources(ray, backend_spec(None, gpu_fraction=0.25))
    with pytest.raises(FerError, match="between 0 and 1"):
        backend_spec(None, gpu_fraction=2)


def test_the_train_page_queues_a_job_for_a_ray_cluster(synthetic_env_ray, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT
    from fer_core.jobs.queue import list_jobs

    at = AppTest.from_file(str(ROOT / "pages/1_Train.py"), default_timeout=120).run()
    at.multiselect[0].set_value(["mobilenet"]).run()
    next(r for r in at.radio if "a Ray cluster" in r.options).set_value("a Ray cluster").run()
    next(t for t in at.text_input if t.label == "cluster address").set_value("ray://head:10001").run()
    next(n for n in at.number_input if n.label == "GPU per training").set_value(0.25).run()
    assert not at.exception, [e.message for e in at.exception]
    monkeypatch.setattr("fer_core.jobs.queue.subprocess.Popen", lambda *a, **k: None)  # queue it, start nothing
    next(b for b in at.button if b.label == "Start").click().run()
    assert any("started" in s.value for s in at.success), [e.value for e in at.error]
    plan = read_json(Path(list_jobs()[0]["path"]) / "plan.json")
    assert plan["backend"] == {
        "kind": "ray",
        "address": "ray://head:10001",
        "gpu_fraction": 0.25,
        "cpus": 1.0,
        "retries": 1,
    }


def test_the_overhead_benchmark_runs_both_paths(cluster, tmp_path):
    from fer_core.studies.bench import ray_overhead

    doc = ray_overhead(n=2, out_dir=str(tmp_path), quiet=True)
    assert doc["ray_wall_s"] > 0 and doc["local_queue_wall_s"] > 0 and doc["ray_trainings"] == 2
    assert read_json(tmp_path / "bench_ray.json") == doc


@pytest.fixture
def synthetic_env_ray(monkeypatch):
    monkeypatch.setenv("FER_DATA", "synthetic")
