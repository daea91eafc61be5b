"""Comparisons over the runs table: Pareto frontiers, the matched-budget gap, two-run cards.

Plain pandas in, plain pandas out: the dashboard and ``python -m fer_core compare`` print the same numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from fer_core.serving.browser import latest_device_latency
from fer_core.serving.models import load_model
from fer_core.store.runs import lineage_text, table

#: What the scatters can put on the x axis: column -> axis title (log scale for all).
X_AXES = {
    "params": "trainable parameters",
    "bytes": "file size on disk (bytes; ONNX variants at their own size)",
    "bytes_fp16": "saved size, fp16 (bytes)",
    "bytes_fp32": "saved size, fp32 (bytes)",
    "macs": "multiply-accumulates per image",
    "latency_ms_cpu": "CPU latency, batch 1 (ms)",
    "latency_ms_browser": "latency on this device, in the browser (ms per face)",
}
Y_AXES = {"public_acc": "public accuracy", "private_acc": "private accuracy"}
#: The course's size limits for the compressed model (bytes of the saved file).
BYTE_LIMITS = {"strong baseline (225,000 B)": 225_000, "simple baseline (650,000 B)": 650_000}


def runs_frame(df: pd.DataFrame | None = None) -> pd.DataFrame:
    """The runs table with what the comparisons need: a y value for running runs (best public so far)."""
    if df is None:
        df = table()
    df = df.copy()
    if df.empty:
        return df
    live = df["status"].eq("running")
    if "best_public_acc" in df.columns:
        df.loc[live, "public_acc"] = df.loc[live, "best_public_acc"]
    df["data"] = df["data"].fillna("unknown")
    df["format"] = df["format"].fillna("torch") if "format" in df else "torch"
    if "bytes_fp16" in df:
        df["bytes"] = df["bytes"].fillna(df["bytes_fp16"]) if "bytes" in df else df["bytes_fp16"]
    df["lineage_kind"] = [lineage_kind(r) for _, r in df.iterrows()]
    return with_browser_latency(df)


def with_browser_latency(df: pd.DataFrame, path=None) -> pd.DataFrame:
    """``latency_ms_browser``: each run's ms per face measured by the Try-it page's in-browser live mode on the
    device that reported last (``df.attrs["browser_device"]`` names it); absent when none has reported."""
    device, ms = latest_device_latency(path)
    if device and ms and "run_id" in df:
        df["latency_ms_browser"] = df["run_id"].map(ms)
        df.attrs["browser_device"] = device
    return df


def lineage_kind(row) -> str:
    """How a run was made: plain, pruned (channels cut from a trained run; distilled too, if taught), distilled
    (has teachers), fine-tuned (started from a run), or distilled + fine-tuned."""
    taught = isinstance(row.get("teacher"), str) and bool(row.get("teacher"))
    if isinstance(row.get("pruned_from"), str) and row.get("pruned_from"):
        return "pruned + distilled" if taught else "pruned"
    tuned = isinstance(row.get("init_run"), str) and bool(row.get("init_run"))
    return {(False, False): "plain", (True, False): "distilled", (False, True): "fine-tuned"}.get(
        (taught, tuned), "distilled + fine-tuned"
    )


def pareto_frontier(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The runs no other run beats: smaller (or equal) x and higher y. Sorted by x."""
    d = df.dropna(subset=[x, y]).sort_values([x, y], ascending=[True, False])
    keep, best = [], -math.inf
    for idx, val in d[y].items():
        if val > best:
            keep.append(idx)
            best = val
    return d.loc[keep]


EDGE = 0.10  # how far (as a share of parameters) beyond the other family's runs a matched budget may reach
EDGE_LOG = math.log10(1 + EDGE)


def _curve(df: pd.DataFrame, y: str) -> tuple[np.ndarray, np.ndarray]:
    g = df.groupby("params")[y].mean().sort_index()
    return np.log10(g.index.to_numpy(dtype=float)), g.to_numpy(dtype=float)


