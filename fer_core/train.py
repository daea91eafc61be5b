"""The training engine: ``fit(config, on_event)`` = ``train_one_epoch`` + ``evaluate``, knowing nothing of any UI.

GPU-first: the whole dataset lives on the device as one uint8 tensor, augmentation is one batched affine
warp, CUDA runs use bf16 autocast and channels_last, and the whole training step (gather, augment,
forward, backward, Adam) is captured once as a CUDA graph and replayed, which removes the per-kernel
launch cost that dominates small models. The CPU path runs the same step eagerly.

Model selection uses the public split only (best epoch by public accuracy); the private split is
evaluated exactly once, after training, on the selected weights.
"""

from __future__ import annotations

import copy
import math
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import EMOTIONS, NUM_CLASSES, __version__
from .augment import augment_batch, normalize
from .config import RunConfig
from .data import SPLITS, FerData, load
from .errors import FerError
from .models import create_model, solve_width
from .models.stats import model_stats
from .runs import Run, atomic_torch_save, atomic_write_json, read_json, weights_payload

Event = dict
OnEvent = Callable[[Event], None]


class Cancelled(BaseException):
    """Raised inside a training process when it is asked to stop (SIGTERM, or the dashboard's cancel)."""


def install_cancel_handler() -> None:
    """Turn SIGTERM into :class:`Cancelled` so the run is recorded as cancelled, not failed."""

    def _handler(signum, frame):
        raise Cancelled()

    signal.signal(signal.SIGTERM, _handler)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FerError("--device cuda was asked for, but no CUDA GPU is available (use --device auto or cpu)")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise FerError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def _epoch_seed(seed: int, epoch: int) -> int:
    """Every epoch draws its shuffle, augmentation and dropout from its own seed, so a resumed run
    repeats exactly what an uninterrupted one would have done."""
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


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


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return nullcontext()


def _memory_format(device: torch.device):
    return torch.channels_last


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
        xb = xb.contiguous(memory_format=_memory_format(device))
        with _autocast(device):
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
    logits = predict_logits(model, x_uint8, batch_size, flip_tta)
    y = y.to(logits.device)
    loss = F.cross_entropy(logits, y).item() if len(y) else float("nan")
    pred = logits.argmax(1)
    cm = torch.bincount(y * NUM_CLASSES + pred, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)
    acc = (pred == y).float().mean().item() if len(y) else float("nan")
    return Evaluation(accuracy=round(acc, 6), loss=round(loss, 6), confusion=cm.cpu().tolist())


class _Step:
    """One training step on a batch of indices: gather, augment, forward, loss, backward, optimizer step.

    Keeps running sums of loss and correct predictions on the device, so no step waits for the GPU.
    """

    def __init__(self, model, optimizer, x_all, y_all, cfg: RunConfig, device):
        self.model, self.opt, self.x_all, self.y_all = model, optimizer, x_all, y_all
        self.cfg, self.device = cfg, device
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)

    def _compute(self, idx: torch.Tensor) -> None:
        x = normalize(self.x_all[idx])
        if self.cfg.data.augment:
            x = augment_batch(x, self.cfg.data.aug)
        x = x.contiguous(memory_format=_memory_format(self.device))
        y = self.y_all[idx]
        with _autocast(self.device):
            out = self.model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=self.cfg.train.label_smoothing)
        loss.backward()
        self.opt.step()
        self.loss_sum += loss.detach()
        self.correct += (out.argmax(1) == y).sum()

    def __call__(self, idx: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        self._compute(idx)

    def reset_sums(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()


class _GraphedStep(_Step):
    """The same step captured once as a CUDA graph and replayed (same math, far fewer launches)."""

    def __init__(self, model, optimizer, x_all, y_all, cfg: RunConfig, device, batch: int):
        super().__init__(model, optimizer, x_all, y_all, cfg, device)
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
        self.reset_sums()

    def __call__(self, idx: torch.Tensor) -> None:
        self.static_idx.copy_(idx, non_blocking=True)
        self.graph.replay()


def _restore_optimizer(opt, state: dict, in_place: bool) -> None:
    """Load an optimizer checkpoint; in place (same tensors) when a CUDA graph holds the current ones."""
    if not in_place:
        opt.load_state_dict(state)
        return
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        for k, v in state["state"].get(i, {}).items():
            if torch.is_tensor(v):
                opt.state[p][k].copy_(v)


def _make_optimizer(model: nn.Module, cfg: RunConfig, device: torch.device, graphed: bool):
    """Adam/AdamW; on CUDA the fused kernel, and with a CUDA graph a tensor learning rate that the
    schedule can change between replays."""
    t = cfg.train
    if t.optimizer not in ("adam", "adamw"):
        raise FerError(f"unknown optimizer {t.optimizer!r}: use adam or adamw")
    kw: dict = {"lr": t.lr, "weight_decay": t.weight_decay}
    if device.type == "cuda":
        kw.update(fused=True, capturable=graphed)
        if graphed:
            kw["lr"] = torch.tensor(t.lr, device=device)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), **kw)


