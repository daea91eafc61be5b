"""Deployable variants: BatchNorm folding, ONNX export parity, fp16/int8 derived runs in the store, ONNX
Runtime serving with torch as the fallback, and clear errors for damaged files."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli, tiny_config
from fer_core.common import FerError
from fer_core.models import create_model

pytest.importorskip("onnxruntime")


def _randomise_batchnorm(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


@pytest.mark.parametrize("family,width", [("mobilenet", 1.0), ("mobilenet", 0.37), ("cnn", 0.1)])
def test_batchnorm_folds_away_and_the_outputs_do_not_change(family, width):
    from fer_core.serving.onnx import fold_batchnorm

    model = _randomise_batchnorm(create_model(family, width))
    folded = fold_batchnorm(model)
    assert not [m for m in folded.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    x = torch.randn(8, 1, 48, 48)
    with torch.inference_mode():
        assert torch.allclose(model(x), folded(x), atol=1e-4, rtol=1e-4)
    assert model.training is False and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), (
        "the original keeps its BatchNorm"
    )


@pytest.mark.parametrize("family", ["mobilenet", "cnn"])
def test_onnx_export_matches_torch_and_has_no_batchnorm(family):
    import onnx

    from fer_core.serving.onnx import onnx_meta, ort_session, parity, to_onnx

    model = _randomise_batchnorm(create_model(family, 0.3 if family == "mobilenet" else 0.1))
    blob = to_onnx(model, {"family": family, "width": "0.3"})
    ops = {n.op_type for n in onnx.load_from_string(blob).graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    assert onnx.load_from_string(blob).opset_import[0].version >= 17
    faces = np.random.default_rng(0).integers(0, 256, (64, 48, 48), dtype=np.uint8)
    result = parity(model, ort_session(blob), faces)
    assert result["max_prob_diff"] <= 1e-4 and result["top1_agreement"] == 1.0
    assert onnx_meta(blob)["family"] == family
    # any batch size
    assert ort_session(blob).logits(faces[:3]).shape == (3, 7)


def test_fp16_weights_halve_the_file_and_stay_close():
    from fer_core.serving.onnx import ort_session, parity, to_onnx, weights_to_fp16

    model = _randomise_batchnorm(create_model("mobilenet", 1.0))
    fp32 = to_onnx(model)
    fp16 = weights_to_fp16(fp32)
    assert len(fp16) < 0.52 * len(fp32)
    faces = np.random.default_rng(1).integers(0, 256, (64, 48, 48), dtype=np.uint8)
    assert parity(model, ort_session(fp16), faces)["max_prob_diff"] < 1e-2


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny trained CNN on synthetic faces, in its own store (shared by the tests below)."""
    from fer_core.training.trainer import fit

    root = tmp_path_factory.mktemp("store") / "runs"
    summary = fit(tiny_config(epochs=3), root=root)
    return root / summary["run_id"]


