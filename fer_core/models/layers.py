"""Building blocks shared by the model families."""

from __future__ import annotations

from torch import nn

#: Channel counts are rounded to multiples of this. 4 (not the usual 8) keeps the width grid fine enough
#: to match small parameter budgets, and still gives the seed's exact 64/128/256/100 at width 1.0.
DIVISOR = 4


def make_divisible(value: float, divisor: int = DIVISOR, min_value: int | None = None) -> int:
    """Round a scaled channel count to the nearest multiple of ``divisor``, never losing more than 10%."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def conv_bn_act(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: nn.Module | None = None):
    """Conv (no bias: BatchNorm has one) + BatchNorm + activation."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        act if act is not None else nn.ReLU(inplace=True),
    )
