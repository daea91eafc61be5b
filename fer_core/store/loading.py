"""Turn what a user names (a run id, a run folder, a weights file) into a ready model, safely.

Weights load with ``torch.load(weights_only=True)``: a file holding pickled objects is refused and
nothing of it runs. A model is rebuilt from the config saved beside (or inside) its weights; a bare
state dict is matched against every registered family by its tensor shapes.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fer_core.common import NUM_CLASSES, FerError
from fer_core.models import GRID_STEPS, create_model, grid_width, list_models, rounded_widths
from fer_core.models.layers import fit_shapes
from fer_core.store.files import load_weights_file
from fer_core.store.runs import Run, find_run, reference_dir


@dataclass
class LoadedModel:
    """A model ready for inference, with where it came from."""

    name: str  # what to call it on screen: the run id, or the weights file's name
    family: str
    width: float
    model: Callable  # normalised faces (N, 1, 48, 48) -> logits: the torch module, or an ONNX Runtime session
    run_id: str | None = None
    source: str = "file"  # "user", "reference" or "file"
    summary: dict = field(default_factory=dict)
    runtime: str = "torch"  # what computes the logits: "torch" or "onnxruntime"
    format: str = "torch"  # what was loaded: "torch" weights, or an ONNX variant ("onnx-int8", ...)
    runtime_note: str | None = None  # why a model asked for ONNX Runtime is served by torch
    torch_model: nn.Module | None = None  # the torch module, when there is one (architecture, teachers)

    @property
    def architecture(self) -> str:
        if self.torch_model is not None:
            return str(self.torch_model)
        return f"{self.format} file ({self.model.source}), run by ONNX Runtime"


def _state_shapes(family: str, width: float) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Every tensor's name and shape in ``family``'s state dict at ``width``, sorted (built on the meta device)."""
    with torch.device("meta"):
        model = create_model(family, width, NUM_CLASSES)
    return tuple(sorted((k, tuple(v.shape)) for k, v in model.state_dict().items()))


def _numel(shapes) -> int:
    return sum(math.prod(shape) for _, shape in shapes)


def _of_size(shapes: Callable[[float], tuple], widths: list[float], size: int) -> range:
    """The indices of ``widths`` (sorted) at which a family's network (``shapes(width)``) has ``size``
    parameters: its size grows with its width, so bisection finds them, building about log2(len(widths))."""
    numel = lambda w: _numel(shapes(w))  # noqa: E731
    return range(bisect.bisect_left(widths, size, key=numel), bisect.bisect_right(widths, size, key=numel))


def _first_match(shapes: Callable[[float], tuple], widths: list[float], target: tuple) -> float | None:
    """The first of ``widths`` (sorted) at which ``shapes(width)`` (a family's) is ``target``; only the widths of
    the target's size are compared."""
    return next((widths[i] for i in _of_size(shapes, widths, _numel(target)) if shapes(widths[i]) == target), None)


def _infer_arch(state: dict) -> tuple[str, float]:
    """Find the family and width whose tensor shapes match a bare state dict: the narrowest matching width of
    the 1% grid, else of 3 or 4 significant digits between its points (families in name order on a tie). About
    15 networks built per family; walking the whole grid built over 2,000, took 15 s to say that nothing
    matched, and never found a network the grid steps over (such as the CNN at width 0.743)."""
    target = tuple(sorted((k, tuple(v.shape)) for k, v in state.items()))
    if "features.0.0.weight" not in state:
        raise FerError("weights do not look like any FER Lab model (no features.0.0.weight)")
    size, grid = _numel(target), [grid_width(i) for i in range(GRID_STEPS)]
    found = []
    for order, family in enumerate(list_models()):
        shapes = functools.cache(functools.partial(_state_shapes, family))  # this call's: families re-register
        w = _first_match(shapes, grid, target)
        if w is None:  # between the grid's last point below the file's size and its first above it
            near = _of_size(shapes, grid, size)
            a, b = grid[max(near.start - 1, 0)], grid[min(near.stop, GRID_STEPS - 1)]
            w = _first_match(shapes, sorted(set(rounded_widths(a, b)) | set(rounded_widths(a, b, digits=4))), target)
        if w is not None:
            found.append((w, order, family))
    if not found:
        raise FerError("weights do not match any registered family at any width (see `python -m fer_core models`)")
    width, _, family = min(found)
    return family, width


class NotTrainedModel(FerError):
    """The name points at an ONNX variant (a derived run or an .onnx file): there is no torch module to load."""


def load_torch_model(ref: str | Path, device: str = "cpu") -> LoadedModel:
    """Load a trained run (id or folder) or a weights file as a torch module (``torch_model``).

    For training from it (``--init``), distilling with it (``--teacher``) and evaluating it. ONNX variants have
    no torch module: they raise :class:`NotTrainedModel` naming their parent; serve them with
    :func:`fer_core.serving.models.load_model`.
    """
    p = Path(ref)
    run: Run | None = None
    if p.is_file():
        if p.suffix.lower() == ".onnx":
            raise NotTrainedModel("is an ONNX file: give a trained run")
        payload = load_weights_file(p)
        if (p.parent / "summary.json").is_file():
            run = Run(p.parent)
    else:
        run = find_run(str(ref))
        summary = run.summary()
        if summary.get("derived_from"):
            fmt, parent = summary.get("format") or "onnx", summary["derived_from"]
            raise NotTrainedModel(f"is an ONNX variant ({fmt}): give its trained run {parent}")
        if not run.weights_file.is_file():
            status = summary.get("status", "unknown")
            raise FerError(f"run {run.run_id} has no weights file (status: {status}); it may not have finished")
        payload = load_weights_file(run.weights_file)
    mcfg = payload.get("model") or (run.config().get("model") if run else None)
    if mcfg:
        family, width = mcfg["family"], float(mcfg["width"])
    else:
        family, width = _infer_arch(payload["state_dict"])
    model = create_model(family, width, int((mcfg or {}).get("num_classes", NUM_CLASSES)))
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    if (mcfg or {}).get("pruned"):  # structurally pruned: the weights give every layer's channel count
        model = fit_shapes(model, state)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise FerError(f"{ref}: the weights do not fit a {family} of width {width:g} ({first})") from None
    model.eval().to(device)
    return LoadedModel(
        name=run.run_id if run else p.name,
        family=family,
        width=width,
        model=model,
        run_id=run.run_id if run else None,
        source=run_source(run),
        summary=run.summary() if run else {},
        torch_model=model,
    )


def run_source(run: Run | None) -> str:
    """Where a model comes from, as the pages label it: the user's runs, the shipped reference runs, or a file."""
    if run is None:
        return "file"
    return "reference" if run.path.parent.resolve() == reference_dir().resolve() else "user"