def lr_at(cfg: RunConfig, epoch: int) -> float:
    """Learning rate for 1-based ``epoch``: linear warm-up, then constant or cosine to zero."""
    t = cfg.train
    if t.schedule not in ("constant", "cosine"):
        raise FerError(f"unknown schedule {t.schedule!r}: use constant or cosine")
    if epoch <= t.warmup_epochs:
        return t.lr * epoch / (t.warmup_epochs + 1)
    if t.schedule == "constant":
        return t.lr
    progress = (epoch - 1 - t.warmup_epochs) / max(1, t.epochs - t.warmup_epochs)
    return t.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _set_lr(opt, lr: float) -> None:
    for g in opt.param_groups:
        if torch.is_tensor(g["lr"]):
            g["lr"].fill_(lr)
        else:
            g["lr"] = lr


def train_one_epoch(step: _Step, n_train: int, batch: int, seed: int, epoch: int, device) -> tuple[float, float, int]:
    """One pass over a fresh shuffle (full batches only). Returns (mean loss, train accuracy, images)."""
    torch.manual_seed(_epoch_seed(seed, epoch))
    perm = torch.randperm(n_train, device=device)
    steps = n_train // batch
    step.model.train()
    step.reset_sums()
    for i in range(steps):
        step(perm[i * batch : (i + 1) * batch])
    n = steps * batch
    return step.loss_sum.item() / max(steps, 1), step.correct.item() / max(n, 1), n


def build_model(cfg: RunConfig) -> nn.Module:
    """The model a config describes (solving a parameter budget into a width first, if one is set)."""
    if cfg.model.budget:
        cfg.model.width, _ = solve_width(cfg.model.family, cfg.model.budget)
    return create_model(cfg.model.family, cfg.model.width, dropout=cfg.model.dropout)


def _checkpoint(model, opt, epoch, best_acc, best_epoch, best_state, history_wall) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": epoch,
        "best_acc": best_acc,
        "best_epoch": best_epoch,
        "best_state": best_state,
        "wall_s": history_wall,
    }


