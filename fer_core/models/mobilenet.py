"""MobileNet-style family: a 3x3 stem, then depthwise-separable blocks, average pool, small MLP head.

At width 1.0 this is exactly the seed report's network: channels 64 -> 128 -> 128 -> 128 -> 256,
each block a 3x3 depthwise conv with stride 2 and a 1x1 pointwise conv (BN + LeakyReLU(0.05) after
each), then Linear(256, 100) + ReLU + BatchNorm1d + Dropout(0.5) -> Linear(100, 7):
107,247 trainable parameters (109,761 values in the state dict, BatchNorm buffers included).
"""

from __future__ import annotations

from torch import nn

from fer_core.models import register_family
from fer_core.models.layers import conv_bn_act, make_divisible

STEM = 64
#: (out_channels, stride) of each depthwise-separable block at width 1.0.
BLOCKS = [(128, 2), (128, 2), (128, 2), (256, 2)]
HIDDEN = 100
SLOPE = 0.05


def _act() -> nn.Module:
    return nn.LeakyReLU(SLOPE, inplace=True)


class DepthwiseSeparable(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__(
            conv_bn_act(cin, cin, 3, stride, groups=cin, act=_act()),  # depthwise: one filter per channel
            conv_bn_act(cin, cout, 1, act=_act()),  # pointwise: mixes channels
        )


class MobileNet(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 7, dropout: float = 0.5):
        super().__init__()
        c = make_divisible(STEM * width)
        layers: list[nn.Module] = [conv_bn_act(1, c, 3, 1, act=_act())]
        for cout, stride in BLOCKS:
            cout = make_divisible(cout * width)
            layers.append(DepthwiseSeparable(c, cout, stride))
            c = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        hidden = make_divisible(HIDDEN * width)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c, hidden),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(hidden),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.head(self.pool(self.features(x)))


register_family("mobilenet", MobileNet, "MobileNet (depthwise-separable); width 1.0 = the seed report's network")