def matched_budget_gap(df: pd.DataFrame, y: str = "private_acc", a: str = "mobilenet", b: str = "cnn") -> pd.DataFrame:
    """Accuracy of family ``a`` minus family ``b`` at equal parameters, for every ``a`` model size.

    Like is compared with like: separately for each data source and each recipe (a synthetic run is never
    compared with a FER2013 one, nor a ``better`` run with a ``seed`` one), and on plain runs only: a distilled
    or fine-tuned run learnt from another model, so it answers a different question (the Compare page and
    the report show those against their teachers instead). ONNX variants are left out too: each is its
    parent in another number format, so it would count one trained network twice; what a format costs is
    in :func:`variants_table`, parent against variant.

    Returns one row per (data, recipe, width of ``a``).
    """
    keys = ["data", "recipe"]
    cols = keys + _gap_columns(a, b)
    if df.empty:
        return pd.DataFrame(columns=cols)
    d = df.copy()
    d["recipe"] = d["recipe"].fillna("seed") if "recipe" in d else "seed"
    if "lineage_kind" not in d:
        d["lineage_kind"] = [lineage_kind(r) for _, r in d.iterrows()]
    d = d[d["lineage_kind"] == "plain"]
    if "format" in d:
        d = d[d["format"].fillna("torch") == "torch"]
    parts = [_gap_one_source(g, y, a, b).assign(data=k[0], recipe=k[1]) for k, g in d.groupby(keys)]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(columns=cols)
    out = pd.concat(parts, ignore_index=True)
    return out[keys + [c for c in out.columns if c not in keys]]


def pruned_vs_scratch(df: pd.DataFrame, y: str = "private_acc", scratch_recipe: str = "seed") -> pd.DataFrame:
    """Pruned minus scratch at equal parameters: each pruned run (torch weights) against its family's plain runs
    trained from scratch on the same data with ``scratch_recipe`` (the seed protocol: the reference and the
    study), their mean accuracy interpolated on log10(params) at the pruned run's size (all seeds pooled; a
    size outside their range is not extrapolated). ``scratch_sd`` is the seeds' sd at the nearest scratch size
    that has several, so a difference can be read against the noise.

    Returns one row per pruned run: its parent's size and accuracy, its size, fine-tuning epochs, criterion,
    steps, its accuracy, the scratch curve's, and ``diff`` (pruned minus scratch).
    """
    cols = [
        "run_id",
        "family",
        "data",
        "parent",
        "parent_params",
        "parent_acc",
        "params",
        "epochs",
        "importance",
        "steps",
        "pruned_acc",
        "scratch_acc_interp",
        "scratch_sd",
        "diff",
    ]
    if df.empty or "pruned_from" not in df:
        return pd.DataFrame(columns=cols)
    d = df[df["status"] == "completed"].dropna(subset=[y, "params"]).copy()
    d["recipe"] = d["recipe"].fillna("seed") if "recipe" in d else "seed"
    d["format"] = d["format"].fillna("torch") if "format" in d else "torch"
    if "lineage_kind" not in d:
        d["lineage_kind"] = [lineage_kind(r) for _, r in d.iterrows()]
    d = d[d["format"] == "torch"]
    pruned = d[d["lineage_kind"].str.startswith("pruned")]
    scratch = d[(d["lineage_kind"] == "plain") & (d["recipe"] == scratch_recipe)]
    by_id = d.set_index("run_id")
    rows = []
    for _, r in pruned.iterrows():
        same = scratch[(scratch["family"] == r["family"]) & (scratch["data"] == r["data"])]
        xs, ys = _curve(same, y) if same["params"].nunique() >= 2 else (np.array([]), np.array([]))
        lp = math.log10(float(r["params"]))
        if len(xs) < 2 or lp < xs[0] - 1e-9 or lp > xs[-1] + 1e-9:
            continue
        other = float(np.interp(lp, xs, ys))
        spread = same.groupby("params")[y].agg(["std", "count"]).reset_index()
        spread = spread[spread["count"] > 1]
        sd = (
            float(spread.iloc[(np.log10(spread["params"].astype(float)) - lp).abs().argmin()]["std"])
            if not spread.empty
            else None
        )
        parent = by_id.loc[r["pruned_from"]] if r["pruned_from"] in by_id.index else None
        rows.append(
            {
                "run_id": r["run_id"],
                "family": r["family"],
                "data": r["data"],
                "parent": r["pruned_from"],
                "parent_params": int(parent["params"]) if parent is not None else None,
                "parent_acc": float(parent[y]) if parent is not None else None,
                "params": int(r["params"]),
                "epochs": int(r["epochs"]) if pd.notna(r.get("epochs")) else None,
                "importance": r.get("prune_importance"),
                "steps": int(r["prune_steps"]) if pd.notna(r.get("prune_steps")) else None,
                "pruned_acc": float(r[y]),
                "scratch_acc_interp": other,
                "scratch_sd": sd,
                "diff": float(r[y]) - other,
            }
        )
    return pd.DataFrame(rows, columns=cols).sort_values(["family", "params"]).reset_index(drop=True)