def test_variants_are_derived_runs_with_parent_bytes_and_accuracy(trained_run, monkeypatch):
    from fer_core.analysis.compare import runs_frame, variants_table
    from fer_core.store.runs import table

    monkeypatch.setenv("FER_RUNS", str(trained_run.parent))
    seen = {}

    import fer_core.studies.variants as deploy

    real = deploy.quantize_int8

    def spy(blob, calibration, **kw):
        seen["calibration"] = calibration
        return real(blob, calibration, **kw)

    monkeypatch.setattr(deploy, "quantize_int8", spy)
    lines = []
    folders = deploy.export_variants(trained_run.name, calibration_images=128, say=lines.append)
    assert [f.name for f in folders] == [f"{trained_run.name}-onnx-{f}" for f in ("fp32", "fp16", "int8")]
    assert any("parity on 256 training faces" in line for line in lines)

    # int8 calibration saw training images only, never the public or private split
    from fer_core.data.sources import load

    fd = load("synthetic")
    train = {x.tobytes() for x in fd.train_x}
    assert len(seen["calibration"]) == 128 and all(x.tobytes() in train for x in seen["calibration"])
    tests = {x.tobytes() for x in np.concatenate([fd.public_x, fd.private_x])}
    assert not any(x.tobytes() in tests for x in seen["calibration"])

    parent = json.loads((trained_run / "summary.json").read_text())
    for f in folders:
        s = json.loads((f / "summary.json").read_text())
        assert s["derived_from"] == trained_run.name and s["status"] == "completed"
        assert s["bytes"] == (f / "model.onnx").stat().st_size
        assert s["params"] == parent["params"] and s["data_fingerprint"] == parent["data_fingerprint"]
        assert 0 <= s["public_acc"] <= 1 and 0 <= s["private_acc"] <= 1 and s["latency_ms_cpu"] > 0
        assert sum(map(sum, s["confusion_private"])) == len(fd.private_y)
    fp32 = json.loads((folders[0] / "summary.json").read_text())
    assert fp32["public_acc"] == fp32["fp32_public_acc"]
    assert abs(fp32["public_acc"] - parent["public_acc"]) <= 0.01  # same network; the parent was not TTA'd
    int8 = json.loads((folders[2] / "summary.json").read_text())
    assert int8["bytes"] < fp32["bytes"] / 2.5
    assert abs(int8["public_acc"] - fp32["public_acc"]) <= 0.05, "int8 stays close in accuracy"
    assert int8["export"]["quantization"]["calibration"]["split"] == "train"
    # its weights are stored as uint8 (+ 128): ONNX Runtime's exact kernels on every CPU
    import onnx

    dtypes = {t.data_type for t in onnx.load(folders[2] / "model.onnx").graph.initializer}
    assert onnx.TensorProto.UINT8 in dtypes and onnx.TensorProto.INT8 not in dtypes
    assert int8["export"]["quantization"]["weights_stored"].startswith("uint8 + 128")

    df = table()
    assert set(df["format"]) == {"torch", "onnx-fp32", "onnx-fp16", "onnx-int8"}
    assert (df.loc[df["format"] == "onnx-int8", "derived_from"] == trained_run.name).all()
    v = variants_table(runs_frame(df))
    assert len(v) == 3 and (v["parent"] == trained_run.name).all()
    assert v.loc[v["format"] == "onnx-fp32", "public_delta"].abs().max() == 0

    # a second export keeps what exists
    again = []
    deploy.export_variants(trained_run.name, formats=("int8",), say=again.append)
    assert again == [f"{trained_run.name}-onnx-int8: exists (--force to redo)"]


def test_loading_serves_through_onnxruntime_and_falls_back_to_torch(trained_run, monkeypatch):
    from fer_core.serving.inference import classify
    from fer_core.serving.models import load_model

    monkeypatch.setenv("FER_RUNS", str(trained_run.parent))
    torch_lm = load_model(trained_run.name)
    ort_lm = load_model(trained_run.name, runtime="auto")
    assert torch_lm.runtime == "torch" and ort_lm.runtime == "onnxruntime" and ort_lm.runtime_note is None
    faces = np.random.default_rng(2).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    a, b = classify(faces, [torch_lm]), classify(faces, [ort_lm])
    for fa, fb in zip(a, b):
        pa, pb = fa[0].probabilities, fb[0].probabilities
        assert max(abs(pa[k] - pb[k]) for k in pa) < 1e-4

    # no onnxruntime: auto falls back to torch and says why; "onnx" insists
    import fer_core.serving.onnx as onnx_mod

    def missing():
        raise FerError("ONNX export and inference need the onnx and onnxruntime packages (onnxruntime is missing)")

    monkeypatch.setattr(onnx_mod, "need_onnx", missing)
    lm = load_model(trained_run.name, runtime="auto")
    assert lm.runtime == "torch" and "onnxruntime is missing" in lm.runtime_note
    with pytest.raises(FerError, match="onnxruntime is missing"):
        load_model(trained_run.name, runtime="onnx")


