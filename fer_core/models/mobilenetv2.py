"""MobileNetV2-style family: inverted residual blocks with linear bottlenecks, for 48x48 gray faces.

Each block widens its input ``t`` times with a 1x1 conv (BN + ReLU6), filters it with a 3x3 depthwise conv (BN +
ReLU6, the block's stride), and narrows it back with a 1x1 conv and BN but *no* activation (the linear
bottleneck: a ReLU on a narrow tensor destroys information); when the input and output shapes match, the input
is added back (the residual). Sandler et al., 2018.

Written for 48x48 inputs, not 224x224: the stem is a stride-1 3x3 conv (a stride-2 stem would halve an already
small face before any feature is learnt), and four stride-2 stages take 48 -> 24 -> 12 -> 6 -> 3, so the last
blocks still see a 3x3 map, as the seed's MobileNet does. Blocks per stage are 1-2-2-2-1 (ImageNet's 1-2-3-4-3-3-1
is sized for 7x7 final maps and millions of images), and the last 1x1 conv is 320 channels at width 1.0 (not
1280: that one layer would hold most of a small model's budget). Width scales every channel count (rounded to
multiples of 4 like the other families); expansion stays 6. At width 1.0: 313,639 parameters.
"""

from __future__ import annotations

from torch import nn

from fer_core.models import register_family
from fer_core.models.layers import ReLU6, make_divisible

STEM = 16
#: (expansion t, out channels c, blocks n, first stride s) per stage at width 1.0.
STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 40, 2, 2), (6, 80, 2, 2), (6, 128, 1, 2)]
LAST = 320


def _cba(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [_cba(cin, hidden)] if expand != 1 else []
        layers += [_cba(hidden, hidden, 3, stride, groups=hidden), _cba(hidden, cout, act=False)]  # linear bottleneck
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 7, dropout: float = 0.2):
        super().__init__()
        c = make_divisible(STEM * width)
        layers: list[nn.Module] = [_cba(1, c, 3)]
        for t, cout, n, s in STAGES:
            cout = make_divisible(cout * width)
            for i in range(n):
                layers.append(InvertedResidual(c, cout, s if i == 0 else 1, t))
                c = cout
        last = make_divisible(LAST * width)
        layers.append(_cba(c, last))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(last, num_classes)
        )

    def forward(self, x):
        return self.head(self.features(x))


register_family("mobilenetv2", MobileNetV2, "MobileNetV2-style (inverted residuals, linear bottlenecks)")