def pairwise_gaps(df: pd.DataFrame, y: str = "private_acc", families: list[str] | None = None) -> pd.DataFrame:
    """:func:`matched_budget_gap` for every pair of families present (A minus B, A before B in name order)."""
    present = sorted(df["family"].dropna().astype(str).unique()) if not df.empty else []  # a damaged row: no family
    fams = [f for f in (families or present) if f in present]
    parts = []
    for i, a in enumerate(fams):
        for b in fams[i + 1 :]:
            g = matched_budget_gap(df, y=y, a=a, b=b)
            if not g.empty:
                g = g.rename(columns={f"{a}_acc": "a_acc", f"{b}_acc_interp": "b_acc_interp"})
                parts.append(g.assign(a=a, b=b))
    if not parts:
        return pd.DataFrame(columns=["a", "b", "data", "recipe", "params", "a_acc", "b_acc_interp", "gap_mean"])
    out = pd.concat(parts, ignore_index=True)
    return out[["a", "b"] + [c for c in out.columns if c not in ("a", "b")]]


def _gap_one_source(df: pd.DataFrame, y: str, a: str, b: str) -> pd.DataFrame:
    """The gap on one data source.

    ``b``'s accuracy at ``a``'s parameter count is interpolated linearly on log10(params) between ``b``'s
    runs of the same seed (all seeds pooled when that seed has no ``b`` runs). Sizes outside ``b``'s range are
    not extrapolated, except within :data:`EDGE` of its end, where ``b``'s end run stands for it (the budget
    solver places every family within a few percent of a budget, so 19,311 parameters must meet 19,457:
    ``b_at`` says ``nearest`` there and ``interpolated`` elsewhere). Several seeds give a mean and a sample
    standard deviation (``gap_sd``: ``a``'s seeds against ``b``'s curve, so ``b``'s own seed spread is not in it).
    Where ``b`` too has several seeds at one size within :data:`EDGE` of ``a``'s (``b_seeds``), ``gap_se`` is the
    standard error of the difference of the two means, both families' seed spreads in it (Welch's): a gap
    under about two of it is not a result.
    """
    d = df[(df["status"] == "completed")].dropna(subset=[y, "params"])
    fa, fb = d[d["family"] == a], d[d["family"] == b]
    rows = []
    if fa.empty or fb.empty:
        return pd.DataFrame(columns=_gap_columns(a, b))
    pooled = _curve(fb, y)
    b_sizes = fb.groupby("params")[y]
    for width, grp in fa.groupby("width"):
        params = float(grp["params"].iloc[0])
        gaps, accs, others, nearest = [], [], [], False
        for _, r in grp.iterrows():
            same_seed = fb[fb["seed"] == r["seed"]]
            xs, ys = _curve(same_seed, y) if same_seed["params"].nunique() >= 2 else pooled
            lp = math.log10(params)
            if not len(xs) or lp < xs[0] - EDGE_LOG - 1e-9 or lp > xs[-1] + EDGE_LOG + 1e-9:
                continue
            nearest = nearest or lp < xs[0] - 1e-9 or lp > xs[-1] + 1e-9
            other = float(np.interp(lp, xs, ys))  # np.interp holds the end value beyond the range
            gaps.append(r[y] - other)
            accs.append(r[y])
            others.append(other)
        if gaps:
            b_seeds, se = _b_spread(b_sizes, params), None
            if len(gaps) > 1 and b_seeds is not None:
                se = math.sqrt(np.var(accs, ddof=1) / len(accs) + b_seeds[1] ** 2 / b_seeds[0])
            rows.append(
                {
                    "width": width,
                    "params": int(params),
                    f"{a}_acc": float(np.mean(accs)),
                    f"{b}_acc_interp": float(np.mean(others)),
                    "gap_mean": float(np.mean(gaps)),
                    "gap_sd": float(np.std(gaps, ddof=1)) if len(gaps) > 1 else None,
                    "seeds": len(gaps),
                    "b_at": "nearest" if nearest else "interpolated",
                    "b_seeds": b_seeds[0] if b_seeds else None,
                    "gap_se": se,
                }
            )
    return pd.DataFrame(rows).sort_values("params").reset_index(drop=True) if rows else pd.DataFrame(rows)


