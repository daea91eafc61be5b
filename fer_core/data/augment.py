"""Batched, on-device augmentation: one affine grid for a whole batch, no per-image Python.

The seed's augmentation (horizontal flip, rotation, translation, scale) as a single
``affine_grid`` + ``grid_sample`` over the batch, on whatever device the batch lives on; and, as an option,
the light and lens of real cameras (:func:`photometric_batch`: contrast, gamma, blur, noise), drawn
per image with tensor ops only, so it runs inside the training step (and its CUDA graph) like the rest.
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
    photometric: float = (
        0.0  # share of images given camera light and blur (gain, contrast, gamma, blur, noise); 0 = off
    )


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
    return warp(x, draw_affine(x.shape[0], cfg, x.device, generator).to(x.dtype))


def draw_affine(n: int, cfg: AugmentConfig, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` random views as output->input sampling matrices (n, 2, 3): what :func:`augment_batch` draws, kept
    apart so that a view can be stored and replayed (distillation's cached teacher outputs)."""

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, device=device, generator=generator).mul_(hi - lo).add_(lo)

    angle = uniform(-cfg.degrees, cfg.degrees) * (math.pi / 180)
    scale = uniform(*cfg.scale)
    tx, ty = uniform(-cfg.translate, cfg.translate) * 2, uniform(-cfg.translate, cfg.translate) * 2
    flip = torch.where(torch.rand(n, device=device, generator=generator) < cfg.flip, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # rotate+scale, with the x column negated for a flip
    return torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Each image of a float batch (N, C, H, W) seen through its view (N, 2, 3): bilinear, border padding."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


#: Ranges of :func:`photometric_batch`, chosen to cover what webcams deliver once the serving path's light step
#: has brought a crop's brightness and contrast back into the training faces' range: a dim room then shows as
#: amplified sensor noise (up to ~6% of the range) and a flattened or bent tone curve; a soft, moving or distant
#: face is a blur of up to about 2 px at 48x48 (a 1.5-3 px defocus on a 60-100 px face). Brightness itself is not
#: drawn: the light step undoes it (a first version drew gains down to 0.15 and left faces unrecognisable).
CONTRAST = (0.5, 1.3)  # spread around the image's own mean
GAMMA = (0.6, 1.8)  # drawn log-uniformly
NOISE = 0.06  # sensor noise sd drawn from [0, NOISE] of the full range
BLUR = 2.0  # blur sd drawn from [0, BLUR] pixels (blends of sd 0, 1 and 2 Gaussian blurs)


def _gauss(sd: float, device, dtype) -> torch.Tensor:
    r = int(math.ceil(3 * sd))
    k = torch.exp(-((torch.arange(-r, r + 1, device=device, dtype=dtype) / sd) ** 2) / 2)
    k = k / k.sum()
    return (k[:, None] * k[None, :])[None, None]


def _blur(u: torch.Tensor, sd: float) -> torch.Tensor:
    k = _gauss(sd, u.device, u.dtype)
    r = k.shape[-1] // 2
    return F.conv2d(F.pad(u, (r, r, r, r), mode="replicate"), k.expand(u.shape[1], 1, -1, -1), groups=u.shape[1])


def photometric_batch(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Give a share ``p`` of a float batch (N, 1, H, W, in [-1, 1]) a camera's light: contrast, gamma, blur and
    noise, each drawn per image; the others pass unchanged. Tensor ops only (no host sync)."""
    n, dev = x.shape[0], x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, 1, 1, 1, device=dev, generator=generator).mul_(hi - lo).add_(lo)

    on = (torch.rand(n, 1, 1, 1, device=dev, generator=generator) < p).to(x.dtype)
    u = x.add(1).mul_(0.5)  # [0, 1]
    mean = u.mean((2, 3), keepdim=True)
    u = (u - mean) * uniform(*CONTRAST) + mean
    u = u.clamp(0, 1).pow(torch.exp(uniform(math.log(GAMMA[0]), math.log(GAMMA[1]))))
    # blur of sd t in [0, BLUR]: between the unblurred, sd-1 and sd-2 images, by t's place between them
    t = uniform(0.0, BLUR)
    b1, b2 = _blur(u, BLUR / 2), _blur(u, BLUR)
    u = torch.where(t < BLUR / 2, torch.lerp(u, b1, t / (BLUR / 2)), torch.lerp(b1, b2, t / (BLUR / 2) - 1))
    u = u + torch.randn(u.shape, device=dev, generator=generator, dtype=x.dtype) * uniform(0.0, NOISE)
    out = u.clamp(0, 1).mul(2).sub(1)
    return torch.lerp(x, out, on)
