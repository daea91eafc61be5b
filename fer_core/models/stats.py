"""What a model costs: parameters, state values, saved bytes, MACs per image and CPU latency."""

from __future__ import annotations

import copy
import io
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fer_core.common import IMAGE_SIZE


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_state_values(model: nn.Module) -> int:
    """Every number in the state dict: parameters plus BatchNorm running stats and batch counters."""
    return sum(t.numel() for t in model.state_dict().values())


def state_dict_half(state: dict) -> dict:
    """The state dict with floating tensors in fp16 (integer buffers unchanged)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def saved_bytes(model: nn.Module, half: bool = False) -> int:
    """Size in bytes of ``torch.save(state_dict)``, as the file on disk would be."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state_dict_half(state) if half else state, buf)
    return buf.tell()


def count_macs(model: nn.Module) -> int:
    """Multiply-accumulates for one 48x48 image (flop_counter's FLOPs / 2)."""
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    x = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE, device=p.device, dtype=p.dtype)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops() // 2)


#: bytes a training step moves per byte of every layer's output: forward writes it and the next layer reads it;
#: backward reads it (saved), reads its gradient and writes the input's gradient. An estimate for a memory-bound
#: CPU step, not a measurement: in-place activations and fused kernels move less, BatchNorm's two passes more.
TRAINING_TRAFFIC_FACTOR = 5


def training_bytes_per_image(model: nn.Module) -> int:
    """Estimated bytes of memory traffic per image of one fp32 training step: every leaf layer's output
    (counted with forward hooks on a batch of two) times :data:`TRAINING_TRAFFIC_FACTOR`."""
    m = copy.deepcopy(model).cpu().float().train()
    total = [0]

    def hook(module, inputs, output):
        if isinstance(output, torch.Tensor):
            total[0] += output.numel() * output.element_size()

    leaves = [mod for mod in m.modules() if not any(True for _ in mod.children())]
    handles = [mod.register_forward_hook(hook) for mod in leaves]
    try:
        with torch.no_grad():
            m(torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE))
    finally:
        for h in handles:
            h.remove()
    return int(total[0] / 2 * TRAINING_TRAFFIC_FACTOR)


def cpu_latency_ms(model: nn.Module, repeats: int = 30, threads: int = 1) -> float:
    """Median milliseconds for one image at batch 1 on the CPU, with ``threads`` threads (1: comparable)."""
    m = copy.deepcopy(model).cpu().float().eval()
    x = torch.randn(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times = []
        with torch.inference_mode():
            for i in range(repeats + 5):
                t = time.perf_counter()
                m(x)
                if i >= 5:
                    times.append((time.perf_counter() - t) * 1000)
    finally:
        torch.set_num_threads(old)
    return round(statistics.median(times), 4)


def model_stats(model: nn.Module, latency: bool = True) -> dict:
    """Everything the scatters can put on an axis, as plain numbers."""
    out = {
        "params": count_trainable(model),
        "state_values": count_state_values(model),
        "bytes_fp32": saved_bytes(model),
        "bytes_fp16": saved_bytes(model, half=True),
        "macs": count_macs(model),
    }
    if latency:
        out["latency_ms_cpu"] = cpu_latency_ms(model)
    return out
