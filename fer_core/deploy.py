"""Deployable variants of a run: ONNX fp32, fp16 and int8 files, each a derived run in the results store.

``python -m fer_core export-onnx RUN`` folds BatchNorm into the layers beside it, exports the model to ONNX
(opset 17, any batch size), checks the file against the torch model on training faces (the check is printed
and enforced), evaluates it on the public and private splits through ONNX Runtime, times it on this CPU, and
writes a folder beside its parent::

    <parent id>-onnx-int8/
        model.onnx      the deployable file (input: float32 (N, 1, 48, 48), gray pixels / 127.5 - 1)
        config.json     the parent's config (what the network is and how it was trained)
        summary.json    derived_from, format, bytes (the file's size on disk), latency, accuracies, the checks

Formats:
    fp32  the folded network as it is (parity with torch within 1e-4 of every probability)
    fp16  weights stored as fp16 and cast to fp32 when the session loads: half the bytes, fp32 compute
    int8  ONNX Runtime static quantization (QDQ, int8 weights per output channel, uint8 activations),
          calibrated on training images only; the first convolution stays fp32 (one input channel: measured
          slower in int8 and it costs accuracy)

onnx and onnxruntime are imported inside the functions: training and the rest of ``fer_core`` never need them.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import EMOTIONS, IMAGE_SIZE, NUM_CLASSES
from .augment import normalize
from .errors import FerError

FORMATS = ("fp32", "fp16", "int8")
OPSET = 17
ONNX_FORMAT = "fer-lab/onnx/1"
INPUT_NOTE = "float32 (N, 1, 48, 48): gray pixels / 127.5 - 1"
#: Largest allowed difference of any probability against the torch model (fp32 and fp16 variants).
PARITY_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
#: int8 must pick the torch model's expression on at least this share of the parity faces.
INT8_MIN_AGREEMENT = 0.9
PARITY_FACES = 256
CALIBRATION_IMAGES = 512


def _need_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise FerError(
            f"ONNX export and inference need the onnx and onnxruntime packages ({e.name} is missing)"
        ) from None
    return onnx, onnxruntime


# --------------------------------------------------------------------------------------------------- folding


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm folded into the Conv/Linear beside it.

    Conv→BN and Linear→BN fold into the layer before; a BatchNorm1d after an activation (MobileNet's head:
    Linear, ReLU, BN, Dropout, Linear) folds into the next Linear, which is exact in eval mode because
    Dropout is then the identity. Raises FerError if a BatchNorm is left that fits neither pattern.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    m = copy.deepcopy(model).float().eval()
    for seq in [s for s in m.modules() if isinstance(s, nn.Sequential)]:
        mods = list(seq)
        for i, bn in enumerate(mods):
            if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
                continue
            prev = mods[i - 1] if i else None
            if isinstance(prev, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq[i - 1] = fuse_conv_bn_eval(prev, bn)
            elif isinstance(prev, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
                seq[i - 1] = fuse_linear_bn_eval(prev, bn)
            else:
                j = i + 1
                while j < len(mods) and isinstance(mods[j], nn.Dropout):
                    j += 1
                if j == len(mods) or not isinstance(mods[j], nn.Linear) or not isinstance(bn, nn.BatchNorm1d):
                    raise FerError(f"cannot fold {type(bn).__name__} after {type(prev).__name__} in {type(m).__name__}")
                seq[j] = _fold_into_next_linear(bn, mods[j])
            seq[i] = nn.Identity()
            mods = list(seq)
    left = [n for n, x in m.named_modules() if isinstance(x, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise FerError(f"BatchNorm layers left unfolded: {', '.join(left)}")
    return m


def _fold_into_next_linear(bn: nn.BatchNorm1d, lin: nn.Linear) -> nn.Linear:
    """Linear(BN(x)) as one Linear: W' = W·diag(s), b' = b + W·t with BN(x) = s·x + t."""
    s = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    t = bn.bias.detach() - bn.running_mean * s
    out = nn.Linear(lin.in_features, lin.out_features)
    with torch.no_grad():
        out.weight.copy_(lin.weight * s)
        out.bias.copy_((lin.bias if lin.bias is not None else 0) + lin.weight @ t)
    return out


# --------------------------------------------------------------------------------------------------- export


def to_onnx(model: nn.Module, meta: dict | None = None) -> bytes:
    """The model (BatchNorm folded) as ONNX bytes, opset 17, any batch size, with ``meta`` in its metadata."""
    onnx, _ = _need_onnx()
    folded = fold_batchnorm(model)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript-based exporter warns that it is the older of two
        warnings.simplefilter("ignore")
        torch.onnx.export(
            folded,
            (torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE),),
            buf,
            opset_version=OPSET,
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "faces"}, "logits": {0: "faces"}},
        )
    proto = onnx.load_from_string(buf.getvalue())
    _set_meta(proto, {"format": ONNX_FORMAT, "classes": ",".join(EMOTIONS), "input": INPUT_NOTE, **(meta or {})})
    return proto.SerializeToString()


def _set_meta(proto, meta: dict) -> None:
    keep = {p.key: p.value for p in proto.metadata_props}
    keep.update({k: str(v) for k, v in meta.items()})
    del proto.metadata_props[:]
    for k, v in keep.items():
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = "fer-lab"


def onnx_meta(src: bytes | Path) -> dict:
    """The metadata stored in an ONNX file (family, width, classes, variant, parent run)."""
    onnx, _ = _need_onnx()
    proto = _parse(src)
    return {p.key: p.value for p in proto.metadata_props}


def _parse(src: bytes | Path):
    onnx, _ = _need_onnx()
    name = str(src) if isinstance(src, Path) else "ONNX bytes"
    try:
        data = Path(src).read_bytes() if isinstance(src, Path) else src
        proto = onnx.load_from_string(data)
        onnx.checker.check_model(proto)
    except OSError as e:
        raise FerError(f"{name}: cannot read ({e.strerror})") from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FerError(f"{name}: not a valid ONNX model file (damaged or truncated? {first[:160]})") from None
    if not proto.graph.node:
        raise FerError(f"{name}: not a valid ONNX model file (no graph)")
    return proto


def weights_to_fp16(onnx_bytes: bytes) -> bytes:
    """Store every float weight as fp16, cast back to fp32 inside the graph (ORT folds the casts at load)."""
    onnx, _ = _need_onnx()
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load_from_string(onnx_bytes)
    casts = []
    for init in proto.graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(init)
        name = init.name
        init.CopyFrom(numpy_helper.from_array(arr.astype(np.float16), name + "_fp16"))
        casts.append(helper.make_node("Cast", [name + "_fp16"], [name], to=TensorProto.FLOAT, name=f"cast_{name}"))
    nodes = casts + list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def quantize_int8(onnx_bytes: bytes, calibration: np.ndarray, batch: int = 64) -> tuple[bytes, dict]:
    """Static QDQ int8 (per-channel weights, uint8 activations) calibrated on ``calibration`` uint8 faces.

    Returns the quantized model and the settings used (recorded in the derived run's summary).
    """
    onnx, _ = _need_onnx()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    x = normalize(torch.from_numpy(np.ascontiguousarray(calibration))).numpy()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{"image": x[i : i + batch]} for i in range(0, len(x), batch)])

        def get_next(self):
            return next(self._it, None)

    proto = onnx.load_from_string(onnx_bytes)
    meta = {p.key: p.value for p in proto.metadata_props}
    # fp32 stays where int8 costs accuracy and buys nothing: the first conv (one input channel: measured slower
    # in int8) and the classifier (7 outputs; in MobileNet it carries the folded head BatchNorm, whose scales
    # spread its rows too widely for int8)
    keep = [next(n.name for n in proto.graph.node if n.op_type == "Conv")]
    keep.append([n.name for n in proto.graph.node if n.op_type in ("Gemm", "MatMul")][-1])
    settings = {
        "format": "QDQ",
        "weights": "int8, per output channel",
        "activations": "uint8",
        "calibration_method": "percentile 99.999",
        "fp32_nodes": keep,
    }
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src, pre, out = Path(d, "m.onnx"), Path(d, "pre.onnx"), Path(d, "q.onnx")
        src.write_bytes(onnx_bytes)
        quant_pre_process(str(src), str(pre))
        quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Percentile,
            nodes_to_exclude=keep,
        )
        q = onnx.load(str(out))
    _set_meta(q, meta)
    return q.SerializeToString(), settings


# --------------------------------------------------------------------------------------------------- running


@dataclass
class OrtModel:
    """An ONNX Runtime session that maps normalised faces (N, 1, 48, 48) to logits, like the torch model."""

    session: object
    source: str  # file path, or "exported in memory"
    input_name: str = "image"

    def __call__(self, x) -> torch.Tensor:
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        out = self.session.run(None, {self.input_name: arr.astype(np.float32, copy=False)})[0]
        return torch.from_numpy(out)

    def logits(self, x_uint8: np.ndarray, batch: int = 256) -> np.ndarray:
        """Logits for uint8 faces (N, 48, 48), in batches."""
        outs = [
            self(normalize(torch.from_numpy(np.ascontiguousarray(x_uint8[i : i + batch])))).numpy()
            for i in range(0, len(x_uint8), batch)
        ]
        return np.concatenate(outs) if outs else np.zeros((0, NUM_CLASSES), np.float32)


def ort_session(src: bytes | Path, threads: int | None = None) -> OrtModel:
    """A CPU ONNX Runtime session for an ONNX file or bytes; a damaged file gets a FerError naming it.

    Args:
        threads: intra-op threads (None: up to 4, as many as the CPU has; 1 for latency measurements).
    """
    _, ort = _need_onnx()
    name = str(src) if isinstance(src, Path) else "exported in memory"
    _parse(src)  # a clear error for damaged or truncated files, before ORT's own
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # ORT's warnings go to stderr, not to the user's page
    # idle pool threads spinning after each call took the CPU OpenCV's face detector needs (measured: detection
    # 15 -> 22 ms per frame on 2 cores with spinning on)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        data = Path(src).read_bytes() if isinstance(src, Path) else src
        sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FerError(f"{name}: ONNX Runtime cannot run this model ({first[:200]})") from None
    return OrtModel(sess, name, sess.get_inputs()[0].name)


def latency_ms(model, repeats: int = 200) -> float:
    """Median milliseconds for one face (batch 1) through ``model`` (torch module or OrtModel)."""
    x = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    ts = []
    with torch.inference_mode():
        for i in range(repeats + 20):
            t = time.perf_counter()
            model(x)
            if i >= 20:  # warm-up: allocation and first-call costs are not the steady state
                ts.append(time.perf_counter() - t)
    return round(statistics.median(ts) * 1000, 4)


def probabilities(logits) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def parity(reference: nn.Module, variant: OrtModel, faces: np.ndarray) -> dict:
    """How closely ``variant`` follows the torch model on ``faces``: max probability difference, top-1 agreement."""
    with torch.inference_mode():
        ref = reference.float().eval()(normalize(torch.from_numpy(np.ascontiguousarray(faces)))).numpy()
    got = variant.logits(faces)
    p, q = probabilities(ref), probabilities(got)
    return {
        "faces": int(len(faces)),
        "max_prob_diff": float(np.abs(p - q).max()),
        "top1_agreement": round(float((p.argmax(1) == q.argmax(1)).mean()), 4),
    }


def check_parity(fmt: str, result: dict) -> str | None:
    """None if ``result`` passes this format's check, else why not."""
    if fmt in PARITY_TOLERANCE and result["max_prob_diff"] > PARITY_TOLERANCE[fmt]:
        return f"max probability difference {result['max_prob_diff']:.2e} > {PARITY_TOLERANCE[fmt]:g}"
    if fmt == "int8" and result["top1_agreement"] < INT8_MIN_AGREEMENT:
        return f"top-1 agreement {result['top1_agreement']:.3f} < {INT8_MIN_AGREEMENT}"
    return None


# --------------------------------------------------------------------------------------------------- derived runs


def variant_id(parent_id: str, fmt: str) -> str:
    return f"{parent_id}-onnx-{fmt}"


def export_variants(
    ref: str,
    formats: tuple[str, ...] = FORMATS,
    data: str | None = None,
    out: str | Path | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    force: bool = False,
    say=print,
) -> list[Path]:
    """Export run ``ref`` to each of ``formats`` as derived runs; return their folders.

    Args:
        data: the data to evaluate and calibrate on (default: what the parent was trained on must be found
            the usual way); it must be the parent's data (same fingerprint), else nothing is written.
        out: where the derived folders go (default: beside the parent).
        force: replace existing variants (default: keep them and say so).
    """
    from . import data as fer_data
    from .loading import load_model
    from .models.stats import cpu_latency_ms

    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise FerError(f"unknown format {bad[0]!r}: choose from {', '.join(FORMATS)}")
    _need_onnx()
    lm = load_model(ref)
    if lm.run_id is None:
        raise FerError(f"{ref}: export needs a run (id or folder), not a bare weights file")
    parent = lm.summary
    if parent.get("status") != "completed":
        raise FerError(f"run {lm.run_id} is {parent.get('status')}: only completed runs are exported")
    if parent.get("derived_from"):
        raise FerError(f"run {lm.run_id} is already a variant of {parent['derived_from']}: export its parent")
    from .runs import find_run

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
        else:
            blob, settings = quantize_int8(fp32, fd.train_x[calib_idx])
            settings["calibration"] = {
                "split": "train",
                "images": int(len(calib_idx)),
                "sampling": "uniform without replacement, seed 0",
            }
        proto = _parse(blob)
        _set_meta(proto, {"variant": f"onnx-{fmt}"})
        blob = proto.SerializeToString()
        runner = ort_session(blob)
        par = parity(lm.model, runner, parity_faces)
        why = check_parity(fmt, par)
        say(
            f"{variant_id(lm.run_id, fmt)}: parity on {par['faces']} training faces: max probability difference "
            f"{par['max_prob_diff']:.2e}, top-1 agreement {par['top1_agreement']:.4f}"
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


def _evaluate(runner: OrtModel, fd) -> dict:
    """The public and private evaluations of an ONNX Runtime model."""
    from .evaluation import evaluate_logits

    out = {}
    for split in ("public", "private"):
        x, y = fd.split(split)
        out[split] = evaluate_logits(torch.from_numpy(runner.logits(x)), y)
    return out


def _write_variant(root, lm, parent, fmt, blob, evals, base, par, settings, ort_ms, torch_ms, config) -> Path:
    """Write the derived run folder in one go: a hidden temp folder renamed into place."""
    import onnx
    import onnxruntime

    from .runs import atomic_write_json

    rid = variant_id(lm.run_id, fmt)
    keep = (
        "family width params macs seed recipe epochs epochs_done data data_kind data_file data_fingerprint "
        "data_synthetic data_sizes lineage teacher teacher_private_acc init_run distilled"
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
