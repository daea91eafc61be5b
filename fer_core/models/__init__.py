"""Model registry: named families built from a width multiplier, plus a parameter-budget solver.

A *family* is one module in this package that builds a network from a width multiplier (and dropout) and
registers it in one line, ``register_family("name", build, "what it is")``. Every module here except
``layers``, ``stats``, ``quant`` and ``fused`` is imported when the package is, so a new file is all a new family
needs: the solver, ``models``, ``describe``, ``train --model``, sweeps, the studies and the dashboard's pages list
it from here.

``create_model(name, width=...)`` and ``list_models()`` feed the command line, the dashboard's select boxes and
a parametrized test over every model; ``stats`` counts parameters, state values, bytes, MACs and CPU latency;
``quant`` makes a folded network quantization-aware (fake-quantized int8, for ``training.qat``); ``fused`` runs
BatchNorm and its activation as one compiled CPU kernel while training.
May import only :mod:`fer_core.common` and torch.
"""

from __future__ import annotations

import functools
import importlib
import math
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fer_core.common import NUM_CLASSES, FerError


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[..., nn.Module]  # build(width, num_classes, dropout=...) -> the network
    about: str  # one line: what the family is (shown by `models` and the Train page)


_REGISTRY: dict[str, Family] = {}
#: Named points worth knowing: the two networks of the seed report.
PRESETS: dict[str, tuple[str, float, str]] = {
    "mobilenet-seed": ("mobilenet", 1.0, "the seed report's MobileNet (107,247 parameters)"),
    "cnn-hw3": ("cnn", 1.0, "the seed report's HW3-size CNN (~5.76M parameters)"),
}
#: Width multipliers the budget solver searches (log-spaced, about 1% apart).
WIDTH_RANGE = (0.02, 8.0)
#: how many points that 1% grid has
GRID_STEPS = int(math.log(WIDTH_RANGE[1] / WIDTH_RANGE[0]) / math.log(1.01)) + 1


def grid_width(i: int) -> float:
    """The ``i``-th width of the 1% grid, rounded to 3 significant digits."""
    return float(f"{WIDTH_RANGE[0] * 1.01**i:.3g}")


def register_family(name: str, build: Callable[..., nn.Module], about: str) -> Family:
    """Register a family under ``name`` (letters, digits, ``_``; no ``-``: run ids are ``FAMILY-wWIDTH-...``).
    ``build(width, num_classes, dropout=...)`` returns the network; re-registering a name replaces it."""
    if not name.replace("_", "").isalnum() or not name[0].isalpha() or name != name.lower():
        raise FerError(f"family name {name!r}: lower-case letters, digits and _ only, starting with a letter")
    family = Family(name, build, about)
    _REGISTRY[name] = family
    count_params.cache_clear()
    _solve.cache_clear()
    return family


def family_about(name: str) -> str:
    """The one-line description a family registered with."""
    return _family(name).about


def _family(name: str) -> Family:
    if name not in _REGISTRY:
        raise FerError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    return _REGISTRY[name]


def list_models() -> list[str]:
    """The registered family names, sorted (what ``create_model`` accepts)."""
    return sorted(_REGISTRY)


def create_model(name: str, width: float = 1.0, num_classes: int = NUM_CLASSES, **kw) -> nn.Module:
    """Build a registered family at a width multiplier."""
    family = _family(name)
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise FerError(f"width must be a positive number, got {width!r}")
    return family.build(float(width), num_classes, **kw)


