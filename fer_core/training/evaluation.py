"""Evaluation: accuracy, loss and confusion of a model on a split of uint8 faces (eval mode, no gradients)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fer_core.common import EMOTIONS, NUM_CLASSES
from fer_core.data.augment import normalize


def autocast(device: torch.device):
    """bf16 autocast on CUDA (the engine's precision there), nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return nullcontext()


def memory_format(device: torch.device):
    """channels_last everywhere: faster convolutions on CUDA and on oneDNN CPUs alike."""
    return torch.channels_last


@dataclass
class Evaluation:
    accuracy: float
    loss: float
    confusion: list[list[int]]  # rows: true class, columns: predicted

    @property
    def per_class(self) -> dict[str, float | None]:
        out = {}
        for i, name in enumerate(EMOTIONS):
            total = sum(self.confusion[i])
            out[name] = round(self.confusion[i][i] / total, 4) if total else None
        return out


@torch.inference_mode()
def predict_logits(
    model: nn.Module, x_uint8: torch.Tensor, batch_size: int = 1024, flip_tta: bool = False
) -> torch.Tensor:
    """Logits (float32, on the model's device) for uint8 images (N, 48, 48), in eval mode.

    With ``flip_tta`` the result is the log of the mean probabilities of each image and its mirror image.
    """
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    outs = []
    for i in range(0, len(x_uint8), batch_size):
        xb = normalize(x_uint8[i : i + batch_size].to(device, non_blocking=True))
        xb = xb.contiguous(memory_format=memory_format(device))
        with autocast(device):
            out = model(xb).float()
            if flip_tta:
                p = torch.softmax(out, 1) + torch.softmax(model(xb.flip(3)).float(), 1)
                out = torch.log(p / 2)
        outs.append(out)
    model.train(was)
    return torch.cat(outs) if outs else torch.zeros(0, NUM_CLASSES, device=device)


def evaluate(
    model: nn.Module, x_uint8: torch.Tensor, y: torch.Tensor, batch_size: int = 1024, flip_tta: bool = False
) -> Evaluation:
    """Accuracy, mean loss and confusion matrix on a split (eval mode; optionally flip test-time augmentation)."""
    return evaluate_logits(predict_logits(model, x_uint8, batch_size, flip_tta), y)


def evaluate_logits(logits: torch.Tensor, y) -> Evaluation:
    """Accuracy, mean loss and confusion matrix from a split's logits (any model or runtime made them)."""
    y = torch.as_tensor(y, dtype=torch.long).to(logits.device)
    loss = F.cross_entropy(logits, y).item() if len(y) else float("nan")
    pred = logits.argmax(1)
    cm = torch.bincount(y * NUM_CLASSES + pred, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)
    acc = (pred == y).float().mean().item() if len(y) else float("nan")
    return Evaluation(accuracy=round(acc, 6), loss=round(loss, 6), confusion=cm.cpu().tolist())
