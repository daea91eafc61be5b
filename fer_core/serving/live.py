"""Live video: every frame, find the faces, classify each with every model, draw the answer back on the frame.

:class:`LiveProcessor` is the whole frame path, with no UI in it: the Try-it page's Live mode calls
:meth:`LiveProcessor.process` in the WebRTC component's frame callback (its own thread), the benchmark calls it
in a loop, the tests call it on synthetic frames. The page reads :meth:`LiveProcessor.snapshot` a few times a
second; one lock guards what the two threads share.

Stable labels: faces are tracked from frame to frame by box overlap (IoU), and each track's probabilities are
an exponential moving average, ``p = a·p_previous + (1 − a)·p_now`` (``a`` = smoothing, 0 = off). Speed: while
faces are tracked the detector searches only around them, and the whole frame every few frames.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from fer_core.common import EMOTIONS, FerError
from fer_core.data.images import to_gray_u8
from fer_core.serving.align import LIGHT_DEFAULT
from fer_core.serving.detection import Detection, get_detector
from fer_core.serving.inference import classify, face_input
from fer_core.store.loading import LoadedModel

#: A detection continues a track when their boxes overlap at least this much (intersection over union).
MATCH_IOU = 0.3
#: A track not seen for this many frames is dropped (a face missed once or twice keeps its smoothing).
MAX_MISSED = 5
#: While faces are tracked, the detector searches only around them (their boxes grown by this share of their
#: size on each side), and the whole frame once every FULL_DETECT_EVERY frames (new faces) or when that fails.
ROI_MARGIN = 0.5
FULL_DETECT_EVERY = 6
#: A frame's faces classified at most (the best found).
MAX_FACES = 4
#: Frames the fps and the per-stage medians are computed over.
WINDOW = 60
#: Environment variable with the ICE servers (STUN/TURN) a dashboard served to other machines needs.
ICE_ENV = "FER_ICE_SERVERS"


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    """One face followed across frames, with each model's smoothed probabilities (FER order)."""

    id: int
    box: tuple[int, int, int, int]
    probs: dict[str, np.ndarray] = field(default_factory=dict)  # model name -> smoothed probabilities
    missed: int = 0
    seen: int = 1

    def update(self, model: str, p: np.ndarray, smoothing: float) -> np.ndarray:
        old = self.probs.get(model)
        self.probs[model] = p if old is None or smoothing <= 0 else smoothing * old + (1 - smoothing) * p
        return self.probs[model]


def match(tracks: list[Track], boxes: list[tuple[int, int, int, int]]) -> list[int | None]:
    """For each box, the index of the track it continues (greedy by overlap), or None for a new face."""
    pairs = sorted(((iou(t.box, b), ti, bi) for ti, t in enumerate(tracks) for bi, b in enumerate(boxes)), reverse=True)
    out: list[int | None] = [None] * len(boxes)
    used = set()
    for score, ti, bi in pairs:
        if score < MATCH_IOU:
            break
        if ti in used or out[bi] is not None:
            continue
        out[bi] = ti
        used.add(ti)
    return out


