"""The shipped reference runs: complete, honest about what they are, small, and usable by every page."""

import json

import pytest
import torch

from fer_core.inference import demo_frame, predict
from fer_core.loading import available_models, default_models, load_model
from fer_core.runs import REFERENCE_DIR, list_summaries, load_weights_file

RUNS = sorted(p for p in REFERENCE_DIR.iterdir() if (p / "summary.json").is_file()) if REFERENCE_DIR.is_dir() else []
pytestmark = pytest.mark.skipif(not RUNS, reason="no reference runs shipped yet")


@pytest.fixture
def shipped(monkeypatch):
    monkeypatch.setenv("FER_REFERENCE", str(REFERENCE_DIR))


def test_every_shipped_run_is_a_completed_fer2013_run_of_one_protocol():
    epochs = set()
    for run in RUNS:
        s = json.loads((run / "summary.json").read_text())
        assert s["status"] == "completed" and s["data"] == "fer2013" and s["data_synthetic"] is False
        assert s["data_sizes"] == {"train": 28709, "public": 3589, "private": 3589} and s["limit"] is None
        assert s["epochs_done"] == s["epochs"] and 0 < s["best_epoch"] <= s["epochs"]
        assert "pid" not in s and "host" not in s
        assert json.loads((run / "config.json").read_text())["data"]["data"] is None  # no trainer's path
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == list(range(1, s["epochs"] + 1))
        best = max(max(r["public_acc"], r.get("public_acc_ema", -1)) for r in rows)  # raw or EMA weights
        assert best == pytest.approx(s["public_acc"], abs=1e-6)
        lineage = s.get("lineage") or {}
        for ref in [t["run_id"] for t in lineage.get("teachers") or []] + [(lineage.get("init") or {}).get("run_id")]:
            assert ref is None or (REFERENCE_DIR / ref).is_dir(), f"{run.name} learnt from {ref}, which is not shipped"
        if s["recipe"] == "seed":
            epochs.add(s["epochs"])
    assert len(epochs) == 1  # every seed-protocol run trained for the same number of epochs


def test_shipped_weights_are_fp16_plain_data_and_small():
    total = 0
    for run in RUNS:
        for w in run.glob("weights*.pt"):
            total += w.stat().st_size
            payload = load_weights_file(w)  # weights_only=True inside
            assert all(v.dtype == torch.float16 for v in payload["state_dict"].values() if v.is_floating_point())
    assert 0 < total < 25_000_000


def test_the_pages_see_them_first(shipped):
    sources = {s["source"] for s in list_summaries()}
    assert "reference" in sources
    models = available_models()
    assert models and models[0]["source"] == "reference" and models[0]["label"].startswith("★")
    picked = default_models(models)
    assert sorted(m["family"] for m in picked) == ["cnn", "mobilenet"]
    for m in picked:  # the most accurate shipped model of its family
        assert m["public_acc"] == max(x["public_acc"] for x in models if x["family"] == m["family"])


def test_a_shipped_model_predicts_a_face(shipped):
    lm = load_model(RUNS[0])
    assert lm.source == "reference"
    res = predict(demo_frame(3), [lm])
    assert len(res.faces) == 1 and res.faces[0].predictions[0].model == RUNS[0].name


@pytest.mark.parametrize("page", ["streamlit_app.py", "pages/2_Compare.py", "pages/3_Try_it.py"])
def test_pages_render_the_shipped_runs(page, shipped, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT

    monkeypatch.setenv("FER_DATA", "synthetic")
    at = AppTest.from_file(str(ROOT / page), default_timeout=120).run()
    assert not at.exception, [e.message for e in at.exception]
    if page == "pages/2_Compare.py":
        assert len(at.dataframe[-1].value) == len(RUNS)  # every shipped run in the table
        gap = at.dataframe[0].value
        assert (gap["seeds"] == 3).any()  # the matched ~1e5 pair with three seeds each
