"""Queued jobs: detached, one after another, cancellable, and honest about what happened."""

from conftest import tiny_config, wait_until
from fer_core.jobs.queue import active_jobs, cancel_job, job_runs, list_jobs, submit


def _tiny(seed=0, epochs=1):
    cfg = tiny_config(epochs=epochs, seed=seed, device="cpu")
    cfg.data.limit = 128
    return cfg


def test_jobs_run_one_after_another_and_record_their_runs():
    first = submit([_tiny(0), _tiny(1)], title="first")
    second = submit([_tiny(2)], title="second")
    wait_until(lambda: not active_jobs(), "the jobs to end", timeout=180)
    jobs = {j["id"]: j for j in list_jobs()}
    a, b = jobs[first], jobs[second]
    assert a["status"] == b["status"] == "finished"
    assert [it["status"] for it in a["items"]] == ["done", "done"]
    assert b["started"] >= a["ended"] - 0.5  # the second job waited for the first, in submission order
    runs = job_runs(b)
    assert runs[0]["summary"]["status"] == "completed" and runs[0]["label"] == "cnn w0.1 seed 2 · seed"


def test_cancelling_a_job_cancels_its_running_training_and_the_rest():
    jid = submit([_tiny(0, epochs=200), _tiny(1)], title="to cancel")
    wait_until(lambda: any(r["summary"] and r["summary"].get("epochs_done") for r in job_runs(list_jobs()[0])))
    cancel_job(jid)
    wait_until(lambda: not active_jobs(), "the cancel", timeout=60)
    job = list_jobs()[0]
    assert job["status"] == "cancelled"
    assert [it["status"] for it in job["items"]] == ["cancelled", "cancelled"]
    assert job_runs(job)[0]["summary"]["status"] == "cancelled"


def test_a_job_refuses_a_bad_config_before_anything_starts():
    import pytest

    from fer_core.common import FerError

    bad = _tiny(0)
    bad.train.lr = -1.0
    with pytest.raises(FerError, match=r"training 2: train.lr = -1.0"):
        submit([_tiny(1), bad], title="bad")
    assert list_jobs() == []
