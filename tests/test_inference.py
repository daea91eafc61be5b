"""Faces in, expressions out: detection on drawn faces, every model side by side, every bad image named."""

import io

import numpy as np
import pytest
from PIL import Image

from fer_core import EMOTIONS
from fer_core.common import FerError
from fer_core.models import create_model
from fer_core.serving.detection import get_detector
from fer_core.serving.inference import demo_frame, load_image, predict
from fer_core.store.loading import LoadedModel


def _models():
    return [LoadedModel(name=f, family=f, width=0.5, model=create_model(f, 0.5).eval()) for f in ("mobilenet", "cnn")]


def _png(arr, mode=None, **kw):
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


@pytest.mark.parametrize("expression", range(7))
def test_a_drawn_face_in_a_webcam_frame_is_found(expression):
    frame = demo_frame(expression)
    boxes = [d.box for d in get_detector("haar").detect(frame)]
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    assert abs(x + w / 2 - 320) < 40 and abs(y + h / 2 - 240) < 50 and 120 < w < 280


def test_every_model_predicts_every_face():
    res = predict(np.stack([demo_frame()] * 3, -1), _models())
    assert len(res.faces) == 1 and res.image_size == (640, 480) and res.message is None
    preds = res.faces[0].predictions
    assert [p.model for p in preds] == ["mobilenet", "cnn"]
    for p in preds:
        assert set(p.probabilities) == set(EMOTIONS)
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
        assert p.label == max(p.probabilities, key=p.probabilities.get) and p.ms > 0
    assert res.faces[0].crop.shape == (48, 48)
    d = res.to_dict()
    assert d["faces"][0]["predictions"][1]["model"] == "cnn"


def test_no_face_says_so_and_whole_image_is_an_option():
    blank = np.full((240, 320), 90, np.uint8)
    res = predict(blank, _models())
    assert res.faces == [] and res.message == "no face found"
    res = predict(blank, _models(), whole_image=True)
    assert res.whole_image and len(res.faces) == 1 and res.faces[0].box == (0, 0, 320, 240)


def test_odd_images_load_as_plain_arrays():
    face = demo_frame()
    rgba = np.dstack([np.stack([face] * 3, -1), np.full(face.shape, 255, np.uint8)])
    assert load_image(_png(rgba, "RGBA")).shape == (480, 640, 3)
    sixteen = (face.astype(np.uint16) * 257).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(sixteen).save(buf, format="PNG")
    out = load_image(buf.getvalue())
    assert out.dtype == np.uint8 and out.shape == (480, 640) and out.max() > 200
    cmyk = Image.fromarray(np.stack([face] * 3, -1)).convert("CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, format="JPEG")
    assert load_image(buf.getvalue()).shape == (480, 640, 3)


def test_exif_rotation_is_applied():
    img = Image.fromarray(np.zeros((100, 200), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    assert load_image(buf.getvalue()).shape[:2] == (200, 100)


def test_huge_images_are_shrunk():
    big = np.zeros((3000, 4000), np.uint8)
    assert max(load_image(_png(big)).shape[:2]) == 1920


def test_not_an_image_is_a_clear_error(tmp_path):
    with pytest.raises(FerError, match="upload.txt: not a readable image"):
        load_image(b"hello, I am text", name="upload.txt")
    with pytest.raises(FerError, match="empty file"):
        load_image(b"")
    with pytest.raises(FerError, match="file not found"):
        load_image(tmp_path / "missing.jpg")
