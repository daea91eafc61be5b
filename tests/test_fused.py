"""The fused BatchNorm + activation CPU kernel (models.fused): its numbers against float64, the families trained
with it against PyTorch's own layers, the same sums for any thread count, and the ways it is turned off."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import ROOT
from fer_core.models import create_model, list_models
from fer_core.models.fused import BatchNormAct, fuse_bn_act, kernel_status, unfuse_bn_act
from fer_core.models.layers import ReLU6

ACTS = {
    "identity": None,
    "relu": nn.ReLU(inplace=True),
    "leaky_relu": nn.LeakyReLU(0.05, inplace=True),
    "relu6": ReLU6(),
}
HAS_COMPILER = any(shutil.which(c) for c in ("cc", "gcc", "clang"))
needs_kernel = pytest.mark.skipif(kernel_status()["mode"] != "fused", reason=kernel_status().get("why", ""))


def test_the_kernel_compiles_wherever_there_is_a_c_compiler():
    st = kernel_status()
    if HAS_COMPILER:
        assert st["mode"] == "fused", st
        assert "-O3" in st["flags"] and st["library"].endswith(".so")
    else:
        assert st["mode"] == "torch" and "compiler" in st["why"]
    # a GPU trains with its own kernels, and a GPU run's summary says so without compiling anything
    assert kernel_status("cuda") == {"mode": "torch", "why": "cuda: its own kernels"}
    assert kernel_status("mps")["mode"] == "torch"


def _away_from_kinks(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Nudge the inputs whose pre-activation lies within 1e-3 of a kink (0, 6): there float32 and float64 may
    fairly take different sides, and one such element would say nothing about the kernel."""
    for _ in range(4):
        z = _bn64(x, gamma, beta)
        near = (z.abs() < 1e-3) | ((z - 6).abs() < 1e-3)
        if not near.any():
            return x
        x = x + near.to(x.dtype) * 0.01
    return x


def _bn64(x, gamma, beta, eps=1e-5):
    x = x.double()
    mean = x.mean((0, 2, 3), keepdim=True)
    var = x.var((0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / (var + eps).sqrt() * gamma.double().view(1, -1, 1, 1) + beta.double().view(1, -1, 1, 1)


def _act64(z, name):
    return {
        "identity": lambda: z,
        "relu": lambda: z.clamp_min(0),
        "leaky_relu": lambda: torch.where(z > 0, z, 0.05 * z),
        "relu6": lambda: z.clamp(0, 6),
    }[name]()


@needs_kernel
@pytest.mark.parametrize("act", list(ACTS))
def test_forward_backward_and_running_statistics_equal_float64(act):
    torch.manual_seed(0)
    n, c, h, w = 16, 12, 20, 20  # 6,400 rows: 25 chunks
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 3.0)
        bn.bias.uniform_(-1.0, 4.0)  # ReLU6's upper kink is reached too
    x0 = _away_from_kinks(torch.randn(n, c, h, w) * 3 + 1.5, bn.weight.detach(), bn.bias.detach())
    x0 = x0.float().contiguous(memory_format=torch.channels_last)
    gy = torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last)
    fused = BatchNormAct(bn, copy.deepcopy(ACTS[act])).train()
    x = x0.clone().requires_grad_()
    y = fused(x)
    y.backward(gy)
    cl = torch.channels_last
    assert y.is_contiguous(memory_format=cl) and x.grad.is_contiguous(memory_format=cl)

    x64 = x0.double().requires_grad_()
    g64, b64 = bn.weight.detach().double().requires_grad_(), bn.bias.detach().double().requires_grad_()
    y64 = _act64(_bn64(x64, g64, b64), act)
    y64.backward(gy.double())

    def err(a, b):
        return float((a.double() - b).abs().max() / b.abs().max())

    assert err(y, y64) < 1e-5
    assert err(x.grad, x64.grad) < 1e-4
    assert err(bn.weight.grad, g64.grad) < 1e-4 and err(bn.bias.grad, b64.grad) < 1e-4
    mean = x0.double().mean((0, 2, 3))
    var = x0.double().var((0, 2, 3), unbiased=True)  # PyTorch's running variance is the unbiased one
    assert torch.allclose(bn.running_mean.double(), 0.1 * mean, rtol=1e-5, atol=1e-6)
    assert torch.allclose(bn.running_var.double(), 0.9 + 0.1 * var, rtol=1e-5)
    assert int(bn.num_batches_tracked) == 1  # the same tensors: BatchNormAct shares the module's buffers


