"""Turn what a user names (a run id, a run folder, a weights file) into a ready model, safely.

Weights load with ``torch.load(weights_only=True)``: a file holding pickled objects is refused and
nothing of it runs. A model is rebuilt from the config saved beside (or inside) its weights; a bare
state dict is matched against every registered family by its tensor shapes.
"""

from __future__ import annotations

from collections.abc import Callable
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


RUNTIMES = ("auto", "onnx", "torch")


def load_model(ref: str | Path, device: str = "cpu", runtime: str = "torch") -> LoadedModel:
    """Load a run (id or folder), a weights file or an ONNX file into a ready model.

    Args:
        runtime: "torch" gives the torch module of a trained run (``torch_model``; training, teachers);
            "auto" serves a trained run through
            ONNX Runtime (exported in memory, checked against torch) when onnxruntime is installed and
            ``device`` is the CPU, and falls back to torch otherwise (``runtime_note`` says why); "onnx"
            insists on ONNX Runtime. ONNX variants (derived runs, .onnx files) always run on ONNX Runtime.
    """
    if runtime not in RUNTIMES:
        raise FerError(f"unknown runtime {runtime!r}: choose from {', '.join(RUNTIMES)}")
    p = Path(ref)
    run: Run | None = None
    if p.is_file():
        if p.suffix.lower() == ".onnx":
            return _load_onnx(p, Run(p.parent) if (p.parent / "summary.json").is_file() else None)
        payload = load_weights_file(p)
        if (p.parent / "summary.json").is_file():
            run = Run(p.parent)
    else:
        run = find_run(str(ref))
        if (run.path / "model.onnx").is_file() and run.summary().get("derived_from"):
            return _load_onnx(run.path / "model.onnx", run)
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
    lm = LoadedModel(
        name=run.run_id if run else p.name,
        family=family,
        width=width,
        model=model,
        run_id=run.run_id if run else None,
        source=_source(run),
        summary=run.summary() if run else {},
        torch_model=model,
    )
    if runtime != "torch":
        use_onnxruntime(lm, device, insist=runtime == "onnx")
    return lm


def _source(run: Run | None) -> str:
    if run is None:
        return "file"
    return "reference" if run.path.parent.resolve() == reference_dir().resolve() else "user"


def _load_onnx(path: Path, run: Run | None) -> LoadedModel:
    """An ONNX variant: family and width from its run's summary or the file's own metadata."""
    from .deploy import onnx_meta, ort_session

    runner = ort_session(path)
    meta = onnx_meta(path)
    summary = run.summary() if run else {}
    family = summary.get("family") or meta.get("family")
    width = summary.get("width") or meta.get("width")
    if family is None or width is None:
        raise FerError(f"{path}: an ONNX file without FER Lab metadata (family, width): export it with export-onnx")
    return LoadedModel(
        name=run.run_id if run else path.name,
        family=family,
        width=float(width),
        model=runner,
        run_id=run.run_id if run else None,
        source=_source(run),
        summary=summary,
        runtime="onnxruntime",
        format=summary.get("format") or meta.get("variant") or "onnx",
    )


#: A model served by ONNX Runtime must give the torch model's probabilities within this (fp32 export).
SERVE_TOLERANCE = 1e-4


def use_onnxruntime(lm: LoadedModel, device: str = "cpu", insist: bool = False) -> LoadedModel:
    """Serve ``lm`` through an ONNX Runtime session of the same network (exported in memory, BatchNorm folded),
    if onnxruntime is installed and the session gives torch's probabilities within ``SERVE_TOLERANCE``.

    Otherwise torch keeps serving and ``lm.runtime_note`` says why (``insist``: raise a FerError instead)."""
    import numpy as np

    try:
        if device != "cpu":
            raise FerError(f"ONNX Runtime serves CPU models here, not {device}")
        from .deploy import ort_session, parity, to_onnx

        runner = ort_session(to_onnx(lm.model))
        faces = np.random.default_rng(0).integers(0, 256, (16, 48, 48), dtype=np.uint8)
        diff = parity(lm.model, runner, faces)["max_prob_diff"]
        if diff > SERVE_TOLERANCE:
            raise FerError(f"ONNX export differs from torch by {diff:.1e} in probability")
    except Exception as e:  # any failure of the fast path leaves the torch model serving, and says why
        msg = str(e) if isinstance(e, FerError) else f"ONNX export failed ({type(e).__name__}: {e})"
        if insist:
            raise FerError(f"{lm.name}: {msg}") from None
        lm.runtime_note = msg
        return lm
    lm.model, lm.runtime = runner, "onnxruntime"
    return lm


def onnxruntime_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def available_models() -> list[dict]:
    """Every completed run with weights or an ONNX file, shipped reference runs first, then by family, size
    and format (each trained run before its variants). ``runtime`` says what will serve it."""
    from .runs import list_summaries

    ort_ok = onnxruntime_available()
    rows = []
    for s in list_summaries():
        path = Path(s["path"])
        files = ("weights.pt", "weights_fp16.pt", "model.onnx")
        if s.get("status") != "completed" or not any((path / n).is_file() for n in files):
            continue
        fmt = s.get("format") or "torch"
        if fmt != "torch" and not ort_ok:
            continue  # an ONNX variant cannot run without onnxruntime
        runtime = "onnxruntime" if ort_ok else "torch"
        acc = s.get("public_acc")
        tag = " · synthetic" if s.get("data") == "synthetic" else ""
        kind = "" if fmt == "torch" else f" · {fmt} {s.get('bytes') or 0:,} B"
        rows.append(
            {
                "run_id": s["run_id"],
                "path": str(path),
                "source": s["source"],
                "family": s.get("family"),
                "params": s.get("params") or 0,
                "public_acc": acc,
                "format": fmt,
                "runtime": runtime,
                "label": f"{'★ ' if s['source'] == 'reference' else ''}{s.get('family')} w{s.get('width', 0):g}"
                f"{kind} · {(s.get('params') or 0) / 1000:.0f}k params · public {acc:.3f}{tag} · {runtime} · "
                f"{s['run_id']}",
            }
        )
    order = lambda r: (r["source"] != "reference", r["family"] or "", r["params"], r["format"] != "torch")
    return sorted(rows, key=order)


def default_models(models: list[dict]) -> list[dict]:
    """What to preselect: each family's most accurate trained model (shipped ones preferred), smallest first;
    ONNX variants are listed but not preselected (their parent is served by ONNX Runtime already)."""
    trained = [m for m in models if m.get("format", "torch") == "torch"] or models
    pool = [m for m in trained if m["source"] == "reference"] or trained
    best: dict[str, dict] = {}
    for m in pool:
        if m["family"] not in best or (m["public_acc"] or 0) > (best[m["family"]]["public_acc"] or 0):
            best[m["family"]] = m
    return sorted(best.values(), key=lambda m: m["params"])
