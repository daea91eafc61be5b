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
    least squares, without reflection (Umeyama's solution, in its closed form for the plane:
    ``s·cos = Σ a·b / Σ|a|²``, ``s·sin = Σ a×b / Σ|a|²`` on the centred points). Written as plain sums so the
    browser's copy of this path (``pages/browser_live/pipeline.js``) computes the same numbers."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    var = float((a**2).sum())
    if var / len(src) < 1e-9:
        raise FerError("face landmarks coincide: cannot align")
    c = float((a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1]).sum()) / var
    s = float((a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum()) / var
    tx = md[0] - (c * ms[0] - s * ms[1])
    ty = md[1] - (s * ms[0] + c * ms[1])
    return np.array([[c, -s, tx], [s, c, ty]])


def invert_affine(m: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine transform (OpenCV's ``invertAffineTransform`` formula)."""
    m = np.asarray(m, np.float64)
    d = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    d = 1.0 / d if d != 0 else 0.0
    a11, a22, a12, a21 = m[1, 1] * d, m[0, 0] * d, -m[0, 1] * d, -m[1, 0] * d
    b1 = -a11 * m[0, 2] - a12 * m[1, 2]
    b2 = -a21 * m[0, 2] - a22 * m[1, 2]
    return np.array([[a11, a12, b1], [a21, a22, b2]])


def area_shrink(img: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """``img`` (2-D) shrunk to out_h x out_w by exact area averaging (each output pixel the mean of the input
    area it covers, fractional pixels weighted), in float64 and not rounded (the warp that follows rounds once)."""
    out = np.asarray(img, np.float64)
    for axis, n_out in ((0, out_h), (1, out_w)):
        n = out.shape[axis]
        k = n_out / n
        edges = np.arange(n_out + 1) / k  # output pixel edges, in input pixels
        v = np.moveaxis(out, axis, 0)
        cs = np.concatenate([np.zeros((1,) + v.shape[1:]), np.cumsum(v, 0)])
        fl = np.minimum(np.floor(edges).astype(np.int64), n - 1)
        frac = (edges - fl)[:, None]
        integral = cs[fl] + frac * v[fl]  # the input's running integral at each edge
        out = np.moveaxis((integral[1:] - integral[:-1]) * k, 0, axis)
    return out


def sample_bilinear(src: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """``src`` (2-D) at the points (xs, ys) in its pixel coordinates (pixel centres at integers), bilinear,
    the border replicated."""
    h, w = src.shape
    x0, y0 = np.floor(xs), np.floor(ys)
    fx, fy = xs - x0, ys - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    xa, xb = np.clip(x0, 0, w - 1), np.clip(x0 + 1, 0, w - 1)
    ya, yb = np.clip(y0, 0, h - 1), np.clip(y0 + 1, 0, h - 1)
    top = (1 - fx) * src[ya, xa] + fx * src[ya, xb]
    bottom = (1 - fx) * src[yb, xa] + fx * src[yb, xb]
    return (1 - fy) * top + fy * bottom


def warp(gray: np.ndarray, m: np.ndarray, size: int = IMAGE_SIZE, exact: bool = False) -> np.ndarray:
    """``gray`` warped by ``m`` (image -> crop pixels) into a size x size crop, without aliasing: a face much
    larger than the crop is first shrunk by area averaging around its window, then sampled at about 1:1.

    Plain float64 arithmetic (bilinear, border replicated), not OpenCV's fixed-point ``warpAffine``: the
    browser's live mode repeats these exact steps. ``exact``: the float64 crop as computed (what the models are
    given: no rounding, so a landmark that moves by a hair moves the input by a hair, on either side), else
    rounded to uint8 (to show or save)."""
    m = np.asarray(m, np.float64)
    inv = invert_affine(m)
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    xs = inv[0, 0] * u + inv[0, 1] * v + inv[0, 2]  # crop pixel -> image pixel
    ys = inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]
    src = np.asarray(gray)
    scale = float(np.sqrt(abs(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0])))
    if scale < 0.75:
        pad = 2.0 / scale
        cx = [inv[0, 0] * a + inv[0, 1] * b + inv[0, 2] for a, b in ((0, 0), (size, 0), (0, size), (size, size))]
        cy = [inv[1, 0] * a + inv[1, 1] * b + inv[1, 2] for a, b in ((0, 0), (size, 0), (0, size), (size, size))]
        x0, y0 = max(0, int(np.floor(min(cx) - pad))), max(0, int(np.floor(min(cy) - pad)))
        x1 = min(gray.shape[1], int(np.ceil(max(cx) + pad)))
        y1 = min(gray.shape[0], int(np.ceil(max(cy) + pad)))
        if x1 > x0 and y1 > y0:
            rw, rh = x1 - x0, y1 - y0
            sw, sh = max(1, round(rw * scale)), max(1, round(rh * scale))
            src = area_shrink(gray[y0:y1, x0:x1], sw, sh)
            kx, ky = sw / rw, sh / rh
            # image pixel -> small pixel: (x - x0 + 0.5) * k - 0.5 (pixel centres)
            xs, ys = (xs - x0 + 0.5) * kx - 0.5, (ys - y0 + 0.5) * ky - 0.5
    out = np.clip(sample_bilinear(np.asarray(src, np.float64), xs, ys), 0, 255)
    return out if exact else to_u8(out)


def to_u8(crop: np.ndarray) -> np.ndarray:
    """A crop as uint8 pixels, rounded (half up): to show, save or compare with stored images."""
    if crop.dtype == np.uint8:
        return crop
    return np.clip(np.floor(np.asarray(crop, np.float64) + 0.5), 0, 255).astype(np.uint8)


def align_matrix(landmarks, template: dict | None = None) -> np.ndarray:
    """The image -> 48x48 transform that puts five landmarks on the template's."""
    t = template or load_template()
    return similarity(np.asarray(landmarks, np.float64).reshape(5, 2), np.asarray(t["landmarks"]))


def align_face(gray: np.ndarray, landmarks, template: dict | None = None, exact: bool = False) -> np.ndarray:
    """The 48x48 crop whose five landmarks sit where FER2013's training faces have theirs (``exact``: see warp)."""
    return warp(gray, align_matrix(landmarks, template), exact=exact)


def box_crop(gray: np.ndarray, box, template: dict | None = None, exact: bool = False) -> np.ndarray:
    """The 48x48 crop for a YuNet box alone: a square placed and sized on the box as FER2013's crops are on
    YuNet's boxes of the training faces (no rotation)."""
    b = (template or load_template())["box"]
    x, y, w, h = box
    side = b["side"] * h
    cx, cy = x + w / 2 + b["dx"] * h, y + h / 2 + b["dy"] * h
    k = IMAGE_SIZE / side
    m = np.array([[k, 0, IMAGE_SIZE / 2 - 0.5 - k * (cx - 0.5)], [0, k, IMAGE_SIZE / 2 - 0.5 - k * (cy - 0.5)]])
    return warp(gray, m, exact=exact)


def relight(crop: np.ndarray, mode: str = LIGHT_DEFAULT, template: dict | None = None) -> np.ndarray:
    """The crop with its brightness and contrast brought to the training faces' (see LIGHT_MODES): uint8 in,
    uint8 out (rounded); a float crop (``warp(exact=True)``) stays float, unrounded."""
    if mode == "none":
        return crop
    if mode == "equalize":  # a histogram of pixel levels: on the rounded crop
        return cv2.equalizeHist(to_u8(crop))
    if mode not in LIGHT_MODES:
        raise FerError(f"unknown light mode {mode!r}; choose one of {', '.join(LIGHT_MODES)}")
    light = (template or load_template())["light"]
    f = crop.astype(np.float64)  # float64 sums: the browser's copy of this step computes the same
    mean, sd = float(f.mean()), float(f.std())
    if mode == "match":
        new_mean, new_sd = light["mean"]["p50"], light["std"]["p50"]
    else:
        new_mean = float(np.clip(mean, light["mean"]["p10"], light["mean"]["p90"]))
        new_sd = float(np.clip(sd, light["std"]["p10"], light["std"]["p90"]))
        if new_mean == mean and new_sd == sd:
            return crop
    out = np.clip((f - mean) * (new_sd / max(sd, 1.0)) + new_mean, 0, 255)
    return to_u8(out) if crop.dtype == np.uint8 else out


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
