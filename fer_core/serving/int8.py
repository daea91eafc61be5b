"""int8 ONNX files: ONNX Runtime's static quantization (``int8``) and the quantization-aware network exported as
it was trained (``int8-qat``), both written so that every CPU computes what the graph says.

Both store the int8 weights as uint8 with zero point 128 (:func:`fer_core.serving.onnx.uint8_weights`): the same
numbers, but ONNX Runtime then multiplies uint8 by uint8, which is exact on every x86 CPU, where its uint8 x int8
kernels saturate on CPUs without VNNI (AVX2 only) and moved a MobileNetV2's answers on 12% of faces.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fer_core.data.augment import normalize
from fer_core.serving.onnx import need_onnx, set_onnx_meta, to_onnx, uint8_weights


def quantize_int8(
    onnx_bytes: bytes, calibration: np.ndarray, batch: int = 64, keep_fp32: tuple[str, ...] = ()
) -> tuple[bytes, dict]:
    """Static QDQ int8 (per-channel weights, uint8 activations) calibrated on ``calibration`` uint8 faces;
    ``keep_fp32``: more nodes (by name) left in fp32 besides the first convolution and the classifier.

    Returns the quantized model and the settings used (recorded in the derived run's summary).
    """
    onnx, _ = need_onnx()
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
    keep += [n for n in keep_fp32 if n not in keep]
    settings = {
        "format": "QDQ",
        "weights": "int8, per output channel",
        "activations": "uint8",
        "calibration_method": "percentile 99.999",
        "fp32_nodes": keep,
    }
    # ONNX Runtime prints its calibration progress to stdout; a caller's stdout may be a JSON document
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
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
    set_onnx_meta(q, meta)
    settings["weights_stored"] = f"uint8 + 128 ({uint8_weights(q)} tensors): exact on every CPU"
    return q.SerializeToString(), settings


def qat_to_onnx(model: nn.Module, meta: dict | None = None) -> bytes:
    """A frozen quantization-aware network (:func:`fer_core.training.qat.finetune_qat`) as an int8 ONNX file:
    the export writes each fake-quantize op as a QuantizeLinear/DequantizeLinear pair, so ONNX Runtime computes
    the rounding the network was fine-tuned with; the weights are then stored as the int8 values their
    QuantizeLinear would produce (a quarter of the bytes; kept as uint8 + 128, see :func:`int8_weights`), read by
    the DequantizeLinear directly."""
    return int8_weights(to_onnx(model, meta))


def int8_weights(onnx_bytes: bytes) -> bytes:
    """Replace every QuantizeLinear of a stored weight by the quantized weight itself (int8/uint8 as its zero
    point's type, rounded half to even and saturated as the operator specifies), and store the bias of every
    Conv/Gemm whose input and weights are dequantized as int32 at their scales' product: what ONNX Runtime needs
    to run the layer as one int8 kernel (QLinearConv, QGemm). The graph computes the same but for the biases'
    rounding (at most half the product of the input's and the weights' scales, far below one output step). The
    int8 weights are finally stored as uint8 + 128 (:func:`fer_core.serving.onnx.uint8_weights`)."""
    onnx, _ = need_onnx()
    from onnx import numpy_helper

    proto = onnx.load_from_string(onnx_bytes)
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}

    def value(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(next(a.t for a in consts[name].attribute if a.name == "value"))
        return None

    drop, new_inits = [], []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in inits:
            continue
        w, scale, zero = value(node.input[0]), value(node.input[1]), value(node.input[2])
        if scale is None or zero is None:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        if scale.size > 1:
            shape[axis] = -1
        info = np.iinfo(zero.dtype)
        q = np.rint(w / scale.reshape(shape)) + zero.reshape(shape).astype(np.int64)
        q = np.clip(q, info.min, info.max).astype(zero.dtype)
        new_inits.append(numpy_helper.from_array(q, node.output[0]))  # the DequantizeLinear reads it by name
        drop.append(node)
    for node in drop:
        graph.node.remove(node)
    graph.initializer.extend(new_inits)
    _int32_biases(graph, value, numpy_helper, onnx.helper)
    uint8_weights(proto)
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)
    for n in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        graph.node.remove(n)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _int32_biases(graph, value, numpy_helper, helper) -> None:
    producers = {o: n for n in graph.node for o in n.output}
    inits = {t.name for t in graph.initializer}
    added = []
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in inits:
            continue
        dq_x, dq_w = producers.get(node.input[0]), producers.get(node.input[1])
        if not (dq_x and dq_w and dq_x.op_type == dq_w.op_type == "DequantizeLinear"):
            continue
        s_x, s_w, bias = value(dq_x.input[1]), value(dq_w.input[1]), value(node.input[2])
        if s_x is None or s_w is None or bias is None or s_x.size != 1:
            continue
        scale = (np.float32(s_x.reshape(())) * s_w.astype(np.float32).reshape(-1)) * np.ones(bias.shape, np.float32)
        q = np.clip(np.rint(bias / scale), -(2**31), 2**31 - 1).astype(np.int32)
        name = node.input[2]
        graph.initializer.extend(
            [numpy_helper.from_array(q, f"{name}_int32"), numpy_helper.from_array(scale, f"{name}_scale")]
        )  # no zero point: 0, the operator's default
        added.append(helper.make_node("DequantizeLinear", [f"{name}_int32", f"{name}_scale"], [f"{name}_dq"], axis=0))
        node.input[2] = f"{name}_dq"
    nodes = added + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
