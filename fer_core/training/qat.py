"""Quantization-aware fine-tuning: a trained network learns to keep its answers once its layers compute in int8.

The network is the parent's, BatchNorm folded, with int8 rounding on the layers the int8 file quantizes
(:func:`fer_core.models.quant.prepare_qat`). Its activation ranges are first set on training faces (as
post-training calibration would) and stay fixed; then it is fine-tuned to give the parent's own probabilities on
the same augmented view (knowledge distillation from the fp32 parent: the goal is the parent's accuracy, not a new
one). Adam, the learning rate annealed to 0 on a cosine. The result is frozen
(:func:`fer_core.models.quant.freeze`), ready for export.

Deterministic for a seed (its shuffle and augmentation draws come from it), on whatever device runs it.
"""

from __future__ import annotations

import copy
import math
import time

import torch
from torch import nn

from fer_core.data.augment import AugmentConfig, augment_batch, normalize, photometric_batch
from fer_core.models import quant
from fer_core.training.engine import Teachers, distill_loss, epoch_seed

QAT_EPOCHS = 1
QAT_LR = 1e-4
QAT_BATCH = 128
#: Weight of the parent's probabilities in the loss (1: only them) and their temperature.
QAT_ALPHA = 1.0
QAT_TEMPERATURE = 1.0
CALIBRATION_BATCHES = 4


def qat_settings(epochs: int = QAT_EPOCHS, lr: float = QAT_LR, batch: int = QAT_BATCH) -> dict:
    """What :func:`finetune_qat` does, for a derived run's summary."""
    return {
        "method": "quantization-aware fine-tuning (fake-quantized int8 weights and uint8 inputs)",
        "epochs": epochs,
        "lr": lr,
        "schedule": "cosine to 0",
        "optimizer": "adam",
        "batch_size": batch,
        "target": f"the fp32 parent's probabilities on the same augmented view (alpha {QAT_ALPHA:g}, "
        f"T {QAT_TEMPERATURE:g})",
        "input_ranges": f"calibrated on {CALIBRATION_BATCHES} training batches "
        f"(quantiles {1 - quant.RANGE_QUANTILE:g} and {quant.RANGE_QUANTILE:g}), then fixed",
        "data": "train split, the parent's augmentation",
    }


def finetune_qat(
    parent: nn.Module,
    folded: nn.Module,
    x_uint8: torch.Tensor,
    y: torch.Tensor,
    aug: AugmentConfig | None,
    epochs: int = QAT_EPOCHS,
    lr: float = QAT_LR,
    batch: int = QAT_BATCH,
    seed: int = 0,
    say=None,
) -> tuple[nn.Module, list[dict]]:
    """Fine-tune ``folded`` (``parent`` with BatchNorm folded, on the same device) quantization-aware on the
    uint8 faces ``x_uint8`` (N, 48, 48) and labels ``y``; ``aug``: the parent's augmentation (None: none).
    Returns the frozen quantization-aware network and one row per epoch (loss, train accuracy, seconds)."""
    device = next(folded.parameters()).device
    model = quant.prepare_qat(copy.deepcopy(folded)).to(device)
    teacher = Teachers([copy.deepcopy(parent).float().to(device)], QAT_TEMPERATURE)
    n = len(y)
    batch = min(batch, n)
    g = torch.Generator().manual_seed(seed)
    calib = torch.randperm(n, generator=g)[: batch * CALIBRATION_BATCHES]
    quant.calibrate(model, [normalize(x_uint8[calib[i : i + batch]].to(device)) for i in range(0, len(calib), batch)])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = max(1, n // batch)
    total, history = epochs * steps, []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        torch.manual_seed(epoch_seed(seed, epoch))
        perm = torch.randperm(n)
        # eval mode: no BatchNorm is left, and dropout stays off, since the target is the parent's own answer
        # (with its head's dropout on, the loss measured dropout's noise: KL 0.15 on training views against
        # 0.003 on the public split)
        model.eval()
        # summed on the device: a GPU is not made to wait for each step's numbers
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        for i in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (epoch * steps + i) / total))
            idx = perm[i * batch : (i + 1) * batch]
            x = normalize(x_uint8[idx].to(device))
            if aug is not None:
                x = augment_batch(x, aug)
                if aug.photometric > 0:
                    x = photometric_batch(x, aug.photometric)
            target = y[idx].to(device)
            out = model(x)
            loss = distill_loss(out, target, teacher(x), QAT_ALPHA, QAT_TEMPERATURE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            correct += (out.argmax(1) == target).sum()
        row = {"epoch": epoch + 1, "loss": loss_sum.item() / steps, "train_acc": correct.item() / (steps * batch)}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        history.append(row)
        if say:
            say(f"  QAT epoch {epoch + 1}/{epochs}: loss {row['loss']:.4f}, train acc {row['train_acc']:.4f}, "
                f"{row['seconds']:.0f} s")  # fmt: skip
    return quant.freeze(model), history
