"""Finding faces: YuNet (a small CNN with five landmarks per face, the default) or OpenCV's Haar cascade.

Both answer the same question the same way: :meth:`detect` takes an RGB or gray uint8 image and returns
:class:`Detection` boxes in its pixels, best first. YuNet also gives a score and five landmarks (the eyes,
the nose tip, the mouth corners), which :mod:`fer_core.serving.align` uses to crop each face the way FER2013's
faces are cropped. The Haar cascade has neither; it stays as an option and as the fallback when YuNet's file is
missing or damaged (:func:`get_detector` says so in its ``note``).

YuNet's file (``assets/yunet/``, 317 KB ONNX, Apache-2.0, provenance in the README beside it) runs in OpenCV's
own DNN module (``cv2.FaceDetectorYN``): no new dependency. An OpenCV detector object is not safe to share
between threads (it keeps its input size), so each thread gets its own.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fer_core.common import FerError

ASSETS = Path(__file__).resolve().parent / "assets"
YUNET_FILE = ASSETS / "yunet" / "yunet_n_640_640.onnx"
DETECTORS = ("yunet", "haar")

#: YuNet searches the image at full resolution up to this longer side (photos are loaded at most 1920 px long).
#: A smaller copy does not pay: measured on frames of FER2013 public-split faces 40-60 px high (score 0.5), YuNet
#: found 77% of them at 640x480, 57% at 480x360 and 14% at 320x240 (it needs faces of about 40 px in its input).
DETECT_MAX_SIDE = 1920
#: YuNet's score needed to accept a face. Chosen on 600 frames built from FER2013's public split (six conditions,
#: clutter, the eval-faces generator): at 0.5, 95.1% of the faces found at 0.3 are kept and 6 false faces appear
#: (1.0 per 100 frames); at 0.6, 92.3% and 2 (0.33 per 100); at 0.7, 86.8% and 2.
YUNET_SCORE = 0.6
YUNET_NMS = 0.3
#: At most this many candidate faces enter YuNet's non-maximum suppression.
YUNET_TOP_K = 500
#: The Haar cascade searches a copy at most this long (as before YuNet: a 640x480 frame at 320x240).
HAAR_MAX_SIDE = 320
#: While tracking, a region is searched at a scale that makes its smallest expected face this many pixels
#: (a fraction of a full search's cost; how reliably it finds faces at this scale is not measured separately:
#: the full search every few frames catches what it misses).
ROI_FACE_PX = 64
#: Haar detections needed to accept a face: 8 (not OpenCV's usual 3-5) drops false faces on clothing and
#: backgrounds (seen on a test photo) while real faces, which gather dozens, are kept.
MIN_NEIGHBORS = 8


@dataclass(frozen=True)
class Detection:
    box: tuple[int, int, int, int]  # x, y, width, height in the image's pixels
    score: float | None = None  # the detector's confidence (YuNet: 0-1; Haar gives none)
    landmarks: tuple[tuple[float, float], ...] | None = None  # YuNet: right eye, left eye, nose, mouth right, left

    def to_dict(self) -> dict:
        lm = [[round(x, 2), round(y, 2)] for x, y in self.landmarks] if self.landmarks else None
        return {"box": list(self.box), "score": None if self.score is None else round(self.score, 4), "landmarks": lm}


def _scaled(image: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1:
        return image
    h, w = image.shape[:2]
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _gray(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image[:, :, :3], cv2.COLOR_RGB2GRAY)


class HaarDetector:
    """OpenCV's frontal-face Haar cascade: upright, frontal, well-lit faces only; no score, no landmarks."""

    name = "haar"
    note: str | None = None

    def __init__(self) -> None:
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise FerError(f"OpenCV's Haar face detector could not be loaded from {path}")

    def detect(
        self, image: np.ndarray, max_side: int | None = None, sizes: tuple[int, int] | None = None
    ) -> list[Detection]:
        """Faces in ``image``, largest first, found on a copy at most ``max_side`` long (default HAAR_MAX_SIDE).
        ``sizes``: (smallest, largest) face side to look for, in the image's pixels (default: from 12% of the
        shorter side up); a narrower range searches fewer scales."""
        gray = _gray(image)
        s = min(1.0, (max_side or HAAR_MAX_SIDE) / max(gray.shape))
        small = cv2.equalizeHist(_scaled(gray, s))
        min_face, max_face = max(20, int(min(small.shape) * 0.12)), min(small.shape)
        if sizes:
            min_face, max_face = max(20, int(sizes[0] * s)), max(21, min(max_face, int(sizes[1] * s)))
        found = self._cascade.detectMultiScale(
            small, scaleFactor=1.1, minNeighbors=MIN_NEIGHBORS, minSize=(min_face, min_face), maxSize=(max_face,) * 2
        )
        boxes = [tuple(int(round(v / s)) for v in b) for b in (found if len(found) else [])]
        return [Detection(b) for b in sorted(boxes, key=lambda b: -b[2] * b[3])]