def test_a_variant_loads_by_id_and_predicts(trained_run, monkeypatch):
    from fer_core.serving.inference import demo_frame, predict
    from fer_core.serving.models import available_models, default_models, load_model
    from fer_core.studies.variants import export_variants

    monkeypatch.setenv("FER_RUNS", str(trained_run.parent))
    export_variants(trained_run.name, formats=("int8",), calibration_images=64, say=lambda *a: None)
    lm = load_model(f"{trained_run.name}-onnx-int8")
    assert lm.runtime == "onnxruntime" and lm.format == "onnx-int8" and lm.torch_model is None
    assert "onnx-int8" in lm.architecture
    res = predict(demo_frame(), [lm])
    assert res.faces and len(res.faces[0].predictions) == 1
    assert abs(sum(res.faces[0].predictions[0].probabilities.values()) - 1) < 1e-4
    models = available_models()
    assert {m["format"] for m in models} >= {"torch", "onnx-int8"}
    assert all(m["format"] == "torch" for m in default_models(models)), "variants are listed, not preselected"
    # the bare file loads too (family and width from its own metadata)
    file_lm = load_model(trained_run.parent / f"{trained_run.name}-onnx-int8" / "model.onnx")
    assert file_lm.family == "cnn" and file_lm.runtime == "onnxruntime"


def test_export_refuses_other_data_and_writes_nothing(trained_run, monkeypatch, tmp_path):
    from fer_core.data.sources import make_synthetic
    from fer_core.studies.variants import export_variants

    monkeypatch.setenv("FER_RUNS", str(trained_run.parent))
    other = make_synthetic(n_train=500, seed=7)
    npz = tmp_path / "other.npz"
    np.savez(
        npz,
        **{f"{s}_{k}": getattr(other, f"{s}_{k}") for s in ("train", "public", "private") for k in ("x", "y")},
    )
    out = tmp_path / "out"
    with pytest.raises(FerError, match="give the parent's data with --data"):
        export_variants(trained_run.name, formats=("fp16",), data=str(npz), out=out, say=lambda *a: None)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("damage", ["random", "truncated", "empty"])
