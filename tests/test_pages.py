"""Every page under streamlit's AppTest: renders without exception, and the main actions work."""

import io
import time

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from conftest import ROOT, tiny_config
from fer_core.data.sources import load
from fer_core.jobs.queue import list_jobs
from fer_core.serving.inference import demo_frame
from fer_core.training.trainer import fit

PAGES = ["streamlit_app.py", "pages/1_Train.py", "pages/2_Compare.py", "pages/3_Try_it.py"]


def app(page: str) -> AppTest:
    return AppTest.from_file(str(ROOT / page), default_timeout=120)


def _no_exception(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]


@pytest.fixture
def synthetic_env(monkeypatch):
    monkeypatch.setenv("FER_DATA", "synthetic")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two finished runs (one per family) in a runs folder of their own."""
    out = tmp_path_factory.mktemp("pages-runs")
    data = load("synthetic")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FER_RUNS", str(out))
        for family, width in (("cnn", 0.1), ("mobilenet", 0.5)):
            cfg = tiny_config(epochs=1)
            cfg.model.family, cfg.model.width = family, width
            fit(cfg, data=data)
    return out


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_with_no_runs(page, synthetic_env):
    at = app(page).run()
    _no_exception(at)


def test_home_says_synthetic_and_offers_the_quick_demo(synthetic_env):
    at = app("streamlit_app.py").run()
    assert any("synthetic faces" in w.value for w in at.warning)
    assert any("CPU only" in i.value for i in at.info) or any("Training device" in s.value for s in at.success)
    assert [b.label for b in at.button] == ["Start the quick demo"]


def test_home_answers_which_family_wins_from_the_shipped_runs(synthetic_env, monkeypatch):
    from fer_core.analysis.compare import runs_frame
    from fer_core.analysis.families import family_answer, family_table

    monkeypatch.delenv("FER_REFERENCE")  # the shipped reference runs and CPU study, as a fresh clone has them
    monkeypatch.delenv("FER_STUDIES")
    at = app("streamlit_app.py").run()
    _no_exception(at)
    df = runs_frame()
    done = df[(df["data"] == "fer2013") & (df["format"] == "torch") & (df["status"] == "completed")]
    expected = family_answer(family_table(done))
    assert len(expected) >= 3  # the shipped study: ~2e4, 5e4 and 1e5 at least
    text = next(m.value for m in at.markdown if "Which family wins" in m.value)
    assert all(f"- {line}" in text for line in expected)


def test_starting_a_tiny_run_from_the_train_page_finishes_and_reaches_compare(synthetic_env, monkeypatch):
    at = app("pages/1_Train.py").run()
    at.multiselect[0].set_value(["mobilenet"]).run()
    at.radio[0].set_value("widths").run()
    widths = next(t for t in at.text_input if t.label.startswith("widths"))
    widths.set_value("0.25").run()
    next(n for n in at.number_input if n.label == "epochs").set_value(1).run()
    next(n for n in at.number_input if n.label.startswith("limit")).set_value(200).run()
    _no_exception(at)
    assert any("Planned: 1 trainings" in s.value for s in at.subheader)
    next(b for b in at.button if b.label == "Start").click().run()
    assert any("started" in s.value for s in at.success)
    deadline = time.time() + 180
    while time.time() < deadline and list_jobs()[0]["status"] in ("queued", "waiting", "running"):
        time.sleep(0.5)
    job = list_jobs()[0]
    assert job["status"] == "finished" and job["items"][0]["status"] == "done", job
    compare = app("pages/2_Compare.py").run()
    _no_exception(compare)
    table = compare.dataframe[-1].value
    assert len(table) == 1 and table["family"].iloc[0] == "mobilenet" and table["data"].iloc[0] == "synthetic"


def test_train_page_names_a_bad_field(synthetic_env):
    at = app("pages/1_Train.py").run()
    at.radio[0].set_value("widths").run()
    next(t for t in at.text_input if t.label.startswith("widths")).set_value("0.5, big").run()
    assert any("widths" in e.value and "'big' is not a number" in e.value for e in at.error)


def test_compare_shows_every_section(two_runs, monkeypatch):
    monkeypatch.setenv("FER_RUNS", str(two_runs))
    at = app("pages/2_Compare.py").run()
    _no_exception(at)
    heads = [s.value for s in at.subheader]
    for h in ["Learning curves", "One run in detail", "Two runs side by side", "All runs"]:
        assert any(h in x for x in heads), h
    assert len(at.dataframe[-1].value) == 2


def _upload(at: AppTest, data: bytes, name: str) -> AppTest:
    """Feed a file to the Try-it page's uploader (AppTest has no uploader element yet: patch its value)."""
    from unittest import mock

    class Upload(io.BytesIO):
        def __init__(self):
            super().__init__(data)
            self.name = name

    with mock.patch("streamlit.file_uploader", return_value=Upload()):
        return at.run()


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_try_it_predicts_an_uploaded_face_with_every_model(two_runs, monkeypatch):
    monkeypatch.setenv("FER_RUNS", str(two_runs))
    at = _upload(app("pages/3_Try_it.py"), _png(demo_frame(3)), "face.png")
    _no_exception(at)
    assert not at.error and any("Face 1" in m.value for m in at.markdown)
    assert len([m for m in at.markdown if " ms" in m.value]) == 2  # one prediction per selected model
    captions = [i.proto.imgs[0].caption for i in at.get("image")]
    assert "aligned 48×48: what the models see" in captions  # the crop the models saw, beside the face
    assert any("detection score 0." in m.value for m in at.markdown)


