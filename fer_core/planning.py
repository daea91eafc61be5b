"""Planning trainings: families x (budgets or widths) x seeds, each model's costs before it is trained,
and the ``python -m fer_core train`` arguments that carry it out (the Train page and ``sweep`` share it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import FerError
from .models import count_params, list_models, solve_width


@dataclass
class TrainOptions:
    """What every training of a plan shares (None: the recipe's or the engine's default)."""

    epochs: int = 100
    data: str | None = None
    device: str = "auto"
    limit: int | None = None
    batch_size: int = 128
    recipe: str = "seed"
    lr: float | None = None
    augment: bool = True

    def argv(self) -> list[str]:
        out = ["--epochs", str(self.epochs), "--device", self.device, "--batch-size", str(self.batch_size)]
        out += ["--recipe", self.recipe]
        if self.data:
            out += ["--data", self.data]
        if self.limit:
            out += ["--limit", str(self.limit)]
        if self.lr is not None:
            out += ["--lr", repr(self.lr)]
        if not self.augment:
            out.append("--no-augment")
        return out


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
    from .models import create_model
    from .models.stats import model_stats

    return model_stats(create_model(item["family"], item["width"]), latency=False)


def train_argv(item: dict, options: TrainOptions | list[str]) -> list[str]:
    """``python -m fer_core`` arguments that train ``item`` (family, width, seed, optional recipe)."""
    argv = ["train", "--model", item["family"], "--width", repr(item["width"]), "--seed", str(item["seed"])]
    argv += options.argv() if isinstance(options, TrainOptions) else list(options)
    if item.get("recipe"):
        argv += ["--recipe", item["recipe"]]  # the item's own recipe wins over the options'
    return argv


def quick_demo(real_data: bool) -> tuple[list[dict], TrainOptions]:
    """A few small models for a few epochs: the scatters fill in within a couple of minutes on a laptop CPU."""
    items = plan(["mobilenet", "cnn"], budgets=[2e4, 1e5])
    options = TrainOptions(epochs=3, limit=3000 if real_data else None, data=None if real_data else "synthetic")
    options.lr, options.batch_size, options.augment = 3e-3, 64, False
    return items, options


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