class LiveProcessor:
    """Detect, track, classify with every model, smooth and draw: one video frame at a time.

    Args:
        models: what classifies each face (one batched forward per model per frame).
        smoothing: the moving average's weight of the past, 0 (off) to 0.95.
        max_faces: classify at most this many faces per frame (the best found).
        draw: draw boxes, labels and the timing overlay on the returned frame.
        detector, crop, light: how faces are found and cut, as in :func:`~fer_core.serving.inference.predict`.
    """

    def __init__(
        self,
        models: list[LoadedModel],
        smoothing: float = 0.6,
        max_faces: int = MAX_FACES,
        draw: bool = True,
        detector: str = "yunet",
        crop: str = "aligned",
        light: str = LIGHT_DEFAULT,
    ) -> None:
        self.models = list(models)
        self.detector = get_detector(detector)
        self.crop, self.light = crop, light
        self.max_faces = max_faces
        self.draw = draw
        self._smoothing = 0.0
        self.set_smoothing(smoothing)
        self._lock = threading.Lock()
        self._tracks: list[Track] = []
        self._next_id = 1
        self._frames = 0
        self._faces = 0
        self._times: deque[float] = deque(maxlen=WINDOW)
        self._stages: dict[str, deque[float]] = {k: deque(maxlen=WINDOW) for k in ("detect", "classify", "total")}
        self._largest: dict | None = None
        self._roi_frames = 0  # frames whose faces were found by searching around the tracked ones only
        self._error: str | None = None

    def set_smoothing(self, value: float) -> None:
        if not 0 <= value < 1:
            raise FerError(f"smoothing must be in [0, 1), got {value}")
        self._smoothing = float(value)

    def process(self, frame: np.ndarray) -> np.ndarray:
        """The frame (RGB or gray uint8) with every face boxed and labelled by every model.

        Never raises: an error is kept for :meth:`snapshot` and the frame goes back as it came (a video
        callback that raised would stop the stream).
        """
        try:
            return self._process(frame)
        except Exception as e:  # noqa: BLE001 - shown on the page instead of killing the stream
            with self._lock:
                self._error = f"{type(e).__name__}: {e}"
            return frame

    def _process(self, frame: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        gray = to_gray_u8(frame)
        dets = self._detect(frame)[: self.max_faces]
        boxes = [d.box for d in dets]
        crops = [face_input(gray, d, self.crop, self.light) for d in dets]
        t1 = time.perf_counter()
        per_face = classify(np.stack(crops), self.models) if crops else []
        t2 = time.perf_counter()
        with self._lock:
            tracks = self._advance(boxes, per_face)
            self._frames += 1
            self._faces += len(boxes)
            now = time.perf_counter()
            self._times.append(now)
            self._stages["detect"].append((t1 - t0) * 1000)  # finding and cutting the faces
            self._stages["classify"].append((t2 - t1) * 1000)
            self._stages["total"].append((now - t0) * 1000)
            self._largest = self._describe(tracks[0]) if tracks else None
            overlay = self._overlay_text()
        if not self.draw:
            return frame
        return self._draw(frame, tracks, overlay)

    def _detect(self, frame: np.ndarray) -> list[Detection]:
        """Faces in the frame: around the tracked ones when there are some, else (and periodically) everywhere.

        Searching a region holding the known faces, shrunk so the smallest is about ``ROI_FACE_PX`` high, costs a
        fraction of a full search; the periodic full search finds faces that entered the frame.
        """
        with self._lock:
            known = [t.box for t in self._tracks if t.missed == 0]
            full = not known or self._frames % FULL_DETECT_EVERY == 0
        h, w = frame.shape[:2]
        if not full:
            x0 = min(b[0] - ROI_MARGIN * b[2] for b in known)
            y0 = min(b[1] - ROI_MARGIN * b[3] for b in known)
            x1 = max(b[0] + (1 + ROI_MARGIN) * b[2] for b in known)
            y1 = max(b[1] + (1 + ROI_MARGIN) * b[3] for b in known)
            x0, y0, x1, y1 = max(0, int(x0)), max(0, int(y0)), min(w, int(x1)), min(h, int(y1))
            roi = frame[y0:y1, x0:x1]
            sides = [max(b[2], b[3]) for b in known]  # a tracked face changes size slowly between frames
            found = self.detector.detect(roi, None, (int(0.7 * min(sides)), int(1.4 * max(sides))))
            if found:
                self._roi_frames += 1
                return [_shifted(d, x0, y0) for d in found]
        return self.detector.detect(frame)

    def _advance(self, boxes, per_face) -> list[Track]:
        """Match detections to tracks, update their smoothed probabilities; the tracks seen now, largest first."""
        owner = match(self._tracks, boxes)
        seen = []
        for bi, box in enumerate(boxes):
            if owner[bi] is None:
                t = Track(self._next_id, box)
                self._next_id += 1
                self._tracks.append(t)
            else:
                t = self._tracks[owner[bi]]
                t.box, t.missed, t.seen = box, 0, t.seen + 1
            for pred in per_face[bi]:
                p = np.array([pred.probabilities[e] for e in EMOTIONS])
                t.update(pred.model, p, self._smoothing)
            seen.append(t)
        for t in self._tracks:
            if t not in seen:
                t.missed += 1
        self._tracks = [t for t in self._tracks if t.missed <= MAX_MISSED]
        return sorted(seen, key=lambda t: -t.box[2] * t.box[3])

    def _describe(self, t: Track) -> dict:
        return {
            "track": t.id,
            "box": list(t.box),
            "models": {
                m: {"label": EMOTIONS[int(p.argmax())], "probabilities": dict(zip(EMOTIONS, map(float, p)))}
                for m, p in t.probs.items()
            },
        }

    def _overlay_text(self) -> str:
        s = self._stats()
        return f"{s['fps']:.1f} fps | detect {s['detect_ms']:.1f} ms | classify {s['classify_ms']:.1f} ms"

    def _stats(self) -> dict:
        t = self._times
        fps = (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0

        def med(k: str) -> float:
            return float(np.median(self._stages[k])) if self._stages[k] else 0.0

        return {"fps": fps, "detect_ms": med("detect"), "classify_ms": med("classify"), "total_ms": med("total")}

    def last_ms(self) -> dict[str, float]:
        """The last frame's milliseconds per stage (detect, classify, total)."""
        with self._lock:
            return {k: v[-1] for k, v in self._stages.items() if v}

    def snapshot(self) -> dict:
        """What the page shows beside the video: counters, fps and stage medians, the largest face's
        smoothed probabilities per model, the last error (a plain dict, safe to read from any thread)."""
        with self._lock:
            return {
                "frames": self._frames,
                "faces": self._faces,
                "tracks": len(self._tracks),
                "roi_frames": self._roi_frames,
                **self._stats(),
                "largest": self._largest,
                "error": self._error,
                "smoothing": self._smoothing,
                "detector": self.detector.name,
                "note": self.detector.note,
            }

    def _draw(self, frame: np.ndarray, tracks: list[Track], overlay: str) -> np.ndarray:
        out = np.ascontiguousarray(np.stack([frame] * 3, -1) if frame.ndim == 2 else frame[:, :, :3]).copy()
        scale = max(0.45, out.shape[1] / 1400)
        names = {m.name for m in self.models}  # tracks may hold probabilities of models no longer selected
        for t in tracks:
            x, y, w, h = t.box
            cv2.rectangle(out, (x, y), (x + w, y + h), (40, 200, 40), 2)
            lines = [
                f"{_short(m)}: {EMOTIONS[int(p.argmax())]} {p.max():.0%}" for m, p in t.probs.items() if m in names
            ]
            for i, text in enumerate(reversed(lines)):
                ty = max(14, y - 6 - i * int(22 * scale + 4))
                cv2.putText(out, text, (x, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
                cv2.putText(out, text, (x, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (40, 220, 40), 1, cv2.LINE_AA)
        cv2.putText(out, overlay, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, overlay, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
        return out


def _shifted(d: Detection, dx: int, dy: int) -> Detection:
    """A detection in a region, in the whole frame's pixels."""
    lm = tuple((x + dx, y + dy) for x, y in d.landmarks) if d.landmarks else None
    return Detection((d.box[0] + dx, d.box[1] + dy, d.box[2], d.box[3]), d.score, lm)


def _short(name: str) -> str:
    """A model's on-video name: family and width of a run id (``mobilenet-w1-s0-...`` -> ``mobilenet-w1``)."""
    parts = name.split("-")
    return "-".join(parts[:2]) + ("-" + parts[-1] if parts[-2:-1] == ["onnx"] else "")


def ice_servers(env: dict | None = None) -> list[dict]:
    """ICE servers for WebRTC from ``$FER_ICE_SERVERS``: none by default (localhost needs none).

    Accepts a JSON list of RTCIceServer objects (``[{"urls": ["turn:host:3478"], "username": "u",
    "credential": "p"}]``) or comma-separated URLs (``stun:stun.example.org:3478,turn:...``).
    """
    text = (env if env is not None else os.environ).get(ICE_ENV, "").strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            servers = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise FerError(f"{ICE_ENV}: not valid JSON ({e})") from None
        if not all(isinstance(s, dict) and s.get("urls") for s in servers):
            raise FerError(f'{ICE_ENV}: each server needs "urls", e.g. [{{"urls": ["stun:host:3478"]}}]')
        return servers
    urls = [u.strip() for u in text.split(",") if u.strip()]
    bad = [u for u in urls if not u.startswith(("stun:", "turn:", "turns:"))]
    if bad:
        raise FerError(f"{ICE_ENV}: {bad[0]!r} is not a stun:, turn: or turns: URL")
    return [{"urls": urls}]
