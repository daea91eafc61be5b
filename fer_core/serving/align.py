"""Crops that look like the training data: each face mapped onto the geometry and light of FER2013's faces.

FER2013's faces are 48x48 crops in which the eyes, nose and mouth sit at nearly the same places. A camera's face
is tilted, anywhere, any size. :func:`align_face` finds the similarity transform (rotation, one scale, shift)
that puts a face's five landmarks closest (least squares) to FER2013's average landmarks, and warps the face
with it; :func:`box_crop` is the crop for a box alone (YuNet without landmarks, or to compare). :func:`relight`
then brings the crop's brightness and contrast into the range the training faces have.

The template (landmarks, box-to-crop geometry, the training faces' brightness and contrast) is measured from the
training split by :func:`measure_template` (``python -m fer_core face-template``) and shipped in
``assets/fer_face_template.json`` with how it was measured.
"""

from __future__ import annotations

import datetime
import functools
import json
import time
from pathlib import Path

import cv2
import numpy as np

from fer_core.common import IMAGE_SIZE, FerError
from fer_core.serving.detection import ASSETS

TEMPLATE_FILE = ASSETS / "fer_face_template.json"
#: The light step's modes: "none" leaves the crop as cut; "clamp" moves its mean and spread into the middle
#: 80% of the training faces' (a crop already inside is untouched); "match" sets both to the training
#: medians; "equalize" is histogram equalization. The default was chosen by ``eval-faces`` on the public split.
LIGHT_MODES = ("none", "clamp", "match", "equalize")
LIGHT_DEFAULT = "clamp"
#: YuNet's landmarks in FER2013 order of :func:`mirror_points` (right eye <-> left eye, mouth right <-> left).
_MIRROR = (1, 0, 2, 4, 3)


