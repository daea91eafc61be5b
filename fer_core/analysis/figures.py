"""Plotly figures, built in one place so the dashboard and exported PNGs draw exactly the same thing.

plotly is imported inside each function: the rest of ``fer_core`` (training above all) never needs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fer_core.analysis.compare import BYTE_LIMITS, X_AXES, Y_AXES, family_table, pareto_frontier
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


DATA_SYMBOLS = {"fer2013": "circle", "synthetic": "diamond", "custom": "square"}
#: runs that learnt from other runs get their own marker (whatever their data): star distilled, triangle fine-tuned
LINEAGE_SYMBOLS = {"distilled": "star", "fine-tuned": "triangle-up", "distilled + fine-tuned": "star-triangle-up"}
#: ONNX variants (derived runs) get their own marker: same network as the parent, another number format
FORMAT_SYMBOLS = {"onnx-fp32": "square", "onnx-fp16": "hexagon", "onnx-int8": "x"}
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


def scatter(df: pd.DataFrame, x: str = "params", y: str = "public_acc", frontier: bool = True, title: str = ""):
    """Accuracy against model size: colour by family, marker by data source, open markers for running runs,
    a Pareto frontier per family, and the course's byte limits when x is a size in bytes."""
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
        symbol = FORMAT_SYMBOLS.get(fmt) or LINEAGE_SYMBOLS.get(kind, DATA_SYMBOLS.get(data, "x"))
        symbol += "-open" if live else ""
        fig.add_trace(
            go.Scatter(
                x=g[x],
                y=g[y],
                mode="markers",
                name=f"{family} · {data}"
                + ("" if kind == "plain" else f" · {kind}")
                + ("" if fmt == "torch" else f" · {fmt}")
                + (" · running" if live else ""),
                marker={
                    "color": family_color(family),
                    "symbol": symbol,
                    "size": 11,
                    "line": {"width": 1, "color": "white"} if not live else {"width": 2},
                },
                hovertext=_hover(g, y),
                hoverinfo="text",
                customdata=g["run_id"],
            )
        )
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
                        hoverinfo="skip",
                    )
                )
    if x.startswith("bytes"):
        for label, limit in BYTE_LIMITS.items():
            fig.add_vline(
                x=limit, line_dash="dash", line_color="gray", annotation_text=label, annotation_position="top"
            )
    lo, hi = (max(0.0, d[y].min() - 0.05), min(1.0, d[y].max() + 0.05)) if not d.empty else (0.0, 1.0)
    fig.update_layout(
        title=title or None,
        xaxis={"title": X_AXES.get(x, x) + " (log)", "type": "log"},
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
