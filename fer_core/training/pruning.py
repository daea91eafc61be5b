"""Structured pruning: whole channels leave a trained network until it has a parameter budget.

Torch-Pruning (``torch_pruning``) does the surgery: its dependency graph finds every layer a channel runs
through (a depthwise conv's groups, the BatchNorm after it, the next layer's inputs, a residual add's partner)
and removes them together, so what is left is a smaller dense network that needs no special kernels. Each
layer loses the same share of its channels (the layer-uniform ratio is searched by bisection until the network
has the budget, within 1%); which channels go is the importance criterion's choice:

- ``l1`` / ``l2``: the smallest norm of a channel's weights, summed over the layers it couples (the default);
- ``bn``: the smallest BatchNorm scale (|gamma|), as in network slimming;
- ``taylor``: the smallest |weight x gradient| on a few training batches (first-order loss change).

The classifier's 7 outputs are never touched. The trainer (:mod:`fer_core.training.trainer`) prunes in
``prune.steps`` steps spread over the first half of the epochs (geometric steps in parameters) and fine-tunes
between and after them; only epochs after the last step compete for the best weights. Imported only when a run
prunes: training runs without the library otherwise.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from fer_core.common import NUM_CLASSES, FerError
from fer_core.data.augment import normalize
from fer_core.models.stats import count_trainable
from fer_core.store.loading import NotTrainedModel, load_torch_model
from fer_core.store.runs import find_run
from fer_core.training.config import PRUNE_IMPORTANCES, RunConfig, apply_recipe

IMPORTANCES = PRUNE_IMPORTANCES
#: the bisection stops once the parameter count is this close to the target (the issue allows 5%)
TOLERANCE = 0.01
#: training images whose loss gradient ranks channels for ``taylor``
TAYLOR_IMAGES = 1024
#: families whose channel bookkeeping the library cannot follow, and why
UNPRUNABLE = {
    "shufflenetv2": "its channel split and shuffle tie channel indices across branches in a way Torch-Pruning's "
    "graph cannot follow",
}


def _library():
    try:
        import torch_pruning as tp
    except ImportError:
        raise FerError("pruning needs Torch-Pruning: pip install -r requirements.txt (torch-pruning)") from None
    return tp


def library_version() -> str:
    return getattr(_library(), "__version__", "unknown")


def check_prunable(family: str) -> None:
    if family in UNPRUNABLE:
        raise FerError(f"a {family} cannot be pruned: {UNPRUNABLE[family]}")


def schedule(epochs: int, steps: int) -> list[int]:
    """The epochs at whose start each pruning step happens: spread over the first half of the run."""
    gap = max(1, epochs // (2 * steps))
    return [1 + i * gap for i in range(steps)]


def step_targets(start: int, budget: float, steps: int) -> list[int]:
    """Parameter counts after each step: geometric from ``start`` to ``budget``."""
    return [round(start * (budget / start) ** ((i + 1) / steps)) for i in range(steps)]


def _classifier(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == NUM_CLASSES][-1]


def _importance(tp, name: str):
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "bn":
        return tp.importance.BNScaleImportance()
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise FerError(f"prune.importance = {name!r}: choose one of {', '.join(IMPORTANCES)}")


def _taylor_gradients(model: nn.Module, x_uint8: torch.Tensor, y: torch.Tensor) -> None:
    """Loss gradients on the first training images (no augmentation), left in ``.grad`` for the criterion."""
    model.zero_grad(set_to_none=True)
    n = min(TAYLOR_IMAGES, len(y))
    for i in range(0, n, 256):
        xb = normalize(x_uint8[i : min(n, i + 256)])
        loss = F.cross_entropy(model(xb), y[i : min(n, i + 256)].long(), reduction="sum") / n
        loss.backward()


def _pruned(tp, model: nn.Module, ratio: float, importance: str) -> nn.Module:
    m = copy.deepcopy(model)
    for src, dst in zip(model.parameters(), m.parameters()):  # a deep copy drops .grad: taylor ranks by it
        dst.grad = None if src.grad is None else src.grad.clone()
    example = torch.zeros(2, 1, 48, 48, device=next(m.parameters()).device)
    with warnings.catch_warnings():  # the library's remarks on unwrapped parameters are not the user's business
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(
            m, example, importance=_importance(tp, importance), pruning_ratio=ratio, ignored_layers=[_classifier(m)]
        )
        pruner.step()
    m.zero_grad(set_to_none=True)
    return m


def prune_to(
    model: nn.Module,
    target: int,
    importance: str = "l1",
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> nn.Module:
    """A copy of ``model`` with whole channels removed until it has about ``target`` trainable parameters.

    ``data`` (uint8 images, labels on the model's device) feeds ``taylor``'s gradients. Raises a FerError when
    the budget cannot be reached within 5% (too small for the network, or larger than it already is).
    """
    tp = _library()
    _importance(tp, importance)  # a bad name fails before any work
    start = count_trainable(model)
    if target >= start:
        raise FerError(f"the budget ({target:,} parameters) is not below the network's {start:,}")
    was = model.training
    model.eval()  # the graph is traced with a 2-image batch: BatchNorm must not use batch statistics
    if importance == "taylor":
        if data is None:
            raise FerError("prune.importance = 'taylor' needs training images for its gradients")
        model.train()
        _taylor_gradients(model, *data)
        model.eval()
    lo, hi, best = 0.0, 0.995, None
    for _ in range(30):
        mid = (lo + hi) / 2
        m = _pruned(tp, model, mid, importance)
        n = count_trainable(m)
        if best is None or abs(n - target) < abs(count_trainable(best) - target):
            best = m
        if abs(n - target) <= TOLERANCE * target:
            break
        lo, hi = (mid, hi) if n > target else (lo, mid)
    model.zero_grad(set_to_none=True)
    model.train(was)
    got = count_trainable(best)
    if abs(got - target) > 0.05 * target:
        raise FerError(
            f"pruning reaches {got:,} parameters at best, not {target:,} within 5% (the smallest this network "
            "prunes to keeps one channel per layer)"
        )
    return best.train(was)


#: a pruned run's fine-tuning unless told otherwise: the parent's own settings, this long, on a cosine schedule
FINE_TUNE_EPOCHS = 30


def prune_config(parent_ref: str, budget: float, importance: str = "l1", steps: int = 1) -> RunConfig:
    """The config of a run that prunes ``parent_ref`` to ``budget`` parameters: the parent's own training
    settings (recipe, augmentation, data) for :data:`FINE_TUNE_EPOCHS` epochs on a cosine schedule (a seed-recipe
    parent's fine-tuning is the ``seed-cosine`` recipe), without its teachers. Fails (naming the run) before
    anything trains: an ONNX variant, a family the library cannot prune, a budget not below the parent's size."""
    try:
        parent = load_torch_model(parent_ref)
    except NotTrainedModel as e:
        raise FerError(f"prune: {parent_ref!r} {e}") from None
    except FerError as e:
        raise FerError(f"prune: {parent_ref!r}: {e}") from None
    check_prunable(parent.family)
    params = count_trainable(parent.model)
    if not budget < params:
        raise FerError(f"prune: the budget ({budget:,.0f}) must be below {parent.name}'s {params:,} parameters")
    saved, run_cfg = None, None
    if parent.run_id:
        run_cfg = find_run(parent.run_id).config_file
    if run_cfg is not None and run_cfg.is_file():
        try:
            saved = RunConfig.from_file(run_cfg)
        except FerError:  # an older run's config this version no longer reads: the defaults
            saved = None
    cfg = saved or RunConfig()
    cfg.model.family, cfg.model.width, cfg.model.budget = parent.family, parent.width, float(budget)
    cfg.distill.teachers, cfg.init = [], None
    if cfg.data.data and cfg.data.data != "synthetic" and not Path(cfg.data.data).exists():
        cfg.data.data = None  # trained on another machine: this one's data ($FER_DATA, then data/)
    cfg.train.epochs = FINE_TUNE_EPOCHS
    cfg.train.device, cfg.train.threads = "auto", None  # the machine the parent trained on is not this one
    if cfg.train.schedule == "constant":  # a short run needs its rate annealed; the recipe's name says so
        if cfg.recipe == "seed":
            apply_recipe(cfg, "seed-cosine")
        else:
            cfg.train.schedule = "cosine"
    cfg.prune.parent, cfg.prune.importance, cfg.prune.steps = parent.run_id or str(parent_ref), importance, steps
    return cfg


def prune_configs(
    parent_ref: str,
    budgets: list[float],
    importance: str = "l1",
    steps: int = 1,
    epochs: int = FINE_TUNE_EPOCHS,
    device: str = "auto",
    data: str | None = None,
    limit: int | None = None,
) -> list[RunConfig]:
    """One validated config per budget (what the Train page queues): :func:`prune_config` with the fine-tuning
    length, device and data (None: the parent's, found the usual way) a user chose."""
    if not budgets:
        raise FerError("budgets: give at least one parameter budget")
    out = []
    for b in budgets:
        c = prune_config(parent_ref, b, importance, steps)
        c.train.epochs, c.train.device = epochs, device
        c.data.data, c.data.limit = data or c.data.data, limit
        out.append(c.validate(where=f"prune to {b:,.0f}"))
    return out
