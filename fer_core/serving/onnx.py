"""ONNX for serving and deployment: BatchNorm folded, export, fp16 and int8 files, ONNX Runtime sessions, and
the checks that a file computes what its torch model does (parity, latency).

The derived runs built from these files (``export-onnx``) live in :mod:`fer_core.studies.variants`.

Formats:
    fp32  the folded network as it is (parity with torch within 1e-4 of every probability)
    fp16  weights stored as fp16 and cast to fp32 when the session loads: half the bytes, fp32 compute
    int8  ONNX Runtime static quantization (QDQ, int8 weights per output channel, uint8 activations),
          calibrated on training images only; the first convolution stays fp32 (one input channel: measured
          slower in int8 and it costs accuracy)
    int8-qat  the same int8 rounding of the same layers learned by quantization-aware fine-tuning
          (:mod:`fer_core.training.qat`) and exported as it was trained
The int8 files are made in :mod:`fer_core.serving.int8`; their weights are stored so that every CPU computes them
exactly (:func:`uint8_weights`, applied to older files when a session loads them).

onnx and onnxruntime are imported inside the functions: training and the rest of ``fer_core`` never need them.
"""

from __future__ import annotations

import copy
import io
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from fer_core.common import EMOTIONS, IMAGE_SIZE, NUM_CLASSES, FerError
from fer_core.data.augment import normalize

FORMATS = ("fp32", "fp16", "int8", "int8-qat")
#: what ``export-onnx`` makes unless told: the formats that need no training
DEFAULT_FORMATS = ("fp32", "fp16", "int8")
#: the formats made by ONNX Runtime's quantizer or by fine-tuning: judged by top-1 agreement, not probabilities
INT8_FORMATS = ("int8", "int8-qat")
OPSET = 17
ONNX_FORMAT = "fer-lab/onnx/1"
INPUT_NOTE = "float32 (N, 1, 48, 48): gray pixels / 127.5 - 1"
#: Largest allowed difference of any probability against the torch model (fp32 and fp16 variants).
PARITY_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
#: int8 must pick the torch model's expression on at least this share of the parity faces.
INT8_MIN_AGREEMENT = 0.9
PARITY_FACES = 256
CALIBRATION_IMAGES = 512


def need_onnx():
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
    onnx, _ = need_onnx()
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
    set_onnx_meta(proto, {"format": ONNX_FORMAT, "classes": ",".join(EMOTIONS), "input": INPUT_NOTE, **(meta or {})})
    return proto.SerializeToString()


def any_input_size(onnx_bytes: bytes) -> bytes:
    """An image network's file with its input declared as any height and width (and each output's second axis
    as any length) instead of the sizes it was saved with. For YuNet, saved at 640x640: OpenCV resizes a
    network's input itself, ONNX Runtime runs the shapes a file declares. Only declarations change (YuNet's graph
    already reshapes with -1 and upsamples by 2), so weights and computed numbers are the original's."""
    onnx, _ = need_onnx()
    model = onnx.load_from_string(onnx_bytes)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    for out in model.graph.output:
        if len(out.type.tensor_type.shape.dim) > 1:
            out.type.tensor_type.shape.dim[1].dim_param = f"{out.name}_length"
    del model.graph.value_info[:]  # intermediate shapes inferred for the saved size
    return model.SerializeToString()


def set_onnx_meta(proto, meta: dict) -> None:
    keep = {p.key: p.value for p in proto.metadata_props}
    keep.update({k: str(v) for k, v in meta.items()})
    del proto.metadata_props[:]
    for k, v in keep.items():
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = "fer-lab"


def onnx_meta(src: bytes | Path) -> dict:
    """The metadata stored in an ONNX file (family, width, classes, variant, parent run)."""
    onnx, _ = need_onnx()
    proto = parse_onnx(src)
    return {p.key: p.value for p in proto.metadata_props}


def parse_onnx(src: bytes | str | Path):
    onnx, _ = need_onnx()
    src = Path(src) if isinstance(src, str) else src
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
    onnx, _ = need_onnx()
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


def uint8_weights(proto) -> int:
    """Store every symmetric int8 weight (a DequantizeLinear's int8 initializer, zero point 0) as uint8 + 128 with
    zero point 128, in place; return how many. The file computes the same numbers, but ONNX Runtime then runs its
    uint8 x uint8 kernels: on x86 CPUs without VNNI (AVX2 only) its uint8 x int8 kernels add pairs of products in
    16 bits and saturate (255 x 127 x 2 > 32,767). Measured on an AVX2 CPU, a MobileNetV2's int8 file gave other
    answers than its own graph's arithmetic on 12% of the public faces (accuracy 0.601 against 0.623); stored this
    way, 0.3% (rounding), and no slower in one measurement. Files without int8 weights are left as they are."""
    onnx, _ = need_onnx()
    from onnx import TensorProto, numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    users: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    done = 0
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        w = inits[node.input[0]]
        if w.data_type != TensorProto.INT8 or users.get(node.input[0], 0) != 1:
            continue
        zname = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if zname in inits:
            zero = numpy_helper.to_array(inits[zname])
        elif zname in consts:
            zero = numpy_helper.to_array(next(a.t for a in consts[zname].attribute if a.name == "value"))
        else:
            zero = np.zeros((), np.int8)  # absent: 0 of the input's type
        if zero.dtype != np.int8 or zero.any():
            continue  # asymmetric int8 weights: their shift would not fit uint8; left as they are
        q = numpy_helper.to_array(w).astype(np.int16) + 128
        w.CopyFrom(numpy_helper.from_array(q.astype(np.uint8), w.name))
        new_zero = f"{w.name}_zero_point_u8"
        graph.initializer.append(numpy_helper.from_array(np.full(zero.shape, 128, np.uint8), new_zero))
        if len(node.input) > 2:
            if zname:
                users[zname] -= 1
            node.input[2] = new_zero
        else:
            node.input.append(new_zero)
        done += 1
    for t in [t for t in graph.initializer if users.get(t.name, 1) == 0]:
        graph.initializer.remove(t)
    for n in [n for n in graph.node if n.op_type == "Constant" and users.get(n.output[0], 1) == 0]:
        graph.node.remove(n)
    if done:
        onnx.checker.check_model(proto)
    return done


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


def ort_session(src: bytes | str | Path, threads: int | None = None) -> OrtModel:
    """A CPU ONNX Runtime session for an ONNX file or bytes; a damaged file gets a FerError naming it.

    Args:
        threads: intra-op threads (None: up to 4, as many as the CPU has; 1 for latency measurements).
    """
    _, ort = need_onnx()
    src = Path(src) if isinstance(src, str) else src
    name = str(src) if isinstance(src, Path) else "exported in memory"
    proto = parse_onnx(src)  # a clear error for damaged or truncated files, before ORT's own
    # int8 files written before their weights were stored as uint8 run exactly too
    exact = proto.SerializeToString() if uint8_weights(proto) else None
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # ORT's warnings go to stderr, not to the user's page
    # idle pool threads spinning after each call took the CPU OpenCV's face detector needs (measured: detection
    # 15 -> 22 ms per frame on 2 cores with spinning on)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        data = exact or (Path(src).read_bytes() if isinstance(src, Path) else src)
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
    if fmt in INT8_FORMATS and result["top1_agreement"] < INT8_MIN_AGREEMENT:
        return f"top-1 agreement {result['top1_agreement']:.3f} < {INT8_MIN_AGREEMENT}"
    return None


# --------------------------------------------------------------------------------------------------- derived runs
