"""Faces in, expressions out: detection, cropping, and prediction with several models side by side.

Returns plain dataclasses (boxes, labels, probabilities, milliseconds) that any front end can draw:
the CLI's ``predict``, the dashboard's Try-it page and the benchmark all call :func:`predict`.

Detection runs OpenCV's Haar cascade on a downscaled copy of the frame (faster: a 640x480 frame is
searched at 320x240), and each face is cropped from the full-resolution frame for classification.
"""

from __future__ import annotations

import functools
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

from fer_core.common import EMOTIONS, FerError
from fer_core.data.augment import normalize
from fer_core.data.images import to_gray48, to_gray_u8
from fer_core.data.synthetic import draw_face
from fer_core.store.loading import LoadedModel

#: Detection runs on a copy whose longer side is at most this many pixels.
DETECT_MAX_SIDE = 320
#: Larger images are shrunk to this longer side on load (a 50-megapixel photo gains nothing).
LOAD_MAX_SIDE = 1920
#: Haar detections needed to accept a face: 8 (not OpenCV's usual 3-5) drops false faces on clothing and
#: backgrounds (seen on a test photo) while real faces, which gather dozens, are kept.
MIN_NEIGHBORS = 8
#: Share of the face box added on each side before cropping (FER2013 crops include some forehead/chin).
CROP_MARGIN = 0.08


@dataclass
class ModelPrediction:
    model: str  # run id or file name
    label: str  # the most probable expression
    probabilities: dict[str, float]  # every expression, summing to 1
    ms: float  # this model's time for all faces of the image
    runtime: str = "torch"  # what computed it: "torch" or "onnxruntime"


@dataclass
class Face:
    box: tuple[int, int, int, int]  # x, y, width, height in the original image's pixels
    predictions: list[ModelPrediction] = field(default_factory=list)
    crop: np.ndarray | None = field(default=None, repr=False)  # the 48x48 input the models saw


@dataclass
class PredictResult:
    faces: list[Face]
    image_size: tuple[int, int]  # width, height
    detect_ms: float
    whole_image: bool = False  # True when the whole image was used as one face
    message: str | None = None  # e.g. "no face found"

    def to_dict(self) -> dict:
        return {
            "image_size": list(self.image_size),
            "detect_ms": round(self.detect_ms, 3),
            "whole_image": self.whole_image,
            "message": self.message,
            "faces": [
                {
                    "box": list(f.box),
                    "predictions": [
                        {
                            "model": p.model,
                            "label": p.label,
                            "probabilities": {k: round(v, 5) for k, v in p.probabilities.items()},
                            "ms": round(p.ms, 3),
                            "runtime": p.runtime,
                        }
                        for p in f.predictions
                    ],
                }
                for f in self.faces
            ],
        }


def load_image(source, name: str = "image") -> np.ndarray:
    """Read a path, bytes or file-like object as an RGB or gray uint8 array.

    Handles EXIF rotation, palette/RGBA/CMYK/16-bit images, and shrinks huge images; anything that is
    not an image gets a FerError naming it.
    """
    if isinstance(source, np.ndarray):
        return source
    if isinstance(source, (str, Path)):
        name = str(source)
        if not Path(source).is_file():
            raise FerError(f"{name}: file not found")
        source = Path(source).read_bytes()
    if hasattr(source, "read"):
        source = source.read()
    if not source:
        raise FerError(f"{name}: empty file")
    try:
        with Image.open(io.BytesIO(source)) as img:
            img.draft("RGB", (LOAD_MAX_SIDE, LOAD_MAX_SIDE))  # JPEG: decode at reduced size when huge
            img = ImageOps.exif_transpose(img)
            if max(img.size) > LOAD_MAX_SIDE:
                img.thumbnail((LOAD_MAX_SIDE, LOAD_MAX_SIDE))
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img).astype(np.float32)
                return (arr / max(1.0, float(arr.max())) * 255).astype(np.uint8)
            return np.asarray(img.convert("RGB"))
    except Image.DecompressionBombError:
        raise FerError(f"{name}: image too large to open safely") from None
    except Exception as e:
        raise FerError(f"{name}: not a readable image ({type(e).__name__}: {e})") from None


@functools.lru_cache(maxsize=1)
def _cascade():
    path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
    c = cv2.CascadeClassifier(str(path))
    if c.empty():
        raise FerError(f"OpenCV's face detector could not be loaded from {path} (opencv-python-headless 4.x ships it)")
    return c


