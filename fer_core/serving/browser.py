"""What the browser's live mode needs from the server, and what it sends back.

The Try-it page's "in your browser" mode runs YuNet and the models in the user's browser (ONNX Runtime Web,
``pages/browser_live/``), so no frame leaves their machine. The server sends, once per browser (which caches
them by SHA-256): the detector (:func:`detector_onnx`), each selected model as ONNX (:func:`model_onnx`) and the
numbers of this package's face path (:func:`pipeline_config`): the browser repeats ``fer_core.serving``'s
steps with them, so both give the same faces and probabilities. The browser sends back only small stats messages
(:func:`clean_stats` keeps numbers and short names, nothing else), which become "latency on this device"
(:func:`record_latency`, :func:`browser_latency`) for the Compare page's latency axis.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from pathlib import Path

from fer_core.common import EMOTIONS, FerError
from fer_core.common.paths import cache_dir
from fer_core.serving import detection, inference, live
from fer_core.serving.align import load_template
from fer_core.serving.onnx import any_input_size, parse_onnx, to_onnx, uint8_weights
from fer_core.store.loading import load_torch_model

#: A stats message larger than this (as JSON) is refused: it carries more than numbers.
MAX_STATS_BYTES = 16_384
#: Where the browsers' measurements are kept (under the cache directory): one entry per device and model.
LATENCY_FILE = "browser_latency.json"


def pipeline_config() -> dict:
    """The numbers of the server's face path the browser repeats: the template, YuNet's thresholds, the
    live mode's tracking and region search, the classes."""
    t = load_template()
    return {
        "template": {"landmarks": t["landmarks"], "box": t["box"], "light": t["light"]},
        "score": detection.YUNET_SCORE,
        "nms": detection.YUNET_NMS,
        "top_k": detection.YUNET_TOP_K,
        "max_side": detection.DETECT_MAX_SIDE,
        "roi_face_px": detection.ROI_FACE_PX,
        "max_faces": live.MAX_FACES,  # a video frame's (the live mode's)
        "max_faces_image": inference.MAX_FACES,  # a single image's (predict's)
        "match_iou": live.MATCH_IOU,
        "max_missed": live.MAX_MISSED,
        "roi_margin": live.ROI_MARGIN,
        "full_detect_every": live.FULL_DETECT_EVERY,
        "emotions": list(EMOTIONS),
    }


@functools.lru_cache(maxsize=2)
def detector_onnx() -> bytes:
    """The shipped YuNet file (checked against its SHA-256) as ONNX Runtime runs it at any frame size
    (:func:`~fer_core.serving.onnx.any_input_size`)."""
    detection.check_model_file(detection.YUNET_FILE)
    return any_input_size(detection.YUNET_FILE.read_bytes())


def model_onnx(path: str | Path) -> bytes:
    """The ONNX file a browser runs for a run folder: the run's own ``model.onnx`` (an ONNX variant: fp32, fp16
    or int8 as listed), else an fp32 export of its weights made now (kept in memory per weights file)."""
    path = Path(path)
    own = path / "model.onnx"
    if own.is_file():
        proto = parse_onnx(own)
        # an int8 file written before its weights were stored as uint8: sent as one, so the browser computes it
        # as the server does (uint8_weights)
        return proto.SerializeToString() if uint8_weights(proto) else own.read_bytes()
    weights = next((path / n for n in ("weights.pt", "weights_fp16.pt") if (path / n).is_file()), None)
    if weights is None:
        raise FerError(f"{path}: no weights.pt or model.onnx to send to the browser")
    return _exported(str(path), weights.stat().st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _exported(path: str, _stamp: int) -> bytes:
    lm = load_torch_model(path)
    return to_onnx(lm.torch_model or lm.model, {"family": lm.family, "width": lm.width, "variant": "fp32"})


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _name(v, limit: int = 200) -> str | None:
    return v if isinstance(v, str) and len(v) <= limit else None


def clean_stats(value, models: list[str]) -> dict | None:
    """The browser's stats message, checked: numbers, the selected models' names, short strings. Anything else
    (or a message over MAX_STATS_BYTES) is dropped, so no image can come back this way."""
    if not isinstance(value, dict):
        return None
    try:
        if len(json.dumps(value)) > MAX_STATS_BYTES:
            return None
    except (TypeError, ValueError):
        return None
    out: dict = {"state": _name(value.get("state"), 40) or "unknown"}
    for k in ("frames", "roi_frames", "faces", "fps", "detect_ms", "total_ms", "seq"):
        out[k] = _number(value.get(k))
    out["message"] = _name(value.get("message"), 500)
    out["device"] = _name(value.get("device"), 200)
    out["need"] = [s for s in value.get("need") or [] if isinstance(s, str) and len(s) == 64][:64]
    out["have"] = [s for s in value.get("have") or [] if isinstance(s, str) and len(s) == 64][:64]
    out["failed"] = [
        {"name": f["name"], "error": _name(f.get("error"), 300) or "failed to load"}
        for f in value.get("failed") or []
        if isinstance(f, dict) and f.get("name") in models
    ]
    ms = value.get("model_ms") if isinstance(value.get("model_ms"), dict) else {}
    out["model_ms"] = {m: _number(ms.get(m)) for m in models if _number(ms.get(m)) is not None}
    largest = value.get("largest") if isinstance(value.get("largest"), dict) else {}
    out["largest"] = {}
    for m in models:
        p = largest.get(m)
        if isinstance(p, list) and len(p) == len(EMOTIONS) and all(_number(v) is not None for v in p):
            out["largest"][m] = {e: float(v) for e, v in zip(EMOTIONS, p)}
    return out


def _latency_path(path: Path | None) -> Path:
    return path if path is not None else cache_dir() / LATENCY_FILE


def record_latency(stats: dict, path: Path | None = None) -> None:
    """Keep a stats message's per-model ms per face under its device's label (the latest measurement wins)."""
    device = stats.get("device")
    if not device or not stats.get("model_ms") or (stats.get("frames") or 0) < 10:
        return
    path = _latency_path(path)
    doc = browser_latency(path)
    entry = doc.setdefault(device, {})
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    for model, ms in stats["model_ms"].items():
        entry[model] = {"ms_per_face": round(ms, 4), "detect_ms": stats.get("detect_ms"), "fps": stats.get("fps"),
                        "frames": int(stats.get("frames") or 0), "measured": now}  # fmt: skip
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache loses a measurement, never the stream


def browser_latency(path: Path | None = None) -> dict:
    """Every device's measured ms per face, per model: ``{device: {model: {"ms_per_face", ...}}}``."""
    path = _latency_path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def latest_device_latency(path: Path | None = None) -> tuple[str | None, dict[str, float]]:
    """The device measured most recently and its ms per face per model (the Compare page's latency column)."""
    doc = browser_latency(path)
    best, when = None, ""
    for device, models in doc.items():
        latest = max((m.get("measured", "") for m in models.values() if isinstance(m, dict)), default="")
        if latest > when:
            best, when = device, latest
    if best is None:
        return None, {}
    return best, {m: v["ms_per_face"] for m, v in doc[best].items() if _number(v.get("ms_per_face")) is not None}
