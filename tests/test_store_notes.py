"""Runs that move between clones do not break the store: one row per run id, and a note naming the file."""

import shutil

import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT, run_cli, tiny_config
from fer_core.data.sources import load
from fer_core.store.runs import list_summaries, store_notes, table
from fer_core.training.trainer import fit

PAGES = ["streamlit_app.py", "pages/1_Train.py", "pages/2_Compare.py", "pages/3_Try_it.py"]


@pytest.fixture
def messy_store(isolated_store, monkeypatch):
    """A completed run copied into the user's runs (same id in two places), and a run whose summary is damaged."""
    monkeypatch.setenv("FER_DATA", "synthetic")
    ref = isolated_store / "shipped"
    monkeypatch.setenv("FER_REFERENCE", str(ref))
    summary = fit(tiny_config(epochs=1), data=load("synthetic"), root=ref)
    shutil.copytree(ref / summary["run_id"], isolated_store / "runs" / summary["run_id"])
    damaged = isolated_store / "runs" / "cnn-w0.1-s9-20260101-000000-dead"
    damaged.mkdir(parents=True)
    (damaged / "summary.json").write_text('{"run_id": "cnn-w0.1-s9", "status": "compl')
    return summary["run_id"], damaged / "summary.json"


def test_one_row_per_run_id_and_a_note_for_each_duplicate_or_damaged_file(messy_store):
    run_id, damaged = messy_store
    rows = list_summaries()
    assert [r["run_id"] for r in rows].count(run_id) == 1
    bad = next(r for r in rows if r["run_id"] == damaged.parent.name)
    assert bad["status"] == "failed" and "damaged" in bad["error"]
    notes = store_notes()
    assert any(run_id in n and "two places" in n for n in notes), notes
    assert any(str(damaged) in n for n in notes), notes
    assert table().attrs["notes"] == notes


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_and_names_the_duplicate_and_the_damaged_file(messy_store, page):
    run_id, damaged = messy_store
    at = AppTest.from_file(str(ROOT / page), default_timeout=120).run()
    assert not at.exception, [e.message for e in at.exception]
    warnings = [w.value for w in at.warning]
    assert any(run_id in w and "two places" in w for w in warnings), warnings
    assert any(str(damaged) in w for w in warnings), warnings


def test_commands_that_read_the_store_say_it_on_stderr(messy_store):
    run_id, damaged = messy_store
    out = run_cli("runs", "--json")
    assert out.returncode == 0, out.stderr
    assert f"note: run {run_id} is in two places" in out.stderr and str(damaged) in out.stderr
    assert out.stdout.count(f'"{run_id}"') == 1
