"""The training step and what it is made of: optimizer, schedule, mixing, distillation, weight averaging.

One :class:`Step` does gather -> augment -> mix -> forward (student, and frozen teachers) -> loss -> backward
-> optimizer -> EMA for a batch of indices into the on-device dataset. Everything in it is batched tensor
work with no host synchronisation and no data-dependent Python branch, so on CUDA :class:`GraphedStep`
captures it once as a CUDA graph and replays it (the random numbers of augmentation and mixing come from
the graph-safe generator; the learning rate is a device tensor the schedule fills between replays).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fer_core.common import NUM_CLASSES
from fer_core.data.augment import augment_batch, draw_affine, normalize, photometric_batch, warp
from fer_core.training.config import RunConfig, TrainConfig
from fer_core.training.evaluation import autocast, memory_format

# --------------------------------------------------------------------------------------------------- losses


def soft_targets(y: torch.Tensor, num_classes: int = NUM_CLASSES, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot labels with ``smoothing`` spread evenly over every class (rows sum to one)."""
    t = F.one_hot(y, num_classes).float()
    return t * (1 - smoothing) + smoothing / num_classes if smoothing else t


def _beta(alpha: float, device) -> torch.Tensor:
    """One draw of Beta(alpha, alpha) as a 0-dim device tensor (two gammas: graph-safe, no host sync)."""
    g = torch._standard_gamma(torch.full((2,), float(alpha), device=device))
    return g[0] / g.sum()


def mix_batch(x: torch.Tensor, y: torch.Tensor, t: TrainConfig, num_classes: int = NUM_CLASSES):
    """Mixup and/or cutmix of a float batch (N, C, H, W) with its reversed self, on the device.

    Returns the mixed images and their label distributions (N, num_classes), each row summing to one,
    label smoothing included. With both on, each batch is mixup or cutmix with even odds; ``mix_prob`` is
    the share of batches mixed at all. Branch-free, so a CUDA graph can hold it.
    """
    dev = x.device
    target = soft_targets(y, num_classes, t.label_smoothing)
    x2, target2 = x.flip(0), target.flip(0)
    h, w = x.shape[-2:]
    lam = torch.ones((), device=dev)
    out = x
    if t.mixup > 0:
        lam_mix = _beta(t.mixup, dev)
        mixed = lam_mix * x + (1 - lam_mix) * x2
    if t.cutmix > 0:
        cut = torch.sqrt(1 - _beta(t.cutmix, dev))  # side ratio of the patch
        cy, cx = torch.rand(2, device=dev).unbind()
        y0, y1 = ((cy - cut / 2) * h).clamp(0, h), ((cy + cut / 2) * h).clamp(0, h)
        x0, x1 = ((cx - cut / 2) * w).clamp(0, w), ((cx + cut / 2) * w).clamp(0, w)
        rows = torch.arange(h, device=dev, dtype=x.dtype).view(-1, 1) + 0.5
        cols = torch.arange(w, device=dev, dtype=x.dtype).view(1, -1) + 0.5
        mask = ((rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)).to(x.dtype)
        lam_cut = 1 - mask.mean()  # the labels follow the area actually pasted
        cutted = x * (1 - mask) + x2 * mask
    if t.mixup > 0 and t.cutmix > 0:
        use_cut = torch.rand((), device=dev) < 0.5
        mixed = torch.where(use_cut, cutted, mixed)
        lam_mix = torch.where(use_cut, lam_cut, lam_mix)
    elif t.cutmix > 0:
        mixed, lam_mix = cutted, lam_cut
    if t.mixup > 0 or t.cutmix > 0:
        apply = torch.rand((), device=dev) < t.mix_prob
        out = torch.where(apply, mixed, x)
        lam = torch.where(apply, lam_mix, lam)
    return out, lam * target + (1 - lam) * target2


