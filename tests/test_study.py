"""The resumable study: a plan with estimates, a budget, a kill in its second run, an edited plan, a bad plan."""

import json
import os
import signal
import subprocess
import sys

import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT, run_cli, wait_until
from fer_core.store.runs import Run
from fer_core.studies.families import fmt_seconds

PLAN = {
    "protocol": {"recipe": "seed-cosine", "epochs": 12, "data_limit": 400},
    "runs": [
        {"family": "cnn", "width": 0.05, "seed": 0, "phase": "check"},
        {"family": "cnn", "width": 0.08, "seed": 0},
        {"family": "mobilenet", "width": 0.2, "seed": 1},
    ],
}


def _write_plan(folder, plan=PLAN):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plan.json").write_text(json.dumps(plan))


def _runs(folder) -> dict:
    """(family, width) -> the run folder."""
    out = {}
    for p in folder.iterdir():
        if (p / "config.json").is_file():
            cfg = json.loads((p / "config.json").read_text())
            out[(cfg["model"]["family"], cfg["model"]["width"])] = Run(p)
    return out


def _study(folder, *extra):
    return run_cli("study", "families", "--out", str(folder), "--data", "synthetic", "--threads", "1", *extra)


def test_killed_in_its_second_run_the_study_resumes_it_keeps_the_first_and_trains_nothing_twice(tmp_path):
    folder = tmp_path / "study"
    _write_plan(folder)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = ["study", "families", "--out", str(folder), "--data", "synthetic", "--threads", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "fer_core", *args], env=env, cwd=ROOT, stderr=subprocess.PIPE)
    try:

        def second_run_has_two_epochs():
            run = _runs(folder).get(("cnn", 0.08))
            return run is not None and run.checkpoint_file.is_file() and len(run.metrics()) >= 2

        wait_until(second_run_has_two_epochs, "the second run's second epoch", timeout=300, poll=0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    first, second = _runs(folder)[("cnn", 0.05)], _runs(folder)[("cnn", 0.08)]
    first_summary = first.summary()
    assert first_summary["status"] == "completed"
    before = second.metrics()
    ck_epoch = len(before)  # checkpoint_every=1: every finished epoch is checkpointed
    assert 2 <= ck_epoch < 12 and second.summary()["status"] == "failed"  # its dead pid says so

    out = _study(folder)
    assert out.returncode == 0, out.stderr
    assert "estimate" in out.stderr and "fits" in out.stderr  # the plan with estimates, before training
    runs = _runs(folder)
    assert len(runs) == 3 and len([p for p in folder.iterdir() if p.is_dir()]) == 3  # none duplicated
    assert runs[("cnn", 0.05)].summary()["ended"] == first_summary["ended"]  # kept, not trained again
    after = runs[("cnn", 0.08)].metrics()
    assert f"its process was killed or crashed); resuming from epoch {ck_epoch}" in out.stderr
    assert [r["epoch"] for r in after] == list(range(1, 13))
    assert after[0] == before[0]  # the epochs before the kill are the same rows: continued, not restarted
    assert all(r.summary()["status"] == "completed" for r in runs.values())
    assert not (folder / ".study-claims.json").exists()  # every claim given back: no machine state left

    status = run_cli("study", "families", "--out", str(folder), "--status", "--json")
    doc = json.loads(status.stdout)
    assert doc["done"] == doc["total"] == 3 and doc["estimate_left_s"] == 0


@pytest.mark.slow
def test_workers_train_runs_at_once_none_twice_and_a_killed_parent_takes_its_workers_with_it(tmp_path):
    """Two workers: the parent takes the long first run, the worker it started the next ones, each once; killing
    the parent ends the worker too (its run left resumable), and the next start with workers resumes both."""
    from fer_core.studies.families import progress

    folder = tmp_path / "study"
    long_first = {**PLAN["runs"][0], "epochs": 2000}  # still training when the others are done
    _write_plan(folder, {**PLAN, "runs": [long_first, *PLAN["runs"][1:]]})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = ["study", "families", "--out", str(folder), "--data", "synthetic", "--threads", "1", "--workers", "2"]

    def start():
        return subprocess.Popen([sys.executable, "-m", "fer_core", *args], env=env, cwd=ROOT, stderr=subprocess.PIPE)

    def rows():
        return {r["run"]: r for r in progress(folder)["runs"]}

    def kill(proc):  # the parent only: the worker must end by itself
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        wait_until(lambda: rows()["mobilenet w0.2 s1"]["state"] == "resumable", "the worker's end", timeout=120)
        return proc.stderr.read().decode()

    proc = start()
    try:
        wait_until(lambda: rows()["cnn w0.08 s0"]["state"] == "done", "the second run done beside the first", 400)
        wait_until(
            lambda: rows()["mobilenet w0.2 s1"]["state"] == "training" and rows()["mobilenet w0.2 s1"]["epochs_done"],
            "the third run's first epoch",
            timeout=300,
        )
        assert rows()["cnn w0.05 s0"]["state"] == "training"  # the parent's run, all along: two at once
        claims = json.loads((folder / ".study-claims.json").read_text())
        assert len(claims) == 2 and len(set(claims.values())) == 2  # the second run's claim was given back
        log = kill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "2 workers of 1 thread each" in log
    assert "[worker 1] cnn w0.08 s0: starting" in log and "[worker 1] cnn w0.08 s0: done" in log
    assert "[worker 1] mobilenet w0.2 s1: starting" in log
    assert "[worker 1] cnn w0.05 s0: being trained by another process" in log
    assert "[worker 1] mobilenet w0.2 s1: stopped (SIGTERM)" in log  # its parent's death told it, and it stopped
    assert log.count("cnn w0.05 s0: starting") == log.count("cnn w0.08 s0: starting") == 1
    assert len([p for p in folder.iterdir() if p.is_dir()]) == 3  # one folder per run: none trained twice

    third = rows()["mobilenet w0.2 s1"]["epochs_done"]
    proc = start()  # again: one worker resumes each unfinished run
    try:
        wait_until(
            lambda: (
                rows()["mobilenet w0.2 s1"]["epochs_done"] > third and rows()["cnn w0.05 s0"]["state"] == "training"
            ),
            "both unfinished runs training again",
            timeout=300,
        )
        log = kill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "cnn w0.05 s0: its last start ended without stopping" in log  # the parent's run: SIGKILL, no word
    assert f"mobilenet w0.2 s1: resuming from epoch {third}" in log  # the worker's: stopped, not crashed
    assert len([p for p in folder.iterdir() if p.is_dir()]) == 3 and rows()["cnn w0.08 s0"]["state"] == "done"


def test_sigterm_stops_the_study_and_its_workers_cleanly_and_the_next_start_resumes_both(tmp_path):
    """``kill PID`` is a stop, not a crash: both runs in progress (the parent's and its worker's) are recorded as
    stopped at their last finished epoch, the parent exits 0 without a traceback, and the next start resumes them
    without the 'killed or crashed' note."""
    from fer_core.studies.families import progress

    folder = tmp_path / "study"
    long = [{**r, "epochs": 2000} for r in PLAN["runs"][:2]]  # both still training when the signal comes
    _write_plan(folder, {**PLAN, "runs": long})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = ["study", "families", "--out", str(folder), "--data", "synthetic", "--threads", "1", "--workers", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "fer_core", *args], env=env, cwd=ROOT, stderr=subprocess.PIPE)
    try:
        wait_until(
            lambda: all(r["state"] == "training" and r["epochs_done"] for r in progress(folder)["runs"]),
            "both runs' first epoch",
            timeout=300,
        )
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
        log = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0 and "Traceback" not in log, log
    runs = _runs(folder)
    assert len(runs) == 2
    for run in runs.values():
        s = run.summary()
        assert s["status"] == "cancelled" and "SIGTERM" in s["error"], s
        assert s["epochs_done"] == len(run.metrics()) >= 1 and run.checkpoint_file.is_file()
    assert log.count("stopped (SIGTERM)") == 2  # the parent's run and the worker's
    assert not (folder / ".study-claims.json").exists()
    stopped = {k: len(r.metrics()) for k, r in runs.items()}

    out = _study(folder, "--hours", "0.0005")  # a moment: enough to see both resumed
    assert out.returncode == 0, out.stderr
    assert "killed or crashed" not in out.stderr
    assert f"cnn w0.05 s0: resuming from epoch {stopped[('cnn', 0.05)]}" in out.stderr


