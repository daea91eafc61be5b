"""Plotly figures, built in one place so the dashboard and exported PNGs draw exactly the same thing.

plotly is imported inside each function: the rest of ``fer_core`` (training above all) never needs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fer_core.analysis.compare import BYTE_LIMITS, X_AXES, Y_AXES, pareto_frontier
from fer_core.analysis.families import family_table
from fer_core.common import EMOTIONS, FerError
from fer_core.models import list_models

#: The seed's two families keep their colours; any other registered family gets the next free one, in name order.
FAMILY_COLORS = {"mobilenet": "#1f77b4", "cnn": "#d62728"}
_PALETTE = ["#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


def family_color(family: str) -> str:
    """A stable colour per family: fixed for mobilenet and cnn, then from a palette by registration name."""
    if family in FAMILY_COLORS:
        return FAMILY_COLORS[family]
    others = [f for f in list_models() if f not in FAMILY_COLORS]
    i = others.index(family) if family in others else len(others) + sum(map(ord, family))
    return _PALETTE[i % len(_PALETTE)]


#: the marker says how a run was made: trained from scratch, distilled from teachers, fine-tuned from a run
LINEAGE_SYMBOLS = {
    "plain": "circle",
    "distilled": "star",
    "fine-tuned": "triangle-up",
    "distilled + fine-tuned": "star-triangle-up",
    "pruned": "diamond",
    "pruned + distilled": "star-diamond",
}
#: the fill says the number format: torch weights filled; ONNX variants of a run open (fp32), open with a dot
#: (fp16), or filled with a white dot (int8; quantization-aware int8 also has a dark outline)
FORMAT_FILLS = {
    "torch": "",
    "onnx-fp32": "-open",
    "onnx-fp16": "-open-dot",
    "onnx-int8": "-dot",
    "onnx-int8-qat": "-dot",
}
#: outlines that differ from the family colour's
FORMAT_OUTLINES = {"torch": {"width": 1, "color": "white"}, "onnx-int8-qat": {"width": 3, "color": "#222"}}
#: what the legend calls them
KIND_NAMES = {"plain": "trained", "distilled": "distilled", "fine-tuned": "fine-tuned"}
FORMAT_NAMES = {
    "torch": "torch weights",
    "onnx-fp32": "ONNX fp32",
    "onnx-fp16": "ONNX fp16",
    "onnx-int8": "ONNX int8",
    "onnx-int8-qat": "ONNX int8, QAT",
}
#: the download button of every figure saves a PNG at this scale
PNG_CONFIG = {"toImageButtonOptions": {"format": "png", "scale": 2, "filename": "fer-lab"}, "displaylogo": False}


def _fmt(r, key: str, f: str = "{:,.0f}") -> str:
    v = r.get(key)
    return f.format(v) if isinstance(v, (int, float)) and pd.notna(v) else "-"


def _hover(df: pd.DataFrame, y: str) -> list[str]:
    out = []
    for _, r in df.iterrows():
        status = "" if r.get("status") == "completed" else f" ({r.get('status')}, epoch {_fmt(r, 'epochs_done')})"
        out.append(
            f"<b>{r['family']} w{r['width']:g}</b>{status}<br>{Y_AXES.get(y, y)}: {_fmt(r, y, '{:.4f}')}"
            f"<br>params {_fmt(r, 'params')} · {_fmt(r, 'bytes')} B ({r.get('format') or 'torch'}"
            f"{' fp16 state dict' if (r.get('format') or 'torch') == 'torch' else ' file'}) · MACs {_fmt(r, 'macs')}"
            + (f"<br>variant of {r['derived_from']}" if isinstance(r.get("derived_from"), str) else "")
            + f"<br>epochs {_fmt(r, 'epochs_done')}/{_fmt(r, 'epochs')} · seed {_fmt(r, 'seed')}"
            f" · recipe {r.get('recipe') or '-'}<br>data {r.get('data')} · {r['run_id']}"
            + (f"<br>{r['lineage']}" if r.get("lineage_kind", "plain") != "plain" and r.get("lineage") else "")
        )
    return out


def marker_symbol(kind: str, fmt: str) -> str:
    """The Plotly marker of a run: its shape from how it was made, its fill from its number format."""
    return LINEAGE_SYMBOLS.get(kind, "circle") + FORMAT_FILLS.get(fmt, "-open")


def marker_line(fmt: str, color: str) -> dict:
    """The marker's outline: the family's colour, except where the format has its own."""
    return FORMAT_OUTLINES.get(fmt, {"width": 1.5, "color": color})


def _legend(fig, d: pd.DataFrame) -> None:
    """A short legend: one entry per family (colour), per way of making and per format (gray markers) present,
    and the frontier's line; clicking a family's entry hides its runs and frontier."""
    import plotly.graph_objects as go

    def entry(name, color, symbol, group, title=None, mode="markers", line=None, outline=None):
        fig.add_trace(
            go.Scatter(
                x=[None], y=[None], mode=mode, name=name, legendgroup=group, legendgrouptitle_text=title,
                marker={"color": color, "symbol": symbol, "size": 11, "line": outline or marker_line("", color)},
                line=line, hoverinfo="skip",
            )
        )  # fmt: skip

    for i, family in enumerate(sorted(d["family"].dropna().unique())):
        entry(family, family_color(family), "circle", family, "family" if i == 0 else None)
    kinds = [k for k in LINEAGE_SYMBOLS if k in set(d["lineage_kind"])]
    if kinds != ["plain"]:
        for i, kind in enumerate(kinds):
            entry(KIND_NAMES.get(kind, kind), "gray", LINEAGE_SYMBOLS[kind], "_kind", "made by" if i == 0 else None)
    formats = [f for f in FORMAT_FILLS if f in set(d["format"])]
    if formats != ["torch"]:
        for i, fmt in enumerate(formats):
            outline = FORMAT_OUTLINES.get(fmt) if fmt != "torch" else None
            title = "format" if i == 0 else None
            entry(FORMAT_NAMES[fmt], "gray", "circle" + FORMAT_FILLS[fmt], "_format", title, outline=outline)
    if (d["data"] == "synthetic").any() and (d["data"] != "synthetic").any():
        fig.add_annotation(text="small markers: synthetic data", xref="paper", yref="paper", x=1, y=1.02,
                           showarrow=False, xanchor="right", font={"size": 11, "color": "gray"})  # fmt: skip
    if d["_live"].any():
        fig.add_annotation(text="faint: still running (best so far)", xref="paper", yref="paper", x=0, y=1.02,
                           showarrow=False, xanchor="left", font={"size": 11, "color": "gray"})  # fmt: skip


def _x_title(df: pd.DataFrame, x: str) -> str:
    """The x axis's title; a browser's latency says which browser and device measured it."""
    device = df.attrs.get("browser_device") if x == "latency_ms_browser" else None
    return X_AXES.get(x, x) + (f", {device}" if device else "") + " (log)"


def scatter(df: pd.DataFrame, x: str = "params", y: str = "public_acc", frontier: bool = True, title: str = ""):
    """Accuracy against model size. Colour: the family; marker: how the run was made (trained, distilled,
    fine-tuned, pruned); fill: the number format (torch filled, ONNX variants open or dotted); faint: still running;
    small: synthetic data. A dotted Pareto frontier per family. The legend has one entry per family, per way of
    making and per format present (not one per combination), and the course's byte limits show when x is a size
    in bytes."""
    import plotly.graph_objects as go

    fig = go.Figure()
    d = df.dropna(subset=[x, y]) if not df.empty else df
    if not d.empty and "lineage_kind" not in d:
        d = d.assign(lineage_kind="plain")
    if not d.empty and "format" not in d:
        d = d.assign(format="torch")
    keys = ["family", "data", "lineage_kind", "format", "_live"]
    if not d.empty:
        d = d.assign(_live=d["status"].eq("running"), format=d["format"].fillna("torch"))
    groups = d.groupby(keys) if not d.empty else []
    for (family, data, kind, fmt, live), g in groups:
        fig.add_trace(
            go.Scatter(
                x=g[x],
                y=g[y],
                mode="markers",
                name=f"{family} · {data} · {kind} · {fmt}" + (" · running" if live else ""),
                legendgroup=family,
                showlegend=False,
                opacity=0.45 if live else 1.0,
                marker={
                    "color": family_color(family),
                    "symbol": marker_symbol(kind, fmt),
                    "size": 7 if data == "synthetic" else 11,
                    "line": marker_line(fmt, family_color(family)),
                },
                hovertext=_hover(g, y),
                hoverinfo="text",
                customdata=g["run_id"],
            )
        )
    if not d.empty:
        _legend(fig, d)
    if frontier and not d.empty:
        done = d[d["status"] == "completed"]
        for (family, data), g in done.groupby(["family", "data"]):
            f = pareto_frontier(g, x, y)
            if len(f) > 1:
                fig.add_trace(
                    go.Scatter(
                        x=f[x],
                        y=f[y],
                        mode="lines",
                        line={"color": family_color(family), "width": 1.5, "dash": "dot"},
                        name=f"{family} · {data} frontier",
                        legendgroup=family,
                        showlegend=False,
                        hoverinfo="skip",
                    )
                )
    if any(t.mode == "lines" for t in fig.data):
        fig.add_trace(
            go.Scatter(x=[None], y=[None], mode="lines", name="Pareto frontier", legendgroup="_frontier",
                       line={"color": "gray", "width": 1.5, "dash": "dot"}, hoverinfo="skip")
        )  # fmt: skip
    if x.startswith("bytes"):
        for label, limit in BYTE_LIMITS.items():
            fig.add_vline(
                x=limit, line_dash="dash", line_color="gray", annotation_text=label, annotation_position="top"
            )
    lo, hi = (max(0.0, d[y].min() - 0.05), min(1.0, d[y].max() + 0.05)) if not d.empty else (0.0, 1.0)
    fig.update_layout(
        title=title or None,
        xaxis={"title": _x_title(df, x), "type": "log"},
        yaxis={"title": Y_AXES.get(y, y), "tickformat": ".0%", "range": [lo, hi]},
        legend={"orientation": "h", "y": -0.2},
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        height=480,
    )
    return fig


def learning_curves(metrics: dict[str, list[dict]]):
    """Public and train accuracy per epoch for each run (solid: public, dotted: train)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for rid, rows in metrics.items():
        if not rows:
            continue
        ep = [r["epoch"] for r in rows]
        fig.add_trace(go.Scatter(x=ep, y=[r["public_acc"] for r in rows], mode="lines", name=f"{rid} public"))
        fig.add_trace(
            go.Scatter(x=ep, y=[r["train_acc"] for r in rows], mode="lines", line={"dash": "dot"}, name=f"{rid} train")
        )
    fig.update_layout(
        xaxis_title="epoch",
        yaxis={"title": "accuracy", "tickformat": ".1%"},
        height=380,
        legend={"orientation": "h", "y": -0.25},
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
    )
    return fig