def detect_faces(
    gray: np.ndarray, max_side: int = DETECT_MAX_SIDE, sizes: tuple[int, int] | None = None
) -> list[tuple[int, int, int, int]]:
    """Face boxes (x, y, w, h) in ``gray``'s pixels, largest first, found on a downscaled copy.

    Args:
        sizes: (smallest, largest) face side to look for, in ``gray``'s pixels (default: from 12% of the
            shorter side up); a narrower range searches fewer scales (the live path knows its faces' sizes).
    """
    h, w = gray.shape
    s = min(1.0, max_side / max(h, w))
    small = cv2.resize(gray, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA) if s < 1 else gray
    small = cv2.equalizeHist(small)
    min_face = max(20, int(min(small.shape) * 0.12))
    max_face = min(small.shape)
    if sizes:
        min_face, max_face = max(20, int(sizes[0] * s)), max(21, min(max_face, int(sizes[1] * s)))
    found = _cascade().detectMultiScale(
        small,
        scaleFactor=1.1,
        minNeighbors=MIN_NEIGHBORS,
        minSize=(min_face, min_face),
        maxSize=(max_face, max_face),
    )
    boxes = [tuple(int(round(v / s)) for v in b) for b in (found if len(found) else [])]
    return sorted(boxes, key=lambda b: -b[2] * b[3])


def crop_face(gray: np.ndarray, box: tuple[int, int, int, int], margin: float = CROP_MARGIN) -> np.ndarray:
    """The 48x48 model input for a face box, cut from the full-resolution gray image."""
    x, y, w, h = box
    m = int(round(margin * max(w, h)))
    H, W = gray.shape
    x0, y0, x1, y1 = max(0, x - m), max(0, y - m), min(W, x + w + m), min(H, y + h + m)
    return to_gray48(gray[y0:y1, x0:x1])


@torch.inference_mode()
def classify(crops: np.ndarray, models: list[LoadedModel]) -> list[list[ModelPrediction]]:
    """Per face, each model's prediction; every model sees all faces as one batch."""
    x = normalize(torch.from_numpy(np.ascontiguousarray(crops)))
    per_face: list[list[ModelPrediction]] = [[] for _ in range(len(crops))]
    for lm in models:
        t = time.perf_counter()
        probs = torch.softmax(lm.model(x).float(), 1).numpy()  # a torch module or an ONNX Runtime session
        ms = (time.perf_counter() - t) * 1000
        for i, p in enumerate(probs):
            per_face[i].append(
                ModelPrediction(
                    model=lm.name,
                    label=EMOTIONS[int(p.argmax())],
                    probabilities={e: float(v) for e, v in zip(EMOTIONS, p)},
                    ms=ms,
                    runtime=lm.runtime,
                )
            )
    return per_face


def predict(image, models: list[LoadedModel], whole_image: bool = False, max_faces: int = 8) -> PredictResult:
    """Find faces in ``image`` (path, bytes or array) and classify each with every model.

    Args:
        whole_image: skip detection and treat the whole image as one face (for already-cropped faces).
        max_faces: classify at most this many faces (the largest).
    """
    arr = load_image(image)
    gray = to_gray_u8(arr)
    h, w = gray.shape
    t = time.perf_counter()
    if whole_image:
        boxes = [(0, 0, w, h)]
    else:
        boxes = detect_faces(gray)[:max_faces]
    detect_ms = (time.perf_counter() - t) * 1000
    if not boxes:
        return PredictResult([], (w, h), detect_ms, message="no face found")
    crops = np.stack([to_gray48(gray) if whole_image else crop_face(gray, b) for b in boxes])
    preds = classify(crops, models) if models else [[] for _ in boxes]
    faces = [Face(box=b, predictions=p, crop=c) for b, p, c in zip(boxes, preds, crops)]
    return PredictResult(faces, (w, h), detect_ms, whole_image=whole_image)


def demo_frame(expression: int = 3, seed: int = 1, size: tuple[int, int] = (640, 480), face: int = 200) -> np.ndarray:
    """A gray webcam-sized frame with one drawn face in it (for tests, the benchmark and demos).

    The default seed draws a face that OpenCV's Haar cascade finds.
    """
    rng = np.random.default_rng(seed)
    w, h = size
    frame = np.full((h, w), 128, np.uint8)
    y0, x0 = (h - face) // 2, (w - face) // 2
    frame[y0 : y0 + face, x0 : x0 + face] = draw_face(expression, rng, size=face, intensity=1.0)
    return frame