def test_a_stop_while_an_epoch_s_files_are_written_waits_until_all_three_are():
    """The race the SIGTERM test once lost: a stop between an epoch's metrics row and its checkpoint recorded the
    epoch without its checkpoint. Now the stop is raised once the row, checkpoint and summary are all written."""
    from fer_core.training import stops

    written = []
    with pytest.raises(stops.Cancelled, match="asked"):
        with stops.epoch_files():
            written.append("metrics")
            stops.cancel(stops.Cancelled("asked"))  # what the SIGTERM handler calls
            written += ["checkpoint", "summary"]  # still written
    assert written == ["metrics", "checkpoint", "summary"]
    with pytest.raises(stops.Cancelled):  # elsewhere the stop is immediate
        stops.cancel()
    with stops.epoch_files():  # and nothing is left pending for the next epoch
        pass


def test_a_budget_stops_after_an_epoch_and_the_next_start_continues(tmp_path):
    folder = tmp_path / "study"
    plan = {**PLAN, "protocol": {**PLAN["protocol"], "epochs": 60}, "runs": PLAN["runs"][:1]}
    _write_plan(folder, plan)
    out = _study(folder, "--hours", "0.001")  # 3.6 s of training: at least one epoch, far from 60
    assert out.returncode == 0, out.stderr
    (run,) = _runs(folder).values()
    s = run.summary()
    assert s["status"] == "cancelled" and "time budget" in s["error"] and run.checkpoint_file.is_file()
    stopped_at = len(run.metrics())
    assert 1 <= stopped_at < 60
    out = _study(folder)
    assert out.returncode == 0, out.stderr
    assert f"resuming from epoch {stopped_at}" in out.stderr
    assert run.summary()["status"] == "completed" and [r["epoch"] for r in run.metrics()] == list(range(1, 61))


