"""The shipped reference runs: complete, honest about what they are, small, and usable by every page."""

import json

import numpy as np
import pytest
import torch

from fer_core.serving.inference import demo_frame, predict
from fer_core.serving.models import available_models, default_models, load_model
from fer_core.store.files import load_weights_file
from fer_core.store.runs import REFERENCE_DIR, list_summaries

ALL = sorted(p for p in REFERENCE_DIR.iterdir() if (p / "summary.json").is_file()) if REFERENCE_DIR.is_dir() else []
#: trained runs; the rest are their deployable ONNX variants (derived runs)
RUNS = [p for p in ALL if not json.loads((p / "summary.json").read_text()).get("derived_from")]
VARIANTS = [p for p in ALL if p not in RUNS]
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
    shipped_families = {x["family"] for x in models if x["source"] == "reference" and x["format"] == "torch"}
    assert {"cnn", "mobilenet"} <= shipped_families
    assert sorted(m["family"] for m in picked) == sorted(shipped_families)  # one model of each family
    for m in picked:  # the most accurate shipped trained model of its family (an int8 file can edge past its parent)
        trained = [x for x in models if x["family"] == m["family"] and x["format"] == "torch"]
        assert m["format"] == "torch" and m["public_acc"] == max(x["public_acc"] for x in trained)


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
        assert len(at.dataframe[-1].value) == len(ALL)  # every shipped run and variant in the table
        tables = [d.value for d in at.dataframe]
        gap = next(t for t in tables if "gap_mean" in t.columns)
        assert (gap["seeds"] == 3).any()  # the matched ~1e5 pair with three seeds each
        wins = next(t for t in tables if "rank" in t.columns)
        at_1e5 = wins[(wins["budget"] == 1e5) & (wins["recipe"] == "seed") & (wins["rank"] == 1)]
        assert at_1e5["family"].tolist() == ["mobilenet"] and at_1e5["runs"].tolist() == [3]


def test_every_variant_is_a_checked_onnx_file_of_a_shipped_run():
    assert VARIANTS, "the reference runs ship their ONNX variants"
    for v in VARIANTS:
        s = json.loads((v / "summary.json").read_text())
        assert (REFERENCE_DIR / s["derived_from"]).is_dir() and v.name == f"{s['derived_from']}-{s['format']}"
        assert s["bytes"] == (v / "model.onnx").stat().st_size
        assert s["data"] == "fer2013" and s["data_sizes"]["private"] == 3589
        if s["format"] == "onnx-int8":
            assert s["export"]["quantization"]["calibration"]["split"] == "train"
            assert s["parity"]["top1_agreement"] >= 0.9
        elif s["format"] == "onnx-int8-qat":  # fine-tuned on the training split, checked against what it became
            qat = s["export"]["quantization"]
            assert qat["data"].startswith("train split") and len(qat["history"]) == qat["epochs"] >= 1
            assert qat["parity_with_fine_tuned_network"]["top1_agreement"] >= 0.9
        else:
            assert s["parity"]["max_prob_diff"] <= {"onnx-fp32": 1e-4, "onnx-fp16": 1e-2}[s["format"]]
    for run in RUNS:  # every trained run ships an int8 variant; every MobileNet a quantization-aware one too
        assert (REFERENCE_DIR / f"{run.name}-onnx-int8" / "model.onnx").is_file(), run.name
        if run.name.startswith("mobilenet-"):
            assert (REFERENCE_DIR / f"{run.name}-onnx-int8-qat" / "model.onnx").is_file(), run.name


def test_quantization_aware_int8_loses_less_than_post_training_int8_on_the_mobilenets():
    """What the int8-qat files were made for, on the shipped files: on average over the MobileNets and both test
    splits, fine-tuning quantization-aware loses less against fp32 than ONNX Runtime's static quantization."""
    lost = {"onnx-int8": [], "onnx-int8-qat": []}
    for v in VARIANTS:
        s = json.loads((v / "summary.json").read_text())
        if s["family"] == "mobilenet" and s["format"] in lost:
            for split in ("public", "private"):
                lost[s["format"]].append(s[f"fp32_{split}_acc"] - s[f"{split}_acc"])
    assert len(lost["onnx-int8-qat"]) == len(lost["onnx-int8"]) >= 2
    assert np.mean(lost["onnx-int8-qat"]) < np.mean(lost["onnx-int8"])


def test_the_seed_mobilenet_fits_the_course_limit_without_losing_half_a_point():
    seed = "mobilenet-w1-s0-20261127-204951-b51a"
    fp16 = json.loads((REFERENCE_DIR / f"{seed}-onnx-fp16" / "summary.json").read_text())
    assert fp16["bytes"] < 225_000
    assert fp16["private_acc"] >= fp16["fp32_private_acc"] - 0.005
    assert fp16["private_acc"] >= json.loads((REFERENCE_DIR / seed / "summary.json").read_text())["private_acc"] - 0.005


def test_a_shipped_variant_predicts_like_its_parent(shipped):
    pytest.importorskip("onnxruntime")
    v = next(p for p in VARIANTS if p.name.endswith("-onnx-fp16"))
    lm = load_model(v)
    parent = load_model(json.loads((v / "summary.json").read_text())["derived_from"])
    assert lm.runtime == "onnxruntime" and lm.format == "onnx-fp16"
    a, b = predict(demo_frame(3), [lm]), predict(demo_frame(3), [parent])
    pa, pb = a.faces[0].predictions[0].probabilities, b.faces[0].predictions[0].probabilities
    assert max(abs(pa[k] - pb[k]) for k in pa) < 1e-2
