"""Try it: a webcam snapshot, an uploaded photo or live video, every selected model side by side for each face."""

import cv2
import numpy as np
import streamlit as st

from fer_core.analysis.figures import probabilities
from fer_core.common import FerError
from fer_core.serving.align import LIGHT_DEFAULT, LIGHT_MODES
from fer_core.serving.detection import DETECTORS
from fer_core.serving.inference import CROPS, load_image, predict
from fer_core.serving.live import LiveProcessor, ice_servers
from fer_core.serving.models import available_models, default_models, load_model
from pages import guard
from pages.browser_live import browser_live, weights_stamp

guard()  # inside the app's navigation, and behind the lock when the dashboard is shared
st.title("Try it")


@st.cache_resource(show_spinner="Loading models…", max_entries=32)
def _model(path: str, stamp: float):  # stamp: the weights' mtime, so retrained weights are reloaded
    return load_model(path, runtime="auto")  # ONNX Runtime when installed (faster on the CPU), else torch


def models_ui():
    models = available_models()
    if not models:
        st.info("No trained models yet: train some on the Train page (or start the quick demo on the Home page).")
        st.stop()
    labels = {m["path"]: m["label"] for m in models}
    default = [m["path"] for m in default_models(models)]
    picked = st.multiselect(
        "Models",
        list(labels),
        default=default,
        format_func=labels.get,
        help="★ = shipped reference runs · onnx-fp16/onnx-int8 = deployable variants of a run · the last part "
        "says what runs the model (onnxruntime, else torch)",
    )
    loaded, paths = [], []
    for p in picked:
        try:
            loaded.append(_model(p, weights_stamp(p)))
            paths.append(p)
        except FerError as e:
            st.error(str(e))
    for lm in loaded:
        if lm.runtime_note:
            st.caption(f"`{lm.name}` runs on torch: {lm.runtime_note}")
    st.session_state["picked_models"] = [(p, lm.name) for p, lm in zip(paths, loaded)]
    return loaded


def face_settings() -> dict:
    """How faces are found and cut (the same choices as ``predict --detector/--crop/--light``)."""
    with st.expander("Face finding"):
        c1, c2, c3 = st.columns(3)
        detector = c1.selectbox(
            "Detector", DETECTORS, help="yunet: a small CNN that finds tilted, dim and small faces, with landmarks; "
            "haar: OpenCV's classic cascade (upright, frontal, well-lit faces only)"
        )  # fmt: skip
        crop = c2.selectbox(
            "Crop", CROPS, help="aligned: eyes, nose and mouth moved to where FER2013's faces have them (YuNet's "
            "landmarks); box: a square on the face's box"
        )  # fmt: skip
        light = c3.selectbox(
            "Light", LIGHT_MODES, index=LIGHT_MODES.index(LIGHT_DEFAULT),
            help="clamp: brightness and contrast moved into the training faces' range; match: set to their median; "
            "equalize: histogram equalization; none: as cut"
        )  # fmt: skip
    return {"detector": detector, "crop": crop, "light": light}


def image_ui(models, settings):
    cam, up, live = st.tabs(["Webcam snapshot", "Upload a photo", "Live video"])
    with cam:
        shot = st.camera_input("Take a snapshot")
    with up:
        file = st.file_uploader("A photo with a face", type=["jpg", "jpeg", "png", "webp"])
    with live:
        live_ui(models, settings)
    if file is not None:
        return file.getvalue(), file.name
    if shot is not None:
        return shot.getvalue(), "snapshot"
    return None, None


LIVE_MODES = {
    "browser": "in your browser (no frame leaves this device)",
    "server": "on this server (WebRTC: frames travel to the server and back)",
}


def live_ui(models, settings) -> None:
    """Live video, computed in the browser (the default) or on the server."""
    mode = st.radio(
        "Live video runs", list(LIVE_MODES), format_func=LIVE_MODES.get, horizontal=True, key="live_mode",
        help="in your browser: the camera, the face detector and the models run on your device with ONNX Runtime "
        "Web, and only timings come back; on this server: today's WebRTC path (needs streamlit-webrtc)",
    )  # fmt: skip
    if mode == "browser":
        browser_ui(settings)
    else:
        server_live_ui(models, settings)


FALLBACKS = {"insecure", "refused", "no-camera", "camera-error", "no-wasm", "model-failed", "engine-error", "error"}


def browser_ui(settings) -> None:
    on = st.toggle("Live video", key="browser_on", help="opens your camera in this page; nothing is sent")
    smoothing = st.slider(
        "label smoothing", 0.0, 0.95, 0.6, 0.05, key="browser_smoothing",
        help="weight of the past in each face's moving average (0 = off)",
    )  # fmt: skip
    if settings["detector"] != "yunet":
        st.caption("In the browser faces are found with YuNet (the Haar cascade runs on the server only).")
    picked = st.session_state.get("picked_models", [])
    if not picked:
        st.info("Pick at least one model above.")
        return

    @st.fragment
    def panel():
        stats = browser_live(picked, settings, smoothing, on)
        if not on or not stats:
            return
        if stats["state"] in FALLBACKS:
            st.warning(f"{stats['message'] or 'The in-browser mode cannot run here.'} The server path still works:")
            if st.button("Use the server path instead"):
                st.session_state["live_mode"] = "server"
                st.rerun(scope="app")
        for f in stats["failed"]:
            st.error(f"`{f['name']}` does not load in this browser: {f['error']}")
        if stats["state"] == "streaming":
            per = " · ".join(f"`{m}` {ms:.2f} ms" for m, ms in stats["model_ms"].items())
            st.markdown(
                f"**in your browser: frames {int(stats['frames'] or 0)}** · faces: {int(stats['faces'] or 0)} · "
                f"{stats['fps'] or 0:.1f} fps · detect {stats['detect_ms'] or 0:.1f} ms  \n"
                f"per face: {per}  \nmeasured on {stats['device']}"
            )

    panel()


