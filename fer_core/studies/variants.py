"""Deployable variants of a run as derived runs: ``python -m fer_core export-onnx RUN``.

Each format (fp32, fp16, int8, int8-qat; :mod:`fer_core.serving.onnx` makes the files) is checked against the torch
model on training faces (printed and enforced), evaluated on the public and private splits through ONNX
Runtime, timed on this CPU, and written in one go beside its parent::

    <parent id>-onnx-int8/
        model.onnx      the deployable file (input: float32 (N, 1, 48, 48), gray pixels / 127.5 - 1)
        config.json     the parent's config (what the network is and how it was trained)
        summary.json    derived_from, format, bytes (the file's size on disk), latency, accuracies, the checks
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fer_core.common import NUM_CLASSES, FerError
from fer_core.data import sources as fer_data
from fer_core.models.stats import cpu_latency_ms
from fer_core.serving.int8 import qat_to_onnx, quantize_int8
from fer_core.serving.models import load_model
from fer_core.serving.onnx import (
    CALIBRATION_IMAGES,
    DEFAULT_FORMATS,
    FORMATS,
    INPUT_NOTE,
    OPSET,
    PARITY_FACES,
    OrtModel,
    check_parity,
    fold_batchnorm,
    latency_ms,
    need_onnx,
    ort_session,
    parity,
    parse_onnx,
    set_onnx_meta,
    to_onnx,
    weights_to_fp16,
)
from fer_core.store.files import atomic_write_json
from fer_core.store.runs import find_run
from fer_core.training.config import RunConfig
from fer_core.training.device import resolve_device
from fer_core.training.evaluation import evaluate_logits
from fer_core.training.qat import QAT_EPOCHS, finetune_qat, qat_settings


def variant_id(parent_id: str, fmt: str) -> str:
    return f"{parent_id}-onnx-{fmt}"


def export_variants(
    ref: str,
    formats: tuple[str, ...] = DEFAULT_FORMATS,
    data: str | None = None,
    out: str | Path | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    force: bool = False,
    qat_epochs: int = QAT_EPOCHS,
    say=print,
) -> list[Path]:
    """Export run ``ref`` to each of ``formats`` as derived runs; return their folders.

    Args:
        data: the data to evaluate and calibrate on (default: what the parent was trained on must be found
            the usual way); it must be the parent's data (same fingerprint), else nothing is written.
        out: where the derived folders go (default: beside the parent).
        force: replace existing variants (default: keep them and say so).
        qat_epochs: epochs of quantization-aware fine-tuning for ``int8-qat`` (on the training split).
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise FerError(f"unknown format {bad[0]!r}: choose from {', '.join(FORMATS)}")
    if "int8-qat" in formats and qat_epochs < 0:
        raise FerError(f"--qat-epochs {qat_epochs}: give 0 (calibration only) or more epochs")
    need_onnx()
    lm = load_model(ref)
    if lm.run_id is None:
        raise FerError(f"{ref}: export needs a run (id or folder), not a bare weights file")
    parent = lm.summary
    if parent.get("status") != "completed":
        raise FerError(f"run {lm.run_id} is {parent.get('status')}: only completed runs are exported")
    if parent.get("derived_from"):
        raise FerError(f"run {lm.run_id} is already a variant of {parent['derived_from']}: export its parent")

    parent_dir = find_run(lm.run_id).path
    root = Path(out) if out else parent_dir.parent
    todo = [f for f in formats if force or not (root / variant_id(lm.run_id, f) / "summary.json").is_file()]
    for f in formats:
        if f not in todo:
            say(f"{variant_id(lm.run_id, f)}: exists (--force to redo)")
    if not todo:
        return [root / variant_id(lm.run_id, f) for f in formats]

    fd = fer_data.load(data if data is not None else find_run(lm.run_id).data_spec())
    want = parent.get("data_fingerprint")
    if (want and fd.fingerprint != want) or (not want and fd.name != parent.get("data")):
        raise FerError(
            f"run {lm.run_id} was trained on {parent.get('data')} "
            f"({parent.get('data_file') or 'fingerprint ' + str(want)}); "
            f"the data found is {fd.name} ({Path(fd.path).name if fd.path else 'generated'}, fingerprint "
            f"{fd.fingerprint}): give the parent's data with --data"
        )
    rng = np.random.default_rng(0)
    order = rng.permutation(len(fd.train_y))
    calib_idx = np.sort(order[:calibration_images])
    parity_faces = fd.train_x[np.sort(order[-PARITY_FACES:])]
    meta = {"family": lm.family, "width": f"{lm.width:g}", "num_classes": NUM_CLASSES, "parent_run": lm.run_id}
    fp32 = to_onnx(lm.model, meta)
    torch_ms = cpu_latency_ms(lm.model)
    # the network's own fp32 accuracy on this CPU: what a variant's format costs is measured against this (the
    # parent's summary may come from bf16 evaluation on a GPU, which differs by a few faces)
    base = _evaluate(ort_session(fp32), fd)
    written = []
    for fmt in todo:
        settings: dict = {}
        if fmt == "fp32":
            blob = fp32
        elif fmt == "fp16":
            blob = weights_to_fp16(fp32)
        elif fmt == "int8":
            blob, settings = quantize_int8(fp32, fd.train_x[calib_idx])
            settings["calibration"] = {
                "split": "train",
                "images": int(len(calib_idx)),
                "sampling": "uniform without replacement, seed 0",
            }
        else:
            blob, settings = _qat(lm, fd, meta, qat_epochs, parity_faces, say)
        proto = parse_onnx(blob)
        set_onnx_meta(proto, {"variant": f"onnx-{fmt}"})
        blob = proto.SerializeToString()
        runner = ort_session(blob)
        par = parity(lm.model, runner, parity_faces)
        # a fine-tuned file is checked against the network it was fine-tuned into (its agreement with the parent
        # is recorded, not required: fine-tuning moves a weak parent's close calls)
        checked = settings.get("parity_with_fine_tuned_network", par)
        why = check_parity(fmt, checked)
        say(
            f"{variant_id(lm.run_id, fmt)}: parity on {par['faces']} training faces: max probability difference "
            f"{par['max_prob_diff']:.2e}, top-1 agreement {par['top1_agreement']:.4f}"
            + (f" (with the fine-tuned network: {checked['top1_agreement']:.4f})" if checked is not par else "")
            + (f"  FAILED: {why}" if why else "")
        )
        if why:
            raise FerError(f"{lm.run_id} onnx-{fmt}: parity check failed ({why}); nothing written for this format")
        evals = base if fmt == "fp32" else _evaluate(runner, fd)
        ort_ms = latency_ms(ort_session(blob, threads=1))
        folder = _write_variant(
            root, lm, parent, fmt, blob, evals, base, par, settings, ort_ms, torch_ms, find_run(lm.run_id).config()
        )
        say(
            f"  {len(blob):,} B · public {evals['public'].accuracy:.4f} · private {evals['private'].accuracy:.4f} "
            f"(fp32 {base['public'].accuracy:.4f} / {base['private'].accuracy:.4f}) · "
            f"{ort_ms:.3f} ms/face (torch {torch_ms:.3f}, {torch_ms / ort_ms:.1f}x) -> {folder}"
        )
        written.append(folder)
    return written


