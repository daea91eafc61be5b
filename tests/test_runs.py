"""The results store: atomic writes, honest status, no clobbering, a table of everything."""

import json
import os
import threading

import pytest

from fer_core.common import FerError
from fer_core.store.files import atomic_write_json
from fer_core.store.runs import Run, find_run, list_summaries, table


def test_run_ids_are_unique_even_when_created_together(tmp_path):
    made = []

    def make():
        for _ in range(10):
            made.append(Run.create("cnn", 0.5, 0, root=tmp_path).path)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == len(set(made)) == 40


def test_atomic_write_never_leaves_half_a_file(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"status": "running", "epochs_done": 3})

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write_json(target, {"status": "completed", "epochs_done": 4, "x": "y" * 100000})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"status": "running", "epochs_done": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left behind


def test_a_running_run_whose_process_is_gone_is_failed(tmp_path):
    run = Run.create("cnn", 1.0, 0, root=tmp_path)
    run.mark_running(family="cnn")
    assert run.summary()["status"] == "running"  # this very process is alive
    s = json.loads(run.summary_file.read_text())
    s["pid"] = 2**22 + 12345  # a pid that does not exist
    run.summary_file.write_text(json.dumps(s))
    assert run.summary()["status"] == "failed"
    assert "died" in run.summary()["error"]


def test_metrics_skip_a_line_cut_short_by_a_kill(tmp_path):
    run = Run.create("cnn", 1.0, 0, root=tmp_path)
    run.append_metrics({"epoch": 1, "public_acc": 0.3})
    with open(run.metrics_file, "a") as f:
        f.write('{"epoch": 2, "public_a')
    assert run.metrics() == [{"epoch": 1, "public_acc": 0.3}]


def test_listing_and_finding_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_RUNS", str(tmp_path))
    a = Run.create("mobilenet", 1.0, 0)
    a.update_summary(status="completed", family="mobilenet", params=107247, public_acc=0.5, data="synthetic")
    b = Run.create("cnn", 0.2, 1)
    b.update_summary(status="cancelled", family="cnn", params=123, data="synthetic")
    ids = {s["run_id"] for s in list_summaries() if s["source"] == "user"}
    assert ids == {a.run_id, b.run_id}
    df = table()
    assert set(df.loc[df.source == "user", "run_id"]) == ids
    assert {"params", "public_acc", "status", "data"} <= set(df.columns)
    assert find_run(a.run_id).path == a.path
    assert find_run(str(b.path)).run_id == b.run_id
    assert find_run(a.run_id[:20]).run_id == a.run_id  # a unique prefix is enough
    with pytest.raises(FerError, match="no run 'nope'"):
        find_run("nope")
