"""Model registry: named families built from a width multiplier, plus a parameter-budget solver.

``create_model(name, width=...)`` and ``list_models()`` feed the command line, the dashboard's select
boxes and a parametrized test over every model. Owns the families (``mobilenet``, ``cnn``, built from the
shared blocks in ``layers``) and their stats (``stats``: parameters, state values, bytes, MACs, CPU latency).
May import only :mod:`fer_core.common` and torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import nn

from fer_core.common import NUM_CLASSES, FerError

from .cnn import CNN
from .mobilenet import MobileNet

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
#: Named points worth knowing: the two networks of the seed report.
PRESETS: dict[str, tuple[str, float, str]] = {
    "mobilenet-seed": ("mobilenet", 1.0, "the seed report's MobileNet (107,247 parameters)"),
    "cnn-hw3": ("cnn", 1.0, "the seed report's HW3-size CNN (~5.76M parameters)"),
}
#: Width multipliers the budget solver searches (log-spaced, about 1% apart).
WIDTH_RANGE = (0.02, 8.0)


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _REGISTRY[fn.__name__] = fn
    return fn


@register_model
def mobilenet(width: float = 1.0, num_classes: int = NUM_CLASSES, **kw) -> nn.Module:
    """Depthwise-separable family; width 1.0 is the seed report's MobileNet."""
    return MobileNet(width, num_classes, **kw)


@register_model
def cnn(width: float = 1.0, num_classes: int = NUM_CLASSES, **kw) -> nn.Module:
    """Standard CNN family (5 conv + 3 FC); width 1.0 is the seed report's HW3-size CNN."""
    return CNN(width, num_classes, **kw)


def list_models() -> list[str]:
    """The registered family names, sorted (what ``create_model`` accepts)."""
    return sorted(_REGISTRY)


def create_model(name: str, width: float = 1.0, num_classes: int = NUM_CLASSES, **kw) -> nn.Module:
    """Build a registered family at a width multiplier."""
    if name not in _REGISTRY:
        raise FerError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise FerError(f"width must be a positive number, got {width!r}")
    return _REGISTRY[name](width=float(width), num_classes=num_classes, **kw)


@functools.lru_cache(maxsize=4096)
def count_params(name: str, width: float, num_classes: int = NUM_CLASSES) -> int:
    """Trainable parameters of ``name`` at ``width``, counted on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = create_model(name, width, num_classes)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def solve_width(name: str, budget: float, num_classes: int = NUM_CLASSES) -> tuple[float, int]:
    """The width whose parameter count is closest to ``budget`` (relative error), and that count.

    Channel counts are rounded, so many widths give the same network: the smallest such width is returned,
    rounded to 3 significant digits (it rebuilds the same network).
    """
    if not (budget > 0 and math.isfinite(budget)):
        raise FerError(f"budget must be a positive number of parameters, got {budget!r}")
    lo, hi = WIDTH_RANGE
    steps = int(math.log(hi / lo) / math.log(1.01)) + 1
    best: tuple[float, float, int] | None = None
    for i in range(steps):
        w = float(f"{lo * 1.01**i:.3g}")
        p = count_params(name, w, num_classes)
        err = abs(math.log(p / budget))
        if best is None or err < best[0] - 1e-12:
            best = (err, w, p)
        if p > budget * 1.5:
            break
    assert best is not None
    return best[1], best[2]
