"""The training engine: ``fit(config, on_event)``, knowing nothing of any UI.

GPU-first: the whole dataset lives on the device as one uint8 tensor, augmentation is one batched affine
warp, CUDA runs use bf16 autocast and channels_last, and the whole training step (gather, augment, mix,
forward, teachers, backward, optimizer, EMA; :mod:`fer_core.training.engine`) is captured once as a CUDA graph and
replayed (no per-kernel launch cost, which dominates small models). The CPU runs the same step eagerly, each
BatchNorm and its activation fused into one kernel (:mod:`fer_core.models.fused`).

Model selection uses the public split only (best epoch by public accuracy, for the raw weights and for
their EMA alike; the better of the two is shipped); the private split is evaluated exactly once, after
training, on the selected weights.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fer_core.common import NUM_CLASSES, VERSION, DiskFull, FerError
from fer_core.common.memory import page_faults, tune_allocator
from fer_core.data.dataset import SPLITS, FerData
from fer_core.data.sources import cache_dir, load
from fer_core.models import create_model, solve_width
from fer_core.models.fused import fuse_bn_act, kernel_status, unfuse_bn_act
from fer_core.models.layers import fit_shapes
from fer_core.models.stats import model_stats
from fer_core.store.files import atomic_torch_save, atomic_write_json, read_json, weights_payload
from fer_core.store.runs import Run
from fer_core.training.config import RunConfig
from fer_core.training.device import device_name, resolve_device
from fer_core.training.engine import (
    EMA,
    GraphedStep,
    ReplayedTeachers,
    Step,
    Teachers,
    lr_at,
    make_optimizer,
    restore_optimizer,
    set_lr,
    train_one_epoch,
)
from fer_core.training.evaluation import Evaluation, evaluate, memory_format
from fer_core.training.lineage import lineage_fields, load_lineage
from fer_core.training.pruning import prune_to, schedule, step_targets
from fer_core.training.stops import Cancelled, epoch_files, recording_a_stop

Event = dict
OnEvent = Callable[[Event], None]


def build_model(cfg: RunConfig) -> nn.Module:
    """The model a config describes (solving a parameter budget into a width first, if one is set)."""
    if cfg.model.budget and not cfg.prune.parent:  # a pruned run keeps its parent's width, cut to the budget
        cfg.model.width, _ = solve_width(cfg.model.family, cfg.model.budget)
    return create_model(cfg.model.family, cfg.model.width, dropout=cfg.model.dropout)


# --------------------------------------------------------------------------------------------------- phases


@dataclass
class _Best:
    """The best epoch so far of one set of weights (raw or EMA), by public accuracy."""

    acc: float = -1.0
    epoch: int = 0
    state: dict | None = None

    def offer(self, acc: float, epoch: int, model: nn.Module) -> None:
        if acc > self.acc:
            self.acc, self.epoch = acc, epoch
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class _Trainer:
    """What the phases of :func:`fit` share."""

    cfg: RunConfig
    run: Run
    data: FerData
    device: torch.device
    model: nn.Module
    base: dict  # what the summary says about the run before it trains
    teachers: Teachers | ReplayedTeachers | None = None
    ema: EMA | None = None
    opt: object = None
    step: Step | None = None
    graphed: bool = False
    x: dict = field(default_factory=dict)  # split -> (uint8 images, labels) as device tensors
    best: _Best = field(default_factory=_Best)
    best_ema: _Best = field(default_factory=_Best)
    start_epoch: int = 0
    prune_at: list[int] = field(default_factory=list)  # epochs at whose start a pruning step happens
    prune_targets: list[int] = field(default_factory=list)  # parameters after each of those steps
    fused: int = 0  # BatchNorm layers trained by the fused CPU kernel (models.fused); 0 on a GPU or without it
    wall_before: float = 0.0
    t_start: float = 0.0
    train_time: float = 0.0
    images: int = 0


def _setup(cfg: RunConfig, data: FerData | None, run: Run | None, resume: bool, root: Path | None) -> _Trainer:
    """Validate, load lineage and data, build the model and put the data on the device."""
    t_start = time.time()
    cfg.validate()
    device = resolve_device(cfg.train.device)
    teacher_models, start, lineage = load_lineage(cfg)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels once
    if data is None:
        data = load(cfg.data.data)
    fingerprint = data.fingerprint  # of the whole source, before --limit
    data = data.limit_train(cfg.data.limit)

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg)
    if start is not None:  # the init run's or the pruned parent's weights (a pruned parent: its shapes first)
        state = start.model.state_dict()
        model = fit_shapes(model, state)  # a no-op unless the start was pruned
        model.load_state_dict(state)
    stats = model_stats(model)
    model = model.to(device).to(memory_format=memory_format(device))
    if run is None:  # only now: a bad teacher, init run or data path leaves no empty run folder behind
        run = Run.create(cfg.model.family, cfg.model.width, cfg.train.seed, root=root)
    if not resume or read_json(run.config_file) is None:
        atomic_write_json(run.config_file, cfg.to_dict())
    t = cfg.train
    base = {
        "family": cfg.model.family,
        "width": cfg.model.width,
        "budget": cfg.model.budget,
        **stats,
        "epochs": t.epochs,
        "batch_size": min(t.batch_size, len(data.train_y)),
        **{k: getattr(t, k) for k in ("lr", "optimizer", "weight_decay", "schedule", "warmup_epochs")},
        **{k: getattr(t, k) for k in ("label_smoothing", "mixup", "cutmix", "ema_decay")},
        "augment": cfg.data.augment,
        "photometric": cfg.data.aug.photometric,
        "seed": t.seed,
        "recipe": cfg.recipe,
        **lineage_fields(lineage),
        "device": device_name(device),
        "data": data.name,
        "data_kind": data.kind,
        "data_file": Path(data.path).name if data.path else None,
        "data_fingerprint": fingerprint,
        "data_synthetic": data.synthetic,
        "data_sizes": {s: int(len(data.split(s)[1])) for s in SPLITS},
        "data_notes": data.notes,
        "limit": cfg.data.limit,
        "torch": torch.__version__,
        "fer_lab": VERSION,
        "allocator": {k: v for k, v in tune_allocator().items() if k != "env"},
        "bn_act": kernel_status(device),
    }
    tr = _Trainer(cfg=cfg, run=run, data=data, device=device, model=model, base=base, t_start=t_start)
    if cfg.prune.parent:
        tr.prune_at = schedule(t.epochs, cfg.prune.steps)
        tr.prune_targets = step_targets(stats["params"], cfg.model.budget, cfg.prune.steps)
    for s in ("train", "public"):
        x, y = data.split(s)
        tr.x[s] = (torch.from_numpy(np.ascontiguousarray(x)).to(device), torch.from_numpy(y).to(device))
    if teacher_models:
        for lm in teacher_models:
            lm.model.to(device).to(memory_format=memory_format(device))
        tr.teachers = Teachers([lm.model for lm in teacher_models], cfg.distill.temperature)
        if cfg.distill.views and cfg.distill.alpha > 0:  # their outputs once per stored view, then replayed
            t0 = time.perf_counter()
            replay = ReplayedTeachers(tr.teachers, tr.x["train"][0], cfg, device, cache=cache_dir() / "teacher-views")
            seconds = round(time.perf_counter() - t0, 2)
            # what the teachers cost the run: their pass, or none where an earlier run of the same teachers, seed and
            # views left the table (cached); a resumed run keeps what its first start said
            if not (read_json(run.summary_file) or {}).get("teacher_replay"):
                cost = {"forwards": replay.forwards, "seconds": seconds, "cached": replay.forwards == 0}
                run.update_summary(teacher_replay={"views": replay.views, **cost})
            tr.teachers = replay
    if t.ema_decay > 0:
        tr.ema = EMA(model, t.ema_decay)
    started = (read_json(run.summary_file) or {}).get("started", t_start)  # a resumed run keeps its start
    run.mark_running(**base, started=started)
    return tr


def _load_checkpoint(tr: _Trainer) -> dict | None:
    """The checkpoint to continue from (None: start at epoch 1); the metrics after it are dropped."""
    ck = None
    if tr.run.checkpoint_file.is_file():
        ck = torch.load(tr.run.checkpoint_file, map_location=tr.device, weights_only=True)
        tr.start_epoch, tr.wall_before = ck["epoch"], ck.get("wall_s", 0.0)
        tr.best = _Best(ck["best_acc"], ck["best_epoch"], ck["best_state"])
        if ck.get("ema") is not None:
            tr.best_ema = _Best(ck["best_ema_acc"], ck["best_ema_epoch"], ck["best_ema_state"])
    tr.run.truncate_metrics(tr.start_epoch)
    if ck is not None and any(v.shape != ck["model"][k].shape for k, v in tr.model.state_dict().items()):
        tr.model = fit_shapes(tr.model, ck["model"]).to(memory_format=memory_format(tr.device))  # pruned before
        tr.ema = EMA(tr.model, tr.cfg.train.ema_decay) if tr.ema is not None else None
        tr.run.update_summary(**model_stats(tr.model))
    return ck


def _build_step(tr: _Trainer) -> None:
    """The training step: captured as a CUDA graph where possible, else (or if capture fails) eager."""
    cfg, device = tr.cfg, tr.device
    batch = tr.base["batch_size"]
    x, y = tr.x["train"]
    tr.fused = fuse_bn_act(tr.model) if device.type == "cpu" else 0  # the same parameter tensors: optimizers unchanged
    tr.graphed = device.type == "cuda" and cfg.train.cuda_graph
    tr.opt = make_optimizer(tr.model, cfg, device, tr.graphed)
    note = None
    if tr.graphed:
        initial = copy.deepcopy(tr.model.state_dict())
        try:
            tr.step = GraphedStep(tr.model, tr.opt, x, y, cfg, device, batch, tr.teachers, tr.ema)
        except Exception as e:  # an op that cannot be captured: the same math, eagerly
            note = f"CUDA graph capture failed ({type(e).__name__}: {e}); trained eagerly"
            torch.cuda.synchronize(device)
            with torch.no_grad():
                tr.model.load_state_dict(initial)
            if tr.ema is not None:
                tr.ema.reset()
            tr.graphed = False
            tr.opt = make_optimizer(tr.model, cfg, device, False)
    if tr.step is None:
        tr.step = Step(tr.model, tr.opt, x, y, cfg, device, tr.teachers, tr.ema)
    tr.run.update_summary(cuda_graph=tr.graphed, cuda_graph_note=note)


def _restore(tr: _Trainer, ck: dict) -> None:
    with torch.no_grad():
        tr.model.load_state_dict(ck["model"])  # copies into the same tensors the graph uses
    restore_optimizer(tr.opt, ck["optimizer"], in_place=tr.graphed)
    if tr.ema is not None and ck.get("ema") is not None:
        tr.ema.load_state_dict(ck["ema"])


def _checkpoint(tr: _Trainer, epoch: int, elapsed: float) -> None:
    atomic_torch_save(
        tr.run.checkpoint_file,
        {
            "model": tr.model.state_dict(),
            "optimizer": tr.opt.state_dict(),
            "epoch": epoch,
            "best_acc": tr.best.acc,
            "best_epoch": tr.best.epoch,
            "best_state": tr.best.state,
            "ema": tr.ema.state_dict() if tr.ema else None,
            "best_ema_acc": tr.best_ema.acc,
            "best_ema_epoch": tr.best_ema.epoch,
            "best_ema_state": tr.best_ema.state,
            "wall_s": elapsed,
        },
    )


def _prune_step(tr: _Trainer, epoch: int) -> None:
    """Cut the network to this step's parameter count, then give it a fresh optimizer (and average)."""
    i = tr.prune_at.index(epoch)
    x, y = tr.x["train"]
    unfuse_bn_act(tr.model)  # the pruner traces PyTorch's own layers; _build_step fuses the pruned network again
    model = prune_to(tr.model, tr.prune_targets[i], tr.cfg.prune.importance, (x, y))
    tr.model = model.to(memory_format=memory_format(tr.device))
    if tr.ema is not None:
        tr.ema = EMA(tr.model, tr.cfg.train.ema_decay)
    tr.step = None
    _build_step(tr)
    stats = model_stats(tr.model)
    tr.base.update(stats)
    tr.run.update_summary(**stats, prune_steps_done=i + 1)


