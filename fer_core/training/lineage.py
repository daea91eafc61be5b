"""Where a run comes from: the teachers it learns from, the run it starts from (fine-tuning) or prunes, as
loaded models for the trainer and as a plain record for the summary (``lineage`` and its flat fields)."""

from __future__ import annotations

import numpy as np

from fer_core.common import FerError
from fer_core.store.loading import NotTrainedModel, load_torch_model
from fer_core.training.config import RunConfig
from fer_core.training.pruning import check_prunable, library_version


def _lineage_entry(lm) -> dict:
    s = lm.summary
    return {
        "run_id": lm.run_id or lm.name,
        "family": lm.family,
        "width": lm.width,
        "params": s.get("params") or sum(p.numel() for p in lm.model.parameters()),
        "public_acc": s.get("public_acc"),
        "private_acc": s.get("private_acc"),
        "data_fingerprint": s.get("data_fingerprint"),
    }


def load_lineage(cfg: RunConfig) -> tuple[list, object | None, dict]:
    """Load the teachers and the run a config starts from (its init run, or the parent it prunes) before any
    data loads: a bad name fails fast.

    Returns (teacher models, the model to start from or None, lineage record for the summary).
    """

    def load(ref: str, what: str):
        try:
            return load_torch_model(ref)
        except NotTrainedModel as e:  # an ONNX variant: nothing to train from or distil with
            raise FerError(f"{what} {ref!r} {e}") from None
        except FerError as e:
            raise FerError(f"{what} {ref!r}: {e}") from None

    teachers = [load(ref, "distill.teachers:") for ref in cfg.distill.teachers]
    init = load(cfg.init, "init:") if cfg.init else None
    parent = load(cfg.prune.parent, "prune.parent:") if cfg.prune.parent else None
    for start, what, needs in ((init, "init", "fine-tuning"), (parent, "prune.parent", "pruning")):
        if start is not None and (start.family != cfg.model.family or abs(start.width - cfg.model.width) > 1e-9):
            raise FerError(
                f"{what}: {start.run_id or start.name} is a {start.family} of width {start.width:g}, but this run "
                f"trains a {cfg.model.family} of width {cfg.model.width:g} ({needs} needs the same family and width)"
            )
    prune = None
    if parent is not None:
        check_prunable(parent.family)
        prune = {
            "parent": _lineage_entry(parent),
            "method": "structured channel pruning",
            "library": f"torch-pruning {library_version()}",
            "importance": cfg.prune.importance,
            "steps": cfg.prune.steps,
            "budget": cfg.model.budget,
            "epochs": cfg.train.epochs,
        }
    lineage = {
        "recipe": cfg.recipe,
        "teachers": [_lineage_entry(t) for t in teachers],
        "distill": {"temperature": cfg.distill.temperature, "alpha": cfg.distill.alpha} if teachers else None,
        "init": _lineage_entry(init) if init else None,
        "prune": prune,
    }
    return teachers, init or parent, lineage


def lineage_fields(lineage: dict) -> dict:
    """Flat summary fields for tables and hovers: who taught this run and where it started."""
    teachers = lineage.get("teachers") or []
    return {
        "lineage": lineage,
        "distilled": bool(teachers),
        "teacher": " + ".join(t["run_id"] for t in teachers) or None,
        "teacher_private_acc": (
            round(float(np.mean([t["private_acc"] for t in teachers])), 6)
            if teachers and all(isinstance(t.get("private_acc"), float) for t in teachers)
            else None
        ),
        "init_run": (lineage.get("init") or {}).get("run_id"),
        "pruned_from": ((lineage.get("prune") or {}).get("parent") or {}).get("run_id"),
        "prune_importance": (lineage.get("prune") or {}).get("importance"),
    }
