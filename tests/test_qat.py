"""Quantization-aware int8: the fake-quantized network, its fine-tuning, its ONNX file (int8 weights, the same
arithmetic) and the ``int8-qat`` derived run on every page."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import run_cli
from fer_core.data.augment import AugmentConfig, normalize
from fer_core.models import create_model, quant

pytest.importorskip("onnxruntime")

from test_deploy import _randomise_batchnorm, trained_run  # noqa: E402, F401 - the module's trained run fixture

from fer_core.serving.int8 import int8_weights, qat_to_onnx  # noqa: E402
from fer_core.serving.onnx import fold_batchnorm, ort_session, parse_onnx, to_onnx  # noqa: E402


def _faces(n=96, seed=0):
    from fer_core.data.synthetic import make_split

    x, y = make_split(n, seed, 0)
    return torch.from_numpy(x), torch.from_numpy(y).long()


def _qat_net(family="mobilenet", width=0.37):
    torch.manual_seed(0)
    net = fold_batchnorm(_randomise_batchnorm(create_model(family, width)))
    q = quant.prepare_qat(net)
    x, _ = _faces()
    quant.calibrate(q, [normalize(x[i : i + 32]) for i in range(0, len(x), 32)])
    return quant.freeze(q)


@pytest.mark.parametrize("family", ["mobilenet", "cnn", "mobilenetv2", "shufflenetv2"])
def test_every_layer_but_the_first_conv_and_the_classifier_is_quantized(family):
    net = fold_batchnorm(create_model(family, 0.25))
    layers = [
        (n, type(m).__name__) for n, m in net.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    q = quant.prepare_qat(net)
    wrapped = {n.removesuffix(".layer") for n, m in q.named_modules() if isinstance(m, quant._Quantized)}
    first_conv = next(n for n, t in layers if t == "Conv2d")
    last_linear = [n for n, t in layers if t == "Linear"][-1]
    assert wrapped == {n for n, _ in layers} - {first_conv, last_linear}
    out = q.train()(torch.randn(4, 1, 48, 48))
    out.sum().backward()  # the straight-through gradient reaches every weight
    assert all(p.grad is not None for p in q.parameters())


def test_fake_quantized_values_are_on_the_int8_and_uint8_grids():
    q = _qat_net()
    layer = quant.quantized_layers(q)[0]
    w, scale = layer.quantized_weight().detach(), layer.w_scale
    steps = w / scale.view(-1, *([1] * (w.dim() - 1)))
    assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.round().abs().max() <= 127
    s, z = layer.input_qparams()
    # the fixed ranges' parameters are those of the calibrated buffers (kept, not re-read every step)
    assert (s, z) == quant._qparams(*layer.in_range.tolist()) and layer._fixed is not None
    quant.calibrate(q, [torch.randn(8, 1, 48, 48) * 4])  # a new calibration replaces them
    assert layer.input_qparams() == quant._qparams(*layer.in_range.tolist()) != (s, z)
    s, z = layer.input_qparams()
    x = torch.randn(2, layer.layer.in_channels, 10, 10) * 3
    levels = layer.quantized_input(x) / s + z
    levels = levels.round()
    assert (
        torch.allclose(layer.quantized_input(x) / s + z, levels, atol=1e-3) and 0 <= levels.min() <= levels.max() <= 255
    )


def test_the_onnx_file_stores_int8_weights_and_computes_the_fine_tuned_network(tmp_path):
    from onnx import TensorProto

    q = _qat_net()
    blob = qat_to_onnx(q)
    proto = parse_onnx(blob)
    graph = proto.graph
    # the int8 weights, stored as uint8 + 128 (zero point 128) so that every CPU computes them exactly
    int8 = [t for t in graph.initializer if t.data_type == TensorProto.UINT8 and t.name.endswith("_zero_point_u8")]
    int8 = [t for t in graph.initializer if t.data_type == TensorProto.UINT8 and f"{t.name}_zero_point_u8" in
            {z.name for z in int8}]  # fmt: skip
    assert not [t for t in graph.initializer if t.data_type == TensorProto.INT8]
    layers = quant.quantized_layers(q)
    assert len(int8) == len(layers)  # one weight tensor per quantized layer, holding all its weights
    assert sum(int(np.prod(t.dims)) for t in int8) == sum(m.layer.weight.numel() for m in layers)
    assert sum(t.data_type == TensorProto.INT32 for t in graph.initializer) == len(layers)  # and its bias
    inits = {t.name for t in graph.initializer}
    assert not [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inits]
    first = next(n for n in graph.node if n.op_type == "Conv")
    assert first.input[0] == "image"  # the first convolution reads the faces in fp32
    # fewer bytes than the same graph with fp32 weights, and the same outputs
    qdq = to_onnx(q)
    assert len(blob) < 0.7 * len(qdq)
    x, _ = _faces(64, seed=1)
    xn = normalize(x)
    got = ort_session(blob)(xn).numpy()
    import onnx
    import onnxruntime as ort

    # against the graph's own arithmetic (no kernels fused: every QDQ pair computed in fp32) of the same network
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    exact = ort.InferenceSession(qdq, plain, providers=["CPUExecutionProvider"]).run(None, {"image": xn.numpy()})[0]
    # equal on almost every face; elsewhere a value at a rounding tie moved one step (the int32 biases' rounding)
    diff = np.abs(got - exact).max(1)
    assert (diff < 1e-5).mean() >= 0.75 and diff.max() < 5e-3, diff
    # ONNX Runtime runs the quantized layers as int8 kernels, not as fp32 layers between rounding steps

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    assert ops.count("QLinearConv") == sum(isinstance(m, quant.QuantConv2d) for m in quant.quantized_layers(q))
    with torch.no_grad():
        ref = q(xn).softmax(1).numpy()
    p = torch.from_numpy(got).softmax(1).numpy()
    assert (p.argmax(1) == ref.argmax(1)).mean() >= 0.95 and np.abs(p - ref).max() < 0.05


def test_int8_weights_refuses_nothing_it_cannot_read_and_keeps_plain_files_equal():
    net = fold_batchnorm(create_model("cnn", 0.1))
    blob = to_onnx(net)
    assert ort_session(int8_weights(blob))(torch.zeros(2, 1, 48, 48)).shape == (2, 7)
    assert len(int8_weights(blob)) == pytest.approx(len(blob), rel=0.01)  # no QuantizeLinear: nothing to store


def test_fine_tuning_is_deterministic_fixes_the_ranges_and_moves_the_weights():
    from fer_core.training.qat import finetune_qat

    torch.manual_seed(0)
    parent = _randomise_batchnorm(create_model("mobilenet", 0.37))
    x, y = _faces(256)
    a, hist = finetune_qat(parent, fold_batchnorm(parent), x, y, AugmentConfig(), epochs=2, batch=64)
    b, _ = finetune_qat(parent, fold_batchnorm(parent), x, y, AugmentConfig(), epochs=2, batch=64)
    assert [h["epoch"] for h in hist] == [1, 2] and all(np.isfinite(h["loss"]) for h in hist)
    # the per-epoch numbers are summed over every step (on the device): a KL to the parent above 0 once rounding
    # moves the outputs, and a share of the 256 faces that is a multiple of one face in 256
    assert all(h["loss"] > 0 and 0 < h["train_acc"] <= 1 for h in hist)
    assert all((h["train_acc"] * 256) == pytest.approx(round(h["train_acc"] * 256)) for h in hist)
    for ta, tb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(ta, tb)
    start = quant.prepare_qat(fold_batchnorm(parent))
    moved = [not torch.equal(p, s) for p, s in zip(a.parameters(), start.parameters())]
    assert any(moved)
    assert not a.training and all(m.frozen and not m.observing for m in quant.quantized_layers(a))


def test_an_int8_qat_variant_is_a_derived_run_on_every_page(trained_run, monkeypatch):  # noqa: F811
    from fer_core.analysis.compare import runs_frame, variants_table
    from fer_core.analysis.figures import scatter
    from fer_core.store.runs import table
    from fer_core.studies.variants import export_variants

    monkeypatch.setenv("FER_RUNS", str(trained_run.parent))
    lines = []
    (folder,) = export_variants(trained_run.name, formats=("int8-qat",), say=lines.append)
    assert folder.name == f"{trained_run.name}-onnx-int8-qat"
    assert any("quantization-aware fine-tuning" in line for line in lines)
    s = json.loads((folder / "summary.json").read_text())
    assert s["format"] == "onnx-int8-qat" and s["derived_from"] == trained_run.name
    qat = s["export"]["quantization"]
    assert qat["epochs"] == 1 and len(qat["history"]) == 1 and qat["parity_with_fine_tuned_network"]["faces"] == 256
    assert qat["parity_with_fine_tuned_network"]["top1_agreement"] >= 0.95
    assert s["bytes"] == (folder / "model.onnx").stat().st_size
    df = runs_frame(table())
    assert "onnx-int8-qat" in set(df["format"])
    v = variants_table(df)
    assert (v.loc[v["format"] == "onnx-int8-qat", "parent"] == trained_run.name).all()
    fig = scatter(df, x="bytes", y="public_acc")
    legend = {t.name: t for t in fig.data if t.showlegend is not False and t.x == (None,)}
    assert legend["ONNX int8, QAT"].marker.line.width == 3
    pts = [t for t in fig.data if t.name and t.name.endswith("onnx-int8-qat")]
    assert pts and pts[0].marker.symbol.endswith("-dot") and pts[0].marker.line.color == "#222"


def test_export_onnx_names_a_bad_format_or_epoch_count(trained_run):  # noqa: F811
    env = {"FER_RUNS": str(trained_run.parent), "FER_DATA": "synthetic"}
    r = run_cli("export-onnx", trained_run.name, "--formats", "int8-qat", "--qat-epochs", "-1", env=env)
    assert r.returncode == 2 and "--qat-epochs -1: give 0 (calibration only) or more epochs" in r.stderr
    r = run_cli("export-onnx", trained_run.name, "--formats", "int4", env=env)
    assert r.returncode == 2 and "unknown format 'int4': choose from fp32, fp16, int8, int8-qat" in r.stderr
    assert "Traceback" not in r.stderr
