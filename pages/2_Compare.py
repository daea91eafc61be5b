"""Compare: the live accuracy-vs-size scatter, the matched-budget gap, learning curves, per-run details."""

import streamlit as st

from fer_core.analysis.compare import (
    EDGE,
    KEEPS,
    X_AXES,
    Y_AXES,
    card_text,
    matched_budget_gap,
    pairwise_gaps,
    pruned_vs_scratch,
    runs_frame,
    smallest_files,
    two_run_card,
    variants_table,
)
from fer_core.analysis.families import family_table
from fer_core.analysis.figures import (
    FORMAT_NAMES,
    KIND_NAMES,
    PNG_CONFIG,
    confusion,
    learning_curves,
    per_class,
    scatter,
)
from fer_core.common import FerError
from fer_core.models import list_models
from fer_core.store.runs import find_run
from pages import guard

guard()  # inside the app's navigation, and behind the lock when the dashboard is shared
st.title("Compare")

df = runs_frame()
if df.empty:
    st.info("No runs yet: start some on the Train page (or the quick demo on the Home page).")
    st.stop()


def filters_ui(df):
    c1, c2 = st.columns(2)
    axes = [a for a in X_AXES if a != "latency_ms_browser" or a in df]  # a browser's latency once one measured it
    device = df.attrs.get("browser_device")
    x = c1.selectbox(
        "x axis", axes, format_func=X_AXES.get,
        help=f"latency on this device: measured by Try it's in-browser live video on {device}" if device else None,
    )  # fmt: skip
    y = c2.selectbox("y axis", list(Y_AXES), format_func=Y_AXES.get)
    # pills, not drop-downs: every choice shows its whole name (a drop-down's box cut them to "fer…")
    c3, c4, c5, c6 = st.columns(4)
    sources = sorted(df["data"].unique())
    data = _pills(c3, "data", sources, "small markers: synthetic faces")
    recipe = _pills(c4, "recipe", sorted(df["recipe"].dropna().unique()), None)
    kinds = sorted(df["lineage_kind"].unique())
    kind = _pills(c5, "made by", kinds, "marker: circle trained, star distilled, triangle fine-tuned", KIND_NAMES)
    fmt = _pills(
        c6, "format", sorted(df["format"].unique()),
        "fill: torch weights filled; ONNX variants of a run: fp32 open, fp16 open with a dot, int8 with a white dot "
        "(quantization-aware int8: also a dark outline; at their own file size on the bytes axis)",
        FORMAT_NAMES,
    )  # fmt: skip
    return x, y, data, recipe, kind, fmt


def _pills(col, label: str, options: list, help: str | None, names: dict | None = None) -> list:
    """A multi-choice filter whose choices are all shown, all on at first."""
    if not options:
        return []
    picked = col.pills(
        label, options, selection_mode="multi", default=options, format_func=lambda o: (names or {}).get(o, o),
        help=help, key=f"filter-{label}",
    )  # fmt: skip
    return list(picked or [])


x, y, data, recipes, kinds, formats = filters_ui(df)
live = bool((df["status"] == "running").any())


def keep(d):
    """The runs the filters let through."""
    return d[
        d["data"].isin(data)
        & (d["recipe"].isin(recipes) | d["recipe"].isna())
        & d["lineage_kind"].isin(kinds)
        & d["format"].isin(formats)
    ]


@st.fragment(run_every=3 if live else 30)
def scatter_ui():
    d = keep(runs_frame())
    d = d[d["status"].isin(["completed", "running"])]
    if len(data) > 1 and "synthetic" in data:
        st.warning("Synthetic-face runs are shown beside real ones: the small markers are synthetic.")
    st.plotly_chart(scatter(d, x, y), config=PNG_CONFIG, key="scatter")
    st.caption(
        f"{int((d['status'] == 'completed').sum())} completed · {int((d['status'] == 'running').sum())} running "
        "(faint markers, best public accuracy so far) · dotted lines: each family's Pareto frontier · "
        "the camera icon saves a PNG."
    )


