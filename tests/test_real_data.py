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

    teacher = next((ROOT / "results" / "reference").glob("cnn-w0.416-s0-*"))  # the shipped 995k CNN
    cfg = tiny_config(epochs=2)
    cfg.data.data, cfg.data.limit = FER_DATA, 2000
    cfg.model.family, cfg.model.width = "mobilenet", 0.416
    cfg.distill.teachers = [str(teacher)]
    s = fit(cfg, data=fer)
    assert s["status"] == "completed" and s["public_acc"] > 0.25
    (t,) = s["lineage"]["teachers"]
    assert t["run_id"] == teacher.name and t["params"] == 995_051 and t["private_acc"] == 0.671218
    assert t["data_fingerprint"] == s["data_fingerprint"]  # the teacher learnt from this very data
