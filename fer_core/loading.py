"""Turn what a user names (a run id, a run folder, a weights file) into a ready model, safely.

Weights load with ``torch.load(weights_only=True)``: a file holding pickled objects is refused and
nothing of it runs. A model is rebuilt from the config saved beside (or inside) its weights; a bare
state dict is matched against every registered family by its tensor shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import NUM_CLASSES
from .errors import FerError
from .models import WIDTH_RANGE, create_model, list_models
from .runs import Run, find_run, load_weights_file, reference_dir


@dataclass
class LoadedModel:
    """A model ready for inference, with where it came from."""

    name: str  # what to call it on screen: the run id, or the weights file's name
    family: str
    width: float
    model: nn.Module  # eval mode, float32, on the CPU unless moved
    run_id: str | None = None
    source: str = "file"  # "user", "reference" or "file"
    summary: dict = field(default_factory=dict)


def _infer_arch(state: dict) -> tuple[str, float]:
    """Find the family and width whose tensor shapes match a bare state dict."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    stem = shapes.get("features.0.0.weight")
    if stem is None:
        raise FerError("weights do not look like any FER Lab model (no features.0.0.weight)")
    lo, hi = WIDTH_RANGE
    w = lo
    tried = set()
    while w <= hi:
        wr = float(f"{w:.3g}")
        for family in list_models():
            with torch.device("meta"):
                m = create_model(family, wr, NUM_CLASSES)
            ms = {k: tuple(v.shape) for k, v in m.state_dict().items()}
            key = (family, tuple(sorted(ms.items())))
            if key in tried:
                continue
            tried.add(key)
            if ms == shapes:
                return family, wr
        w *= 1.01
    raise FerError("weights do not match any registered family at any width (see `python -m fer_core models`)")


def load_model(ref: str | Path, device: str = "cpu") -> LoadedModel:
    """Load a run (id or folder) or a weights file into an eval-mode model."""
    p = Path(ref)
    run: Run | None = None
    if p.is_file():
        payload = load_weights_file(p)
        if (p.parent / "summary.json").is_file():
            run = Run(p.parent)
    else:
        run = find_run(str(ref))
        if not run.weights_file.is_file():
            status = run.summary().get("status", "unknown")
            raise FerError(f"run {run.run_id} has no weights file (status: {status}); it may not have finished")
        payload = load_weights_file(run.weights_file)
    mcfg = payload.get("model") or (run.config().get("model") if run else None)
    if mcfg:
        family, width = mcfg["family"], float(mcfg["width"])
    else:
        family, width = _infer_arch(payload["state_dict"])
    model = create_model(family, width, int((mcfg or {}).get("num_classes", NUM_CLASSES)))
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise FerError(f"{ref}: the weights do not fit a {family} of width {width:g} ({first})") from None
    model.eval().to(device)
    source = "file"
    if run is not None:
        source = "reference" if run.path.parent.resolve() == reference_dir().resolve() else "user"
    return LoadedModel(
        name=run.run_id if run else p.name,
        family=family,
        width=width,
        model=model,
        run_id=run.run_id if run else None,
        source=source,
        summary=run.summary() if run else {},
    )


def available_models() -> list[dict]:
    """Every completed run with weights, shipped reference runs first, then by family and size."""
    from .runs import list_summaries

    rows = []
    for s in list_summaries():
        path = Path(s["path"])
        if s.get("status") != "completed" or not any((path / n).is_file() for n in ("weights.pt", "weights_fp16.pt")):
            continue
        acc = s.get("public_acc")
        tag = " · synthetic" if s.get("data") == "synthetic" else ""
        rows.append(
            {
                "run_id": s["run_id"],
                "path": str(path),
                "source": s["source"],
                "family": s.get("family"),
                "params": s.get("params") or 0,
                "public_acc": acc,
                "label": f"{'★ ' if s['source'] == 'reference' else ''}{s.get('family')} w{s.get('width', 0):g} · "
                f"{(s.get('params') or 0) / 1000:.0f}k params · public {acc:.3f}{tag} · {s['run_id']}",
            }
        )
    return sorted(rows, key=lambda r: (r["source"] != "reference", r["family"] or "", r["params"]))


def default_models(models: list[dict]) -> list[dict]:
    """What to preselect: each family's most accurate model (shipped ones preferred), smallest first."""
    pool = [m for m in models if m["source"] == "reference"] or models
    best: dict[str, dict] = {}
    for m in pool:
        if m["family"] not in best or (m["public_acc"] or 0) > (best[m["family"]]["public_acc"] or 0):
            best[m["family"]] = m
    return sorted(best.values(), key=lambda m: m["params"])
