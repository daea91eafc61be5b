"""The browser's live-mode engine (``pages/browser_live/engine.js``) driven from Python, in headless Chromium:
the parity test and ``bench --browser`` give it frames and read back its faces, probabilities and timings.

:class:`BrowserEngine` serves the component's folder over a local HTTP server (only that folder: code, no
models), opens it in Chromium, loads ONNX Runtime Web with the detector and the models given as bytes, and runs
``Engine.predict`` on each frame: the path the live mode runs, minus the camera.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import threading
from pathlib import Path

import numpy as np

from fer_core.common import FerError
from fer_core.serving.browser import detector_onnx, pipeline_config
from fer_core.studies.faces import CONDITIONS, make_frame

COMPONENT_DIR = Path(__file__).resolve().parents[2] / "pages" / "browser_live"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

_SETUP = """async ([detector, models, config]) => {
    const b64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
    const { Engine } = await import("./engine.js");
    const blobs = models.map((m) => ({ name: m.name, bytes: b64(m.bytes) }));
    window.engine = await Engine.create(b64(detector), blobs, config);
    return { loaded: window.engine.sessions.map((s) => s.name), failed: window.engine.failed };
}"""
_PREDICT = """async ([gray, w, h, crop, light]) => {
    const g = Uint8Array.from(atob(gray), (c) => c.charCodeAt(0));
    const rgba = new Uint8ClampedArray(w * h * 4);
    for (let i = 0; i < w * h; i++) { rgba[4 * i] = rgba[4 * i + 1] = rgba[4 * i + 2] = g[i]; rgba[4 * i + 3] = 255; }
    const r = await window.engine.predict(rgba, w, h, crop, light);
    return {
        detect_ms: r.detect_ms, total_ms: r.total_ms,
        model_ms: Object.fromEntries(Object.entries(r.models).map(([n, m]) => [n, m.ms_per_face])),
        faces: r.faces.map((f) => ({
            box: f.box, score: f.score, landmarks: f.landmarks, crop: Array.from(f.crop), probs: f.probs,
        })),
    };
}"""

_CROPS = """async ([gray, w, h, dets, crop, light, template]) => {
    const P = await import("./pipeline.js");
    const g = Uint8Array.from(atob(gray), (c) => c.charCodeAt(0));
    return dets.map((d) => Array.from(P.faceInput(g, w, h, d, crop, light, template)));
}"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no request log on the test's output
        pass


@contextlib.contextmanager
def serve_folder(folder: Path = COMPONENT_DIR):
    """``folder`` over HTTP on a free local port; yields its base URL."""
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class BrowserEngine:
    """ONNX Runtime Web in a Chromium page with ``models`` ({name: ONNX bytes}); :meth:`predict` per frame."""

    def __init__(self, page, models: dict[str, bytes], config: dict | None = None) -> None:
        self.page = page
        blobs = [{"name": n, "bytes": _b64(b)} for n, b in models.items()]
        out = page.evaluate(_SETUP, [_b64(detector_onnx()), blobs, config or pipeline_config()])
        self.loaded, self.failed = out["loaded"], out["failed"]

    def predict(self, gray: np.ndarray, crop: str = "aligned", light: str = "clamp") -> dict:
        """Faces in a gray uint8 frame (the browser's RGBA is that gray in every channel)."""
        g = np.ascontiguousarray(gray, np.uint8)
        h, w = g.shape
        return self.page.evaluate(_PREDICT, [_b64(g.tobytes()), w, h, crop, light])

    def face_inputs(self, gray: np.ndarray, detections: list, crop: str = "aligned", light: str = "clamp"):
        """The models' 48x48 inputs the browser cuts for given detections (boxes and landmarks): the face path
        after the detector, on its own."""
        g = np.ascontiguousarray(gray, np.uint8)
        h, w = g.shape
        dets = [{"box": list(d.box), "landmarks": [list(p) for p in d.landmarks]} for d in detections]
        tmpl = pipeline_config()["template"]
        return [np.asarray(c) for c in self.page.evaluate(_CROPS, [_b64(g.tobytes()), w, h, dets, crop, light, tmpl])]


@contextlib.contextmanager
def browser_engine(models: dict[str, bytes], chromium: str, config: dict | None = None):
    """A :class:`BrowserEngine` in a fresh headless Chromium (``chromium``: its executable)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise FerError("the browser engine needs the playwright package (pip install playwright)") from None
    with serve_folder() as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{base}/index.html")
            yield BrowserEngine(page, models, config)
        finally:
            browser.close()


def condition_frames(
    faces: np.ndarray, labels: np.ndarray, per_condition: int, seed: int
) -> list[tuple[str, np.ndarray]]:
    """``per_condition`` camera frames of every condition of the eval-faces generator (clutter, tilt, size, light,
    blur, JPEG, noise, groups), built now from ``seed`` with ``faces`` (FER2013's public split, or synthetic)."""
    rng = np.random.default_rng(seed)
    pool = [int(i) for i in rng.permutation(len(faces))]
    out = []
    for name, cond in CONDITIONS.items():
        for _ in range(per_condition):
            frame, _placed = make_frame(cond, pool, faces, labels, rng)
            out.append((name, frame))
    return out
