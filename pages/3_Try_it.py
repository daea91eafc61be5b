"""Try it: a webcam snapshot or an uploaded photo, every selected model side by side for each face."""

from pathlib import Path

import cv2
import numpy as np
import streamlit as st

from fer_core.errors import FerError
from fer_core.figures import probabilities
from fer_core.inference import load_image, predict
from fer_core.loading import available_models, default_models, load_model

st.title("Try it")


@st.cache_resource(show_spinner="Loading models…", max_entries=32)
def _model(path: str, stamp: float):  # stamp: the weights' mtime, so retrained weights are reloaded
    return load_model(path)


def models_ui():
    models = available_models()
    if not models:
        st.info("No trained models yet: train some on the Train page (or start the quick demo on the Home page).")
        st.stop()
    labels = {m["path"]: m["label"] for m in models}
    default = [m["path"] for m in default_models(models)]
    picked = st.multiselect(
        "Models", list(labels), default=default, format_func=labels.get, help="★ = shipped reference runs"
    )
    loaded = []
    for p in picked:
        try:
            stamp = max((f.stat().st_mtime for f in Path(p).glob("weights*.pt")), default=0)
            loaded.append(_model(p, stamp))
        except FerError as e:
            st.error(str(e))
    return loaded


def image_ui():
    cam, up = st.tabs(["Webcam snapshot", "Upload a photo"])
    with cam:
        shot = st.camera_input("Take a snapshot")
    with up:
        file = st.file_uploader("A photo with a face", type=["jpg", "jpeg", "png", "webp"])
    if file is not None:
        return file.getvalue(), file.name
    if shot is not None:
        return shot.getvalue(), "snapshot"
    return None, None


def draw(image: np.ndarray, faces) -> np.ndarray:
    out = np.ascontiguousarray(np.stack([image] * 3, -1) if image.ndim == 2 else image[:, :, :3]).copy()
    thick = max(2, out.shape[1] // 300)
    for i, f in enumerate(faces):
        x, y, w, h = f.box
        cv2.rectangle(out, (x, y), (x + w, y + h), (40, 200, 40), thick)
        label = f"{i + 1}: {f.predictions[0].label}" if f.predictions else str(i + 1)
        cv2.putText(out, label, (x, max(15, y - 8)), cv2.FONT_HERSHEY_SIMPLEX, thick * 0.4, (40, 200, 40), thick)
    return out


def faces_ui(result) -> None:
    for i, face in enumerate(result.faces):
        st.markdown(f"**Face {i + 1}**" + ("" if result.whole_image else f" at {face.box[0]},{face.box[1]}"))
        cols = st.columns([1] + [3] * len(face.predictions))
        cols[0].image(face.crop, caption="48×48 input", clamp=True, width=96)
        for col, p in zip(cols[1:], face.predictions):
            with col:
                st.markdown(f"**{p.label}** · {p.ms:.1f} ms  \n`{p.model}`")
                st.plotly_chart(
                    probabilities(p.probabilities), config={"displayModeBar": False}, key=f"p-{i}-{p.model}"
                )


models = models_ui()
data, name = image_ui()
if data is not None:
    try:
        image = load_image(data, name=name)
        whole = st.session_state.get("whole_image", False)
        result = predict(image, models, whole_image=whole)
    except FerError as e:
        st.error(str(e))
        st.stop()
    if not result.faces:
        st.warning("No face found in this image.")
        if st.button("Use the whole image as one face"):
            st.session_state["whole_image"] = True
            st.rerun()
    else:
        h, w = image.shape[:2]
        st.image(draw(image, result.faces), caption=f"{w}×{h} · face detection {result.detect_ms:.0f} ms", width=640)
        faces_ui(result)
        if st.session_state.get("whole_image") and st.button("Detect faces again"):
            st.session_state["whole_image"] = False
            st.rerun()
