"""Which device trains: CUDA, then Apple's MPS, then the CPU; and what each device leaves out.

``--device auto`` (the default everywhere) picks the first of those that this machine has. On MPS the engine
runs the same step as on the CPU, eagerly: CUDA graphs and fused optimizers are CUDA's alone, and autocast
stays off (fp32), since the bf16 the engine uses on CUDA is not available on every Apple GPU that MPS supports.
"""

from __future__ import annotations

import os

import torch

from fer_core.common import FerError

#: the order ``auto`` tries
ORDER = ("cuda", "mps", "cpu")


def cpu_cores() -> int:
    """The CPU cores this process may run on (a container's or taskset's share, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def auto_device(has_cuda: bool, has_mps: bool) -> str:
    """The device ``auto`` means on a machine with (or without) a CUDA GPU and Apple's MPS."""
    return "cuda" if has_cuda else "mps" if has_mps else "cpu"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N`` as a torch device; one that is absent is an error."""
    if name == "auto":
        return torch.device(auto_device(torch.cuda.is_available(), mps_available()))
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FerError("--device cuda was asked for, but no CUDA GPU is available (use --device auto or cpu)")
    if name == "mps" and not mps_available():
        raise FerError("--device mps was asked for, but Apple's MPS is not available here (use --device auto or cpu)")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise FerError(f"unknown device {name!r}: use auto, cpu, mps or cuda")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple GPU (MPS)"
    return "cpu"


def device_status() -> dict:
    """What ``auto`` finds here: the device, its name, how many, and the CPU threads torch uses."""
    found = resolve_device("auto")
    out = {"device": found.type, "threads": torch.get_num_threads()}
    if found.type == "cuda":
        return out | {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count()}
    if found.type == "mps":
        return out | {"name": device_name(found), "count": 1}
    return out | {"name": "CPU only", "count": 0}