def _qat(lm, fd, meta: dict, epochs: int, parity_faces: np.ndarray, say) -> tuple[bytes, dict]:
    """The int8 file of quantization-aware fine-tuning (seed 0, the parent's augmentation), and its settings with
    the epochs' history and how closely the file follows the fine-tuned network."""
    try:
        cfg = RunConfig.from_dict(find_run(lm.run_id).config())
    except FerError:  # no config, or one this version no longer reads: the default augmentation
        cfg = RunConfig()
    aug = cfg.data.aug if cfg.data.augment else None
    device = resolve_device("auto")
    parent = lm.model.float().eval().to(device)
    x, y = torch.from_numpy(fd.train_x), torch.from_numpy(fd.train_y).long()
    say(f"{variant_id(lm.run_id, 'int8-qat')}: {epochs} epoch(s) of quantization-aware fine-tuning on {device}")
    net, history = finetune_qat(parent, fold_batchnorm(parent).to(device), x, y, aug, epochs=epochs, say=say)
    lm.model.cpu()
    net = net.cpu()
    blob = qat_to_onnx(net, meta)
    settings = {**qat_settings(epochs), "seed": 0, "device": str(device), "history": history}
    settings["parity_with_fine_tuned_network"] = parity(net, ort_session(blob), parity_faces)
    return blob, settings


def _evaluate(runner: OrtModel, fd) -> dict:
    """The public and private evaluations of an ONNX Runtime model."""
    out = {}
    for split in ("public", "private"):
        x, y = fd.split(split)
        out[split] = evaluate_logits(torch.from_numpy(runner.logits(x)), y)
    return out


def _write_variant(root, lm, parent, fmt, blob, evals, base, par, settings, ort_ms, torch_ms, config) -> Path:
    """Write the derived run folder in one go: a hidden temp folder renamed into place."""
    import onnx
    import onnxruntime

    rid = variant_id(lm.run_id, fmt)
    keep = (
        "family width params macs seed recipe epochs epochs_done data data_kind data_file data_fingerprint "
        "data_synthetic data_sizes lineage teacher teacher_private_acc init_run distilled pruned_from"
        " prune_importance"
    ).split()
    summary = {k: parent[k] for k in keep if k in parent}
    summary.update(
        {
            "status": "completed",
            "run_id": rid,
            "derived_from": lm.run_id,
            "format": f"onnx-{fmt}",
            "runtime": "onnxruntime",
            "file": "model.onnx",
            "bytes": len(blob),
            "bytes_fp16": None,
            "bytes_fp32": None,
            "latency_ms_cpu": ort_ms,
            "latency_note": "ONNX Runtime, 1 thread, batch 1, median of 200, on the machine that exported it",
            "torch_latency_ms_cpu": torch_ms,
            "parent_public_acc": parent.get("public_acc"),
            "parent_private_acc": parent.get("private_acc"),
            "fp32_public_acc": base["public"].accuracy,
            "fp32_private_acc": base["private"].accuracy,
            "parity": par,
            "export": {
                "opset": OPSET,
                "batchnorm": "folded",
                "input": INPUT_NOTE,
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
                **({"quantization": settings} if settings else {}),
            },
            "created": time.time(),
        }
    )
    for split, ev in evals.items():
        summary[f"{split}_acc"] = ev.accuracy
        summary[f"{split}_loss"] = ev.loss
        summary[f"per_class_{split}"] = ev.per_class
        summary[f"confusion_{split}"] = ev.confusion
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{rid}.", dir=root))
    try:
        (tmp / "model.onnx").write_bytes(blob)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        atomic_write_json(tmp / "summary.json", summary)
        final = root / rid
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final
