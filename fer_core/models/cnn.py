"""Standard CNN family: five 3x3 conv layers (BN + ReLU, 2x2 max-pool after the first four) and three
fully connected layers.

At width 1.0 it has 5,757,383 trainable parameters, within 0.03% of the 5,758,791 of the seed report's
HW3-size CNN, so the two families span the same range the report compared.
"""

from __future__ import annotations

from torch import nn

from fer_core.models import register_family
from fer_core.models.layers import conv_bn_act, make_divisible

#: (out_channels, max-pool after) of each conv layer at width 1.0; 48 -> 24 -> 12 -> 6 -> 3.
CONVS = [(64, True), (128, True), (256, True), (512, True), (512, False)]
#: hidden sizes of the first two fully connected layers at width 1.0.
FCS = [384, 192]


class CNN(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 7, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        c = 1
        for cout, pool in CONVS:
            cout = make_divisible(cout * width)
            layers.append(conv_bn_act(c, cout, 3))
            if pool:
                layers.append(nn.MaxPool2d(2))
            c = cout
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten()]
        n = c * 3 * 3
        for h in FCS:
            h = make_divisible(h * width)
            head += [nn.Linear(n, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            n = h
        head.append(nn.Linear(n, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, x):
        return self.head(self.features(x))


register_family("cnn", CNN, "standard CNN (5 conv + 3 FC); width 1.0 = the seed report's HW3-size CNN")
