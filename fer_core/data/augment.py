"""Batched, on-device augmentation: one affine grid for a whole batch, no per-image Python.

The seed's augmentation (horizontal flip, rotation, translation, scale) as a single
``affine_grid`` + ``grid_sample`` over the batch, on whatever device the batch lives on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    flip: float = 0.5  # probability of a horizontal flip (faces are near-symmetric)
    degrees: float = 15.0  # rotation drawn from [-degrees, degrees]
    translate: float = 0.1  # shift drawn from [-translate, translate] of the image size, per axis
    scale: tuple[float, float] = (0.9, 1.1)  # zoom range


def normalize(x_uint8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, H, W) or (N, 1, H, W) images to float (N, 1, H, W) in [-1, 1]: the one input convention."""
    x = x_uint8.to(dtype)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return x.mul_(2.0 / 255.0).sub_(1.0)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly flip, rotate, shift and scale a float batch (N, C, H, W) with one grid_sample call.

    Padding is by border replication, so rotated faces do not get black corners.
    """
    n = x.shape[0]
    dev = x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, device=dev, generator=generator).mul_(hi - lo).add_(lo)

    angle = uniform(-cfg.degrees, cfg.degrees) * (math.pi / 180)
    scale = uniform(*cfg.scale)
    tx, ty = uniform(-cfg.translate, cfg.translate) * 2, uniform(-cfg.translate, cfg.translate) * 2
    flip = torch.where(torch.rand(n, device=dev, generator=generator) < cfg.flip, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # output->input sampling matrix: rotate+scale, with the x column negated for a flip
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)],
        1,
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
