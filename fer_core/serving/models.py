"""Models ready to serve: a run, weights file or ONNX file in, a :class:`LoadedModel` out, computed by ONNX
Runtime where it is installed and matches torch (exported in memory, checked), else by torch, saying why.
Also what the pages offer: every servable run, and which to preselect."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from fer_core.common import FerError
from fer_core.serving.onnx import onnx_meta, ort_session, parity, to_onnx
from fer_core.store.loading import LoadedModel, load_torch_model, run_source
from fer_core.store.runs import Run, find_run, list_summaries

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
    if p.is_file() and p.suffix.lower() == ".onnx":
        return _load_onnx(p, Run(p.parent) if (p.parent / "summary.json").is_file() else None)
    if not p.is_file():
        run = find_run(str(ref))
        if (run.path / "model.onnx").is_file() and run.summary().get("derived_from"):
            return _load_onnx(run.path / "model.onnx", run)
    lm = load_torch_model(ref, device)
    if runtime != "torch":
        use_onnxruntime(lm, device, insist=runtime == "onnx")
    return lm


def _load_onnx(path: Path, run: Run | None) -> LoadedModel:
    """An ONNX variant: family and width from its run's summary or the file's own metadata."""
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
        source=run_source(run),
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
    try:
        if device != "cpu":
            raise FerError(f"ONNX Runtime serves CPU models here, not {device}")

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
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def available_models() -> list[dict]:
    """Every completed run with weights or an ONNX file, shipped reference runs first, then by family, size
    and format (each trained run before its variants). ``runtime`` says what will serve it."""
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
        tag = (" · pruned" if s.get("pruned_from") else "") + (" · synthetic" if s.get("data") == "synthetic" else "")
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