def test_an_edited_plan_keeps_every_run_and_says_so(tmp_path):
    folder = tmp_path / "study"
    _write_plan(folder, {**PLAN, "runs": PLAN["runs"][:1]})
    assert _study(folder).returncode == 0
    _write_plan(folder, {**PLAN, "runs": [PLAN["runs"][1]]})  # the first run taken out, another put in
    out = _study(folder, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "plan.json changed since the last start" in out.stderr
    assert "is not in the plan (kept, not trained)" in out.stderr
    assert len([p for p in folder.iterdir() if p.is_dir()]) == 1  # the dry run trained nothing, removed nothing


def test_a_bad_plan_is_one_line_naming_the_row_and_field(tmp_path):
    folder = tmp_path / "study"
    _write_plan(folder, {**PLAN, "runs": [PLAN["runs"][0], {"family": "resnet", "width": 1.0, "seed": 0}]})
    out = _study(folder, "--dry-run")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{folder / 'plan.json'}: runs[1].family = 'resnet'" in out.stderr
    (folder / "plan.json").write_text("{not json")
    out = _study(folder, "--dry-run")
    assert out.returncode == 2 and "not a readable JSON plan" in out.stderr


def test_the_default_plan_takes_the_reference_runs_and_trains_the_newer_families_first():
    from fer_core.studies.families import default_plan

    plan = default_plan()
    assert plan["protocol"]["epochs"] == 95 and plan["protocol"]["recipe"] == "seed"
    runs = plan["runs"]
    assert runs[0]["phase"] == "check" and runs[0]["epochs"] == 40 and runs[0]["family"] == "cnn"
    first = [r for r in runs if r["phase"] == "families"][:4]
    assert {r["family"] for r in first} == {"mobilenet", "cnn", "mobilenetv2", "shufflenetv2"}
    assert {(r["family"], r["width"]) for r in first} >= {("mobilenet", 1.0), ("cnn", 0.136)}


def test_runs_the_reference_holds_on_the_same_protocol_count_as_done(tmp_path, monkeypatch):
    from fer_core.studies.families import match_runs, read_plan

    monkeypatch.setenv("FER_REFERENCE", str(ROOT / "results" / "reference"))
    folder = tmp_path / "study"
    protocol, items = read_plan(folder)  # writes the default plan
    found, _ = match_runs(folder, protocol, items)
    taken = {(k[0], k[1], k[2]) for k in found}
    assert {("mobilenet", 1.0, 0), ("mobilenet", 1.0, 1), ("cnn", 0.136, 2), ("cnn", 0.0574, 0)} <= taken
    assert not any(k[0] in ("mobilenetv2", "shufflenetv2") for k in found)
    assert all(r.summary()["status"] == "completed" for r in found.values())


def test_a_full_disk_stops_the_study_naming_the_file_and_the_next_start_finishes(tmp_path):
    folder = tmp_path / "study"
    _write_plan(folder, {**PLAN, "protocol": {**PLAN["protocol"], "epochs": 2}, "runs": PLAN["runs"][1:2]})
    limit = 64 * 1024  # plan, summary and metrics fit; this CNN's checkpoint does not
    cut = run_cli(
        "study", "families", "--out", str(folder), "--data", "synthetic", "--threads", "1", file_size_limit=limit
    )
    assert cut.returncode == 2 and "Traceback" not in cut.stderr
    last = cut.stderr.strip().splitlines()[-1]
    assert last.startswith("error: disk full writing ") and "checkpoint.pt" in last and "study families" in last
    out = _study(folder)
    assert out.returncode == 0, out.stderr
    (run,) = _runs(folder).values()  # the same folder: nothing duplicated
    assert run.summary()["status"] == "completed" and [r["epoch"] for r in run.metrics()] == [1, 2]


def test_the_shipped_study_folder_holds_no_machine_state():
    """What a clone resumes from: every run's config names no data path, no summary a pid or host, and the plan
    reads back. A run that a study in this checkout is training right now (its process alive on this machine) is
    left out: its pid is the live lock until the study stops; a clone never has it alive, so a pid committed by
    mistake fails there."""
    import socket

    from fer_core.store.runs import pid_alive
    from fer_core.studies.families import DEFAULT_DIR, read_plan

    read_plan(DEFAULT_DIR)
    for run in [p for p in DEFAULT_DIR.iterdir() if (p / "config.json").is_file()]:
        assert json.loads((run / "config.json").read_text())["data"]["data"] is None, run.name
        s = json.loads((run / "summary.json").read_text())
        if s.get("pid") and s.get("host") == socket.gethostname() and pid_alive(int(s["pid"])):
            continue
        assert "pid" not in s and "host" not in s, run.name
        assert s["status"] in ("completed", "cancelled"), (run.name, s["status"])


def test_time_left_shares_the_runs_out_over_the_workers_lanes_as_the_workers_take_them():
    from fer_core.studies.families import lane_finish

    # plan order, each run to the next free lane: 10 | 4 then 3 (the second lane frees first) | then 5 on it
    assert lane_finish([10.0, 4.0, 3.0, 5.0], 2) == [(0, 10.0), (1, 4.0), (1, 7.0), (1, 12.0)]
    assert lane_finish([10.0, 4.0], 1) == [(0, 10.0), (0, 14.0)]


def test_status_says_the_time_left_with_the_workers_it_assumes(tmp_path, monkeypatch):
    folder = tmp_path / "study"
    protocol = {**PLAN["protocol"], "epochs": 1}
    _write_plan(folder, {**PLAN, "protocol": protocol, "runs": PLAN["runs"][1:2]})
    out = _study(folder)  # one run of one epoch: an epoch of this network measured here
    assert out.returncode == 0, out.stderr
    # two more seeds of it wait, long enough that whole seconds count: estimated from that epoch
    more = [{**PLAN["runs"][1], "seed": s, "epochs": 500} for s in (1, 2)]
    _write_plan(folder, {**PLAN, "protocol": protocol, "runs": PLAN["runs"][1:2] + more})
    one, two = (
        json.loads(run_cli("study", "families", "--out", str(folder), "--status", "--json", *w).stdout)
        for w in ([], ["--workers", "2"])
    )
    assert one["workers"] == 1 and two["workers"] == 2  # nothing trains now: one lane unless told
    assert one["wall_left_s"] == one["estimate_left_s"] == two["estimate_left_s"] > 0
    assert two["wall_left_s"] == max(r["estimate_left_s"] for r in two["runs"]) < one["wall_left_s"]
    text = run_cli("study", "families", "--out", str(folder), "--status", "--workers", "2").stdout
    assert "left with 2 workers" in text.splitlines()[0]
    monkeypatch.setenv("FER_STUDIES", str(tmp_path))  # the Train page says the same
    at = AppTest.from_file(str(ROOT / "pages" / "1_Train.py"), default_timeout=120).run()
    assert not at.exception
    head = [s.value for s in at.subheader if s.value.startswith("Study `study`")]
    assert head and f"{one['done']}/3 runs done" in head[0] and "left here with 1 worker (" in head[0], head
    # the time each run has trained: its epochs' time, on its device, and their sum per device
    done = next(r for r in one["runs"] if r["state"] == "done")
    epochs = Run(folder / done["run_id"]).metrics()
    assert done["trained_s"] == round(sum(r["epoch_s"] for r in epochs), 1) > 0 and done["device"] == "cpu"
    assert all(r["trained_s"] is None for r in one["runs"] if r["state"] == "waiting")
    assert one["trained_s_by_device"] == {"cpu": done["trained_s"]}
    assert f"trained so far (epoch time, evaluation included): {fmt_seconds(done['trained_s'])} on cpu" in text
    table = next(d.value for d in at.dataframe if "phase" in d.value.columns)  # the study's table
    assert list(table["trained_s"].isna()) == [r["trained_s"] is None for r in one["runs"]]
    assert any("trained_s: seconds each run has trained" in c.value for c in at.caption)