def _one_epoch(tr: _Trainer, epoch: int, emit: OnEvent) -> None:
    """Train one epoch, evaluate on the public split (raw and EMA weights), record, checkpoint."""
    cfg = tr.cfg
    if epoch in tr.prune_at:
        _prune_step(tr, epoch)
    # the run's network is the one after the last pruning step: earlier epochs do not compete for the best
    competes = epoch >= (tr.prune_at[-1] if tr.prune_at else 0)
    lr = lr_at(cfg, epoch)
    set_lr(tr.opt, lr)
    t0, faults0 = time.perf_counter(), page_faults()
    loss, train_acc, n = train_one_epoch(
        tr.step, len(tr.x["train"][1]), tr.base["batch_size"], cfg.train.seed, epoch, tr.device
    )
    t_train = time.perf_counter() - t0
    faults1 = page_faults()
    faults = None if faults1 is None else (faults1 - faults0) / max(1, n // tr.base["batch_size"])
    tr.train_time += t_train
    tr.images += n
    ev = evaluate(tr.model, *tr.x["public"], cfg.train.eval_batch_size)
    if competes:
        tr.best.offer(ev.accuracy, epoch, tr.model)
    ema_acc = None
    if tr.ema is not None:
        ema_acc = evaluate(tr.ema.model, *tr.x["public"], cfg.train.eval_batch_size).accuracy
        if competes:
            tr.best_ema.offer(ema_acc, epoch, tr.ema.model)
    epoch_s = time.perf_counter() - t0
    elapsed = tr.wall_before + time.time() - tr.t_start
    row = {
        "epoch": epoch,
        "loss": round(loss, 5),
        "train_acc": round(train_acc, 5),
        "public_acc": ev.accuracy,
        "public_loss": ev.loss,
        **({"public_acc_ema": ema_acc} if ema_acc is not None else {}),
        **({"params": tr.base["params"]} if tr.prune_at else {}),
        "lr": lr,
        "img_per_s": round(n / t_train, 1) if t_train > 0 else None,
        "page_faults_per_step": None if faults is None else round(faults, 1),
        "bn_act_fused": tr.fused,
        "epoch_s": round(epoch_s, 3),
        "elapsed_s": round(elapsed, 2),
        "eta_s": round(epoch_s * (cfg.train.epochs - epoch), 1),
    }
    best = max(tr.best.acc, tr.best_ema.acc)
    with epoch_files():  # a stop asked for meanwhile waits until the three are written
        tr.run.append_metrics(row)
        if epoch == cfg.train.epochs or epoch % cfg.train.checkpoint_every == 0:
            _checkpoint(tr, epoch, elapsed)
        tr.run.update_summary(
            status="running",
            heartbeat=time.time(),
            epochs_done=epoch,
            best_epoch=tr.best.epoch,
            best_public_acc=best,
            img_per_s=round(tr.images / tr.train_time, 1) if tr.train_time else None,
            wall_s=round(elapsed, 2),
        )
    emit({"type": "epoch", "run_id": tr.run.run_id, "epochs": cfg.train.epochs, "best_public_acc": best, **row})


def _evaluate_selected(tr: _Trainer, state: dict, flip_tta: bool = False) -> dict[str, Evaluation]:
    """Public and private accuracy of a set of weights (and with flip test-time augmentation, if asked)."""
    tr.model.load_state_dict(state)
    b = tr.cfg.train.eval_batch_size
    x_priv, y_priv = (torch.from_numpy(np.ascontiguousarray(a)) for a in tr.data.split("private"))
    out = {"public": evaluate(tr.model, *tr.x["public"], b), "private": evaluate(tr.model, x_priv, y_priv, b)}
    if flip_tta:
        out["public_tta"] = evaluate(tr.model, *tr.x["public"], b, flip_tta=True)
        out["private_tta"] = evaluate(tr.model, x_priv, y_priv, b, flip_tta=True)
    return out


def _finish(tr: _Trainer, epoch: int) -> dict:
    """Select raw or EMA weights on public accuracy, read the private split once, save the weights."""
    cfg, run = tr.cfg, tr.run
    candidates = {"raw": tr.best} | ({"ema": tr.best_ema} if tr.ema is not None else {})
    results = {name: _evaluate_selected(tr, b.state) for name, b in candidates.items()}
    chosen = max(candidates, key=lambda name: (results[name]["public"].accuracy, name == "raw"))
    best = candidates[chosen]
    ev = _evaluate_selected(tr, best.state, flip_tta=True)  # leaves the chosen weights in the model
    state_cpu = {k: v.detach().cpu().contiguous() for k, v in tr.model.state_dict().items()}
    model_cfg = {"family": cfg.model.family, "width": cfg.model.width, "num_classes": NUM_CLASSES}
    with torch.device("meta"):
        fresh = create_model(cfg.model.family, cfg.model.width).state_dict()
    if any(fresh[k].shape != v.shape for k, v in state_cpu.items()):  # pruned (or fine-tuned from a pruned run)
        model_cfg["pruned"] = True  # channel counts differ from the width's: the loader fits them to the weights
    payload = weights_payload(
        state_cpu,
        {**model_cfg, "dropout": cfg.model.dropout},
        epoch=best.epoch,
        metric={"public_acc": ev["public"].accuracy},
        run_id=run.run_id,
        weights=chosen,
    )
    atomic_torch_save(run.path / "weights.pt", payload)
    per_weights = {
        name: {
            "best_epoch": candidates[name].epoch,
            "public_acc": r["public"].accuracy,
            "private_acc": r["private"].accuracy,
        }
        for name, r in results.items()
    }
    summary = run.update_summary(
        status="completed",
        error=None,
        epochs_done=epoch,
        best_epoch=best.epoch,
        selected_weights=chosen,
        weights_candidates=per_weights,
        public_acc=ev["public"].accuracy,
        private_acc=ev["private"].accuracy,
        public_loss=ev["public"].loss,
        private_loss=ev["private"].loss,
        public_acc_flip_tta=ev["public_tta"].accuracy,
        private_acc_flip_tta=ev["private_tta"].accuracy,
        per_class_public=ev["public"].per_class,
        per_class_private=ev["private"].per_class,
        confusion_public=ev["public"].confusion,
        confusion_private=ev["private"].confusion,
        shared_test=tr.data.shared_test,
        ended=time.time(),
        wall_s=round(tr.wall_before + time.time() - tr.t_start, 2),
    )
    if run.checkpoint_file.is_file():
        run.checkpoint_file.unlink()
    return summary


def fit(
    cfg: RunConfig,
    on_event: OnEvent | None = None,
    run: Run | None = None,
    data: FerData | None = None,
    resume: bool = False,
    root: Path | None = None,
) -> dict:
    """Train one model as ``cfg`` says, recording everything in ``run`` (a new run folder if None).

    Args:
        cfg: the run's configuration (validated first; saved as config.json).
        on_event: called with plain dicts: ``{"type": "start"|"epoch"|"end", ...}`` (progress bars).
        run: the run folder; with ``resume=True`` its checkpoint is continued.
        root: where a new run folder is made when ``run`` is None (default: ``$FER_RUNS`` or results/runs).
        data: already loaded data (else loaded from ``cfg.data.data``).
    Returns:
        The run's final summary.
    """
    emit = on_event or (lambda e: None)
    tr = _setup(cfg, data, run, resume, root)
    ck = _load_checkpoint(tr) if resume else None
    _build_step(tr)
    if ck is not None:
        _restore(tr, ck)
    run = tr.run
    emit({"type": "start", "run_id": run.run_id, "path": str(run.path), "epoch": tr.start_epoch, **tr.base})
    epoch = tr.start_epoch
    try:
        for epoch in range(tr.start_epoch + 1, cfg.train.epochs + 1):
            _one_epoch(tr, epoch, emit)
        summary = _finish(tr, epoch)  # writes the weights: a full disk there is handled like one mid-run
    except (Cancelled, KeyboardInterrupt) as e:
        with recording_a_stop():  # a second stop now would leave the summary saying "running"
            error = (str(e) or "cancelled by the user") if isinstance(e, Cancelled) else "interrupted (Ctrl-C)"
            # a signal between an epoch's metrics row and its summary update must not lose that epoch
            done = max((r.get("epoch", 0) for r in run.metrics()), default=0)
            summary = run.update_summary(status="cancelled", error=error, ended=time.time(), epochs_done=done)
        emit({"type": "end", "run_id": run.run_id, "status": "cancelled", "error": error})
        return summary
    except Exception as e:
        error = str(e) if isinstance(e, FerError) else f"{type(e).__name__}: {e}"
        if isinstance(e, DiskFull):  # the last checkpoint that was written is intact: say how to go on
            error += f"; the run is kept: free some space, then: python -m fer_core train --resume {run.run_id}"
        try:
            run.update_summary(status="failed", error=error, ended=time.time())
        except DiskFull:  # not even the summary fits: its dead pid already reports the run as failed
            pass
        emit({"type": "end", "run_id": run.run_id, "status": "failed", "error": error})
        if isinstance(e, DiskFull):
            raise FerError(error) from None  # the command line prints it as it stands
        raise
    emit({"type": "end", "run_id": run.run_id, "status": "completed", "summary": summary})
    return summary