@functools.lru_cache(maxsize=4)
def load_template(path: str | Path = TEMPLATE_FILE) -> dict:
    """The measured template (see :func:`measure_template`)."""
    path = Path(path)
    try:
        t = json.loads(path.read_text())
        np.asarray(t["landmarks"], np.float64).reshape(5, 2)
        t["box"]["side"], t["light"]["mean"]["p50"]  # noqa: B018 - fail here, not in the middle of a frame
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FerError(
            f"{path}: not a face template ({type(e).__name__}: {e}); rebuild it with face-template"
        ) from None
    return t


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity transform (rotation, uniform scale, shift) taking ``src`` points closest to ``dst`` in
    least squares (Umeyama's closed form, no reflection)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    var = (a**2).sum() / len(src)
    if var < 1e-9:
        raise FerError("face landmarks coincide: cannot align")
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    r = u @ d @ vt
    scale = (sig * np.diag(d)).sum() / var
    return np.hstack([scale * r, (md - scale * r @ ms)[:, None]])


def warp(gray: np.ndarray, m: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """``gray`` warped by ``m`` (image -> crop pixels) into a size x size crop, without aliasing: a face much
    larger than the crop is first shrunk with area averaging around its window, then warped at about 1:1."""
    m = np.asarray(m, np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    src = gray
    if scale < 0.75:
        inv = cv2.invertAffineTransform(m)
        corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64) @ inv.T
        pad = 2.0 / scale
        x0, y0 = (max(0, int(np.floor(v - pad))) for v in corners.min(0))
        x1, y1 = (int(np.ceil(v + pad)) for v in corners.max(0))
        roi = gray[y0 : min(gray.shape[0], y1), x0 : min(gray.shape[1], x1)]
        if roi.size:
            k = scale
            size_k = (max(1, round(roi.shape[1] * k)), max(1, round(roi.shape[0] * k)))
            small = cv2.resize(roi, size_k, interpolation=cv2.INTER_AREA)
            kx, ky = small.shape[1] / roi.shape[1], small.shape[0] / roi.shape[0]
            # small pixel p -> image pixel (p + 0.5) / k - 0.5 + origin (OpenCV's pixel-centre convention)
            to_image = np.array([[1 / kx, 0, 0.5 / kx - 0.5 + x0], [0, 1 / ky, 0.5 / ky - 0.5 + y0], [0, 0, 1]])
            m = m @ to_image
            src = small
    return cv2.warpAffine(src, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def align_matrix(landmarks, template: dict | None = None) -> np.ndarray:
    """The image -> 48x48 transform that puts five landmarks on the template's."""
    t = template or load_template()
    return similarity(np.asarray(landmarks, np.float64).reshape(5, 2), np.asarray(t["landmarks"]))


def align_face(gray: np.ndarray, landmarks, template: dict | None = None) -> np.ndarray:
    """The 48x48 crop whose five landmarks sit where FER2013's training faces have theirs."""
    return warp(gray, align_matrix(landmarks, template))


def box_crop(gray: np.ndarray, box, template: dict | None = None) -> np.ndarray:
    """The 48x48 crop for a YuNet box alone: a square placed and sized on the box as FER2013's crops are on
    YuNet's boxes of the training faces (no rotation)."""
    b = (template or load_template())["box"]
    x, y, w, h = box
    side = b["side"] * h
    cx, cy = x + w / 2 + b["dx"] * h, y + h / 2 + b["dy"] * h
    k = IMAGE_SIZE / side
    m = np.array([[k, 0, IMAGE_SIZE / 2 - 0.5 - k * (cx - 0.5)], [0, k, IMAGE_SIZE / 2 - 0.5 - k * (cy - 0.5)]])
    return warp(gray, m)


def relight(crop: np.ndarray, mode: str = LIGHT_DEFAULT, template: dict | None = None) -> np.ndarray:
    """The crop with its brightness and contrast brought to the training faces' (see LIGHT_MODES)."""
    if mode == "none":
        return crop
    if mode == "equalize":
        return cv2.equalizeHist(crop)
    if mode not in LIGHT_MODES:
        raise FerError(f"unknown light mode {mode!r}; choose one of {', '.join(LIGHT_MODES)}")
    light = (template or load_template())["light"]
    f = crop.astype(np.float32)
    mean, sd = float(f.mean()), float(f.std())
    if mode == "match":
        new_mean, new_sd = light["mean"]["p50"], light["std"]["p50"]
    else:
        new_mean = float(np.clip(mean, light["mean"]["p10"], light["mean"]["p90"]))
        new_sd = float(np.clip(sd, light["std"]["p10"], light["std"]["p90"]))
        if new_mean == mean and new_sd == sd:
            return crop
    out = (f - mean) * (new_sd / max(sd, 1.0)) + new_mean
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def mirror_points(pts: np.ndarray) -> np.ndarray:
    """Landmarks of the horizontally mirrored 48x48 face (pixel centres: x -> 47 - x, left and right swapped)."""
    m = np.asarray(pts, np.float64)[list(_MIRROR)].copy()
    m[:, 0] = IMAGE_SIZE - 1 - m[:, 0]
    return m


def measure_template(faces: np.ndarray, detector, upscale: int = 4, pad: int = 48, say=print) -> dict:
    """Measure FER2013's face geometry and light from training faces (N, 48, 48) uint8.

    Each face is enlarged ``upscale`` times (cubic) with a ``pad``-pixel replicated border (YuNet looks for faces
    in scenes, not faces filling the image), YuNet's best face gives its landmarks and box back in 48x48 pixels.
    The landmarks' per-coordinate medians, averaged with their mirror image (training flips faces, so the template
    is left-right symmetric), are the template; the box-to-crop geometry is the median over faces; the light is the
    percentiles of every face's pixel mean and standard deviation.
    """
    t0 = time.perf_counter()
    n, big = len(faces), IMAGE_SIZE * upscale
    pts, boxes = [], []
    for i, face in enumerate(faces):
        img = cv2.copyMakeBorder(cv2.resize(face, (big, big), interpolation=cv2.INTER_CUBIC), *[pad] * 4,
                                 cv2.BORDER_REPLICATE)  # fmt: skip
        found = detector.detect(img, max_side=img.shape[1])
        if found and found[0].landmarks:
            back = lambda v: (v - pad + 0.5) / upscale - 0.5  # enlarged pixel -> 48x48 pixel (centres)
            pts.append([[back(x), back(y)] for x, y in found[0].landmarks])
            x, y, w, h = found[0].box
            boxes.append([back(x + w / 2), back(y + h / 2), h / upscale])
        if say and (i + 1) % 2000 == 0:
            say(f"  {i + 1:,}/{n:,} faces, {len(pts):,} found")
    if len(pts) < max(10, n // 4):
        raise FerError(f"the detector found only {len(pts)} of {n} training faces: no template")
    p, b = np.asarray(pts), np.asarray(boxes)
    med = np.median(p, 0)
    template = (med + mirror_points(med)) / 2
    mad = np.median(np.abs(p - med), 0)
    c = (IMAGE_SIZE - 1) / 2
    f = faces.reshape(n, -1).astype(np.float32)
    pct = lambda v: {f"p{q}": round(float(np.percentile(v, q)), 2) for q in (5, 10, 25, 50, 75, 90, 95)}
    return {
        "landmarks": np.round(template, 3).tolist(),
        "landmark_names": ["right eye", "left eye", "nose tip", "mouth right", "mouth left"],
        "landmark_mad": np.round(mad, 3).tolist(),
        "box": {
            "side": round(float(np.median(IMAGE_SIZE / b[:, 2])), 4),  # crop side / box height
            "dx": round(float(np.median((c - b[:, 0]) / b[:, 2])), 4),  # crop centre - box centre, / box height
            "dy": round(float(np.median((c - b[:, 1]) / b[:, 2])), 4),
        },
        "light": {"mean": pct(f.mean(1)), "std": pct(f.std(1))},
        "measured": {
            "faces": n,
            "found": len(pts),
            "how": f"training faces enlarged {upscale}x (cubic) with a {pad}-px replicated border, YuNet's best "
            "face; landmarks: per-coordinate median averaged with its mirror image; light: over all faces given",
            "date": datetime.date.today().isoformat(),
            "seconds": round(time.perf_counter() - t0, 1),
        },
    }