def confusion(cm: list[list[int]], title: str = ""):
    """Confusion matrix: colour = share of the true class, text = counts."""
    import plotly.graph_objects as go

    m = np.asarray(cm, dtype=float)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig = go.Figure(
        go.Heatmap(
            z=share,
            x=list(EMOTIONS),
            y=list(EMOTIONS),
            colorscale="Blues",
            zmin=0,
            zmax=1,
            text=m.astype(int),
            texttemplate="%{text}",
            hovertemplate="true %{y}, predicted %{x}: %{text}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title or None,
        xaxis_title="predicted",
        yaxis={"title": "true", "autorange": "reversed"},
        height=420,
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
    )
    return fig


def per_class(acc: dict[str, float | None], title: str = ""):
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=list(acc), y=[v if v is not None else 0 for v in acc.values()]))
    fig.update_layout(
        title=title or None,
        yaxis={"tickformat": ".0%", "range": [0, 1]},
        height=300,
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
    )
    return fig


def probabilities(probs: dict[str, float], title: str = ""):
    """One model's probabilities for one face, as horizontal bars (the top one highlighted)."""
    import plotly.graph_objects as go

    top = max(probs, key=probs.get)
    fig = go.Figure(
        go.Bar(
            x=list(probs.values()),
            y=list(probs),
            orientation="h",
            marker_color=["#2ca02c" if k == top else "#9aa5b1" for k in probs],
            text=[f"{v:.0%}" for v in probs.values()],
            textposition="outside",
        )
    )
    fig.update_layout(
        title=title or None,
        xaxis={"range": [0, 1.15], "visible": False},
        yaxis={"autorange": "reversed"},
        height=230,
        margin={"l": 10, "r": 10, "t": 30 if title else 5, "b": 5},
    )
    return fig


