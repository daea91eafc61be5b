"""Faces in, expressions out: detection, cropping, and prediction with several models side by side.

Returns plain dataclasses (boxes, labels, probabilities, milliseconds) that any front end can draw:
the CLI's ``predict``, the dashboard's Try-it page and the benchmark all call :func:`predict`.

Faces are found by YuNet (or the Haar cascade, :mod:`~fer_core.serving.detection`) on a downscaled copy of the
frame, and each is cut from the full-resolution frame, aligned on its landmarks to FER2013's face geometry and
brought to its light (:mod:`~fer_core.serving.align`) for classification.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from fer_core.common import EMOTIONS, FerError
from fer_core.data.augment import normalize
from fer_core.data.images import to_gray48, to_gray_u8
from fer_core.data.synthetic import draw_face
from fer_core.serving.align import LIGHT_DEFAULT, align_face, box_crop, relight, to_u8
from fer_core.serving.detection import Detection, get_detector
from fer_core.store.loading import LoadedModel

#: Larger images are shrunk to this longer side on load (a 50-megapixel photo gains nothing).
LOAD_MAX_SIDE = 1920
#: Haar boxes (no landmarks): share of the box added on each side before cropping (FER2013 crops include some
#: forehead and chin).
CROP_MARGIN = 0.08
#: An image's faces classified at most (the best found).
MAX_FACES = 8
#: How a face with landmarks is cut: "aligned" (on the landmarks, the default) or "box" (a square on its box).
CROPS = ("aligned", "box")


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
    crop: np.ndarray | None = field(default=None, repr=False)  # the 48x48 input the models saw, rounded to uint8
    score: float | None = None  # the detector's confidence (None: Haar, or the whole image)
    landmarks: tuple[tuple[float, float], ...] | None = None  # five points (eyes, nose, mouth corners), if found
    aligned: bool = False  # True when the crop was aligned on the landmarks


@dataclass
class PredictResult:
    faces: list[Face]
    image_size: tuple[int, int]  # width, height
    detect_ms: float
    whole_image: bool = False  # True when the whole image was used as one face
    message: str | None = None  # e.g. "no face found"
    detector: str | None = None  # "yunet" or "haar" (None: the whole image was used)
    note: str | None = None  # e.g. why the Haar cascade stands in for YuNet

    def to_dict(self) -> dict:
        return {
            "image_size": list(self.image_size),
            "detect_ms": round(self.detect_ms, 3),
            "whole_image": self.whole_image,
            "message": self.message,
            "detector": self.detector,
            "note": self.note,
            "faces": [
                {
                    "box": list(f.box),
                    "score": None if f.score is None else round(f.score, 4),
                    "landmarks": [[round(x, 2), round(y, 2)] for x, y in f.landmarks] if f.landmarks else None,
                    "aligned": f.aligned,
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


def crop_face(gray: np.ndarray, box: tuple[int, int, int, int], margin: float = CROP_MARGIN) -> np.ndarray:
    """The 48x48 model input for a Haar box (no landmarks): the box and a margin, cut from the full image."""
    x, y, w, h = box
    m = int(round(margin * max(w, h)))
    H, W = gray.shape
    x0, y0, x1, y1 = max(0, x - m), max(0, y - m), min(W, x + w + m), min(H, y + h + m)
    return to_gray48(gray[y0:y1, x0:x1])


def face_input(gray: np.ndarray, det: Detection, crop: str = "aligned", light: str = LIGHT_DEFAULT) -> np.ndarray:
    """The 48x48 model input for one detection: aligned on its landmarks when it has them (``crop="aligned"``),
    else a square on its box (YuNet) or the box with a margin (Haar); then the light step (see ``relight``).
    Float64 gray levels 0-255, not rounded (``to_u8`` rounds it to show): the browser's live mode computes the
    same numbers, so its probabilities equal the server's."""
    if crop not in CROPS:
        raise FerError(f"unknown crop {crop!r}; choose one of {', '.join(CROPS)}")
    if det.landmarks is None:
        face = crop_face(gray, det.box).astype(np.float64)
    elif crop == "aligned":
        face = align_face(gray, det.landmarks, exact=True)
    else:
        face = box_crop(gray, det.box, exact=True)
    return relight(face, light)


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


def predict(
    image,
    models: list[LoadedModel],
    whole_image: bool = False,
    max_faces: int = MAX_FACES,
    detector: str = "yunet",
    crop: str = "aligned",
    light: str = LIGHT_DEFAULT,
    detect_size: int | None = None,
) -> PredictResult:
    """Find faces in ``image`` (path, bytes or array) and classify each with every model.

    Args:
        whole_image: skip detection and treat the whole image as one face (for already-cropped faces).
        max_faces: classify at most this many faces (the best found).
        detector: "yunet" (falls back to "haar", with a note, when its file is unusable) or "haar".
        crop: "aligned" on the landmarks, or "box" (see :func:`face_input`).
        light: the light step's mode (see :data:`fer_core.serving.align.LIGHT_MODES`).
        detect_size: search a copy at most this long (default: the detector's own; YuNet: full size up to
            1920 px). Smaller is faster and misses small faces (YuNet needs about 40 px in the copy).
    """
    arr = load_image(image)
    gray = to_gray_u8(arr)
    h, w = gray.shape
    t = time.perf_counter()
    if whole_image:
        dets, det = [Detection((0, 0, w, h))], None
    else:
        det = get_detector(detector)
        dets = det.detect(arr, detect_size)[:max_faces]
    detect_ms = (time.perf_counter() - t) * 1000
    name, note = (det.name, det.note) if det else (None, None)
    if not dets:
        return PredictResult([], (w, h), detect_ms, message="no face found", detector=name, note=note)
    crops = np.stack(
        [
            relight(to_gray48(gray).astype(np.float64), light) if whole_image else face_input(gray, d, crop, light)
            for d in dets
        ]  # fmt: skip
    )
    preds = classify(crops, models) if models else [[] for _ in dets]
    faces = [
        Face(d.box, p, to_u8(c), d.score, d.landmarks, aligned=crop == "aligned" and d.landmarks is not None)
        for d, p, c in zip(dets, preds, crops)
    ]
    return PredictResult(faces, (w, h), detect_ms, whole_image=whole_image, detector=name, note=note)


def demo_frame(expression: int = 3, seed: int = 1, size: tuple[int, int] = (640, 480), face: int = 200) -> np.ndarray:
    """A gray webcam-sized frame with one drawn face in it (for tests, the benchmark and demos).

    With the default seed, the Haar cascade finds the face of every expression and YuNet that of all but fear
    and surprise; with ``seed=3`` YuNet finds every expression's face (and Haar none: it wants more contrast).
    """
    rng = np.random.default_rng(seed)
    w, h = size
    frame = np.full((h, w), 128, np.uint8)
    y0, x0 = (h - face) // 2, (w - face) // 2
    frame[y0 : y0 + face, x0 : x0 + face] = draw_face(expression, rng, size=face, intensity=1.0)
    return frame