@needs_kernel
def test_the_sums_are_the_same_for_any_number_of_threads():
    torch.manual_seed(1)
    bn = BatchNormAct(nn.BatchNorm2d(8), nn.LeakyReLU(0.05)).train()
    x0 = torch.randn(32, 8, 24, 24).contiguous(memory_format=torch.channels_last)
    gy = torch.randn_like(x0)
    outs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            x = x0.clone().requires_grad_()
            bn.zero_grad()
            y = bn(x)
            y.backward(gy)
            outs.append((y.detach(), x.grad, bn.weight.grad.clone(), bn.bias.grad.clone()))
    finally:
        torch.set_num_threads(before)
    for other in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outs[0], other))


def _step(model, x, y):
    torch.manual_seed(7)  # the same dropout masks
    model.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return float(loss)


@needs_kernel
@pytest.mark.parametrize("family", list_models())
def test_every_family_trains_with_it_as_with_pytorchs_own_layers(family):
    torch.manual_seed(0)
    plain = create_model(family, 0.25).to(memory_format=torch.channels_last).train()
    model = copy.deepcopy(plain)
    n = fuse_bn_act(model)
    assert n == sum(type(m) is nn.BatchNorm2d for m in plain.modules()) > 0
    assert list(model.state_dict()) == list(plain.state_dict())  # checkpoints and weights files as before
    x = torch.randn(64, 1, 48, 48).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (64,))
    exact = copy.deepcopy(plain).double()
    loss64 = _step(exact, x.double(), y)
    assert _step(model, x, y) == pytest.approx(loss64, rel=1e-5)
    assert _step(plain, x, y) == pytest.approx(loss64, rel=1e-5)
    # the whole gradient against float64's. Not element by element: ReLU's and max pooling's choices near a tie
    # move single elements in either float32 network (PyTorch's own layers are off by 1e-5 to 2e-2 here, relative
    # to the gradient's norm; the fused ones by 4e-6 to 5e-3)
    g64 = torch.cat([p.grad.flatten() for p in exact.parameters()])
    g = torch.cat([p.grad.double().flatten() for p in model.parameters()])
    assert float((g - g64).norm() / g64.norm()) < 1e-2
    for (name, a), b in zip(plain.state_dict().items(), model.state_dict().values()):  # running statistics
        assert torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-5), name
    plain.eval(), model.eval()  # eval: BatchNorm then the activation, PyTorch's kernels in both
    with torch.no_grad():
        assert torch.allclose(model(x), plain(x), atol=1e-4)
    unfuse_bn_act(model)
    assert not any(isinstance(m, BatchNormAct) for m in model.modules())
    assert str(model) == str(plain)  # the same layers again, in the same places


@needs_kernel
def test_a_fused_network_keeps_its_parameter_tensors_and_an_optimizer_built_before_still_trains_it():
    model = create_model("mobilenet", 0.25).to(memory_format=torch.channels_last).train()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    fuse_bn_act(model)
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    bn = next(m for m in model.modules() if isinstance(m, BatchNormAct))
    before = bn.weight.detach().clone()
    _step(model, torch.randn(8, 1, 48, 48).contiguous(memory_format=torch.channels_last), torch.randint(0, 7, (8,)))
    opt.step()
    assert not torch.equal(before, bn.weight.detach())


def test_inputs_the_kernel_does_not_take_fall_back_to_pytorch():
    bn = nn.BatchNorm2d(4)
    fused = BatchNormAct(copy.deepcopy(bn), nn.ReLU()).train()
    x = torch.randn(3, 4, 5, 5)  # NCHW, not channels_last
    assert torch.allclose(fused(x), torch.relu(bn.train()(x)), atol=1e-6)
    assert torch.allclose(fused.double()(x.double()), torch.relu(bn.double()(x.double())), atol=1e-12)


def test_fer_fused_0_turns_it_off_and_the_trainer_says_so(tmp_path):
    code = (
        "import json; from fer_core.models import create_model; from fer_core.models.fused import fuse_bn_act, "
        "kernel_status; print(json.dumps([fuse_bn_act(create_model('mobilenet', 0.25)), kernel_status()]))"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "FER_FUSED": "0", "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    fused, status = json.loads(r.stdout)
    assert fused == 0 and status == {"mode": "torch", "why": "FER_FUSED=0"}


def test_a_cpu_training_records_the_kernel_in_its_summary_and_every_epoch():
    from conftest import tiny_config
    from fer_core.store.runs import find_run
    from fer_core.training.trainer import fit

    cfg = tiny_config(epochs=2, device="cpu")
    cfg.model.family, cfg.model.width, cfg.data.limit = "mobilenetv2", 0.25, 256
    s = fit(cfg)
    assert s["status"] == "completed" and s["bn_act"]["mode"] == kernel_status()["mode"]
    rows = find_run(s["run_id"]).metrics()
    expected = sum(type(m) is nn.BatchNorm2d for m in create_model("mobilenetv2", 0.25).modules())
    assert [r["bn_act_fused"] for r in rows] == [expected if s["bn_act"]["mode"] == "fused" else 0] * 2
