"""Quantization-aware networks: a BatchNorm-folded model whose layers compute in int8 as ONNX Runtime will.

:func:`prepare_qat` wraps every convolution but the first and every Linear but the classifier (the layers the
post-training int8 files quantize) so that training sees the rounding int8 brings:

- weights: int8, symmetric, one scale per output channel (``max |w| / 127``, recomputed from the weights at
  every step until :func:`freeze` fixes them);
- inputs and outputs: uint8, one scale and zero point per tensor, from calibration: the mean over training
  batches of each batch's 0.01% and 99.99% quantiles (the range always holds 0), then fixed.

Both are ``torch.fake_quantize_*`` ops: exact rounding in the forward pass, the straight-through gradient inside
the range and none outside it. Exported with the TorchScript exporter they become QuantizeLinear /
DequantizeLinear pairs (:func:`fer_core.serving.int8.qat_to_onnx` stores the weights as int8), so the file
runs the arithmetic the network was fine-tuned with.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

#: uint8 activations, int8 weights (symmetric: -127..127 used, zero point 0).
ACT_RANGE = (0, 255)
WEIGHT_RANGE = (-128, 127)
WEIGHT_MAX = 127.0
#: An input's range: this quantile of its values at each end (outliers are clipped: measured on the seed
#: MobileNet, calibration alone loses 0.42 public points at 0.9999 against 0.86 with the batches' min and max).
RANGE_QUANTILE = 0.9999
SAMPLE = 1_000_000


def _qparams(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of uint8 values covering [lo, hi] (widened to hold 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / (ACT_RANGE[1] - ACT_RANGE[0])
    return scale, int(min(max(round(-lo / scale), ACT_RANGE[0]), ACT_RANGE[1]))


class _Quantized(nn.Module):
    """One layer with fake-quantized input, weights and output; subclasses say how the layer applies them.

    The output is quantized too (before the activation that follows), as ONNX Runtime's int8 kernels
    (QLinearConv, QGemm) write it: the file then runs in int8 and not as fp32 layers between rounding steps."""

    def __init__(self, layer: nn.Conv2d | nn.Linear):
        super().__init__()
        self.layer = layer
        self.register_buffer("in_range", torch.zeros(2))  # calibrated (min, max) of the input
        self.register_buffer("out_range", torch.zeros(2))  # and of the output
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("w_scale", torch.ones(layer.weight.shape[0]))
        self.observing, self.frozen = False, False  # ranges are set by calibrate(), not by training
        self._fixed: tuple | None = None  # the ranges' (scale, zero point) once calibrate() has fixed them

    def _observe(self, x: torch.Tensor, running: torch.Tensor) -> None:
        """Fold this batch's range into ``running``, the mean of batch ranges: the RANGE_QUANTILE of its values
        at each end (on a strided sample of at most SAMPLE values), widened to hold 0."""
        with torch.no_grad():
            flat = x.detach().flatten().float()
            if flat.numel() > SAMPLE:
                flat = flat[:: flat.numel() // SAMPLE + 1]
            q = torch.tensor([1 - RANGE_QUANTILE, RANGE_QUANTILE], device=flat.device)
            lo, hi = torch.quantile(flat, q)
            batch = torch.stack([lo.clamp(max=0), hi.clamp(min=0)])
            running.add_((batch - running) / (self.seen.float() + 1))

    def input_qparams(self) -> tuple[float, int]:
        """(scale, zero point) of the uint8 input: read from the range once it is fixed (a read from a GPU
        tensor waits for the GPU, and the training step would do it twice per layer)."""
        if self.observing or self._fixed is None:
            return _qparams(*(float(v) for v in self.in_range))
        return self._fixed[0]

    def output_qparams(self) -> tuple[float, int]:
        if self.observing or self._fixed is None:
            return _qparams(*(float(v) for v in self.out_range))
        return self._fixed[1]

    def fix_ranges(self) -> None:
        """Stop observing and keep the ranges' (scale, zero point) as they are now."""
        self.observing = False
        self._fixed = (_qparams(*self.in_range.tolist()), _qparams(*self.out_range.tolist()))

    def weight_scale(self) -> torch.Tensor:
        if self.frozen:
            return self.w_scale
        w = self.layer.weight.detach()
        return (w.abs().flatten(1).amax(1) / WEIGHT_MAX).clamp(min=1e-12)

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self._observe(x, self.in_range)
        return torch.fake_quantize_per_tensor_affine(x, *self.input_qparams(), *ACT_RANGE)

    def quantized_output(self, y: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self._observe(y, self.out_range)
            self.seen += 1
        return torch.fake_quantize_per_tensor_affine(y, *self.output_qparams(), *ACT_RANGE)

    def quantized_weight(self) -> torch.Tensor:
        scale = self.weight_scale().float()
        zeros = torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
        return torch.fake_quantize_per_channel_affine(self.layer.weight, scale, zeros, 0, *WEIGHT_RANGE)


class QuantConv2d(_Quantized):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.layer
        y = F.conv2d(
            self.quantized_input(x), self.quantized_weight(), c.bias, c.stride, c.padding, c.dilation, c.groups
        )
        return self.quantized_output(y)


class QuantLinear(_Quantized):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantized_output(F.linear(self.quantized_input(x), self.quantized_weight(), self.layer.bias))


def quantized_layers(model: nn.Module) -> list[_Quantized]:
    return [m for m in model.modules() if isinstance(m, _Quantized)]


def prepare_qat(folded: nn.Module) -> nn.Module:
    """Wrap ``folded``'s layers in place (every Conv2d but the first, every Linear but the last, in the order the
    network registers them, which is the order it runs them) and return it. ``folded`` has no BatchNorm left
    (:func:`fer_core.serving.onnx.fold_batchnorm`): the weights int8 stores are the folded ones."""
    named = [(n, m) for n, m in folded.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    convs = [n for n, m in named if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in named if isinstance(m, nn.Linear)]
    keep = set(convs[:1] + linears[-1:])
    for name, layer in named:
        if name in keep:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = folded.get_submodule(parent_name) if parent_name else folded
        wrapper = QuantConv2d(layer) if isinstance(layer, nn.Conv2d) else QuantLinear(layer)
        setattr(parent, attr, wrapper.to(layer.weight.device))
    if not quantized_layers(folded):
        raise ValueError(f"{type(folded).__name__} has no layer to quantize besides its first and last")
    # every weight and bias learns, the folded BatchNorms' shifts too (folding makes those biases constants)
    return folded.requires_grad_(True)


@torch.no_grad()
def calibrate(model: nn.Module, batches) -> None:
    """Set every quantized layer's input range from ``batches`` (normalised faces), weights unchanged; the ranges
    stay as they are afterwards (training does not move them)."""
    was = model.training
    model.eval()  # the ranges of the network as it will run: dropout off
    layers = quantized_layers(model)
    for m in layers:
        m.seen.zero_()
        m.in_range.zero_()
        m.out_range.zero_()
        m.observing = True
    for x in batches:
        model(x)
    for m in layers:
        m.fix_ranges()
    model.train(was)


def freeze(model: nn.Module) -> nn.Module:
    """Fix every scale (inputs and weights) as it is now: what export writes. Returns ``model`` in eval mode."""
    for m in quantized_layers(model):
        m.w_scale.copy_(m.weight_scale())
        m.fix_ranges()
        m.frozen = True
    return model.eval()