def server_live_ui(models, settings) -> None:
    """The browser's camera streams to the server; every frame comes back with each face labelled by every model."""
    try:
        import av
        from streamlit_webrtc import WebRtcMode, webrtc_streamer
    except ImportError:
        st.info("Live video needs streamlit-webrtc: `pip install -r requirements.txt`.")
        return
    try:
        ice = ice_servers()
    except FerError as e:
        st.error(str(e))
        return
    on = st.toggle("Live video", key="server_on", help="streams your camera to this server and back; nothing is stored")
    smoothing = st.slider(
        "label smoothing", 0.0, 0.95, 0.6, 0.05, help="weight of the past in each face's moving average (0 = off)"
    )
    key = (tuple(m.name for m in models), tuple(settings.values()))
    proc = st.session_state.get("live_processor")
    if proc is None or st.session_state.get("live_key") != key:
        proc = st.session_state["live_processor"] = LiveProcessor(models, smoothing, **settings)
        st.session_state["live_key"] = key
    proc.set_smoothing(smoothing)

    def on_frame(frame):  # streamlit-webrtc's thread: no st.* here, only the processor
        return av.VideoFrame.from_ndarray(proc.process(frame.to_ndarray(format="rgb24")), format="rgb24")

    if not on:
        st.caption("Turn on Live video: each face gets a box and every selected model's label, live.")
        return
    video, panel = st.columns([3, 2])
    with video:
        try:
            ctx = webrtc_streamer(
                key="live",
                mode=WebRtcMode.SENDRECV,
                video_frame_callback=on_frame,
                media_stream_constraints={"video": {"width": 640, "height": 480}, "audio": False},
                rtc_configuration={"iceServers": ice},
                desired_playing_state=True,  # the toggle starts and stops the stream
                async_processing=True,
            )
        except Exception as e:  # noqa: BLE001 - the snapshot and upload modes keep working
            st.error(f"Live video could not start ({type(e).__name__}: {e})")
            return
    with panel:
        live_panel(proc, ctx.state.playing)


def live_panel(proc, playing: bool) -> None:
    @st.fragment(run_every=0.5 if playing else None)
    def panel():
        s = proc.snapshot()
        st.markdown(
            f"**frames processed: {s['frames']}** · faces: {s['faces']} · {s['fps']:.1f} fps  \n"
            f"median per frame: detect {s['detect_ms']:.1f} ms · classify {s['classify_ms']:.1f} ms · "
            f"total {s['total_ms']:.1f} ms"
        )
        if s["error"]:
            st.error(f"the frame callback failed: {s['error']}")
        largest = s["largest"]
        if not largest:
            st.caption("Press START; the largest face's probabilities appear here, per model.")
            return
        for name, m in largest["models"].items():
            st.markdown(f"**{m['label']}** · `{name}`")
            st.plotly_chart(probabilities(m["probabilities"]), config={"displayModeBar": False}, key=f"live-{name}")

    panel()


def draw(image: np.ndarray, faces) -> np.ndarray:
    out = np.ascontiguousarray(np.stack([image] * 3, -1) if image.ndim == 2 else image[:, :, :3]).copy()
    thick = max(2, out.shape[1] // 300)
    for i, f in enumerate(faces):
        x, y, w, h = f.box
        cv2.rectangle(out, (x, y), (x + w, y + h), (40, 200, 40), thick)
        for px, py in f.landmarks or ():
            cv2.circle(out, (int(px), int(py)), thick + 1, (255, 200, 0), -1)
        label = f"{i + 1}: {f.predictions[0].label}" if f.predictions else str(i + 1)
        cv2.putText(out, label, (x, max(15, y - 8)), cv2.FONT_HERSHEY_SIMPLEX, thick * 0.4, (40, 200, 40), thick)
    return out


def faces_ui(result) -> None:
    for i, face in enumerate(result.faces):
        where = "" if result.whole_image else f" at {face.box[0]},{face.box[1]}"
        score = "" if face.score is None else f" · detection score {face.score:.2f}"
        st.markdown(f"**Face {i + 1}**{where}{score}")
        cols = st.columns([1] + [3] * len(face.predictions))
        what = "aligned 48×48: what the models see" if face.aligned else "48×48: what the models see"
        cols[0].image(face.crop, caption=what, clamp=True, width=96)
        for col, p in zip(cols[1:], face.predictions):
            with col:
                st.markdown(f"**{p.label}** · {p.ms:.2f} ms · {p.runtime}  \n`{p.model}`")
                st.plotly_chart(
                    probabilities(p.probabilities), config={"displayModeBar": False}, key=f"p-{i}-{p.model}"
                )


NO_FACE_TIPS = (
    "No face found in this image. Things that help: light on your face (a lamp in front of you, not behind); "
    "the face at least about 40 pixels high (closer to the camera, or a larger photo); the face turned towards "
    "the camera and not covered. If the image is already a cropped face, use the whole image."
)

models = models_ui()
settings = face_settings()
data, name = image_ui(models, settings)
if data is not None:
    try:
        image = load_image(data, name=name)
        whole = st.session_state.get("whole_image", False)
        result = predict(image, models, whole_image=whole, **settings)
    except FerError as e:
        st.error(str(e))
        st.stop()
    if result.note:
        st.warning(result.note)
    if not result.faces:
        st.warning(NO_FACE_TIPS)
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
