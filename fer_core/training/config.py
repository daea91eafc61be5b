"""One ``RunConfig`` is everything a training needs, and the only thing that travels.

The Train page, ``sweep``, the studies and ``train --config FILE`` all build or read a ``RunConfig``; a trainer
process gets it as a JSON file, and the results store keeps the same JSON beside the run. It is validated
before any data loads: a bad value is a :class:`FerError` naming the field (``train.lr``), and an unknown
key is refused (a typo must not pass silently).

A new hyperparameter is one field in one of these dataclasses (with a ``# comment`` that becomes its
``--help``), used by the engine, plus, where a user sets it in the dashboard, one widget: the command-line
flag is generated from the field (:func:`add_arguments`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import inspect
import io
import json
import math
import tokenize
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from fer_core.common import FerError
from fer_core.data.augment import AugmentConfig
from fer_core.models import WIDTH_RANGE, list_models

OPTIMIZERS = ("adam", "adamw", "sgd")
#: the pruning criteria (fer_core.training.pruning.IMPORTANCES: that module imports the library, this one not)
PRUNE_IMPORTANCES = ("l1", "l2", "bn", "taylor")
SCHEDULES = ("constant", "cosine")


@dataclass
class ModelConfig:
    family: str = "mobilenet"  # a registered family (python -m fer_core models lists them)
    width: float = 1.0  # width multiplier; 1.0 = the seed report's network of that family
    budget: float | None = None  # if set, the width was solved for this many parameters (kept for the record)
    dropout: float = 0.5  # head dropout, as in the seed


@dataclass
class DataConfig:
    data: str | None = None  # a path, "synthetic", or None: $FER_DATA, then data/, then synthetic
    limit: int | None = None  # train on the first N training images only (quick CPU runs)
    augment: bool = True  # the seed's flip/rotate/shift/scale augmentation, batched on the device
    aug: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainConfig:
    epochs: int = 100  # passes over the training split (the seed trained for 100)
    batch_size: int = 128  # images per step (the seed's 128)
    lr: float = 1e-3  # peak learning rate (Adam's default, as in the seed)
    optimizer: str = "adam"  # adam (the seed) | adamw (decoupled weight decay) | sgd (Nesterov momentum)
    momentum: float = 0.9  # sgd only: Nesterov momentum
    weight_decay: float = 0.0  # L2 (adam, sgd) or decoupled (adamw) weight decay; the seed used none
    schedule: str = "constant"  # constant (the seed) | cosine (decays to 0 over the run, after warm-up)
    warmup_epochs: int = 0  # epochs of linear warm-up before the schedule
    label_smoothing: float = 0.0  # share of each label spread evenly over all classes; the seed used none
    mixup: float = 0.0  # mixup: Beta(a, a) mixing of image pairs and their labels; 0 = off
    cutmix: float = 0.0  # cutmix: a Beta(a, a)-sized patch from another image, labels by area; 0 = off
    mix_prob: float = 1.0  # share of batches mixed when mixup or cutmix is on (both on: half each)
    ema_decay: float = 0.0  # exponential moving average of the weights per step (e.g. 0.999); 0 = off
    seed: int = 0  # seeds weights, shuffling, augmentation and dropout: same seed, same run on the CPU
    device: str = "auto"  # auto = CUDA when present, else Apple's MPS, else the CPU
    eval_batch_size: int = 1024  # evaluation only: larger is faster and changes nothing
    cuda_graph: bool = True  # on CUDA, replay the whole training step as one CUDA graph (falls back to eager)
    checkpoint_every: int = 1  # epochs between resumable checkpoints (the last epoch is always saved)
    threads: int | None = None  # CPU threads for torch (None: torch's default)


@dataclass
class DistillConfig:
    teachers: list[str] = field(default_factory=list)  # run ids, run folders or weights files; none = no distillation
    temperature: float = 4.0  # softens teacher and student probabilities in the distillation term
    alpha: float = 0.9  # weight of the distillation term; 1 - alpha stays on the labels
    views: int = 0  # >0: teacher outputs computed once for this many augmented views per image, replayed; 0 = live


@dataclass
class PruneConfig:
    parent: str | None = None  # prune this trained run (id, folder or file) to --budget parameters; none = no pruning
    importance: str = "l1"  # which channels go: l1 | l2 (weight norms), bn (BatchNorm scale), taylor (|w x grad|)
    steps: int = 1  # pruning steps, spread over the first half of the epochs, fine-tuning between them


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    init: str | None = None  # start from this run's weights (same family and width): fine-tuning
    recipe: str = "seed"  # the named recipe these settings started from (see RECIPES)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> RunConfig:
        """Rebuild from a saved config, checking every value's type; unknown keys are an error naming them."""
        return _build(cls, d, "", where)

    @classmethod
    def from_file(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except OSError as e:
            raise FerError(f"{path}: cannot read the config ({e.strerror or e})") from None
        except ValueError as e:  # UnicodeDecodeError too: not text at all
            raise FerError(f"{path}: not valid JSON ({e})") from None
        except RecursionError:  # json gives up on deep nesting this way, not with a ValueError
            raise FerError(f"{path}: not valid JSON (nested too deeply)") from None
        if not isinstance(d, dict):
            raise FerError(f"{path}: a config is a JSON object ({{...}}), not {type(d).__name__}")
        return cls.from_dict(d, where=str(path)).validate(where=str(path))

    def copy(self) -> RunConfig:
        return copy.deepcopy(self)

    def validate(self, where: str = "config") -> RunConfig:
        """Check every value's range before anything runs; returns self. Errors name the field."""
        m, d, t, k = self.model, self.data, self.train, self.distill

        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                value = _get(self, name)
                raise FerError(f"{where}: {name} = {value!r}: {what}")

        need(m.family in list_models(), "model.family", f"choose one of {', '.join(list_models())}")
        need(WIDTH_RANGE[0] <= m.width <= WIDTH_RANGE[1], "model.width", f"must lie in {WIDTH_RANGE}")
        need(m.budget is None or m.budget > 0, "model.budget", "must be a positive number of parameters")
        need(0 <= m.dropout < 1, "model.dropout", "must lie in [0, 1)")
        need(d.limit is None or d.limit >= 1, "data.limit", "must be at least 1 (or null for all)")
        need(0 <= d.aug.flip <= 1, "data.aug.flip", "is a probability: [0, 1]")
        need(0 <= d.aug.photometric <= 1, "data.aug.photometric", "is a share of images: [0, 1]")
        need(0 <= d.aug.degrees <= 180, "data.aug.degrees", "must lie in [0, 180]")
        need(0 <= d.aug.translate < 1, "data.aug.translate", "must lie in [0, 1)")
        need(len(d.aug.scale) == 2 and 0 < d.aug.scale[0] <= d.aug.scale[1], "data.aug.scale", "needs 0 < low <= high")
        need(t.epochs >= 1, "train.epochs", "epochs must be at least 1")
        need(t.batch_size >= 1, "train.batch_size", "batch size must be at least 1")
        need(math.isfinite(t.lr) and t.lr > 0, "train.lr", "must be a positive number")
        need(t.optimizer in OPTIMIZERS, "train.optimizer", f"unknown optimizer; use {', '.join(OPTIMIZERS)}")
        need(0 <= t.momentum < 1, "train.momentum", "must lie in [0, 1)")
        need(t.weight_decay >= 0, "train.weight_decay", "must not be negative")
        need(t.schedule in SCHEDULES, "train.schedule", f"unknown schedule; use {', '.join(SCHEDULES)}")
        need(t.warmup_epochs >= 0, "train.warmup_epochs", "must not be negative")
        need(0 <= t.label_smoothing < 1, "train.label_smoothing", "must lie in [0, 1)")
        need(t.mixup >= 0, "train.mixup", "is a Beta parameter: 0 (off) or positive")
        need(t.cutmix >= 0, "train.cutmix", "is a Beta parameter: 0 (off) or positive")
        need(0 <= t.mix_prob <= 1, "train.mix_prob", "is a probability: [0, 1]")
        need(0 <= t.ema_decay < 1, "train.ema_decay", "must lie in [0, 1) (0 = off)")
        need(t.eval_batch_size >= 1, "train.eval_batch_size", "must be at least 1")
        need(t.checkpoint_every >= 1, "train.checkpoint_every", "must be at least 1")
        need(t.threads is None or t.threads >= 1, "train.threads", "must be at least 1 (or null)")
        dev = t.device
        need(
            dev in ("auto", "cpu", "mps") or dev.startswith("cuda"),
            "train.device",
            "unknown device: use auto, cpu, mps or cuda",
        )
        need(k.temperature > 0, "distill.temperature", "must be positive")
        need(0 <= k.alpha <= 1, "distill.alpha", "must lie in [0, 1]")
        need(all(isinstance(r, str) and r.strip() for r in k.teachers), "distill.teachers", "needs run references")
        need(k.views >= 0, "distill.views", "must be 0 (the teachers see every batch) or a number of views")
        if k.views:
            need(bool(k.teachers), "distill.views", "replays teachers' outputs: give distill.teachers")
            need(t.mixup == 0 and t.cutmix == 0, "distill.views", "cannot replay a mixed batch: set mixup and cutmix 0")
            need(d.aug.photometric == 0, "distill.views", "replays the geometric views only: set photometric 0")
        p = self.prune
        need(p.importance in PRUNE_IMPORTANCES, "prune.importance", f"choose one of {', '.join(PRUNE_IMPORTANCES)}")
        need(p.steps >= 1, "prune.steps", "must be at least 1")
        if p.parent is not None:
            need(isinstance(p.parent, str) and bool(p.parent.strip()), "prune.parent", "needs a run reference")
            need(m.budget is not None, "model.budget", "pruning needs a parameter budget (--budget N)")
            need(p.steps <= t.epochs, "prune.steps", f"one step per epoch at most ({t.epochs} epochs)")
            need(self.init is None, "init", "a pruned run starts from its parent: give prune.parent or init, not both")
        need(self.recipe in RECIPES, "recipe", f"unknown recipe; choose one of {', '.join(RECIPES)}")
        return self


# --------------------------------------------------------------------------------------------------- typed load


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _set(obj, dotted: str, value) -> None:
    *head, last = dotted.split(".")
    for part in head:
        obj = getattr(obj, part)
    setattr(obj, last, value)


def _coerce(value, hint, name: str, where: str):
    """``value`` checked against the type ``hint`` (ints pass as floats, nothing else is converted)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, name + ".", where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name, where)
    if origin is list:
        if not isinstance(value, list):
            raise FerError(f"{where}: {name} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{name}[{i}]", where) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise FerError(f"{where}: {name} must be a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(v, a, name, where) for v, a in zip(value, args))
    if hint is bool:
        if not isinstance(value, bool):
            raise FerError(f"{where}: {name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FerError(f"{where}: {name} must be a whole number, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise FerError(f"{where}: {name} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise FerError(f"{where}: {name} must be text, got {value!r}")
        return value
    return value


def _build(cls, d, prefix: str, where: str):
    if not isinstance(d, dict):
        raise FerError(f"{where}: {prefix.rstrip('.') or 'the config'} must be an object, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise FerError(
            f"{where}: unknown field {', '.join(prefix + u for u in unknown)} (known: {', '.join(sorted(names))})"
        )
    return cls(**{k: _coerce(v, hints[k], prefix + k, where) for k, v in d.items()})


# --------------------------------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Recipe:
    about: str  # what it is for, in one line
    settings: dict  # dotted config fields -> values; fields a recipe leaves out keep their defaults


#: Named, documented presets. ``seed`` is the report's protocol; the others change only what they list.
RECIPES: dict[str, Recipe] = {
    "seed": Recipe("the seed report's protocol: Adam 1e-3, constant rate, plain cross-entropy", {}),
    "seed-cosine": Recipe(
        "the seed protocol with its rate annealed to zero (cosine): what a short CPU schedule needs, since the "
        "constant rate gains until its last epochs",
        {"train.schedule": "cosine"},
    ),
    "better": Recipe(
        "AdamW with cosine decay after a short warm-up and label smoothing (the usual modern baseline)",
        {
            "train.optimizer": "adamw",
            "train.lr": 2e-3,
            "train.weight_decay": 0.05,
            "train.schedule": "cosine",
            "train.warmup_epochs": 3,
            "train.label_smoothing": 0.1,
        },
    ),
    "strong": Recipe(
        "better + mixup/cutmix (half the batches) + an EMA of the weights: for long schedules (200+ epochs)",
        {
            "train.optimizer": "adamw",
            "train.lr": 2e-3,
            "train.weight_decay": 0.05,
            "train.schedule": "cosine",
            "train.warmup_epochs": 5,
            "train.label_smoothing": 0.1,
            "train.mixup": 0.2,
            "train.cutmix": 1.0,
            "train.mix_prob": 0.5,
            "train.ema_decay": 0.999,
        },
    ),
    "sgd": Recipe(
        "SGD with Nesterov momentum 0.9, cosine decay, weight decay 5e-4, label smoothing, EMA",
        {
            "train.optimizer": "sgd",
            "train.lr": 0.05,
            "train.momentum": 0.9,
            "train.weight_decay": 5e-4,
            "train.schedule": "cosine",
            "train.warmup_epochs": 3,
            "train.label_smoothing": 0.1,
            "train.ema_decay": 0.999,
        },
    ),
    "distill": Recipe(
        "for students of --teacher: better's optimizer and schedule, distillation at T=4 with alpha 0.9",
        {
            "train.optimizer": "adamw",
            "train.lr": 2e-3,
            "train.weight_decay": 0.05,
            "train.schedule": "cosine",
            "train.warmup_epochs": 3,
            "distill.temperature": 4.0,
            "distill.alpha": 0.9,
            "train.ema_decay": 0.999,
        },
    ),
    "finetune": Recipe(
        "for --init (continuing a trained model): AdamW at 3e-4 decaying to 0, no warm-up, EMA",
        {
            "train.optimizer": "adamw",
            "train.lr": 3e-4,
            "train.weight_decay": 0.01,
            "train.schedule": "cosine",
            "train.ema_decay": 0.998,
        },
    ),
}

#: every field any recipe sets: applying a recipe resets all of them to the defaults first
RECIPE_FIELDS = sorted({k for r in RECIPES.values() for k in r.settings})


def apply_recipe(cfg: RunConfig, name: str) -> RunConfig:
    """Set ``cfg``'s recipe fields to the named recipe (fields the recipe leaves out get their defaults)."""
    if name not in RECIPES:
        raise FerError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    defaults = RunConfig()
    for key in RECIPE_FIELDS:
        _set(cfg, key, RECIPES[name].settings.get(key, _get(defaults, key)))
    cfg.recipe = name
    return cfg


def recipe_table() -> list[dict]:
    """Every recipe with its full settings (what ``python -m fer_core recipes`` prints)."""
    defaults = RunConfig()
    return [
        {
            "name": name,
            "about": r.about,
            "settings": {k: r.settings.get(k, _get(defaults, k)) for k in RECIPE_FIELDS},
        }
        for name, r in RECIPES.items()
    ]


# --------------------------------------------------------------------------------------------------- the CLI


@functools.cache
def _field_docs(cls) -> dict[str, str]:
    """The ``# comment`` after each field of a config dataclass: its documentation and its ``--help``."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    docs, line_name = {}, {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.start[0] not in line_name:
            line_name[tok.start[0]] = tok.string
        elif tok.type == tokenize.COMMENT and tok.start[0] in line_name:
            docs[line_name[tok.start[0]]] = tok.string.lstrip("# ").strip()
    return docs


#: config fields the command line sets by another flag, or not at all
_NO_FLAG = {"model.family", "model.width", "model.budget", "recipe"}
_FLAG_NAMES = {
    "prune.parent": "prune_from",
    "prune.importance": "prune_importance",
    "prune.steps": "prune_steps",
    "distill.teachers": "teacher",
    "distill.alpha": "kd_alpha",
    "distill.temperature": "temperature",
    "distill.views": "teacher_views",
}


def _flag_fields() -> list[tuple[str, type, object, str]]:
    """(dotted field, type hint, default, help) for every config field that has a command-line flag."""
    out = []

    def walk(cls, prefix: str, defaults) -> None:
        hints, docs = typing.get_type_hints(cls), _field_docs(cls)
        for f in dataclasses.fields(cls):
            name = prefix + f.name
            value = getattr(defaults, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], name + ".", value)
                continue
            if name in _NO_FLAG:
                continue
            out.append((name, hints[f.name], value, docs.get(f.name, "")))

    walk(RunConfig, "", RunConfig())
    return out


def _dest(dotted: str) -> str:
    if dotted in _FLAG_NAMES:
        return _FLAG_NAMES[dotted]
    parts = dotted.split(".")
    return "aug_" + parts[-1] if dotted.startswith("data.aug.") else parts[-1]


def _unwrap(hint):
    """``X | None`` -> ``X``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def add_arguments(p: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """One flag per config field (``train.ema_decay`` -> ``--ema-decay``), default None = "not given"."""
    p.add_argument("--recipe", default=None, choices=list(RECIPES), help="named recipe (default: seed)")
    for dotted, hint, default, doc in _flag_fields():
        if dotted in exclude:
            continue
        dest = _dest(dotted)
        flag = "--" + dest.replace("_", "-")
        shown = "the recipe's" if dotted in RECIPE_FIELDS else ("none" if default in (None, []) else default)
        help_ = f"{doc} (default: {shown})".replace("%", "%%")
        hint = _unwrap(hint)
        if hint is bool:
            p.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif typing.get_origin(hint) is list:
            p.add_argument(flag, dest=dest, nargs="+", default=None, metavar="RUN", help=help_)
        elif typing.get_origin(hint) is tuple:
            p.add_argument(flag, dest=dest, nargs=2, type=float, default=None, metavar=("LOW", "HIGH"), help=help_)
        else:
            p.add_argument(flag, dest=dest, type=hint if hint in (int, float) else str, default=None, help=help_)


def apply_arguments(cfg: RunConfig, args: argparse.Namespace) -> RunConfig:
    """The flags a user gave, over ``cfg``: the recipe first (if given), then every explicit flag."""
    if getattr(args, "recipe", None):
        apply_recipe(cfg, args.recipe)
    for dotted, hint, _, _ in _flag_fields():
        value = getattr(args, _dest(dotted), None)
        if value is None:
            continue
        if typing.get_origin(_unwrap(hint)) is tuple:
            value = tuple(value)
        _set(cfg, dotted, value)
    return cfg