def fit(
    cfg: RunConfig,
    on_event: OnEvent | None = None,
    run: Run | None = None,
    data: FerData | None = None,
    resume: bool = False,
) -> dict:
    """Train one model as ``cfg`` says, recording everything in ``run`` (a new run folder if None).

    Args:
        cfg: the run's configuration (saved as config.json).
        on_event: called with plain dicts: ``{"type": "start"|"epoch"|"end", ...}`` (progress bars).
        run: the run folder; with ``resume=True`` its checkpoint is continued.
        data: already loaded data (else loaded from ``cfg.data.data``).
    Returns:
        The run's final summary.
    """
    emit = on_event or (lambda e: None)
    t_start = time.time()
    device = resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels once
    if data is None:
        data = load(cfg.data.data)
    source_fingerprint = data.fingerprint  # of the whole source, before --limit
    data = data.limit_train(cfg.data.limit)
    if cfg.train.epochs < 1:
        raise FerError(f"epochs must be at least 1, got {cfg.train.epochs}")
    if cfg.train.batch_size < 1:
        raise FerError(f"batch size must be at least 1, got {cfg.train.batch_size}")

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg)
    stats = model_stats(model)
    model = model.to(device).to(memory_format=_memory_format(device))
    if run is None:
        run = Run.create(cfg.model.family, cfg.model.width, cfg.train.seed)
    if not resume or read_json(run.config_file) is None:
        atomic_write_json(run.config_file, cfg.to_dict())
    n_train = len(data.train_y)
    batch = min(cfg.train.batch_size, n_train)
    base = {
        "family": cfg.model.family,
        "width": cfg.model.width,
        "budget": cfg.model.budget,
        **stats,
        "epochs": cfg.train.epochs,
        "batch_size": batch,
        "lr": cfg.train.lr,
        "optimizer": cfg.train.optimizer,
        "weight_decay": cfg.train.weight_decay,
        "schedule": cfg.train.schedule,
        "warmup_epochs": cfg.train.warmup_epochs,
        "label_smoothing": cfg.train.label_smoothing,
        "augment": cfg.data.augment,
        "seed": cfg.train.seed,
        "recipe": cfg.recipe,
        "device": device_name(device),
        "data": data.name,
        "data_kind": data.kind,
        "data_file": Path(data.path).name if data.path else None,
        "data_fingerprint": source_fingerprint,
        "data_synthetic": data.synthetic,
        "data_sizes": {s: int(len(data.split(s)[1])) for s in SPLITS},
        "data_notes": data.notes,
        "limit": cfg.data.limit,
        "torch": torch.__version__,
        "fer_lab": __version__,
    }
    started = (read_json(run.summary_file) or {}).get("started", t_start)  # a resumed run keeps its start
    run.mark_running(**base, started=started)
    x_train = torch.from_numpy(np.ascontiguousarray(data.train_x)).to(device)
    y_train = torch.from_numpy(data.train_y).to(device)
    x_pub = torch.from_numpy(np.ascontiguousarray(data.public_x)).to(device)
    y_pub = torch.from_numpy(data.public_y).to(device)

    start_epoch, best_acc, best_epoch, best_state, wall_before = 0, -1.0, 0, None, 0.0
    ck = None
    if resume and run.checkpoint_file.is_file():
        ck = torch.load(run.checkpoint_file, map_location=device, weights_only=True)
        start_epoch, best_acc, best_epoch = ck["epoch"], ck["best_acc"], ck["best_epoch"]
        best_state, wall_before = ck["best_state"], ck.get("wall_s", 0.0)
    if resume:
        run.truncate_metrics(start_epoch)

    graphed = device.type == "cuda" and cfg.train.cuda_graph
    opt = _make_optimizer(model, cfg, device, graphed)
    step: _Step | None = None
    graph_note = None
    if graphed:
        initial = copy.deepcopy(model.state_dict())
        try:
            step = _GraphedStep(model, opt, x_train, y_train, cfg, device, batch)
        except Exception as e:  # an op that cannot be captured: the same math, eagerly
            graph_note = f"CUDA graph capture failed ({type(e).__name__}: {e}); trained eagerly"
            torch.cuda.synchronize(device)
            with torch.no_grad():
                model.load_state_dict(initial)
            graphed = False
            opt = _make_optimizer(model, cfg, device, graphed)
    if step is None:
        step = _Step(model, opt, x_train, y_train, cfg, device)
    if ck is not None:
        with torch.no_grad():
            model.load_state_dict(ck["model"])  # copies into the same tensors the graph uses
        _restore_optimizer(opt, ck["optimizer"], in_place=graphed)
    run.update_summary(cuda_graph=graphed, cuda_graph_note=graph_note)

    emit({"type": "start", "run_id": run.run_id, "path": str(run.path), "epoch": start_epoch, **base})
    status, error = "running", None
    epoch = start_epoch
    train_time = 0.0
    images = 0
    try:
        for epoch in range(start_epoch + 1, cfg.train.epochs + 1):
            lr = lr_at(cfg, epoch)
            _set_lr(opt, lr)
            t0 = time.perf_counter()
            loss, train_acc, n = train_one_epoch(step, n_train, batch, cfg.train.seed, epoch, device)
            t_train = time.perf_counter() - t0
            train_time += t_train
            images += n
            ev = evaluate(model, x_pub, y_pub, cfg.train.eval_batch_size)
            if ev.accuracy > best_acc:
                best_acc, best_epoch = ev.accuracy, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            epoch_s = time.perf_counter() - t0
            elapsed = wall_before + time.time() - t_start
            row = {
                "epoch": epoch,
                "loss": round(loss, 5),
                "train_acc": round(train_acc, 5),
                "public_acc": ev.accuracy,
                "public_loss": ev.loss,
                "lr": lr,
                "img_per_s": round(n / t_train, 1) if t_train > 0 else None,
                "epoch_s": round(epoch_s, 3),
                "elapsed_s": round(elapsed, 2),
                "eta_s": round(epoch_s * (cfg.train.epochs - epoch), 1),
            }
            run.append_metrics(row)
            last = epoch == cfg.train.epochs
            if last or epoch % max(1, cfg.train.checkpoint_every) == 0:
                atomic_torch_save(
                    run.checkpoint_file, _checkpoint(model, opt, epoch, best_acc, best_epoch, best_state, elapsed)
                )
            run.update_summary(
                status="running",
                heartbeat=time.time(),
                epochs_done=epoch,
                best_epoch=best_epoch,
                best_public_acc=best_acc,
                img_per_s=round(images / train_time, 1) if train_time else None,
                wall_s=round(elapsed, 2),
            )
            emit(
                {"type": "epoch", "run_id": run.run_id, "epochs": cfg.train.epochs, "best_public_acc": best_acc, **row}
            )
        status = "completed"
    except Cancelled:
        status, error = "cancelled", "cancelled by the user"
    except KeyboardInterrupt:
        status, error = "cancelled", "interrupted (Ctrl-C)"
    except Exception as e:
        status, error = "failed", f"{type(e).__name__}: {e}"
        run.update_summary(status="failed", error=error, ended=time.time())
        emit({"type": "end", "run_id": run.run_id, "status": status, "error": error})
        raise

    if status != "completed":
        summary = run.update_summary(status=status, error=error, ended=time.time())
        emit({"type": "end", "run_id": run.run_id, "status": status, "error": error})
        return summary

    # the selected weights: best public accuracy; then the private split, once
    model.load_state_dict(best_state)
    pub = evaluate(model, x_pub, y_pub, cfg.train.eval_batch_size)
    x_priv = torch.from_numpy(np.ascontiguousarray(data.private_x))
    y_priv = torch.from_numpy(data.private_y)
    priv = evaluate(model, x_priv, y_priv, cfg.train.eval_batch_size)
    # reported beside the plain numbers, never instead of them: flip test-time augmentation
    pub_tta = evaluate(model, x_pub, y_pub, cfg.train.eval_batch_size, flip_tta=True)
    priv_tta = evaluate(model, x_priv, y_priv, cfg.train.eval_batch_size, flip_tta=True)
    state_cpu = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = weights_payload(
        state_cpu,
        {
            "family": cfg.model.family,
            "width": cfg.model.width,
            "num_classes": NUM_CLASSES,
            "dropout": cfg.model.dropout,
        },
        epoch=best_epoch,
        metric={"public_acc": pub.accuracy},
        run_id=run.run_id,
    )
    atomic_torch_save(run.path / "weights.pt", payload)
    summary = run.update_summary(
        status="completed",
        error=None,
        epochs_done=epoch,
        best_epoch=best_epoch,
        public_acc=pub.accuracy,
        private_acc=priv.accuracy,
        public_loss=pub.loss,
        private_loss=priv.loss,
        public_acc_flip_tta=pub_tta.accuracy,
        private_acc_flip_tta=priv_tta.accuracy,
        per_class_public=pub.per_class,
        per_class_private=priv.per_class,
        confusion_public=pub.confusion,
        confusion_private=priv.confusion,
        shared_test=data.shared_test,
        ended=time.time(),
        wall_s=round(wall_before + time.time() - t_start, 2),
    )
    if run.checkpoint_file.is_file():
        run.checkpoint_file.unlink()
    emit({"type": "end", "run_id": run.run_id, "status": "completed", "summary": summary})
    return summary