class YuNetDetector:
    """YuNet (libfacedetection, 75,856 parameters): faces at any angle and light, with score and five landmarks."""

    name = "yunet"
    note: str | None = None

    def __init__(self, path: str | Path = YUNET_FILE, score: float = YUNET_SCORE) -> None:
        self.path, self.score = Path(path), score
        self._local = threading.local()
        check_model_file(self.path)
        try:  # a damaged file can load and then fail on its first image: try one now
            self._net(64, 64).detect(np.zeros((64, 64, 3), np.uint8))
        except cv2.error as e:
            raise FerError(f"{self.path}: OpenCV cannot run this face detector ({_first_line(e)})") from None

    def _net(self, w: int, h: int):
        net = getattr(self._local, "net", None)
        if net is None:
            try:
                net = cv2.FaceDetectorYN.create(str(self.path), "", (w, h), self.score, YUNET_NMS, YUNET_TOP_K)
            except cv2.error as e:
                raise FerError(f"{self.path}: not a face detector OpenCV can load ({_first_line(e)})") from None
            self._local.net, self._local.size = net, (w, h)
        if self._local.size != (w, h):
            net.setInputSize((w, h))
            self._local.size = (w, h)
        return net

    def detect(
        self, image: np.ndarray, max_side: int | None = None, sizes: tuple[int, int] | None = None
    ) -> list[Detection]:
        """Faces in ``image`` with score and landmarks, best first, found on a copy at most ``max_side`` pixels
        long (default DETECT_MAX_SIDE). ``sizes``: (smallest, largest) expected face side in the image's pixels:
        the copy is then only as large as the smallest face needs (tracking knows its faces' sizes)."""
        h, w = image.shape[:2]
        s = min(1.0, (max_side or DETECT_MAX_SIDE) / max(h, w))
        if sizes:
            s = min(s, ROI_FACE_PX / max(1, sizes[0]))
        small = _scaled(image, s)
        bgr = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR) if small.ndim == 2 else cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
        sh, sw = bgr.shape[:2]
        _, faces = self._net(sw, sh).detect(bgr)
        if faces is None:
            return []
        fx, fy = w / sw, h / sh
        out = []
        for f in faces[np.argsort(-faces[:, 14])]:
            x0, y0 = max(0.0, f[0] * fx), max(0.0, f[1] * fy)
            x1, y1 = min(float(w), (f[0] + f[2]) * fx), min(float(h), (f[1] + f[3]) * fy)
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            box = (int(round(x0)), int(round(y0)), int(round(x1 - x0)), int(round(y1 - y0)))
            pts = tuple((float(f[4 + 2 * i] * fx), float(f[5 + 2 * i] * fy)) for i in range(5))
            out.append(Detection(box, float(f[14]), pts))
        return out


def check_model_file(path: Path) -> None:
    """Refuse a missing, empty or altered detector file, naming it (a ``SHA256SUMS`` beside it is checked)."""
    if not path.is_file():
        raise FerError(f"{path}: face detector file not found")
    data = path.read_bytes()
    if not data:
        raise FerError(f"{path}: face detector file is empty")
    sums = path.parent / "SHA256SUMS"
    if sums.is_file():
        expected = dict(line.split()[::-1] for line in sums.read_text().splitlines() if len(line.split()) == 2)
        if path.name in expected and hashlib.sha256(data).hexdigest() != expected[path.name]:
            raise FerError(f"{path}: face detector file is damaged (its SHA-256 does not match {sums.name})")


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


@functools.lru_cache(maxsize=8)
def get_detector(name: str = "yunet", path: str | None = None) -> YuNetDetector | HaarDetector:
    """The named detector, loaded once per process. YuNet falls back to Haar when its file is missing or
    damaged; the returned detector's ``note`` then says what happened (show it to the user)."""
    if name == "haar":
        return HaarDetector()
    if name != "yunet":
        raise FerError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTORS)}")
    try:
        return YuNetDetector(path or YUNET_FILE)
    except FerError as e:
        haar = HaarDetector()
        haar.note = f"{e}; finding faces with OpenCV's Haar cascade instead (it misses tilted, dim and small faces)"
        return haar