scatter_ui()
shown = keep(df)

st.subheader("Which family wins at each size")
wins = family_table(shown[shown["status"] == "completed"], y=y if y in shown else "public_acc")
if wins.empty:
    st.caption("Needs completed runs within 15% of 2×10⁴, 5×10⁴, 10⁵ or 3×10⁵ parameters.")
else:
    st.dataframe(
        wins.astype({"sd": float, "margin": float}).style.format(
            {"budget": "{:,.0f}", "params": "{:,}", "mean": "{:.4f}", "sd": "{:.4f}", "margin": "{:+.4f}"},
            na_rep="-",
        ),
        hide_index=True,
    )
    st.caption(
        "Plain runs within 15% of each budget, per data source and recipe; mean and sd over seeds; rank 1 is the "
        "best mean, and its margin is over the second. `python -m fer_core compare` prints the same table."
    )

st.subheader("Matched-budget gap: one family minus another at equal parameters")
families = list_models()
ga, gb = st.columns(2)
fa = ga.selectbox("Family", families, index=families.index("mobilenet") if "mobilenet" in families else 0)
rest = [f for f in families if f != fa]
fb = gb.selectbox("minus", rest, index=rest.index("cnn") if "cnn" in rest else 0)
gap = matched_budget_gap(shown, y=y if y in shown else "public_acc", a=fa, b=fb)
if gap.empty:
    st.caption(f"Needs completed runs of {fa} and {fb} whose sizes overlap.")
else:
    st.dataframe(
        gap.astype({"gap_sd": float, "gap_se": float}).style.format(
            {
                "width": "{:g}",
                "params": "{:,}",
                f"{fa}_acc": "{:.4f}",
                f"{fb}_acc_interp": "{:.4f}",
                "gap_mean": "{:+.4f}",
                "gap_sd": "{:.4f}",
                "gap_se": "{:.4f}",
            },
            na_rep="-",
        ),
        hide_index=True,
    )
    st.caption(
        "Per data source and recipe, plain runs only (distilled and fine-tuned runs learnt from other models). "
        "The second family's accuracy is interpolated on log(parameters) between its runs of the same seed, or "
        f"taken from its nearest run where the size lies up to {EDGE:.0%} beyond them (b_at); gap_sd is the spread "
        "over the first family's seeds; gap_se, where the second has seeds at that size too (b_seeds), is the "
        "standard error of the gap with both families' spreads: a gap under about two of it is not a result."
    )
pairs = pairwise_gaps(shown, y=y if y in shown else "public_acc")
if not pairs.empty:
    with st.expander(f"Every pair of families ({len(pairs)} rows; `python -m fer_core compare` prints them too)"):
        st.dataframe(
            pairs.astype({"gap_sd": float, "gap_se": float}).style.format(
                {
                    "width": "{:g}",
                    "params": "{:,}",
                    "a_acc": "{:.4f}",
                    "b_acc_interp": "{:.4f}",
                    "gap_mean": "{:+.4f}",
                    "gap_sd": "{:.4f}",
                    "gap_se": "{:.4f}",
                },
                na_rep="-",
            ),
            hide_index=True,
        )

pruned = pruned_vs_scratch(shown, y=y if y in shown else "public_acc")
if not pruned.empty:
    st.subheader("Pruned against scratch: each pruned run minus its family trained from scratch at its size")
    st.dataframe(
        pruned.astype({"scratch_sd": float}).style.format(
            {
                "parent_params": "{:,}",
                "params": "{:,}",
                "parent_acc": "{:.4f}",
                "pruned_acc": "{:.4f}",
                "scratch_acc_interp": "{:.4f}",
                "scratch_sd": "{:.4f}",
                "diff": "{:+.4f}",
            },
            na_rep="-",
        ),
        hide_index=True,
    )
    st.caption(
        "Scratch: the family's plain runs on the seed protocol and the same data, interpolated on log(parameters) "
        "at the pruned run's size (never extrapolated); scratch_sd is the seeds' spread at the nearest size that has "
        "several. `python -m fer_core compare` prints the same table."
    )

