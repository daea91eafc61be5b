"""The recipes' arithmetic: distillation loss, mixup/cutmix labels, EMA, SGD, and a teacher that stays frozen."""

import copy

import pytest
import torch
import torch.nn.functional as F

from fer_core.data.sources import load
from fer_core.models import create_model
from fer_core.training.config import RunConfig, TrainConfig, apply_recipe
from fer_core.training.engine import EMA, Step, Teachers, distill_loss, make_optimizer, mix_batch


def test_alpha_zero_is_plain_cross_entropy():
    torch.manual_seed(0)
    logits, y = torch.randn(16, 7), torch.randint(0, 7, (16,))
    teacher = torch.softmax(torch.randn(16, 7), 1)
    assert torch.equal(distill_loss(logits, y, teacher, 0.0, 4.0), F.cross_entropy(logits, y))
    smoothed = distill_loss(logits, y, teacher, 0.0, 4.0, label_smoothing=0.1)
    assert torch.allclose(smoothed, F.cross_entropy(logits, y, label_smoothing=0.1))


def test_the_distillation_term_is_t_squared_kl_to_the_softened_teacher():
    torch.manual_seed(1)
    s, t_logits, y = torch.randn(8, 7), torch.randn(8, 7), torch.randint(0, 7, (8,))
    T = 3.0
    p_t = torch.softmax(t_logits / T, 1)
    log_p_s = torch.log_softmax(s / T, 1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(1).mean()  # KL(teacher || student), per image, averaged
    assert torch.allclose(distill_loss(s, y, p_t, 1.0, T), T**2 * kl, atol=1e-6)
    mixed = distill_loss(s, y, p_t, 0.25, T)
    assert torch.allclose(mixed, 0.75 * F.cross_entropy(s, y) + 0.25 * T**2 * kl, atol=1e-6)


def test_several_teachers_give_their_mean_softened_probabilities():
    torch.manual_seed(2)
    a, b = create_model("cnn", 0.1).eval(), create_model("mobilenet", 0.25).eval()
    x = torch.randn(4, 1, 48, 48)
    both = Teachers([a, b], temperature=2.0)(x)
    expect = (torch.softmax(a(x) / 2, 1) + torch.softmax(b(x) / 2, 1)) / 2
    assert torch.allclose(both, expect, atol=1e-6) and torch.allclose(both.sum(1), torch.ones(4))


def test_the_teacher_gets_no_gradient_and_stays_in_eval_mode():
    data = load("synthetic")
    x, y = torch.from_numpy(data.train_x[:64]), torch.from_numpy(data.train_y[:64])
    teacher_net = create_model("cnn", 0.1)
    before = copy.deepcopy(teacher_net.state_dict())
    teachers = Teachers([teacher_net], 4.0)
    cfg = RunConfig()
    cfg.distill.teachers = ["t"]
    student = create_model("mobilenet", 0.25)
    step = Step(
        student, make_optimizer(student, cfg, torch.device("cpu"), False), x, y, cfg, torch.device("cpu"), teachers
    )
    student.train()
    teachers.train()  # a caller asking for train mode must not wake its dropout or BatchNorm updates
    for _ in range(3):
        step(torch.arange(32))
    assert not teacher_net.training and all(p.grad is None for p in teacher_net.parameters())
    after = teacher_net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    assert any(p.grad is not None for p in student.parameters())


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_labels_are_distributions(mixup, cutmix):
    torch.manual_seed(3)
    t = TrainConfig(mixup=mixup, cutmix=cutmix, mix_prob=1.0, label_smoothing=0.1)
    x, y = torch.randn(32, 1, 48, 48), torch.randint(0, 7, (32,))
    for _ in range(10):
        xm, target = mix_batch(x, y, t)
        assert xm.shape == x.shape and target.shape == (32, 7)
        assert torch.allclose(target.sum(1), torch.ones(32), atol=1e-6) and (target >= 0).all()


def test_mixup_mixes_images_and_labels_by_the_same_lambda():
    torch.manual_seed(5)
    t = TrainConfig(mixup=0.4, mix_prob=1.0)
    x, y = torch.randn(6, 1, 48, 48), torch.arange(6)  # every image's partner (the reversed batch) differs
    xm, target = mix_batch(x, y, t)
    lam = target[0, 0]
    assert 0 < lam < 1 and target[0, 5] == pytest.approx(1 - lam.item())
    assert torch.allclose(xm, lam * x + (1 - lam) * x.flip(0), atol=1e-6)


def test_cutmix_labels_are_the_pasted_area():
    torch.manual_seed(4)
    t = TrainConfig(cutmix=1.0, mix_prob=1.0)
    x = torch.zeros(2, 1, 48, 48)
    x[1] = 1.0  # image 0 receives a patch of ones from image 1 (the reversed batch)
    y = torch.tensor([0, 1])
    xm, target = mix_batch(x, y, t)
    area = xm[0].mean().item()
    assert target[0, 1].item() == pytest.approx(area, abs=1e-6) and target[0, 0].item() == pytest.approx(1 - area)


def test_mix_prob_zero_leaves_batches_alone():
    t = TrainConfig(mixup=0.4, cutmix=1.0, mix_prob=0.0)
    x, y = torch.randn(8, 1, 48, 48), torch.randint(0, 7, (8,))
    xm, target = mix_batch(x, y, t)
    assert torch.equal(xm, x) and torch.equal(target, F.one_hot(y, 7).float())


def test_ema_update_arithmetic():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()
    assert torch.allclose(ema.model.weight, 0.9 * start["weight"] + 0.1 * model.weight)
    assert torch.allclose(ema.model.bias, start["bias"])  # unchanged weights stay put
    ema.reset()
    assert torch.equal(ema.model.weight, model.weight)


def test_sgd_uses_nesterov_momentum():
    cfg = apply_recipe(RunConfig(), "sgd")
    opt = make_optimizer(torch.nn.Linear(3, 2), cfg, torch.device("cpu"), False)
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert group["nesterov"] and group["momentum"] == 0.9 and group["weight_decay"] == 5e-4
