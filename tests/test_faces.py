"""Faces as cameras see them: YuNet finds them, alignment puts them where FER2013 has them, eval-faces measures it."""

import hashlib
import json

import cv2
import numpy as np
import pytest
import torch

from conftest import ROOT
from fer_core.data.augment import photometric_batch
from fer_core.models import create_model
from fer_core.serving import detection
from fer_core.serving.align import align_face, align_matrix, load_template, mirror_points, relight
from fer_core.serving.detection import YUNET_FILE, get_detector
from fer_core.serving.inference import demo_frame, predict
from fer_core.serving.live import LiveProcessor
from fer_core.store.loading import LoadedModel
from fer_core.studies.faces import CONDITIONS, PATHS, clutter, evaluate, goals, make_frame, match


def _models():
    return [LoadedModel(name=f, family=f, width=0.5, model=create_model(f, 0.5).eval()) for f in ("mobilenet", "cnn")]


@pytest.mark.parametrize("expression", range(7))
def test_yunet_finds_a_drawn_face_with_its_landmarks(expression):
    found = get_detector("yunet").detect(demo_frame(expression, seed=3))
    assert len(found) == 1
    d = found[0]
    x, y, w, h = d.box
    assert abs(x + w / 2 - 320) < 60 and abs(y + h / 2 - 240) < 60 and 80 < h < 260
    assert 0.5 <= d.score <= 1 and len(d.landmarks) == 5
    (rx, ry), (lx, ly), (nx, ny), (mrx, mry), (mlx, mly) = d.landmarks
    assert rx < nx < lx and max(ry, ly) < ny < min(mry, mly)  # eyes above the nose above the mouth
    assert all(x <= px <= x + w and y <= py <= y + h for px, py in d.landmarks)


@pytest.mark.parametrize("seed", range(6))
def test_no_face_is_found_in_clutter(seed):
    frame = clutter(np.random.default_rng(seed))
    assert get_detector("yunet").detect(frame) == []
    assert get_detector("yunet").detect(np.full((480, 640, 3), 200, np.uint8)) == []


def test_alignment_puts_the_landmarks_on_the_template_within_a_pixel():
    """Five bright dots placed where a tilted, scaled, shifted face would have its landmarks come out of the
    48x48 crop where the template says, for faces from 50 to 400 pixels and tilts up to 40 degrees."""
    tmpl = np.asarray(load_template()["landmarks"])
    rng = np.random.default_rng(0)
    for scale, tilt in ((1.0, 0), (8.0, 35), (2.5, -40), (5.0, 12)):
        a = np.deg2rad(tilt)
        rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        pts = tmpl @ rot.T + rng.uniform(100, 300, 2)
        img = np.zeros((700, 700), np.uint8)
        for px, py in pts:
            cv2.circle(img, (round(px * 16), round(py * 16)), round(scale * 16), 255, -1, cv2.LINE_AA, shift=4)
        crop = align_face(img, pts)
        assert crop.shape == (48, 48)
        for tx, ty in tmpl:  # the dot's centroid in the crop, around where the template puts it
            x0, y0 = int(tx) - 3, int(ty) - 3
            w = crop[y0 : y0 + 8, x0 : x0 + 8].astype(float)
            yy, xx = np.mgrid[y0 : y0 + 8, x0 : x0 + 8]
            cx, cy = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
            assert abs(cx - tx) < 1 and abs(cy - ty) < 1, (scale, tilt, (cx, cy), (tx, ty))
        m = align_matrix(pts)
        assert np.allclose(np.c_[pts, np.ones(5)] @ m.T, tmpl, atol=1e-6)  # exact for an exact similarity


def test_the_template_is_symmetric_and_measured_on_fer2013():
    t = load_template()
    pts = np.asarray(t["landmarks"])
    assert np.allclose(pts, mirror_points(pts), atol=1e-3)
    assert pts[0, 0] < pts[2, 0] < pts[1, 0] and pts[0, 1] < pts[2, 1] < pts[3, 1]
    assert t["measured"]["data"].startswith("fer2013 train") and t["measured"]["found"] > 0.8 * t["measured"]["faces"]
    light = t["light"]
    assert light["mean"]["p10"] < light["mean"]["p50"] < light["mean"]["p90"]


def test_relight_clamp_leaves_a_typical_crop_alone_and_lifts_a_dark_one():
    t = load_template()
    rng = np.random.default_rng(1)
    typical = np.clip(rng.normal(t["light"]["mean"]["p50"], t["light"]["std"]["p50"], (48, 48)), 0, 255).astype(
        np.uint8
    )
    assert np.array_equal(relight(typical, "clamp"), typical)
    dark = (typical * 0.2).astype(np.uint8)
    lit = relight(dark, "clamp").astype(float)
    assert t["light"]["mean"]["p10"] - 2 <= lit.mean() <= t["light"]["mean"]["p90"] + 2
    assert np.corrcoef(lit.ravel(), dark.ravel())[0, 1] > 0.99  # the same picture, only brighter
    assert np.array_equal(relight(dark, "none"), dark)


def test_the_detector_file_and_its_licence_are_shipped():
    folder = YUNET_FILE.parent
    assert "Apache License" in (folder / "LICENSE").read_text() and "Version 2.0" in (folder / "LICENSE").read_text()
    digest = hashlib.sha256(YUNET_FILE.read_bytes()).hexdigest()
    assert (folder / "SHA256SUMS").read_text().split()[0] == digest
    provenance = (folder / "README.md").read_text()
    assert "libfacedetection" in provenance and "Apache" in provenance
    assert "yunet" in (ROOT / "README.md").read_text().lower()