def test_try_it_offers_the_haar_detector_and_box_crop(two_runs, monkeypatch):
    monkeypatch.setenv("FER_RUNS", str(two_runs))
    at = _upload(app("pages/3_Try_it.py"), _png(demo_frame(3)), "face.png")
    assert [s.label for s in at.selectbox] == ["Detector", "Crop", "Light"]
    at.selectbox[0].set_value("haar")
    at.selectbox[1].set_value("box")
    from unittest import mock

    class Upload(io.BytesIO):
        name = "face.png"

    with mock.patch("streamlit.file_uploader", return_value=Upload(_png(demo_frame(3)))):
        at.run()
    _no_exception(at)
    captions = [i.proto.imgs[0].caption for i in at.get("image")]
    assert "48×48: what the models see" in captions and not any("score" in m.value for m in at.markdown)


def test_try_it_names_a_bad_upload_and_offers_the_whole_image(two_runs, monkeypatch):
    monkeypatch.setenv("FER_RUNS", str(two_runs))
    at = _upload(app("pages/3_Try_it.py"), b"%PDF-1.4 not an image", "report.pdf")
    assert any("report.pdf: not a readable image" in e.value for e in at.error)
    at = _upload(app("pages/3_Try_it.py"), _png(np.full((200, 200), 128, np.uint8)), "wall.png")
    assert any("No face found" in w.value and "light" in w.value for w in at.warning)
    assert any(b.label == "Use the whole image as one face" for b in at.button)


def test_try_it_uses_the_webcam_snapshot(two_runs, monkeypatch):
    from unittest import mock

    monkeypatch.setenv("FER_RUNS", str(two_runs))

    class Shot(io.BytesIO):
        name = "snapshot.jpg"

    with mock.patch("streamlit.camera_input", return_value=Shot(_png(demo_frame(5, seed=3)))):
        at = app("pages/3_Try_it.py").run()
    _no_exception(at)
    assert any("Face 1" in m.value for m in at.markdown)


def test_train_page_refuses_a_missing_data_path_before_starting(synthetic_env, tmp_path):
    at = app("pages/1_Train.py").run()
    next(t for t in at.text_input if t.label == "data").set_value(str(tmp_path / "nowhere.csv")).run()
    next(b for b in at.button if b.label == "Start").click().run()
    assert any("nowhere.csv does not exist" in e.value for e in at.error)
    assert list_jobs() == []


def test_train_page_queues_a_distillation_with_the_chosen_recipe_and_teacher(two_runs, synthetic_env, monkeypatch):
    import json

    from fer_core.jobs.queue import item_config

    monkeypatch.setenv("FER_RUNS", str(two_runs))
    at = app("pages/1_Train.py").run()
    at.multiselect[0].set_value(["mobilenet"]).run()
    at.radio[0].set_value("widths").run()
    next(t for t in at.text_input if t.label.startswith("widths")).set_value("0.25").run()
    next(s for s in at.selectbox if s.label == "recipe").set_value("distill").run()
    assert any("distillation at T=4" in c.value for c in at.caption)  # the recipe says what it does
    teacher = next(m for m in at.multiselect if m.label.startswith("teachers"))
    cnn = next(o for o in teacher.options if "cnn" in o)
    teacher.set_value([cnn.split(" · ")[-1]]).run()
    _no_exception(at)
    monkeypatch.setattr("fer_core.jobs.queue.subprocess.Popen", lambda *a, **k: None)  # queue it, train nothing
    next(b for b in at.button if b.label == "Start").click().run()
    assert any("started" in s.value for s in at.success), [e.value for e in at.error]
    cfg = item_config(list_jobs()[0]["items"][0])
    assert cfg["recipe"] == "distill" and cfg["distill"]["alpha"] == 0.9
    assert len(cfg["distill"]["teachers"]) == 1 and cfg["distill"]["teachers"][0].startswith("cnn-w0.1")
    assert json.loads(json.dumps(cfg)) == cfg  # the queued training is one plain JSON config
