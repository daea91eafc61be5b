"""The "in your browser" live mode: a Streamlit component (v1) that runs the camera, YuNet and every selected model
in the user's browser with ONNX Runtime Web; only small stats messages come back.

Why v1 (``components.declare_component(path=...)``) and not v2: v1 serves this whole folder as it is (the page,
its ES modules, the worker and the vendored WebAssembly file) with no build step and no package manifest, and
its iframe is granted the camera by Streamlit. The models and the detector are not in this folder (the folder is
served to anyone who can reach the server, locked or not): they travel as the component's arguments over the
page's own websocket, which only an unlocked session gets, and only for those the browser has not cached.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import streamlit.components.v1 as components

from fer_core.common import FerError
from fer_core.serving.browser import (
    clean_stats,
    detector_onnx,
    model_onnx,
    pipeline_config,
    record_latency,
    sha256,
)

FOLDER = Path(__file__).resolve().parent
_component = components.declare_component("browser_live", path=str(FOLDER))
KEY = "browser-live"


# cache_resource, not cache_data: the same bytes object every rerun (cache_data would copy megabytes per stats
# message)
@st.cache_resource(show_spinner="Preparing the models for your browser…", max_entries=64)
def _blob(path: str, stamp: float) -> tuple[str, bytes]:  # stamp: the files' mtime, so a retrained run is resent
    data = model_onnx(path)
    return sha256(data), data


@st.cache_resource(max_entries=1)
def _detector() -> tuple[str, bytes]:
    data = detector_onnx()
    return sha256(data), data


def weights_stamp(path: str) -> float:
    """The newest weights or ONNX file's mtime in a run folder: cache keys change when a run is retrained."""
    return max((f.stat().st_mtime for f in Path(path).glob("*") if f.suffix in (".pt", ".onnx")), default=0)


def browser_live(picked: list[tuple[str, str]], settings: dict, smoothing: float, running: bool) -> dict | None:
    """Mount the component for ``picked`` (run folder, model name) pairs; returns its last stats (checked by
    :func:`~fer_core.serving.browser.clean_stats`), or None before it has reported."""
    names = [name for _, name in picked]
    previous = clean_stats(st.session_state.get(KEY), names)
    models, blobs, problems = [], {}, []
    det_sha, det_bytes = _detector()
    for path, name in picked:
        try:
            sha, data = _blob(path, weights_stamp(path))
        except FerError as e:
            problems.append(str(e))
            continue
        models.append({"name": name, "sha": sha, "size": len(data)})
        if previous and sha in previous["need"]:
            blobs[f"blob_{sha}"] = data
    if previous and det_sha in previous["need"]:
        blobs[f"blob_{det_sha}"] = det_bytes
    for p in problems:
        st.error(p)
    _component(
        models=models,
        detector={"sha": det_sha, "size": len(det_bytes)},
        config=pipeline_config(),
        running=running,
        smoothing=smoothing,
        crop=settings["crop"],
        light=settings["light"],
        sent=sorted(blobs),  # Streamlit re-renders a component when its JSON arguments change, not its bytes alone
        key=KEY,
        default=None,
        **blobs,
    )
    stats = clean_stats(st.session_state.get(KEY), names)
    if stats and stats["state"] == "streaming":
        record_latency(stats)
    return stats
