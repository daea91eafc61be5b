"""Any image a user has (file, array, colour or gray, any size) as the gray uint8 the models read."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from fer_core.common import IMAGE_SIZE, FerError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def read_image(file: Path) -> np.ndarray:
    """Any image file as 48x48 gray uint8; honours EXIF rotation; clear error when unreadable."""
    try:
        with Image.open(file) as img:
            img = ImageOps.exif_transpose(img)
            return to_gray48(np.asarray(img.convert("RGBA") if img.mode == "P" else img))
    except FerError:
        raise
    except Exception as e:
        raise FerError(f"{file}: unreadable image ({type(e).__name__}: {e})") from None


def to_gray48(arr: np.ndarray) -> np.ndarray:
    """Any 2-D or 3-D image array (gray, RGB, RGBA, 16-bit, float) as 48x48 uint8 gray."""
    return cv2.resize(to_gray_u8(arr), (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)


def to_gray_u8(arr: np.ndarray) -> np.ndarray:
    """Any image array as uint8 gray at its own size."""
    a = np.asarray(arr)
    if a.dtype == np.uint16 or a.dtype == np.int32:
        a = (a.astype(np.float32) / (65535.0 if a.max() > 255 else 255.0) * 255.0).round()
    elif a.dtype == bool:
        a = a.astype(np.float32) * 255
    elif np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a.astype(np.float32)) * (255.0 if a.max() <= 1.0 else 1.0)
    a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3:
        if a.shape[2] == 4:  # composite on white so transparent areas do not turn black
            alpha = a[:, :, 3:4].astype(np.float32) / 255.0
            a = (a[:, :, :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
        a = cv2.cvtColor(a[:, :, :3], cv2.COLOR_RGB2GRAY)
    if a.ndim != 2 or min(a.shape) < 1:
        raise FerError(f"not an image array (shape {a.shape})")
    return a
