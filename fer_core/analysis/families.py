"""Which family wins at each size: every family's plain runs near each budget, their mean and spread over seeds,
the winner and its margin (the Home page's answer, the Compare page's table, ``compare``'s list, the figure)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fer_core.analysis.compare import lineage_kind

#: the budgets the family table answers at (the study's), and how far a run's parameters may lie from one
FAMILY_BUDGETS = (2e4, 5e4, 1e5, 3e5)
BUDGET_BAND = 0.15


def family_table(df: pd.DataFrame, y: str = "private_acc", budgets=FAMILY_BUDGETS) -> pd.DataFrame:
    """Which family wins at each size: per budget, every family's plain runs within 15% of it (one data source
    and recipe at a time, as the gap), their mean and sample sd over seeds, the winner and its margin.

    Returns one row per (data, recipe, budget, family) with ``mean``, ``sd``, ``runs``, ``params`` (the median)
    and ``rank`` (1 = best mean at that budget).
    """
    cols = ["data", "recipe", "budget", "family", "params", "mean", "sd", "runs", "rank", "margin"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    d = df[df["status"] == "completed"].dropna(subset=[y, "params"]).copy()
    d["recipe"] = d["recipe"].fillna("seed") if "recipe" in d else "seed"
    if "lineage_kind" not in d:
        d["lineage_kind"] = [lineage_kind(r) for _, r in d.iterrows()]
    d = d[(d["lineage_kind"] == "plain") & (d["format"].fillna("torch") == "torch" if "format" in d else True)]
    rows = []
    for (data, recipe), g in d.groupby(["data", "recipe"]):
        for b in budgets:
            near = g[(g["params"] / b - 1).abs() <= BUDGET_BAND]
            for family, f in near.groupby("family"):
                accs = f[y].astype(float)
                rows.append(
                    {
                        "data": data,
                        "recipe": recipe,
                        "budget": b,
                        "family": family,
                        "params": int(f["params"].median()),
                        "mean": float(accs.mean()),
                        "sd": float(accs.std(ddof=1)) if len(accs) > 1 else None,
                        "runs": int(len(accs)),
                    }
                )
    out = pd.DataFrame(rows, columns=cols[:-2])
    if out.empty:
        return pd.DataFrame(columns=cols)
    out["rank"] = out.groupby(["data", "recipe", "budget"])["mean"].rank(ascending=False, method="min").astype(int)
    best2 = out.groupby(["data", "recipe", "budget"])["mean"].transform(lambda m: m.nlargest(2).iloc[-1])
    contenders = out.groupby(["data", "recipe", "budget"])["family"].transform("count")
    out["margin"] = np.where((out["rank"] == 1) & (contenders > 1), out["mean"] - best2, np.nan)
    return out.sort_values(["data", "recipe", "budget", "rank"]).reset_index(drop=True)


def family_answer(table: pd.DataFrame, data: str = "fer2013", recipe: str = "seed") -> list[str]:
    """The answer in one line per budget, from :func:`family_table`'s rows: ``~1×10⁵: mobilenetv2 0.6570 (1 run),
    ahead of shufflenetv2 by 0.0003``; budgets where one family alone has runs say only that."""
    t = table[(table["data"] == data) & (table["recipe"] == recipe)] if not table.empty else table
    lines = []
    for budget, g in t.groupby("budget", sort=True):
        g = g.sort_values("mean", ascending=False)
        top = g.iloc[0]
        sd = f" ± {top['sd']:.4f}" if pd.notna(top["sd"]) else ""
        runs = f"{int(top['runs'])} run{'s' if top['runs'] != 1 else ''}"
        mantissa, exponent = f"{budget:.0e}".split("e")
        size = f"~{'' if mantissa == '1' else mantissa + '×'}10{str(int(exponent)).translate(SUPERSCRIPT)}"
        line = f"{size}: {top['family']} {top['mean']:.4f}{sd} ({runs})"
        if len(g) > 1:
            line += f", ahead of {g.iloc[1]['family']} by {top['mean'] - g.iloc[1]['mean']:.4f}"
        lines.append(line)
    return lines


SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")