@pytest.mark.parametrize("damage", ["missing", "garbage", "altered"])
def test_an_unusable_detector_file_falls_back_to_haar_and_says_so(damage, tmp_path, monkeypatch):
    f = tmp_path / YUNET_FILE.name
    if damage == "garbage":
        f.write_bytes(b"this is not an onnx file" * 100)
    elif damage == "altered":
        data = bytearray(YUNET_FILE.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
        (tmp_path / "SHA256SUMS").write_text((YUNET_FILE.parent / "SHA256SUMS").read_text())
    monkeypatch.setattr(detection, "YUNET_FILE", f)
    detection.get_detector.cache_clear()
    try:
        res = predict(demo_frame(), _models())
        assert res.detector == "haar" and str(f) in res.note and "Haar" in res.note
        assert {"missing": "not found", "garbage": "OpenCV", "altered": "damaged"}[damage] in res.note
        assert len(res.faces) == 1 and not res.faces[0].aligned  # Haar's box crop still classifies the face
        assert LiveProcessor(_models(), draw=False).snapshot()["note"] == res.note
    finally:
        detection.get_detector.cache_clear()


def test_predict_reports_score_landmarks_and_the_aligned_crop():
    res = predict(demo_frame(), _models())
    assert res.detector == "yunet" and res.note is None
    face = res.faces[0]
    assert face.aligned and face.crop.shape == (48, 48) and len(face.landmarks) == 5 and face.score > 0.5
    d = res.to_dict()["faces"][0]
    assert len(d["landmarks"]) == 5 and d["aligned"] and d["score"] == round(face.score, 4)
    box = predict(demo_frame(), _models(), crop="box").faces[0]
    assert not box.aligned and not np.array_equal(box.crop, face.crop)
    haar = predict(demo_frame(), _models(), detector="haar")
    assert haar.detector == "haar" and haar.faces[0].score is None and haar.faces[0].landmarks is None


def test_live_video_tracks_yunet_faces_and_aligns_them():
    proc = LiveProcessor(_models(), draw=False)
    frame = np.ascontiguousarray(np.stack([demo_frame()] * 3, -1))
    for _ in range(8):
        proc.process(frame)
    s = proc.snapshot()
    assert s["error"] is None and s["detector"] == "yunet" and s["faces"] == 8 and s["tracks"] == 1
    assert s["roi_frames"] >= 5  # tracked frames searched only around the face


def test_frames_are_built_from_the_faces_and_matched_honestly():
    rng = np.random.default_rng(3)
    faces = np.stack([cv2.resize(demo_frame(e, seed=1)[140:340, 220:420], (48, 48)) for e in range(7)])
    labels = np.arange(7)
    pool = list(range(7))
    frame, placed = make_frame(CONDITIONS["group"], pool, faces, labels, rng)
    assert frame.shape == (480, 640) and 3 <= len(placed) <= 6 and len(pool) == 7 - len(placed)
    p = placed[0]
    exact = (int(p.cx - p.size / 2), int(p.cy - p.size / 2), int(p.size), int(p.size))
    far = (0, 0, 10, 10)
    assert match([p], [far, exact]) == ([1], 1)  # the right box finds it, the other one is a false face
    assert match([p], [far]) == ([None], 1)


def test_eval_faces_reports_every_condition_and_path(tmp_path):
    rng = np.random.default_rng(0)
    faces = np.stack([cv2.resize(demo_frame(e % 7, seed=1)[140:340, 220:420], (48, 48)) for e in range(30)])
    faces = np.clip(faces.astype(int) + rng.integers(-3, 4, faces.shape), 0, 255).astype(np.uint8)
    labels = np.arange(30) % 7
    res = evaluate(_models(), faces, labels, frames=2, say=None)
    rows = {(r["condition"], r["path"]): r for r in res["rows"]}
    assert set(rows) == {(c, p) for c in (*CONDITIONS, "all") for p in PATHS}
    assert rows[("no face", PATHS[-1])]["faces"] == 0 and rows[("no face", PATHS[-1])]["recall"] is None
    total = rows[("all", PATHS[-1])]
    assert total["faces"] == sum(rows[(c, PATHS[-1])]["faces"] for c in CONDITIONS) > 0
    assert 0 <= total["recall"] <= 1 and total["frames"] == 2 * len(CONDITIONS)
    found = [r for r in res["rows"] if r["found"]]
    assert found and all(0 <= r["mobilenet"]["accuracy"] <= 1 for r in found)
    assert rows[("all", "yunet-aligned-clamp")]["found"] > rows[("all", "haar-box-none")]["found"]
    assert any(what.startswith("false faces") for what, _, _ in goals(res))
    json.dumps(res)  # the CLI writes it as it is


def test_photometric_augmentation_darkens_blurs_and_leaves_the_rest():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 48, 48, generator=g) * 2 - 1
    assert torch.equal(photometric_batch(x, 0.0), x)
    y = photometric_batch(x, 1.0, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    changed = (y - x).abs().flatten(1).mean(1) > 1e-3
    assert changed.all()
    half = photometric_batch(x, 0.5, torch.Generator().manual_seed(2))
    same = (half - x).abs().flatten(1).amax(1) == 0
    assert 16 < int(same.sum()) < 48  # about half untouched
    again = photometric_batch(x, 0.5, torch.Generator().manual_seed(2))
    assert torch.equal(half, again)
