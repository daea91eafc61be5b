"""Typed configs, one per component. Every field has a default and says why; the CLI is built from them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .augment import AugmentConfig
from .errors import FerError


@dataclass
class ModelConfig:
    family: str = "mobilenet"  # a registered family: mobilenet | cnn
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
    epochs: int = 100  # the seed trained for 100 epochs
    batch_size: int = 128  # the seed's batch size
    lr: float = 1e-3  # Adam's default, as in the seed
    optimizer: str = "adam"  # adam (the seed) | adamw (decoupled weight decay)
    weight_decay: float = 0.0  # the seed used none
    schedule: str = "constant"  # constant (the seed) | cosine (decays to 0 over the run, after warm-up)
    warmup_epochs: int = 0  # epochs of linear warm-up before the schedule
    label_smoothing: float = 0.0  # the seed used none
    seed: int = 0  # seeds weights, shuffling, augmentation and dropout: same seed, same run on the CPU
    device: str = "auto"  # auto = CUDA when present, else CPU
    eval_batch_size: int = 1024  # evaluation only: larger is faster and changes nothing
    cuda_graph: bool = True  # on CUDA, replay the whole training step as one CUDA graph (falls back to eager)
    checkpoint_every: int = 1  # epochs between resumable checkpoints (the last epoch is always saved)
    threads: int | None = None  # CPU threads for torch (None: torch's default)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    recipe: str = "seed"  # the named training recipe these settings follow (see RECIPES)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        """Rebuild from a saved config; unknown keys are an error that names them (a typo must not pass)."""
        try:
            data = dict(d.get("data", {}))
            aug = data.pop("aug", {}) or {}
            if "scale" in aug:
                aug["scale"] = tuple(aug["scale"])
            return cls(
                model=ModelConfig(**d.get("model", {})),
                data=DataConfig(aug=AugmentConfig(**aug), **data),
                train=TrainConfig(**d.get("train", {})),
                recipe=d.get("recipe", "seed"),
            )
        except TypeError as e:
            raise FerError(f"config: {e}") from None


#: Named recipes: overrides of TrainConfig. "seed" is the report's protocol; "better" is our improved one.
RECIPES: dict[str, dict] = {
    "seed": {},
    "better": {
        "optimizer": "adamw",
        "lr": 2e-3,
        "weight_decay": 0.05,
        "schedule": "cosine",
        "warmup_epochs": 3,
        "label_smoothing": 0.1,
    },
}


def apply_recipe(cfg: RunConfig, name: str) -> RunConfig:
    """Set ``cfg``'s training fields to the named recipe (fields not in the recipe keep the seed values)."""
    if name not in RECIPES:
        raise FerError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    defaults = TrainConfig()
    for key in ("optimizer", "lr", "weight_decay", "schedule", "warmup_epochs", "label_smoothing"):
        setattr(cfg.train, key, RECIPES[name].get(key, getattr(defaults, key)))
    cfg.recipe = name
    return cfg
