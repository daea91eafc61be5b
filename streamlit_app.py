"""Home: what FER Lab answers, the headline scatter, where the data and the GPU stand, and what to do next."""

import streamlit as st

from fer_core.analysis.compare import runs_frame
from fer_core.analysis.families import family_answer, family_table
from fer_core.analysis.figures import PNG_CONFIG, scatter
from fer_core.analysis.planning import quick_demo
from fer_core.analysis.status import data_status, device_status
from fer_core.common import FerError
from fer_core.jobs.queue import active_jobs, submit
from pages import lock_screen, store_notes_ui, unlocked


@st.cache_data(ttl=60, show_spinner="Looking for FER2013…")
def _data_status():
    return data_status()


def status_ui(data: dict, device: dict) -> None:
    left, right = st.columns(2)
    with left:
        if not data["ok"]:
            st.error(f"Data: {data['error']}")
        elif data["synthetic"]:
            st.warning(
                "Data: **synthetic faces** (no FER2013 found). Set `FER_DATA` to your FER2013 file or folder, "
                "or put it in `data/`, then reload."
            )
        else:
            sizes = data["sizes"]
            st.success(
                f"Data: **{data['data']}** from `{data['file']}` · train {sizes['train']:,} · "
                f"public {sizes['public']:,} · private {sizes['private']:,}"
            )
    with right:
        if device["device"] in ("cuda", "mps"):
            st.success(f"Training device: **{device['name']}** ({device['device']})")
        else:
            st.info(
                f"Training device: **CPU only**, {device['threads']} threads (small models and short runs are fine; "
                "a study resumes where it stopped)"
            )


def quick_demo_ui(data: dict) -> None:
    st.subheader("Train your own: a quick demo")
    real = bool(data.get("ok") and not data.get("synthetic"))
    cfgs = quick_demo(real)
    st.write(
        f"{len(cfgs)} small models ({', '.join(sorted({c.model.family for c in cfgs}))}, about 2×10⁴ and 10⁵ "
        f"parameters) for {cfgs[0].train.epochs} epochs on "
        + ("the first 3,000 FER2013 training faces." if real else "synthetic faces.")
        + " The scatter fills in as each one finishes (a couple of minutes on a laptop CPU)."
    )
    if active_jobs():
        st.info("A job is running: watch it on the Train page.")
    elif st.button("Start the quick demo", type="primary"):
        try:
            submit(cfgs, title="quick demo")
            st.success("Started. Follow it on the Train page, or watch the Compare page fill in.")
        except FerError as e:
            st.error(str(e))


def home() -> None:
    st.title("FER Lab")
    st.markdown(
        "**How small can a facial-expression model get before it stops working, and which architecture wins "
        "at each size?** FER Lab trains four families of CNNs at many widths on FER2013 (48×48 gray faces, 7 "
        "expressions) — the seed report's MobileNet-style (depthwise-separable) and standard CNN families, and "
        "MobileNetV2-style (inverted residuals) and ShuffleNetV2-style (channel split and shuffle) ones — and plots "
        "accuracy against parameters, bytes, MACs and latency."
    )
    store_notes_ui()
    data, device = _data_status(), device_status()
    status_ui(data, device)

    df = runs_frame()
    if not df.empty:
        fer = df["data"] == "fer2013"
        shown = df[fer] if fer.any() else df
        variants = int((shown["format"] != "torch").sum())
        shown = shown[shown["format"] == "torch"]  # on a parameters axis a variant sits on its parent
        src = "FER2013" if fer.any() else ", ".join(sorted(df["data"].unique()))
        st.subheader(f"Accuracy against parameters · {src}")
        st.plotly_chart(scatter(shown, "params", "public_acc"), config=PNG_CONFIG)
        done = shown[shown["status"] == "completed"]
        ref = int((done["source"] == "reference").sum())
        st.caption(
            f"{len(done)} completed runs ({ref} shipped reference runs), "
            f"{int((shown['status'] == 'running').sum())} running. "
            "Open markers are runs still training (best public accuracy so far)."
            + (f" {variants} deployable ONNX variants are on the Compare page (x axis: bytes)." if variants else "")
        )
        answer = family_answer(family_table(done, y="private_acc"), data="fer2013") if fer.any() else []
        if answer:
            st.markdown(
                "**Which family wins at each size** (FER2013, the seed report's recipe, plain runs within 15% of "
                "each budget, private accuracy, mean ± sd over seeds):\n" + "\n".join(f"- {line}" for line in answer)
            )
            st.caption(
                "A lead under about 0.8 points is within one standard error of one run's private accuracy "
                "(3,589 faces): a tie until more seeds say otherwise. The Compare page has the whole table and "
                "every pair's gap; `python -m fer_core compare` prints the same."
            )
    if df.empty or not (df["source"] == "user").any():
        quick_demo_ui(data)
    st.subheader("Next")
    c1, c2, c3 = st.columns(3)
    c1.page_link(PAGES["train"], label="Train models")
    c2.page_link(PAGES["compare"], label="Compare runs")
    c3.page_link(PAGES["try"], label="Try your face")


st.set_page_config(page_title="FER Lab", layout="wide")
PAGES = {
    "home": st.Page(home, title="Home", default=True),
    "train": st.Page("pages/1_Train.py", title="Train", url_path="Train"),
    "compare": st.Page("pages/2_Compare.py", title="Compare", url_path="Compare"),
    "try": st.Page("pages/3_Try_it.py", title="Try it", url_path="Try_it"),
}
if unlocked():
    st.navigation(list(PAGES.values())).run()
else:  # a shared dashboard before its password: every page's URL shows the lock (so a deep link still
    # leads to its page once unlocked), and the navigation stays hidden
    st.navigation(
        [st.Page(lock_screen, title=p.title, url_path=p.url_path, default=k == "home") for k, p in PAGES.items()],
        position="hidden",
    ).run()
