"""ShuffleNetV2-style family: channel split, two branches, concatenation and channel shuffle, for 48x48 faces.

A basic unit splits its channels in two: one half passes untouched, the other goes through 1x1 conv (BN + ReLU),
3x3 depthwise conv (BN), 1x1 conv (BN + ReLU); the halves are concatenated and the channels shuffled (two groups
interleaved) so the next unit mixes them. A down-sampling unit sends the whole input through both branches (the
first: 3x3 depthwise stride 2 + 1x1; the second as above with stride 2), doubling the channels and halving the
map. Ma et al., 2018 (equal channel widths, few branches, element-wise operations kept cheap).

Written for 48x48 inputs: a stride-1 3x3 stem and no max-pool (ImageNet's stride-2 stem + pool would turn a
48x48 face into 12x12 before the first unit), then three stages each opening with a down-sampling unit:
48 -> 24 -> 12 -> 6, with 3-7-3 units (ImageNet's 4-8-4, one fewer each: the maps are smaller), and a 1x1 conv to
512 channels at width 1.0 before pooling (ImageNet's 1024 would be a third of the whole budget here). Stage
channels at width 1.0 are ShuffleNetV2 1.0x's 116, 232, 464; the stem 24. Width scales every count, rounded to
multiples of 4 (so each half is even). At width 1.0: 870,793 parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from fer_core.models import register_family
from fer_core.models.layers import make_divisible

STEM = 24
#: (out channels, units) per stage at width 1.0; each stage's first unit halves the map.
STAGES = [(116, 3), (232, 7), (464, 3)]
LAST = 512


def _cb(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU(inplace=True)] if act else layers


def shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups: (a0 a1 .. b0 b1 ..) -> (a0 b0 a1 b1 ..)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def cat_shuffle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``shuffle(torch.cat([a, b], 1))``, in the inputs' memory layout.

    On channels_last tensors (the CPU engine's layout) ``shuffle``'s reshape writes a plain NCHW copy, so every
    following convolution and its backward pass reorder it back. Here the interleave is done on the NHWC view,
    whose copy stays channels_last; the values are the same (``bench --levers``: about 1.06x for a ShuffleNetV2
    training step in the CPU engine here).
    """
    x = torch.cat([a, b], 1)
    if x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
        return shuffle(x)
    n, c, h, w = x.shape
    nhwc = x.permute(0, 2, 3, 1).reshape(n, h, w, 2, c // 2).transpose(3, 4).reshape(n, h, w, c)
    return nhwc.permute(0, 3, 1, 2)


def _cat_then_shuffle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return shuffle(torch.cat([a, b], 1))


class ShuffleUnit(nn.Module):
    #: the two-step join (layers.plain_layers sets it, to measure and test what cat_shuffle changes)
    plain_shuffle = False

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        half = cout // 2
        branch_in = cin if stride == 2 else cin // 2
        self.branch1 = (
            nn.Sequential(*_cb(cin, cin, 3, 2, groups=cin, act=False), *_cb(cin, half)) if stride == 2 else None
        )
        self.branch2 = nn.Sequential(
            *_cb(branch_in, half), *_cb(half, half, 3, stride, groups=half, act=False), *_cb(half, half)
        )

    def forward(self, x):
        join = _cat_then_shuffle if self.plain_shuffle else cat_shuffle
        if self.branch1 is None:
            a, b = x.chunk(2, dim=1)
            return join(a, self.branch2(b))
        return join(self.branch1(x), self.branch2(x))


class ShuffleNetV2(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 7, dropout: float = 0.2):
        super().__init__()
        c = make_divisible(STEM * width)
        layers: list[nn.Module] = [nn.Sequential(*_cb(1, c, 3))]
        for cout, units in STAGES:
            cout = make_divisible(cout * width)
            for i in range(units):
                layers.append(ShuffleUnit(c, cout, 2 if i == 0 else 1))
                c = cout
        last = make_divisible(LAST * width)
        layers.append(nn.Sequential(*_cb(c, last)))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(last, num_classes)
        )

    def forward(self, x):
        return self.head(self.features(x))


register_family("shufflenetv2", ShuffleNetV2, "ShuffleNetV2-style (channel split and shuffle)")
