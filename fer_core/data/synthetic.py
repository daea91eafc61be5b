"""Synthetic faces: procedurally drawn 48x48 gray faces with the 7 FER expressions.

They exist so that everything (training, the scatters, the tests, the dashboard's quick demo) works on a
machine without FER2013. They are labelled ``synthetic`` everywhere so nobody mistakes them for FER2013.

Each face is drawn at 4x resolution and shrunk (anti-aliasing), with the expression carried by brows,
eyes and mouth at a random intensity (weak expressions look alike, as in real faces), under random pose
(roll, scale, shift), lighting (gradient, contrast), skin and background tone, blur and noise. The same
seed always gives the same images.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from fer_core.common import IMAGE_SIZE, NUM_CLASSES

#: Default split sizes: big enough to learn, small enough to generate in about a second.
DEFAULT_SIZES = {"train": 4200, "public": 700, "private": 700}
_S = 4  # drawing scale


def _curve(cv2, img, x0, x1, y, bend, color, thick, lean=0.0, n=12):
    """A smooth mouth/brow curve from x0 to x1; bend > 0 makes the middle lower (a smile in image y)."""
    xs = np.linspace(x0, x1, n)
    t = np.linspace(-1, 1, n)
    ys = y + bend * (1 - t**2) + lean * t
    pts = np.stack([xs, ys], 1).round().astype(np.int32)
    cv2.polylines(img, [pts], False, color, thick, cv2.LINE_AA)


def draw_face(expression: int, rng: np.random.Generator, size: int = IMAGE_SIZE, intensity: float | None = None):
    """One gray face of the given expression (0..6, FER order) as a ``size`` x ``size`` uint8 array."""
    W = size * _S
    k = float(rng.uniform(0.45, 1.0)) if intensity is None else intensity
    bg = float(rng.uniform(20, 200))
    skin = float(np.clip(bg + rng.choice([-1, 1]) * rng.uniform(40, 110), 60, 235))
    dark = max(0.0, skin - rng.uniform(70, 140))
    img = np.full((W, W), bg, np.float32)

    cx, cy = W / 2, W / 2 + W * 0.03
    rx, ry = W * rng.uniform(0.30, 0.36), W * rng.uniform(0.40, 0.46)
    # hair: a dark cap that makes the forehead edge visible
    hair = float(np.clip(skin - rng.uniform(60, 150), 0, 255))
    cv2.ellipse(img, (int(cx), int(cy - ry * 0.25)), (int(rx * 1.08), int(ry * 0.95)), 0, 180, 360, hair, -1)
    cv2.ellipse(img, (int(cx), int(cy)), (int(rx), int(ry)), 0, 0, 360, skin, -1, cv2.LINE_AA)
    u = rx / 10  # feature unit
    eye_y, eye_dx = cy - ry * 0.18, rx * 0.42
    line = max(2, int(u * 0.45))

    # per-expression geometry: (brow raise, brow inner tilt, eye open, mouth bend, mouth open, mouth width)
    e = expression
    brow_raise = {0: -0.9, 1: -0.5, 2: 1.0, 3: 0.2, 4: 0.3, 5: 1.5, 6: 0.0}[e] * k
    brow_tilt = {0: -1.2, 1: -0.4, 2: 0.9, 3: 0.0, 4: 1.1, 5: 0.2, 6: 0.0}[e] * k  # >0: inner ends up
    eye_open = 1.0 + {0: -0.35, 1: -0.45, 2: 0.55, 3: -0.35, 4: -0.2, 5: 0.6, 6: 0.0}[e] * k
    mouth_bend = {0: -0.4, 1: -0.6, 2: -0.3, 3: 2.2, 4: -1.8, 5: 0.0, 6: 0.0}[e] * k
    mouth_open = {0: 0.25, 1: 0.15, 2: 0.9, 3: 0.5, 4: 0.0, 5: 2.0, 6: 0.0}[e] * k
    mouth_w = 1.0 + {0: -0.15, 1: 0.0, 2: 0.35, 3: 0.35, 4: -0.05, 5: -0.35, 6: 0.0}[e] * k
    jitter = lambda s: float(rng.normal(0, s))  # individual variation of every feature

    for side in (-1, 1):
        ex = cx + side * (eye_dx + jitter(u * 0.3))
        ey = eye_y + jitter(u * 0.2)
        ew, eh = u * (2.0 + jitter(0.2)), max(u * 0.35, u * 1.0 * eye_open + jitter(0.12 * u))
        cv2.ellipse(img, (int(ex), int(ey)), (int(ew), int(eh)), 0, 0, 360, min(255.0, skin + 60), -1, cv2.LINE_AA)
        cv2.circle(img, (int(ex + jitter(u * 0.3)), int(ey)), int(max(u * 0.5, min(eh, u * 0.9))), dark, -1)
        cv2.ellipse(img, (int(ex), int(ey)), (int(ew), int(eh)), 0, 0, 360, dark, line, cv2.LINE_AA)
        # brow: inner end at the centre side
        by = ey - u * (2.4 + brow_raise * 0.9) + jitter(u * 0.2)
        inner = (ex - side * u * 2.2, by - brow_tilt * u * 0.9)
        outer = (ex + side * u * 2.3, by + brow_tilt * u * 0.4)
        cv2.line(img, tuple(int(v) for v in inner), tuple(int(v) for v in outer), dark, int(line * 1.6), cv2.LINE_AA)

    # nose, with disgust wrinkles
    ny = cy + ry * 0.15
    cv2.line(img, (int(cx), int(eye_y + u)), (int(cx - u * 0.6), int(ny)), skin - 40, line, cv2.LINE_AA)
    cv2.line(img, (int(cx - u * 0.9), int(ny)), (int(cx + u * 0.9), int(ny)), skin - 50, line, cv2.LINE_AA)
    if e == 1:
        for dy in (-1.2, -0.4):
            _curve(cv2, img, cx - u * 1.4, cx + u * 1.4, ny + dy * u, -0.4 * u * k, skin - 45, line)

    # mouth
    my = cy + ry * 0.48 + jitter(u * 0.3)
    half = u * 3.0 * mouth_w
    lean = u * 1.2 * k if e == 1 else 0.0  # disgust: one corner raised
    if mouth_open > 0.3:
        h = int(u * 0.9 * mouth_open)
        cv2.ellipse(img, (int(cx), int(my + mouth_bend * u * 0.3)), (int(half * 0.9), max(2, h)), 0, 0, 360, dark, -1)
        if e == 3:  # teeth
            cv2.rectangle(
                img, (int(cx - half * 0.6), int(my - h * 0.6)), (int(cx + half * 0.6), int(my)), skin + 40, -1
            )
    _curve(cv2, img, cx - half, cx + half, my, mouth_bend * u, dark, line, lean=lean)

    # pose: roll, scale, shift; then lighting, blur, noise
    angle = float(rng.uniform(-18, 18))
    scale = float(rng.uniform(0.85, 1.15))
    m = cv2.getRotationMatrix2D((W / 2, W / 2), angle, scale)
    m[:, 2] += rng.uniform(-0.07, 0.07, 2) * W
    img = cv2.warpAffine(img, m, (W, W), borderMode=cv2.BORDER_REPLICATE)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:W, 0:W].astype(np.float32) / W - 0.5
    img = img * (1 + rng.uniform(0, 0.6) * (xx * math.cos(theta) + yy * math.sin(theta)))
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.3, 1.0))
    img = img * rng.uniform(0.7, 1.2) + rng.normal(0, rng.uniform(2, 14), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_split(n: int, seed: int, split_index: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` faces with balanced labels, deterministic from ``(seed, split_index)``."""
    rng = np.random.default_rng([seed, split_index])
    y = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)
    x = np.stack([draw_face(int(label), rng) for label in y]) if n else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    return x, y