@functools.lru_cache(maxsize=4096)
def count_params(name: str, width: float, num_classes: int = NUM_CLASSES) -> int:
    """Trainable parameters of ``name`` at ``width``, counted on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = create_model(name, width, num_classes)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def solve_width(name: str, budget: float, num_classes: int = NUM_CLASSES) -> tuple[float, int]:
    """The width whose parameter count is closest to ``budget`` (relative error), and that count.

    Channel counts are rounded, so many widths give the same network: the first such width found is returned,
    rounded to 3 significant digits (it rebuilds the same network). A 1% grid of widths first, then every
    3-significant-digit width next to the best grid point. Where rounding leaves no network within
    :data:`BUDGET_TOLERANCE` of the budget, :func:`budget_note` says which point is nearest.
    """
    if not (budget > 0 and math.isfinite(budget)):
        raise FerError(f"budget must be a positive number of parameters, got {budget!r}")
    return _solve(name, float(budget), num_classes)


@functools.lru_cache(maxsize=4096)
def _solve(name: str, budget: float, num_classes: int) -> tuple[float, int]:
    steps, grid = GRID_STEPS, grid_width

    def params(i: int) -> int:
        return count_params(name, grid(i), num_classes)

    def first(pred) -> int:  # the first grid index where pred holds (steps if none): parameters grow with width
        a, b = 0, steps
        while a < b:
            m = (a + b) // 2
            if pred(params(m)):
                b = m
            else:
                a = m + 1
        return a

    def err(p: int) -> float:
        return abs(math.log(p / budget))

    # The grid point nearest the budget, the first of equal ones: the one just below it or the first at or above
    # it. This is what walking the whole 1% grid from the narrowest width finds, in about 20 networks built
    # instead of 400 (tests/test_models.py checks that against the walk for every family).
    k = first(lambda p: p >= budget)
    best: tuple[float, float, int] | None = None
    if k > 0:
        below = params(k - 1)
        j = first(lambda p: p >= below)
        best = (err(below), grid(j), below)
    if k < steps and (best is None or err(params(k)) < best[0] - 1e-12):
        best = (err(params(k)), grid(k), params(k))
    assert best is not None

    def offer(w: float) -> None:
        nonlocal best
        p = count_params(name, w, num_classes)
        if err(p) < best[0] - 1e-12:  # strictly closer: the 1% grid's pick stays on a tie
            best = (err(p), w, p)

    centre = best[1]
    for w in rounded_widths(centre / 1.012, centre * 1.012):  # the widths the 1% grid stepped over
        offer(w)
    return best[1], best[2]


#: how far a solved width's parameter count may be from its budget before the solver says so
BUDGET_TOLERANCE = 0.05


def rounded_widths(a: float, b: float, points: int = 200, digits: int = 3) -> list[float]:
    """The distinct widths of ``digits`` significant digits in [a, b] (inside the width range), sampled at
    ``points`` + 1 evenly spaced points: all of them where their spacing is at least (b - a) / points."""
    a, b = max(a, WIDTH_RANGE[0]), min(b, WIDTH_RANGE[1])
    return sorted({float(f"{a + (b - a) * i / points:.{digits}g}") for i in range(points + 1)})


def widest_within(name: str, params: int, num_classes: int = NUM_CLASSES) -> float:
    """The largest width (3 significant digits) whose network has at most ``params`` parameters: a hard limit,
    where :func:`solve_width` takes the nearest on either side."""
    near = solve_width(name, params, num_classes)[0]  # within a few percent of the budget, on either side
    fits = [w for w in rounded_widths(near * 0.9, near * 1.1) if count_params(name, w, num_classes) <= params]
    if not fits:
        raise FerError(f"no {name} within {params:,} parameters near width {near:g}")
    return max(fits)


def budget_note(name: str, budget: float, num_classes: int = NUM_CLASSES) -> str | None:
    """None when ``solve_width`` lands within 5% of ``budget``; else one line naming the nearest network
    above and below (channel counts are rounded, so some budgets lie between two networks)."""
    w, p = solve_width(name, budget, num_classes)
    if abs(p / budget - 1) <= BUDGET_TOLERANCE:
        return None
    return (
        f"{name} has no network within {BUDGET_TOLERANCE:.0%} of {budget:,.0f} parameters (its channel counts "
        f"are rounded): the nearest is width {w:g} with {p:,} ({p / budget - 1:+.1%})"
    )


def _discover() -> None:
    """Import every family module of this package (each registers itself)."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name not in ("layers", "stats", "quant", "fused") and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_discover()
