"""The benchmark runs end to end and writes its JSON (speed itself is measured by `python -m fer_core bench`)."""

import json

from fer_core.studies.bench import run_bench


def test_bench_writes_the_figures_it_promises(tmp_path):
    doc = run_bench(images=384, frames=2, out_dir=str(tmp_path), quiet=True, face_repeats=5)
    assert doc["train_speedup_vs_naive"] > 0 and doc["frame_latency_ms_median"] > 0 and doc["faces"] == 1
    assert set(doc["train_img_per_s_naive"]) == {"num_workers=0", "num_workers=2"}
    assert doc["frame_by_runtime"]["torch"]["frame_latency_ms_median"] > 0
    assert doc["frame_by_runtime"]["onnxruntime"]["frame_latency_ms_median"] > 0
    assert doc["frame"].endswith("onnxruntime"), "the headline frame time is the dashboard's runtime"
    for model in ("mobilenet w1.0", "cnn w1.0"):
        assert set(doc["face_latency_ms"][model]) == {"torch", "onnx-fp32", "onnx-fp16", "onnx-int8"}
        assert all(v > 0 for v in doc["face_latency_ms"][model].values())
    assert doc["live_fps"] > 0 and doc["live_faces_per_frame"] == 1 and doc["live_detect_ms_median"] > 0
    assert json.loads((tmp_path / "bench.json").read_text()) == doc