def _gap_columns(a: str, b: str) -> list[str]:
    """A gap table's columns (``a``'s and ``b``'s accuracies named after them)."""
    accs = [f"{a}_acc", f"{b}_acc_interp"]
    return ["width", "params", *accs, "gap_mean", "gap_sd", "seeds", "b_at", "b_seeds", "gap_se"]


def _b_spread(b_sizes, params: float) -> tuple[int, float] | None:
    """The other family's runs at its size nearest ``params`` (on log-parameters, within :data:`EDGE`): how many,
    and their sample sd; None when fewer than two runs stand there."""
    lp = math.log10(params)
    near = min(b_sizes.groups, key=lambda p: abs(math.log10(p) - lp))
    accs = b_sizes.get_group(near).astype(float)
    if abs(math.log10(near) - lp) > EDGE_LOG + 1e-9 or len(accs) < 2:
        return None
    return len(accs), float(accs.std(ddof=1))


VARIANT_COLUMNS = [
    "parent",
    "format",
    "params",
    "bytes",
    "bytes_ratio",
    "public_acc",
    "public_delta",
    "private_acc",
    "private_delta",
    "latency_ms_cpu",
    "speedup_vs_torch",
    "run_id",
]


def variants_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every ONNX variant beside its parent: bytes (and their ratio to the parent's fp16 state dict), accuracy
    change against the same network in fp32 (evaluated in the same export), and CPU latency against the
    parent's torch model timed in the same export."""
    if df.empty or "derived_from" not in df:
        return pd.DataFrame(columns=VARIANT_COLUMNS)
    v = df[df["derived_from"].notna() & df["status"].eq("completed")]
    if v.empty:
        return pd.DataFrame(columns=VARIANT_COLUMNS)
    parents = df.set_index("run_id")
    rows = []
    for _, r in v.iterrows():
        p = parents.loc[r["derived_from"]] if r["derived_from"] in parents.index else None
        pb = p["bytes"] if p is not None else np.nan
        rows.append(
            {
                "parent": r["derived_from"],
                "format": r["format"],
                "params": r["params"],
                "bytes": r["bytes"],
                "bytes_ratio": r["bytes"] / pb if pb and pd.notna(pb) else np.nan,
                "public_acc": r["public_acc"],
                "public_delta": r["public_acc"] - _baseline(r, "public"),
                "private_acc": r["private_acc"],
                "private_delta": r["private_acc"] - _baseline(r, "private"),
                "latency_ms_cpu": r["latency_ms_cpu"],
                "speedup_vs_torch": r.get("torch_latency_ms_cpu", np.nan) / r["latency_ms_cpu"],
                "run_id": r["run_id"],
            }
        )
    return pd.DataFrame(rows, columns=VARIANT_COLUMNS).sort_values(["parent", "bytes"]).reset_index(drop=True)


#: accuracy levels the smallest-file table answers for unless told (private accuracy of the shipped runs spans
#: about 0.55 to 0.64)
KEEPS = (0.55, 0.58, 0.6, 0.62)
SMALLEST_COLUMNS = ["family", "data", "keeps", "bytes", "format", "params", "acc", "run_id"]


def smallest_files(df: pd.DataFrame, keeps, y: str = "private_acc") -> pd.DataFrame:
    """Per family and data source, the fewest bytes that keep ``y`` at or above each level in ``keeps``: trained
    runs at their fp16 state dict's size, ONNX variants at their file's (completed runs only). A family with no
    file that good has no row for that level."""
    levels = [float(k) for k in (keeps if np.iterable(keeps) else [keeps])]
    if df.empty or y not in df or "bytes" not in df:
        return pd.DataFrame(columns=SMALLEST_COLUMNS)
    d = df[df["status"].eq("completed") & df["bytes"].notna() & df[y].notna()]
    if "format" not in d:
        d = d.assign(format="torch")
    rows = []
    for (family, data), g in d.groupby(["family", "data"]):
        for level in levels:
            ok = g[g[y] >= level]
            if ok.empty:
                continue
            r = ok.sort_values(["bytes", y], ascending=[True, False]).iloc[0]
            rows.append(
                {
                    "family": family,
                    "data": data,
                    "keeps": level,
                    "bytes": int(r["bytes"]),
                    "format": r["format"] if isinstance(r["format"], str) else "torch",
                    "params": r["params"],
                    "acc": r[y],
                    "run_id": r["run_id"],
                }
            )
    out = pd.DataFrame(rows, columns=SMALLEST_COLUMNS)
    return out.sort_values(["data", "keeps", "bytes"]).reset_index(drop=True) if rows else out


def _baseline(row, split: str) -> float:
    """The accuracy a variant is measured against: its network in fp32 on the exporting CPU, else the parent's."""
    for key in (f"fp32_{split}_acc", f"parent_{split}_acc"):
        v = row.get(key)
        if isinstance(v, (int, float)) and pd.notna(v):
            return float(v)
    return np.nan


def two_run_card(run_ids: list[str]) -> list[dict]:
    """Side by side: architecture print, params, bytes, public/private accuracy (the report's question 1)."""
    cards = []
    for rid in run_ids:
        lm = load_model(rid)
        s = lm.summary
        cards.append(
            {
                "run_id": lm.name,
                "family": lm.family,
                "width": lm.width,
                "params": s.get("params"),
                "state_values": s.get("state_values"),
                "bytes_fp32": s.get("bytes_fp32"),
                "bytes_fp16": s.get("bytes_fp16"),
                "macs": s.get("macs"),
                "public_acc": s.get("public_acc"),
                "private_acc": s.get("private_acc"),
                "epochs_done": s.get("epochs_done"),
                "recipe": s.get("recipe"),
                "lineage": lineage_text(s),
                "selected_weights": s.get("selected_weights", "raw"),
                "data": s.get("data"),
                "format": lm.format,
                "bytes": s.get("bytes") or s.get("bytes_fp16"),
                "derived_from": s.get("derived_from"),
                "architecture": lm.architecture,
            }
        )
    return cards


def card_text(card: dict) -> str:
    """One line of a two-run card's numbers (a variant has no state-dict sizes, only its file's bytes)."""

    def num(key: str, unit: str) -> str | None:
        v = card.get(key)
        return f"{v:,} {unit}" if isinstance(v, (int, float)) else None

    variant = card.get("format", "torch") != "torch"
    parts = [
        f"public {card['public_acc']:.4f}",
        num("params", "params"),
        num("state_values", "values with BatchNorm buffers"),
        num("bytes", f"B {card['format']} file") if variant else num("bytes_fp16", "B fp16"),
        num("bytes_fp32", "B fp32"),
        num("macs", "MACs"),
        num("epochs_done", "epochs"),
        f"variant of {card['derived_from']}" if card.get("derived_from") else f"{card['selected_weights']} weights",
    ]
    return " · ".join(p for p in parts if p)