variants = variants_table(shown)
if not variants.empty:
    st.subheader("Deployable variants against their trained run")
    st.dataframe(
        variants.style.format(
            {
                "params": "{:,}",
                "bytes": "{:,}",
                "bytes_ratio": "{:.2f}",
                "public_acc": "{:.4f}",
                "public_delta": "{:+.4f}",
                "private_acc": "{:.4f}",
                "private_delta": "{:+.4f}",
                "latency_ms_cpu": "{:.3f}",
                "speedup_vs_torch": "{:.1f}x",
            },
            na_rep="-",
        ),
        hide_index=True,
    )
    st.caption(
        "bytes_ratio: the file against the trained run's fp16 state dict. Deltas: against the same network in "
        "fp32 on the exporting CPU. Latency: ONNX Runtime, one thread, one face; speed-up against the trained "
        "run's torch model timed in the same export. Reproduce: `python -m fer_core compare --json`."
    )

st.subheader("The smallest file per family that keeps an accuracy")
y_keep = y if y in shown else "public_acc"
level = st.number_input(
    f"{Y_AXES.get(y_keep, y_keep)} to keep", 0.0, 1.0, KEEPS[2], 0.005, format="%.3f",
    help="per family, the fewest bytes of any file (trained runs at their fp16 state dict, ONNX variants at their "
    "file) whose accuracy is at least this",
)  # fmt: skip
small = smallest_files(shown, [level], y=y_keep)
if small.empty:
    st.caption(f"No completed run or variant reaches {level:.3f}.")
else:
    st.dataframe(
        small.drop(columns="keeps").style.format({"bytes": "{:,}", "params": "{:,}", "acc": "{:.4f}"}),
        hide_index=True,
    )
    st.caption(f"Reproduce: `python -m fer_core compare --y {y_keep} --keeps {level:g}`.")

done = shown[shown["status"] == "completed"].sort_values("params")
ids = done["run_id"].tolist()
if not ids:
    st.stop()
label = dict(zip(done["run_id"], done["family"] + " w" + done["width"].map("{:g}".format) + " · " + done["run_id"]))

st.subheader("Learning curves")
picked = st.multiselect("runs", ids, default=ids[:2], format_func=label.get)
st.plotly_chart(learning_curves({r: find_run(r).metrics() for r in picked}), config=PNG_CONFIG)

st.subheader("One run in detail")
one = st.selectbox("run", ids, format_func=label.get)
s = find_run(one).summary()
split = st.radio("split", ["public", "private"], horizontal=True)
c1, c2 = st.columns(2)
c1.plotly_chart(confusion(s[f"confusion_{split}"], f"confusion ({split})"), config=PNG_CONFIG)
c2.plotly_chart(per_class(s[f"per_class_{split}"], f"accuracy per expression ({split})"), config=PNG_CONFIG)

st.subheader("Two runs side by side")
pair = st.multiselect(
    "pick two", ids, default=ids[:1] + ids[-1:] if len(ids) > 1 else ids, max_selections=2, format_func=label.get
)
if len(pair) == 2:
    try:
        cards = two_run_card(pair)
    except FerError as e:
        st.error(str(e))
        cards = []
    for col, card in zip(st.columns(2), cards):
        with col:
            st.markdown(f"**{card['family']} w{card['width']:g}** · `{card['run_id']}`")
            st.metric("private accuracy", f"{card['private_acc']:.4f}", help="evaluated once, after training")
            st.write(card_text(card))
            st.caption(card["lineage"])
            st.code(card["architecture"], language=None)

st.subheader("All runs")
st.dataframe(shown, hide_index=True)
st.download_button("Download CSV", shown.to_csv(index=False).encode(), "fer-lab-runs.csv", "text/csv")