def test_damaged_weights_and_onnx_files_are_called_damaged(trained_run, tmp_path, damage):
    from fer_core.serving.models import load_model
    from fer_core.serving.onnx import to_onnx

    weights = next(trained_run.glob("weights*.pt")).read_bytes()
    onnx_blob = to_onnx(create_model("cnn", 0.1).eval())
    for name, good in (("w.pt", weights), ("m.onnx", onnx_blob)):
        bad = {"random": os.urandom(4096), "truncated": good[: len(good) // 2], "empty": b""}[damage]
        p = tmp_path / name
        p.write_bytes(bad)
        with pytest.raises(FerError) as e:
            load_model(p)
        msg = str(e.value)
        assert str(p) in msg and "not a valid" in msg and "could run code" not in msg


def test_a_malicious_pickle_is_still_refused(tmp_path):
    from fer_core.serving.models import load_model

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo never",))

    for name, data in (("plain.pt", pickle.dumps(Evil())), ("zip.pt", None)):
        p = tmp_path / name
        if data is None:
            torch.save({"state_dict": Evil()}, p)
        else:
            p.write_bytes(data)
        with pytest.raises(FerError, match="refused: .*could run code"):
            load_model(p)


def test_export_onnx_cli(trained_run, tmp_path):
    env = {"FER_RUNS": str(trained_run.parent)}
    r = run_cli("export-onnx", trained_run.name, "--formats", "fp16", "--out", str(tmp_path), "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc[0]["format"] == "onnx-fp16" and doc[0]["derived_from"] == trained_run.name
    assert Path(doc[0]["path"]).parent == tmp_path
    assert "parity on 256 training faces" in r.stderr
    bad = run_cli("export-onnx", "no-such-run", env=env)
    assert bad.returncode == 2 and "no run 'no-such-run'" in bad.stderr and "Traceback" not in bad.stderr
    fmt = run_cli("export-onnx", trained_run.name, "--formats", "int4", env=env)
    assert fmt.returncode == 2 and "unknown format 'int4'" in fmt.stderr


def test_the_pages_show_variants(trained_run, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT
    from fer_core.serving.inference import demo_frame
    from fer_core.studies.variants import export_variants

    monkeypatch.setenv("FER_RUNS", str(trained_run.parent))
    monkeypatch.setenv("FER_DATA", "synthetic")
    export_variants(trained_run.name, formats=("fp16", "int8"), calibration_images=64, say=lambda *a: None)

    at = AppTest.from_file(str(ROOT / "pages/2_Compare.py"), default_timeout=120).run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("Deployable variants" in s.value for s in at.subheader)
    tables = [d.value for d in at.dataframe]
    variants = next(t for t in tables if "parent" in t and "bytes_ratio" in t)
    assert {"onnx-fp16", "onnx-int8"} <= set(variants["format"])
    table = tables[-1]  # all runs
    assert {"onnx-fp16", "onnx-int8", "torch"} <= set(table["format"])
    # the smallest file per family that keeps the level asked for (the same rows as `compare --keeps`)
    from fer_core.analysis.compare import runs_frame, smallest_files

    keep = next(n for n in at.number_input if "to keep" in n.label)
    keep.set_value(0.0).run()
    small = next(d.value for d in at.dataframe if "acc" in d.value and "keeps" not in d.value)
    assert small["run_id"].tolist() == smallest_files(runs_frame(), [0.0], y="public_acc")["run_id"].tolist()
    # the scatter on the bytes axis: a trace per format, a variant's hover names its parent
    next(s for s in at.selectbox if s.label == "x axis").set_value("bytes").run()
    assert not at.exception
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = [t.get("name", "") for t in fig["data"]]
    assert any("onnx-int8" in n for n in names) and any("onnx-fp16" in n for n in names)
    hover = " ".join(" ".join(t.get("hovertext") or []) for t in fig["data"])
    assert f"variant of {trained_run.name}" in hover

    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(demo_frame(3)).save(buf, format="PNG")

    class Shot(io.BytesIO):
        name = "snapshot.png"

    from unittest import mock

    with mock.patch("streamlit.camera_input", return_value=Shot(buf.getvalue())):
        at = AppTest.from_file(str(ROOT / "pages/3_Try_it.py"), default_timeout=120).run()
    assert not at.exception, [e.message for e in at.exception]
    cards = [m.value for m in at.markdown if " ms · " in m.value]
    assert cards and all("onnxruntime" in c for c in cards), cards


def test_a_variant_is_refused_as_teacher_or_init_with_its_parent_named(trained_run, monkeypatch):
    from fer_core.studies.variants import export_variants
    from fer_core.training.lineage import load_lineage

    monkeypatch.setenv("FER_RUNS", str(trained_run.parent))
    export_variants(trained_run.name, formats=("fp16",), say=lambda *a: None)
    cfg = tiny_config()
    cfg.distill.teachers = [f"{trained_run.name}-onnx-fp16"]
    with pytest.raises(FerError, match=f"is an ONNX variant \\(onnx-fp16\\): give its trained run {trained_run.name}"):
        load_lineage(cfg)
    # the command line, where --init alone names what to build
    r = run_cli(
        "train", "--init", f"{trained_run.name}-onnx-fp16", "--print-config", env={"FER_RUNS": str(trained_run.parent)}
    )
    assert r.returncode == 2 and f"is an ONNX variant (onnx-fp16): give its trained run {trained_run.name}" in r.stderr


def test_the_int8_sensitivity_sweep_tries_each_layer_in_fp32_and_keeps_what_pays(trained_run, tmp_path):
    from fer_core.serving.int8 import quantize_int8
    from fer_core.serving.onnx import parse_onnx, to_onnx
    from fer_core.store.loading import load_torch_model
    from fer_core.studies.int8_sweep import int8_sensitivity

    lines = []
    doc = int8_sensitivity(str(trained_run), "synthetic", calibration_images=64, out_dir=tmp_path, say=lines.append)
    lm = load_torch_model(str(trained_run))
    fp32 = to_onnx(lm.torch_model)
    convs = [n.name for n in parse_onnx(fp32).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    # every layer but the two kept by default was tried alone in fp32
    assert [r["node"] for r in doc["layers"]] == [c for c in convs if c not in doc["int8"]["fp32_nodes"]]
    assert set(doc["mixed"]["fp32_nodes"]) <= {r["node"] for r in doc["layers"] if r["recovered_pts"] > 0}
    assert doc["fp32"]["bytes"] >= doc["mixed"]["bytes"] >= doc["int8"]["bytes"]
    assert json.loads((tmp_path / f"{doc['run_id']}.json").read_text()) == doc
    # a node asked to stay fp32 has no quantized weights in the file
    q, settings = quantize_int8(fp32, np.zeros((8, 48, 48), np.uint8), keep_fp32=(doc["layers"][0]["node"],))
    assert doc["layers"][0]["node"] in settings["fp32_nodes"]
    assert len(q) > len(quantize_int8(fp32, np.zeros((8, 48, 48), np.uint8))[0])


def test_paired_loss_counts_faces_lost_and_gained_with_their_standard_error():
    from fer_core.studies.format_cost import paired_loss

    fp32 = np.array([1, 1, 1, 0, 0, 1, 0, 1], bool)
    var = np.array([1, 0, 1, 1, 0, 0, 0, 1], bool)  # two lost, one gained, of 8
    p = paired_loss(fp32, var)
    assert (p["lost"], p["gained"], p["faces"]) == (2, 1, 8) and p["loss_pts"] == 12.5
    d = var.astype(int) - fp32.astype(int)
    assert p["se_pts"] == round(100 * d.std() / np.sqrt(8), 3)  # the population sd of d over sqrt(n)
    same = paired_loss(fp32, fp32)
    assert same["lost"] == same["gained"] == 0 and same["loss_pts"] == same["se_pts"] == 0


def test_format_cost_compares_each_variant_with_its_fp32_network_face_by_face(trained_run, monkeypatch):
    from fer_core.data.sources import load
    from fer_core.serving.models import load_model
    from fer_core.serving.onnx import ort_session, to_onnx
    from fer_core.studies import variants as deploy
    from fer_core.studies.format_cost import format_cost

    monkeypatch.setenv("FER_RUNS", str(trained_run.parent))
    deploy.export_variants(trained_run.name, formats=("fp32", "int8"), calibration_images=64, say=lambda *a: None)
    doc = format_cost([trained_run.name], say=lambda *a: None)
    rows = {r["format"]: r for r in doc["variants"]}
    assert {"fp32", "int8"} <= set(rows) and all(r["parent"] == trained_run.name for r in rows.values())
    assert rows["fp32"]["both"]["lost"] == rows["fp32"]["both"]["gained"] == 0  # the same network, the same runtime
    fd = load("synthetic")
    fp32 = ort_session(to_onnx(load_model(trained_run.name).model, {}))
    int8 = ort_session(trained_run.parent / f"{trained_run.name}-onnx-int8" / "model.onnx")
    x, y = fd.split("private")
    a, b = fp32.logits(x).argmax(1) == y, int8.logits(x).argmax(1) == y
    assert rows["int8"]["private"]["lost"] == int((a & ~b).sum()) and rows["int8"]["private"]["gained"] == int(
        (b & ~a).sum()
    )
    assert rows["int8"]["both"]["faces"] == len(fd.public_y) + len(fd.private_y)
    assert doc["by_format"]["int8"]["files"] == 1 and set(
        format_cost([], ("int8",), say=lambda *a: None)["by_format"]
    ) == {"int8"}
    with pytest.raises(FerError, match="no ONNX variant"):
        format_cost([trained_run.name], ("int8-qat",), say=lambda *a: None)
    with pytest.raises(FerError, match="other data"):  # other faces than the parent's: refused, not scored
        format_cost([trained_run.name], ("int8",), data="synthetic:140", say=lambda *a: None)
    # a variant whose parent is gone (copied without it) is skipped by name; the others are still scored
    import shutil

    from fer_core.store.files import atomic_write_json, read_json

    orphan = trained_run.parent / "orphan-onnx-int8"
    shutil.copytree(trained_run.parent / f"{trained_run.name}-onnx-int8", orphan)
    summary = read_json(orphan / "summary.json")
    atomic_write_json(orphan / "summary.json", {**summary, "run_id": "orphan-onnx-int8", "derived_from": "gone"})
    said = []
    doc = format_cost([], ("int8",), say=said.append)
    assert [r["run_id"] for r in doc["variants"]] == [f"{trained_run.name}-onnx-int8"]
    assert [x["run_id"] for x in doc["skipped"]] == ["orphan-onnx-int8"] and "gone" in doc["skipped"][0]["why"]
    assert any(line.startswith("  orphan-onnx-int8: skipped:") for line in said)
    with pytest.raises(FerError, match="parents is in the store"):  # nothing left to score: one line, why
        format_cost(["orphan-onnx-int8"], say=lambda *a: None)
    shutil.rmtree(orphan)  # the module's other tests see the store as they found it


def _saturating_qdq_conv(channels: int = 64) -> bytes:
    """x (uint8 at 255) -> 1x1 conv with every int8 weight at 127 -> uint8: the case where uint8 x int8 kernels that
    add pairs of products in 16 bits saturate (255 x 127 x 2 > 32,767), on x86 CPUs without VNNI."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c = channels
    inits = [
        numpy_helper.from_array(np.array(1 / 255, np.float32), "s_x"),
        numpy_helper.from_array(np.array(0, np.uint8), "z_x"),
        numpy_helper.from_array(np.full((4, c, 1, 1), 127, np.int8), "w_q"),
        numpy_helper.from_array(np.full(4, 1 / 127, np.float32), "s_w"),
        numpy_helper.from_array(np.zeros(4, np.int8), "z_w"),
        numpy_helper.from_array(np.array(c / 255, np.float32), "s_y"),
        numpy_helper.from_array(np.array(0, np.uint8), "z_y"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s_x", "z_x"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "s_x", "z_x"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "s_w", "z_w"], ["w_dq"], axis=0),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "s_y", "z_y"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "s_y", "z_y"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "saturating", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 4, 4])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_int8_weights_are_stored_as_uint8_so_every_cpu_computes_the_graph_exactly(tmp_path):
    import onnx
    import onnxruntime as ort

    from fer_core.serving.onnx import ort_session, parse_onnx, uint8_weights

    blob = _saturating_qdq_conv()
    proto = parse_onnx(blob)
    assert uint8_weights(proto) == 1 and uint8_weights(proto) == 0  # once: the second call finds none left
    w = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert w["w_q"].dtype == np.uint8 and (w["w_q"] == 255).all() and (w["w_q_zero_point_u8"] == 128).all()
    assert "z_w" not in w  # the int8 zero point no one reads any more is gone
    x = {"x": np.ones((1, 64, 4, 4), np.float32)}  # every input at the top of its uint8 range
    # what the graph says: 64 inputs of 1.0 times weights of 1.0 = 64 everywhere (on an AVX2 CPU without VNNI
    # the int8 file as written gives 32.4); ort_session re-encodes the file it is given
    assert np.allclose(ort_session(blob).session.run(None, x)[0], 64.0)
    # and ONNX Runtime runs it as its int8 kernel, not as fp32 arithmetic
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, x)
    assert "QLinearConv" in {n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node}
