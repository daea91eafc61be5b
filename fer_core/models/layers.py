"""Building blocks shared by the model families."""

from __future__ import annotations

import torch
from torch import nn

from fer_core.common import FerError

#: Channel counts are rounded to multiples of this. 4 (not the usual 8) keeps the width grid fine enough
#: to match small parameter budgets, and still gives the seed's exact 64/128/256/100 at width 1.0.
DIVISOR = 4


def make_divisible(value: float, divisor: int = DIVISOR, min_value: int | None = None) -> int:
    """Round a scaled channel count to the nearest multiple of ``divisor``, never losing more than 10%."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def conv_bn_act(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: nn.Module | None = None):
    """Conv (no bias: BatchNorm has one) + BatchNorm + activation."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        act if act is not None else nn.ReLU(inplace=True),
    )


class _ReLU6InPlace(torch.autograd.Function):
    """min(max(x, 0), 6) in place, its gradient read from the output (0 where the output is 0 or 6, exactly
    where the input was clipped): nothing extra is kept for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clamp_(0.0, 6.0)
        ctx.mark_dirty(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, y, 0.0, 6.0)


class ReLU6(nn.Module):
    """``nn.ReLU6(inplace=True)`` with the same values and gradients, without its hidden copy.

    PyTorch's in-place hardtanh saves a clone of its input for the backward pass: a full extra write and read
    of the largest activations of a MobileNetV2 every step, and one more activation held in memory. Clipping in
    place and taking the gradient from the output needs no copy (``bench --levers`` measures what it buys: about
    1.01x in the CPU engine here, within the noise; 1.18x in a bare loop with huge pages on). Outside training
    (eval, export, inference) it is the plain in-place op, so ONNX files and traced graphs see an ordinary
    ReLU6 (Clip).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled() and x.requires_grad:
            return _ReLU6InPlace.apply(x)
        return nn.functional.relu6(x, inplace=True)


def plain_layers(model: nn.Module) -> nn.Module:
    """The same network, in place, with PyTorch's own layers where the families use faster equivalents of the
    same math (``nn.ReLU6(inplace=True)`` for :class:`ReLU6`, the two-step concatenate-then-shuffle for
    ShuffleNetV2's units): what ``bench --levers`` times them against, and what the tests check they equal."""
    for name, module in list(model.named_modules()):
        if isinstance(module, ReLU6):
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], nn.ReLU6(inplace=True))
        if hasattr(module, "plain_shuffle"):
            module.plain_shuffle = True
    return model


def fit_shapes(model: nn.Module, state: dict) -> nn.Module:
    """Resize ``model``'s layers in place to the channel counts of ``state`` (a structurally pruned network's
    state dict), so that it loads: the weights say every count, and a depthwise conv stays depthwise.

    A pruned run saves nothing but its state dict: rebuilding its family at the parent's width and then
    fitting it here gives the same network, with no pickled module to trust.
    """
    for name, module in list(model.named_modules()):
        w = state.get(f"{name}.weight" if name else "weight")
        if w is None:
            continue
        if isinstance(module, nn.Conv2d):
            out, per_group = int(w.shape[0]), int(w.shape[1])
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            if module.groups > 1 and not depthwise:
                raise FerError(f"{name}: a grouped convolution that is not depthwise cannot be resized")
            groups, cin = (out, out) if depthwise else (1, per_group)
            if depthwise and per_group != 1:
                raise FerError(f"{name}: a depthwise convolution's weights have {per_group} inputs per filter")
            new = nn.Conv2d(
                cin,
                out,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                groups,
                module.bias is not None,
                module.padding_mode,
            )
        elif isinstance(module, nn.Linear):
            new = nn.Linear(int(w.shape[1]), int(w.shape[0]), module.bias is not None)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            new = type(module)(int(w.shape[0]), module.eps, module.momentum, module.affine, module.track_running_stats)
        else:
            continue
        if tuple(new.weight.shape) == tuple(module.weight.shape):
            continue
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], new)
    return model
