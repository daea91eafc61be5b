"""Tests on the real FER2013: they run wherever FER_DATA points at it (CI sets it)."""

import os

import pytest

from conftest import tiny_config
from fer_core.data.sources import load
from fer_core.training.trainer import fit

FER_DATA = os.environ.get("FER_DATA")
pytestmark = pytest.mark.skipif(not FER_DATA or FER_DATA == "synthetic", reason="FER_DATA is not set")


@pytest.fixture(scope="module")
def fer():
    return load(FER_DATA)


def test_counts_per_split_and_class(fer):
    assert fer.name == "fer2013" and not fer.synthetic
    assert {s: sum(c) for s, c in fer.counts().items()} == {"train": 28709, "public": 3589, "private": 3589}
    assert fer.counts()["train"] == [3995, 436, 4097, 7215, 4830, 3171, 4965]
    assert fer.counts()["private"] == [491, 55, 528, 879, 594, 416, 626]


def test_a_short_cpu_run_on_real_faces_beats_chance(fer):
    cfg = tiny_config(epochs=4)
    cfg.data.data, cfg.data.limit, cfg.model.width = FER_DATA, 3000, 0.136
    s = fit(cfg, data=fer)
    # chance is 1/7 = 0.143; always answering "happy" scores 0.249 on the public split
    assert s["public_acc"] > 0.30 and s["private_acc"] > 0.30
    assert s["data"] == "fer2013" and s["data_sizes"]["train"] == 3000


def test_a_shipped_teacher_distils_into_a_small_student_on_real_faces(fer):
    from conftest import ROOT

    teacher = ROOT / "results" / "reference" / "cnn-w0.416-s0-20261127-204954-8616"  # the shipped 995k CNN
    cfg = tiny_config(epochs=2)
    cfg.data.data, cfg.data.limit = FER_DATA, 2000
    cfg.model.family, cfg.model.width = "mobilenet", 0.416
    cfg.distill.teachers = [str(teacher)]
    s = fit(cfg, data=fer)
    assert s["status"] == "completed" and s["public_acc"] > 0.25
    (t,) = s["lineage"]["teachers"]
    assert t["run_id"] == teacher.name and t["params"] == 995_051 and t["private_acc"] == 0.671218
    assert t["data_fingerprint"] == s["data_fingerprint"]  # the teacher learnt from this very data


def test_the_shipped_face_template_is_what_fer2013_measures(fer):
    """Re-measured on 400 other training faces, every landmark lands within a pixel of the shipped template."""
    import numpy as np

    from fer_core.serving.align import load_template, measure_template
    from fer_core.serving.detection import get_detector

    pick = np.random.default_rng(123).choice(len(fer.train_x), 400, replace=False)
    t = measure_template(fer.train_x[pick], get_detector("yunet"), say=None)
    assert t["measured"]["found"] > 0.85 * 400
    shipped = np.asarray(load_template()["landmarks"])
    assert np.abs(np.asarray(t["landmarks"]) - shipped).max() < 1.0
    assert t["light"]["mean"]["p50"] == pytest.approx(load_template()["light"]["mean"]["p50"], abs=8)


def test_the_face_path_finds_and_keeps_real_faces_in_camera_frames(fer):
    """eval-faces on a few frames per condition with the shipped seed MobileNet: YuNet finds most private-test
    faces where Haar finds few, with no false face in clutter, and the aligned crops keep most of the accuracy."""
    from conftest import ROOT
    from fer_core.serving.models import load_model
    from fer_core.studies.faces import evaluate

    run = next((ROOT / "results" / "reference").glob("mobilenet-w1-s0-20261128-*"))
    res = evaluate([load_model(str(run), runtime="torch")], fer.private_x, fer.private_y, frames=12, say=None)
    rows = {(r["condition"], r["path"]): r for r in res["rows"]}
    yunet, haar = rows[("all", "yunet-aligned-clamp")], rows[("all", "haar-box-none")]
    assert yunet["recall"] > 0.7 and yunet["recall"] > haar["recall"] + 0.3
    assert rows[("no face", "yunet-aligned-clamp")]["false"] <= 1
    assert yunet[run.name]["kept"] > 0.75
