"""Planning trainings: families x (budgets or widths) x seeds, each model's costs before it is trained,
and the RunConfigs that carry it out (the Train page, ``sweep`` and the studies share it)."""

from __future__ import annotations

import math

from fer_core.common import FerError
from fer_core.models import count_params, create_model, list_models, solve_width
from fer_core.models.stats import model_stats
from fer_core.training.config import RunConfig, apply_recipe


def log_budgets(lo: float, hi: float, n: int) -> list[float]:
    """``n`` parameter budgets evenly spaced on a log scale from ``lo`` to ``hi`` (3 significant digits)."""
    if not (0 < lo <= hi) or n < 1:
        raise FerError(f"budgets need 0 < low <= high and at least one point (got {lo}, {hi}, {n})")
    if n == 1:
        return [float(f"{lo:.3g}")]
    step = (math.log10(hi) - math.log10(lo)) / (n - 1)
    return [float(f"{10 ** (math.log10(lo) + i * step):.3g}") for i in range(n)]


def plan(
    families: list[str], budgets: list[float] | None = None, widths: list[float] | None = None, seeds=(0,)
) -> list[dict]:
    """One item per training: family, width, the budget it was solved from (or None), seed."""
    for f in families:
        if f not in list_models():
            raise FerError(f"unknown model {f!r}; choose from {', '.join(list_models())}")
    if not families:
        raise FerError("choose at least one model family")
    if (budgets is None) == (widths is None):
        raise FerError("give exactly one of budgets or widths")
    items = []
    for f in families:
        for seed in seeds:
            for v in budgets if budgets is not None else widths:
                if v <= 0:
                    raise FerError(f"{'budget' if budgets is not None else 'width'} must be positive, got {v}")
                w, b = (solve_width(f, v)[0], v) if budgets is not None else (float(v), None)
                items.append({"family": f, "width": w, "budget": b, "seed": int(seed), "params": count_params(f, w)})
    return items


def costs(item: dict) -> dict:
    """Parameters, saved bytes and MACs of a planned model (no latency: that is measured when trained)."""
    return model_stats(create_model(item["family"], item["width"]), latency=False)


def configs(items: list[dict], base: RunConfig) -> list[RunConfig]:
    """One RunConfig per planned item: ``base`` with the item's family, width, budget, seed (and recipe)."""
    out = []
    for it in items:
        cfg = base.copy()
        cfg.model.family, cfg.model.width, cfg.model.budget = it["family"], float(it["width"]), it.get("budget")
        cfg.train.seed = int(it.get("seed", cfg.train.seed))
        if it.get("recipe") and it["recipe"] != cfg.recipe:
            apply_recipe(cfg, it["recipe"])  # the item's own recipe wins over the base's
        out.append(cfg)
    return out


def quick_demo(real_data: bool) -> list[RunConfig]:
    """A few small models for a few epochs: the scatters fill in within a couple of minutes on a laptop CPU."""
    base = RunConfig()
    base.train.epochs, base.train.lr, base.train.batch_size = 3, 3e-3, 64
    base.data.limit, base.data.data = (3000, None) if real_data else (None, "synthetic")
    base.data.augment = False
    return configs(plan(["mobilenet", "cnn"], budgets=[2e4, 1e5]), base)


def parse_numbers(text: str, what: str, integer: bool = False) -> list:
    """'0.5, 1, 2' -> [0.5, 1.0, 2.0]; a clear error naming the field for anything else."""
    out = []
    for tok in text.replace(";", ",").split(","):
        tok = tok.strip()
        if not tok:
            continue
        try:
            v = int(tok) if integer else float(tok)
        except ValueError:
            kind = "whole numbers" if integer else "numbers"
            raise FerError(f"{what}: {tok!r} is not a number (give {kind} separated by commas)") from None
        if not math.isfinite(v) or (v <= 0 and not integer) or (integer and v < 0):
            raise FerError(f"{what}: {tok!r} is out of range")
        out.append(v)
    if not out:
        raise FerError(f"{what}: give at least one value")
    return out
