"""BatchNorm and its activation as one CPU kernel while training: the CPU engine's lever after the allocator.

Profiled after the allocator, half of the seed MobileNet's training step went to its first 48x48x64 activation:
BatchNorm's forward (statistics, then normalize), the in-place LeakyReLU, their backward passes. Each of these is
a pass over a 75 MB tensor (batch 128), and the CPU is at its memory bandwidth there, not at its arithmetic.
``bn_act.c`` does BatchNorm with batch statistics and the activation in one statistics pass and one writing pass
forward, and two passes backward that recompute the pre-activation from the saved input: 4 passes where PyTorch
makes 8 on that layer, the same values to float rounding (the sums are in double across blocks; PyTorch's own
channels_last backward sums in float and is the less exact of the two, ``tests/test_fused.py``).

How it is used: :func:`fuse_bn_act` swaps, in place, every ``BatchNorm2d`` inside an ``nn.Sequential`` for a
:class:`BatchNormAct` that shares its parameters and buffers (the same tensors: an optimizer built before still
updates them; the state dict keeps its keys) and takes in the activation right after it, which becomes a
placeholder. Only in training mode, on float32 channels_last CPU tensors, does the kernel run; in eval mode (and
for anything the kernel does not take) it is BatchNorm then the activation, as before. :func:`unfuse_bn_act`
puts the plain layers back (pruning, export and ``bench --levers`` see PyTorch's own layers).

The kernel is compiled at first use with the machine's C compiler (``-O3 -march=native``, OpenMP where the
compiler has it) into the cache folder (``$FER_KERNELS`` to put it elsewhere), keyed by source, compiler, flags
and CPU. Without a compiler, or with
``FER_FUSED=0``, training runs PyTorch's layers: :func:`kernel_status` says which and why, and every run records
it in its summary.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import nn

from fer_core.common.paths import cache_dir
from fer_core.models.layers import ReLU6

SOURCE = Path(__file__).with_name("bn_act.c")
#: activation -> the kernel's code (0 is BatchNorm alone)
ACTS = {"identity": 0, "relu": 1, "leaky_relu": 2, "relu6": 3}
#: tried in order: the first the compiler accepts is used
FLAG_SETS = (
    ["-O3", "-march=native", "-fno-trapping-math", "-fopenmp"],
    ["-O3", "-march=native", "-fno-trapping-math"],
    ["-O3", "-fno-trapping-math", "-fopenmp"],
    ["-O3", "-fno-trapping-math"],
)
#: rows are summed in this many chunks at most (a fixed split: the same sums for any number of threads)
MAX_CHUNKS = 64
MIN_CHUNK_ROWS = 256

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_status: dict | None = None


def _cache_dir() -> Path:
    """``$FER_KERNELS``, else ``kernels/`` in the cache folder."""
    return Path(os.environ.get("FER_KERNELS") or cache_dir() / "kernels")


def _cpu_id() -> str:
    """What ``-march=native`` compiles for: the CPU's model and flags (a cache shared by two machines must not
    hand one the other's instructions)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return "|".join(dict.fromkeys(lines))
    except OSError:
        return platform.processor() or platform.machine()


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build() -> tuple[ctypes.CDLL | None, dict]:
    if os.environ.get("FER_FUSED", "1").strip().lower() in ("0", "off", "false", "no"):
        return None, {"mode": "torch", "why": "FER_FUSED=0"}
    cc = _compiler()
    if cc is None:
        return None, {"mode": "torch", "why": "no C compiler found (cc, gcc, clang or $CC)"}
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return None, {"mode": "torch", "why": f"{cc} --version failed: {e}"}
    source = SOURCE.read_bytes()
    errors = []
    for flags in FLAG_SETS:
        parts = [source, cc.encode(), version.encode(), " ".join(flags).encode(), _cpu_id().encode()]
        key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
        folder = _cache_dir()
        lib_path = folder / f"bn_act-{key}.so"
        if not lib_path.is_file():
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=folder) as tmp:
                    out = Path(tmp) / lib_path.name
                    r = subprocess.run(
                        [cc, *flags, "-shared", "-fPIC", "-o", str(out), str(SOURCE), "-lm"],
                        capture_output=True,
                        text=True,
                        timeout=300,
                    )
                    if r.returncode != 0:
                        errors.append(f"{' '.join(flags)}: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
                        continue
                    os.replace(out, lib_path)  # whole or not at all: two processes compiling at once both land one
            except (OSError, subprocess.SubprocessError) as e:
                errors.append(f"{' '.join(flags)}: {e}")
                continue
        try:
            lib = ctypes.CDLL(str(lib_path))
        except OSError as e:
            errors.append(f"loading {lib_path.name}: {e}")
            continue
        p, i, f, n = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_long
        lib.bn_act_forward.argtypes = [p, p, n, n, p, p, f, i, f, i, i, p, p, p]
        lib.bn_act_backward.argtypes = [p, p, p, n, n, p, p, p, p, i, f, i, i, p, p]
        lib.bn_act_forward.restype = lib.bn_act_backward.restype = i
        return lib, {"mode": "fused", "flags": " ".join(flags), "compiler": Path(cc).name, "library": lib_path.name}
    return None, {"mode": "torch", "why": "the kernel did not compile: " + "; ".join(errors)}


def kernel() -> ctypes.CDLL | None:
    """The compiled kernel (compiled on the first call), or None where it cannot be had (see :func:`kernel_status`)."""
    global _lib, _status
    with _lock:
        if _status is None:
            _lib, _status = _build()
    return _lib


def kernel_status(device: torch.device | str = "cpu") -> dict:
    """``{"mode": "fused", "flags": ..., ...}`` or ``{"mode": "torch", "why": ...}`` for training on ``device``
    (compiles on the first call; a GPU uses its own kernels)."""
    kind = torch.device(device).type
    if kind != "cpu":
        return {"mode": "torch", "why": f"{kind}: its own kernels"}
    kernel()
    return dict(_status or {})


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _chunks(rows: int) -> int:
    return max(1, min(MAX_CHUNKS, rows // MIN_CHUNK_ROWS))


class _BNActFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float, act: int, slope: float):
        lib = kernel()
        n, c, h, w = x.shape
        rows = n * h * w
        y = torch.empty_like(x, memory_format=torch.channels_last)
        mean, invstd, var = (torch.empty(c, dtype=torch.float32) for _ in range(3))
        gamma, beta = weight.detach().contiguous(), bias.detach().contiguous()
        rc = lib.bn_act_forward(
            _ptr(x), _ptr(y), rows, c, _ptr(gamma), _ptr(beta), eps, act, slope, _chunks(rows),
            torch.get_num_threads(), _ptr(mean), _ptr(invstd), _ptr(var),
        )  # fmt: skip
        if rc:
            raise MemoryError(f"BatchNorm kernel: out of memory ({rc}) for a {tuple(x.shape)} batch")
        with torch.no_grad():
            running_mean.lerp_(mean, momentum)
            running_var.lerp_(var, momentum)
        ctx.save_for_backward(x, gamma, beta, mean, invstd)
        ctx.act, ctx.slope = act, slope
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        x, gamma, beta, mean, invstd = ctx.saved_tensors
        gy = gy.contiguous(memory_format=torch.channels_last)
        n, c, h, w = x.shape
        rows = n * h * w
        gx = torch.empty_like(x, memory_format=torch.channels_last)
        dgamma, dbeta = torch.empty(c, dtype=torch.float32), torch.empty(c, dtype=torch.float32)
        rc = kernel().bn_act_backward(
            _ptr(gy), _ptr(x), _ptr(gx), rows, c, _ptr(gamma), _ptr(beta), _ptr(mean), _ptr(invstd), ctx.act,
            ctx.slope, _chunks(rows), torch.get_num_threads(), _ptr(dgamma), _ptr(dbeta),
        )  # fmt: skip
        if rc:
            raise MemoryError(f"BatchNorm kernel: out of memory ({rc}) for a {tuple(x.shape)} batch")
        return gx, dgamma, dbeta, None, None, None, None, None, None


def _act_code(act: nn.Module | None) -> tuple[int, float] | None:
    """The kernel's code for an activation module (None: not one it has)."""
    if act is None:
        return ACTS["identity"], 0.0
    if type(act) is nn.ReLU:
        return ACTS["relu"], 0.0
    if type(act) is nn.LeakyReLU and act.negative_slope >= 0:
        return ACTS["leaky_relu"], float(act.negative_slope)
    if type(act) in (nn.ReLU6, ReLU6):
        return ACTS["relu6"], 0.0
    return None


class _Absorbed(nn.Identity):
    """Where the activation stood after a :class:`BatchNormAct` took it in (``unfuse_bn_act`` puts it back)."""


class BatchNormAct(nn.BatchNorm2d):
    """A ``BatchNorm2d`` (the same parameter and buffer tensors as the one it replaces) followed by ``act``, with
    the fused kernel in training on float32 channels_last CPU tensors."""

    def __init__(self, bn: nn.BatchNorm2d, act: nn.Module | None):
        nn.Module.__init__(self)
        self.num_features, self.eps, self.momentum = bn.num_features, bn.eps, bn.momentum
        self.affine, self.track_running_stats = bn.affine, bn.track_running_stats
        for name, p in bn._parameters.items():
            self.register_parameter(name, p)
        for name, b in bn._buffers.items():
            self.register_buffer(name, b, persistent=name not in bn._non_persistent_buffers_set)
        self.training = bn.training
        self.act = act if act is not None else nn.Identity()
        self.code, self.slope = _act_code(act)

    def _kernel_takes(self, x: torch.Tensor) -> bool:
        return (
            self.training
            and self.affine
            and self.track_running_stats
            and self.momentum is not None
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and x.dim() == 4
            and x.shape[0] * x.shape[2] * x.shape[3] > 1
            and x.is_contiguous(memory_format=torch.channels_last)
            and self.weight.dtype == torch.float32
            and kernel() is not None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._kernel_takes(x):
            return self.act(super().forward(x))
        self.num_batches_tracked.add_(1)
        return _BNActFunction.apply(
            x, self.weight, self.bias, self.running_mean, self.running_var, self.momentum, self.eps, self.code,
            self.slope,
        )  # fmt: skip

    def plain(self) -> nn.BatchNorm2d:
        """The plain BatchNorm2d again, on the same tensors."""
        bn = nn.BatchNorm2d(self.num_features, self.eps, self.momentum, self.affine, self.track_running_stats)
        for name, p in self._parameters.items():
            bn.register_parameter(name, p)
        for name, b in self._buffers.items():
            bn.register_buffer(name, b)
        bn.train(self.training)
        return bn


def fuse_bn_act(model: nn.Module) -> int:
    """Swap every plain ``BatchNorm2d`` in an ``nn.Sequential`` (and the activation right after it, if the kernel
    has it) for a :class:`BatchNormAct`, in place; returns how many. 0 where the kernel cannot be had: the model
    is then left as it was."""
    if kernel() is None:
        return 0
    n = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq._modules.items())
        for i, (name, m) in enumerate(children):
            if type(m) is not nn.BatchNorm2d:
                continue
            nxt = children[i + 1] if i + 1 < len(children) else None
            act = nxt[1] if nxt is not None and _act_code(nxt[1]) is not None else None
            seq._modules[name] = BatchNormAct(m, act)
            if act is not None:
                seq._modules[nxt[0]] = _Absorbed()
            n += 1
    return n


def unfuse_bn_act(model: nn.Module) -> nn.Module:
    """Put PyTorch's own BatchNorm2d and activation back wherever :func:`fuse_bn_act` fused them (in place)."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq._modules.items())
        for i, (name, m) in enumerate(children):
            if isinstance(m, BatchNormAct):
                seq._modules[name] = m.plain()
                if i + 1 < len(children) and isinstance(children[i + 1][1], _Absorbed):
                    seq._modules[children[i + 1][0]] = m.act
    return model
