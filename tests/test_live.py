"""The live-video frame path, in process: faces found and tracked, one prediction per model, smoothing
arithmetic, several faces kept apart, errors kept for the page instead of stopping the stream."""

import numpy as np
import pytest
import torch

from fer_core import EMOTIONS
from fer_core.common import FerError
from fer_core.data.synthetic import draw_face
from fer_core.models import create_model
from fer_core.serving.inference import demo_frame
from fer_core.serving.live import FULL_DETECT_EVERY, LiveProcessor, ice_servers, iou, match
from fer_core.store.loading import LoadedModel


def two_faces(shift: int = 0, right: bool = True) -> np.ndarray:
    """A 640x480 RGB frame with two drawn faces the detector finds (or only the left one); ``shift`` moves
    them right."""
    f = np.full((480, 640), 128, np.uint8)
    f[140:340, 40 + shift : 240 + shift] = draw_face(3, np.random.default_rng(1), size=200, intensity=1.0)
    if right:
        f[140:340, 400 + shift : 600 + shift] = draw_face(0, np.random.default_rng(1), size=200, intensity=1.0)
    return np.ascontiguousarray(np.stack([f] * 3, -1))


class Scripted:
    """A model whose logits are given per call (to check the smoothing arithmetic exactly)."""

    def __init__(self, logits: list[list[float]]):
        self.logits = [torch.tensor(z, dtype=torch.float32) for z in logits]
        self.calls = 0

    def __call__(self, x):
        z = self.logits[min(self.calls, len(self.logits) - 1)]
        self.calls += 1
        return z.expand(len(x), -1)


def lm(name: str, model) -> LoadedModel:
    return LoadedModel(name=name, family="mobilenet", width=1.0, model=model)


def test_box_overlap_and_matching():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0

    class T:
        def __init__(self, box):
            self.box = box

    tracks = [T((0, 0, 100, 100)), T((300, 0, 100, 100))]
    # each box goes to the track it overlaps; a box far from both starts a new track
    assert match(tracks, [(305, 5, 100, 100), (2, 3, 100, 100), (600, 300, 50, 50)]) == [1, 0, None]


def test_every_face_gets_one_prediction_per_model_and_a_drawn_frame():
    models = [lm(f, create_model(f, 0.5).eval()) for f in ("mobilenet", "cnn")]
    proc = LiveProcessor(models)
    frame = np.ascontiguousarray(np.stack([demo_frame(3)] * 3, -1))
    out = proc.process(frame)
    assert out.shape == frame.shape and out.dtype == np.uint8 and not np.array_equal(out, frame)  # boxes drawn
    s = proc.snapshot()
    assert s["frames"] == 1 and s["faces"] == 1 and s["error"] is None
    assert set(s["largest"]["models"]) == {"mobilenet", "cnn"}
    for m in s["largest"]["models"].values():
        assert set(m["probabilities"]) == set(EMOTIONS) and sum(m["probabilities"].values()) == pytest.approx(1)
    proc.process(frame)
    s = proc.snapshot()
    assert s["frames"] == 2 and s["faces"] == 2 and s["tracks"] == 1 and s["detect_ms"] > 0 and s["fps"] > 0


def test_smoothing_is_an_exponential_moving_average_per_face():
    a, b = [3.0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 3.0, 0, 0, 0]
    pa, pb = torch.softmax(torch.tensor(a), 0).numpy(), torch.softmax(torch.tensor(b), 0).numpy()
    frame = np.ascontiguousarray(np.stack([demo_frame(3)] * 3, -1))
    for smoothing in (0.0, 0.6):
        proc = LiveProcessor([lm("scripted", Scripted([a, b, b]))], smoothing=smoothing)
        proc.process(frame)
        proc.process(frame)
        got = np.array(list(proc.snapshot()["largest"]["models"]["scripted"]["probabilities"].values()))
        want = pb if smoothing == 0 else smoothing * pa + (1 - smoothing) * pb
        np.testing.assert_allclose(got, want, atol=1e-6)
        proc.process(frame)
        got3 = np.array(list(proc.snapshot()["largest"]["models"]["scripted"]["probabilities"].values()))
        np.testing.assert_allclose(got3, pb if smoothing == 0 else smoothing * want + (1 - smoothing) * pb, atol=1e-6)
    with pytest.raises(FerError, match="smoothing"):
        LiveProcessor([], smoothing=1.0)


def test_several_faces_are_tracked_apart():
    proc = LiveProcessor([lm("m", create_model("mobilenet", 0.3).eval())], smoothing=0.5)
    proc.process(two_faces())
    first = {t.id: t.box for t in proc._tracks}
    assert len(first) == 2
    proc.process(two_faces(shift=12))  # both faces move a little: each keeps its track
    second = {t.id: t.box for t in proc._tracks}
    assert set(second) == set(first)
    for tid in first:
        assert second[tid][0] - first[tid][0] == pytest.approx(12, abs=8)
        assert abs(second[tid][0] - first[tid][0]) < 200  # never swapped with the other face


def test_a_failing_model_keeps_the_stream_alive_and_says_why():
    def broken(x):
        raise RuntimeError("model exploded")

    proc = LiveProcessor([lm("broken", broken)])
    frame = np.ascontiguousarray(np.stack([demo_frame(3)] * 3, -1))
    assert proc.process(frame) is frame
    assert "model exploded" in proc.snapshot()["error"]


def test_ice_servers_come_from_the_environment():
    assert ice_servers({}) == []
    assert ice_servers({"FER_ICE_SERVERS": "stun:stun.example.org:3478, turn:t.example.org"}) == [
        {"urls": ["stun:stun.example.org:3478", "turn:t.example.org"]}
    ]
    js = '[{"urls": ["turn:t.example.org:3478"], "username": "u", "credential": "p"}]'
    assert ice_servers({"FER_ICE_SERVERS": js})[0]["username"] == "u"
    with pytest.raises(FerError, match="FER_ICE_SERVERS: 'http://x' is not a stun:"):
        ice_servers({"FER_ICE_SERVERS": "http://x"})
    with pytest.raises(FerError, match="not valid JSON"):
        ice_servers({"FER_ICE_SERVERS": "[{"})


def test_tracked_faces_are_searched_nearby_and_a_new_face_is_found_by_the_periodic_full_search():
    proc = LiveProcessor([lm("m", create_model("mobilenet", 0.3).eval())])
    for _ in range(4):
        proc.process(two_faces(right=False))
    s = proc.snapshot()
    assert s["faces"] == 4 and s["roi_frames"] == 3  # the first frame searched everywhere, the rest nearby
    for _ in range(FULL_DETECT_EVERY):  # a second face enters: the next full-frame search finds it
        proc.process(two_faces())
    assert len([t for t in proc._tracks if t.missed == 0]) == 2
    # a face that moves is found again (around the tracked faces or, failing that, everywhere)
    jumped = np.ascontiguousarray(np.stack([demo_frame(3)] * 3, -1))
    before = proc.snapshot()["faces"]
    proc.process(jumped)
    assert proc.snapshot()["faces"] == before + 1