def distill_loss(
    student_logits: torch.Tensor,
    target: torch.Tensor,
    teacher_probs: torch.Tensor | None,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """(1 - alpha) * cross-entropy to the labels + alpha * T^2 * KL(teacher || student), at temperature T.

    ``target`` is class indices (smoothed by ``label_smoothing``) or distributions (mixed labels, already
    smoothed). ``teacher_probs`` are the teacher's probabilities at temperature T (several teachers: their
    mean); the T^2 keeps the distillation gradients on the scale of the label term (Hinton et al., 2015).
    """
    smoothing = label_smoothing if target.dtype == torch.long else 0.0
    ce = F.cross_entropy(student_logits, target, label_smoothing=smoothing)
    if teacher_probs is None or alpha == 0:
        return ce
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    kd = F.kl_div(log_p, teacher_probs, reduction="batchmean") * temperature**2
    return (1 - alpha) * ce + alpha * kd


class Teachers(nn.Module):
    """Frozen teacher models in eval mode; their mean probabilities at a temperature are the soft targets."""

    def __init__(self, models: list[nn.Module], temperature: float):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.temperature = temperature
        for m in self.models:
            m.eval()
            m.requires_grad_(False)

    def train(self, mode: bool = True) -> Teachers:  # a teacher never leaves eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = [torch.softmax(m(x).float() / self.temperature, dim=1) for m in self.models]
        return torch.stack(probs).mean(0)


class ReplayedTeachers:
    """The teachers' soft targets computed once, for ``views`` augmented views of every training image, and
    replayed: each step draws one stored view per image, warps the image through it and reads the teachers'
    output for exactly that view, so the student learns from what the teachers saw without their forward pass
    on every step (with E epochs, E / views times fewer teacher passes).

    The views come from their own generator (the run's seed), so a resumed run rebuilds the same table. Without
    augmentation there is one view per image: the image itself. Given ``cache`` (a folder), the table is kept
    there under a key of everything it depends on (the teachers' weights, the temperature, the images, the
    views' settings and seed, the device type): a resumed run, or another student of the same teachers with
    the same seed and views, reads it instead of paying the teachers again (``forwards`` is then 0).
    """

    def __init__(
        self,
        teachers: Teachers,
        x_all: torch.Tensor,
        cfg: RunConfig,
        device,
        batch_size: int = 1024,
        cache: Path | None = None,
    ):
        n, views = len(x_all), cfg.distill.views if cfg.data.augment else 1
        g = torch.Generator(device=device).manual_seed(cfg.train.seed * 7919 + 17)
        if cfg.data.augment:
            self.theta = torch.stack([draw_affine(n, cfg.data.aug, device, g) for _ in range(views)], 1)
        else:
            self.theta = None
        self.views, self.x_all = views, x_all
        file = cache / f"{self._key(teachers, cfg, views, device)}.pt" if cache else None
        self.probs = _read_table(file, (n, views, NUM_CLASSES), device)
        self.forwards = 0
        if self.probs is not None:
            return
        self.probs = torch.empty(n, views, NUM_CLASSES, device=device)
        for k in range(views):
            for i in range(0, n, batch_size):
                idx = torch.arange(i, min(n, i + batch_size), device=device)
                x = self._warp(idx, torch.full_like(idx, k))
                with autocast(device):
                    self.probs[idx, k] = teachers(x.contiguous(memory_format=memory_format(device))).float()
        self.forwards = n * views
        if file is not None:
            _write_table(file, self.probs)

    def _key(self, teachers: Teachers, cfg: RunConfig, views: int, device) -> str:
        h = hashlib.sha256(f"{TABLE_VERSION}|{teachers.temperature}|{views}|{cfg.train.seed}".encode())
        h.update(f"{cfg.data.augment}|{cfg.data.aug}|{torch.device(device).type}".encode())
        for m in teachers.models:
            for name, v in m.state_dict().items():
                h.update(name.encode())
                h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        h.update(self.x_all.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:32]

    def _warp(self, idx: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        x = normalize(self.x_all[idx])
        return x if self.theta is None else warp(x, self.theta[idx, k])

    def view(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch's images, each through one of its stored views (drawn from the global generator, which the
        epoch seeds), and the teachers' probabilities for those views."""
        k = torch.randint(self.views, (len(idx),), device=idx.device)
        return self._warp(idx, k), self.probs[idx, k]


#: Changes when the replayed table's contents change meaning (its cache key includes it).
TABLE_VERSION = 1


def _read_table(file: Path | None, shape: tuple, device) -> torch.Tensor | None:
    """A cached teachers' table, or None when there is none (or it is damaged or of another shape: recomputed)."""
    if file is None or not file.is_file():
        return None
    try:
        probs = torch.load(file, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged cache file is recomputed and overwritten, never an error
        return None
    if not isinstance(probs, torch.Tensor) or tuple(probs.shape) != shape or probs.dtype != torch.float32:
        return None
    return probs.to(device)


def _write_table(file: Path, probs: torch.Tensor) -> None:
    """Written beside and renamed, so a run stopped mid-write leaves no half table; a full disk only costs the
    next run the teachers' pass again."""
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(probs.cpu(), tmp)
        os.replace(tmp, file)
    except OSError:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------- weights


class EMA:
    """An exponential moving average of a model's weights (and BatchNorm statistics), updated every step:
    ``ema = decay * ema + (1 - decay) * current``, as one fused in-place op (graph-safe)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        src, dst = model.state_dict(), self.model.state_dict()
        floats = [k for k, v in dst.items() if v.is_floating_point()]
        counters = [k for k in dst if k not in set(floats)]  # BatchNorm's batch counters: copied, not averaged
        self._dst_f, self._src_f = [dst[k] for k in floats], [src[k] for k in floats]
        self._dst_i, self._src_i = [dst[k] for k in counters], [src[k] for k in counters]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self._dst_f, self._src_f, 1.0 - self.decay)
        for d, s in zip(self._dst_i, self._src_i):
            d.copy_(s)

    @torch.no_grad()
    def reset(self) -> None:
        """Make the average equal to the current weights (the start of training)."""
        torch._foreach_copy_(self._dst_f, self._src_f)
        for d, s in zip(self._dst_i, self._src_i):
            d.copy_(s)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for k, v in self.model.state_dict().items():
            v.copy_(state[k])  # in place: a CUDA graph holds these tensors


# --------------------------------------------------------------------------------------------------- optimizer


def make_optimizer(model: nn.Module, cfg: RunConfig, device: torch.device, graphed: bool):
    """Adam / AdamW / SGD with Nesterov momentum; on CUDA the fused kernels, and with a CUDA graph a tensor
    learning rate that the schedule can change between replays."""
    t = cfg.train
    kw: dict = {"lr": t.lr, "weight_decay": t.weight_decay}
    if device.type == "cuda":
        kw["fused"] = True
        if graphed:
            kw["lr"] = torch.tensor(t.lr, device=device)
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), momentum=t.momentum, nesterov=t.momentum > 0, **kw)
    if device.type == "cuda":
        kw["capturable"] = graphed
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), **kw)


def restore_optimizer(opt, state: dict, in_place: bool) -> None:
    """Load an optimizer checkpoint; in place (same tensors) when a CUDA graph holds the current ones."""
    if not in_place:
        opt.load_state_dict(state)
        return
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        for k, v in state["state"].get(i, {}).items():
            if torch.is_tensor(v):
                opt.state[p][k].copy_(v)


def lr_at(cfg: RunConfig, epoch: int) -> float:
    """Learning rate for 1-based ``epoch``: linear warm-up, then constant or cosine to zero."""
    t = cfg.train
    if epoch <= t.warmup_epochs:
        return t.lr * epoch / (t.warmup_epochs + 1)
    if t.schedule == "constant":
        return t.lr
    progress = (epoch - 1 - t.warmup_epochs) / max(1, t.epochs - t.warmup_epochs)
    return t.lr * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(opt, lr: float) -> None:
    for g in opt.param_groups:
        if torch.is_tensor(g["lr"]):
            g["lr"].fill_(lr)
        else:
            g["lr"] = lr


# --------------------------------------------------------------------------------------------------- the step


class Step:
    """One training step on a batch of indices into the on-device dataset.

    Keeps running sums of loss and correct predictions on the device, so no step waits for the GPU.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer,
        x_all: torch.Tensor,
        y_all: torch.Tensor,
        cfg: RunConfig,
        device: torch.device,
        teachers: Teachers | ReplayedTeachers | None = None,
        ema: EMA | None = None,
    ):
        self.model, self.opt, self.x_all, self.y_all = model, optimizer, x_all, y_all
        self.cfg, self.device, self.ema = cfg, device, ema
        live = teachers if cfg.distill.alpha > 0 else None  # a term of weight 0 needs no forward pass
        self.replay = live if isinstance(live, ReplayedTeachers) else None
        self.teachers = None if self.replay is not None else live
        self.mixing = cfg.train.mixup > 0 or cfg.train.cutmix > 0
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)

    def _compute(self, idx: torch.Tensor) -> None:
        t = self.cfg.train
        teacher_probs = None
        if self.replay is not None:  # a stored view and the teachers' output for it (no mixing, no photometric)
            x, teacher_probs = self.replay.view(idx)
        else:
            x = normalize(self.x_all[idx])
        if self.cfg.data.augment and self.replay is None:
            x = augment_batch(x, self.cfg.data.aug)
            if self.cfg.data.aug.photometric > 0:
                x = photometric_batch(x, self.cfg.data.aug.photometric)
        y = self.y_all[idx]
        target = y
        if self.mixing:
            x, target = mix_batch(x, y, t)
        x = x.contiguous(memory_format=memory_format(self.device))
        with autocast(self.device):
            out = self.model(x)
            if self.teachers is not None:
                teacher_probs = self.teachers(x)
        kd = self.cfg.distill
        loss = distill_loss(out.float(), target, teacher_probs, kd.alpha, kd.temperature, t.label_smoothing)
        loss.backward()
        self.opt.step()
        if self.ema is not None:
            self.ema.update()
        self.loss_sum += loss.detach()
        self.correct += (out.argmax(1) == y).sum()

    def __call__(self, idx: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        self._compute(idx)

    def reset_sums(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()


class GraphedStep(Step):
    """The same step captured once as a CUDA graph and replayed (same math, far fewer launches)."""

    def __init__(self, model, optimizer, x_all, y_all, cfg: RunConfig, device, batch: int, teachers=None, ema=None):
        super().__init__(model, optimizer, x_all, y_all, cfg, device, teachers, ema)
        self.static_idx = torch.zeros(batch, dtype=torch.long, device=device)
        model_state = copy.deepcopy(model.state_dict())
        # warm up on a side stream (cuDNN picks algorithms, the optimizer makes its state), as CUDA graphs need
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                self.opt.zero_grad(set_to_none=True)
                self._compute(self.static_idx)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self._compute(self.static_idx)
        # undo the warm-up steps: training starts from the initial weights and a fresh optimizer
        with torch.no_grad():
            model.load_state_dict(model_state)
            for state in self.opt.state.values():
                for v in state.values():
                    if torch.is_tensor(v):
                        v.zero_()
        if ema is not None:
            ema.reset()
        self.reset_sums()

    def __call__(self, idx: torch.Tensor) -> None:
        self.static_idx.copy_(idx, non_blocking=True)
        self.graph.replay()


def epoch_seed(seed: int, epoch: int) -> int:
    """Every epoch draws its shuffle, augmentation, mixing and dropout from its own seed, so a resumed run
    repeats exactly what an uninterrupted one would have done."""
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


def train_one_epoch(step: Step, n_train: int, batch: int, seed: int, epoch: int, device) -> tuple[float, float, int]:
    """One pass over a fresh shuffle (full batches only). Returns (mean loss, train accuracy, images)."""
    torch.manual_seed(epoch_seed(seed, epoch))
    perm = torch.randperm(n_train, device=device)
    steps = n_train // batch
    step.model.train()
    step.reset_sums()
    for i in range(steps):
        step(perm[i * batch : (i + 1) * batch])
    n = steps * batch
    return step.loss_sum.item() / max(steps, 1), step.correct.item() / max(n, 1), n