def export_png(fig, path, width: int = 1000, height: int = 560) -> None:
    """Write a figure as PNG (kaleido, which drives a local Chrome or Chromium)."""
    try:
        fig.write_image(str(path), width=width, height=height, scale=2)
    except Exception as e:  # no kaleido, or no browser for it to drive
        raise FerError(
            f"PNG export failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); it needs the "
            "kaleido package and Chrome or Chromium installed"
        ) from None


def family_figure(table: pd.DataFrame, y: str = "private_acc", title: str = ""):
    """Which family wins at each size: each family's mean accuracy at each budget it has runs near, with the
    sample sd over seeds as error bars (none for one seed), on a log parameter axis."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for family, g in table.groupby("family") if not table.empty else []:
        g = g.sort_values("params")
        sd = g["sd"].astype(float).fillna(0.0)
        fig.add_trace(
            go.Scatter(
                x=g["params"],
                y=g["mean"],
                mode="lines+markers",
                name=family,
                marker={"color": family_color(family), "size": 10},
                line={"color": family_color(family)},
                error_y={"type": "data", "array": sd, "visible": True},
                hovertext=[
                    f"{family} · {int(r['params']):,} params · {r['mean']:.4f}"
                    + (f" ± {r['sd']:.4f}" if pd.notna(r["sd"]) else "")
                    + f" · {r['runs']} runs"
                    for _, r in g.iterrows()
                ],
                hoverinfo="text",
            )
        )
    fig.update_layout(
        title=title,
        xaxis={"title": X_AXES["params"], "type": "log"},
        yaxis={"title": Y_AXES[y]},
        template="plotly_white",
        legend={"title": "family"},
    )
    return fig


def report_figures(df: pd.DataFrame, out_dir, data: str = "fer2013", y: str = "private_acc") -> list:
    """The report's figures as PNG files: accuracy against parameters, and against bytes on disk (trained
    runs at their fp16 state dict's size, ONNX variants at their file's), and which family wins at each size."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = df[(df["data"] == data) & (df["status"] == "completed")]
    if "bytes" not in d:  # a table from before deployable variants: trained runs only, at their fp16 size
        d = d.assign(bytes=d["bytes_fp16"])
    written = []
    for x, name in (("params", "accuracy_vs_params.png"), ("bytes", "accuracy_vs_bytes.png")):
        fig = scatter(d, x, y, title=f"{Y_AXES[y]} against {X_AXES[x]} · {data} · {len(d)} runs")
        export_png(fig, out / name)
        written.append(out / name)
    table = family_table(d[d["recipe"].fillna("seed") == "seed"], y=y) if not d.empty else family_table(d)
    name = "families_at_budgets.png"
    title = f"which family wins at each size · {Y_AXES[y]}, mean ± sd over seeds · seed protocol · {data}"
    export_png(family_figure(table, y, title), out / name)
    written.append(out / name)
    return written
